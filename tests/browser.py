"""Headless Chromium for the tests that look at pages as a reader would (the docs site, JupyterLab)."""

import importlib.util
import shutil

CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
)  # root, no display, no network


def browser_missing():
    "Why no browser test can run here (a one-line reason), or None."
    if importlib.util.find_spec("selenium") is None:
        return 'selenium not installed: pip install -e ".[docs]"'
    for exe in ("chromium", "chromedriver"):
        if not shutil.which(exe):
            return f"{exe} not found: apt-get install -y chromium chromium-driver"
    return None


def chromium(timeout_s: float, console_log: bool = False):
    "A headless Debian Chromium driven by selenium, with page-load and script timeouts; the caller quits it."
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for a in CHROMIUM_ARGS:
        opts.add_argument(a)
    if console_log:
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    drv.set_page_load_timeout(timeout_s)
    drv.set_script_timeout(timeout_s)
    return drv
