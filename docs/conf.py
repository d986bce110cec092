# Sphinx configuration of the docs site. Do not run sphinx-build on it directly: `python tools/build_docs.py` first
# processes the notebooks with nbdev into the source tree this file configures (_proc/site/), then calls Sphinx.
from configparser import ConfigParser
from pathlib import Path

_cfg = ConfigParser(delimiters=["="])
_cfg.read(Path(__file__).resolve().parents[1] / "settings.ini", encoding="utf-8")
_cfg = _cfg["DEFAULT"]

project = _cfg["lib_name"]
author = _cfg["author"]
copyright = _cfg["copyright"]
release = version = _cfg["version"]

extensions = ["myst_nb", "sphinx.ext.mathjax"]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]

# --- notebooks: saved outputs only ----------------------------------------------------------------------------------
nb_execution_mode = "off"  # never execute during the build: pages show what the notebooks saved
nb_render_markdown_format = "myst"  # show_doc's markdown outputs hold tables and math: parse them as MyST
nb_merge_streams = True
# The builder collapses the cells that test (they run under nbdev_test); a reader opens them with this toggle.
nb_code_prompt_show = "Show the test"
nb_code_prompt_hide = "Hide the test"
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "attrs_inline"]
myst_heading_anchors = 4  # show_doc: ### functions and classes, #### methods
# Links in the notebooks are plain URLs: nbdev writes absolute links to its doc host, which the build rewrites to
# relative .html links inside the site. MyST would try to resolve those as documents and warn; treating all links as
# URLs keeps them as written, and tests/test_docs.py checks in the browser that every internal link resolves.
myst_all_links_external = True

# --- math: MathJax from the site itself (copied from the django-static-mathjax wheel), never a CDN -----------------
mathjax_path = "mathjax/tex-chtml.js"  # relative to _static/
mathjax3_config = {"tex": {"inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]]}}

# --- look and navigation --------------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_static_path = [
    str(Path(__file__).resolve().parents[1] / "_proc" / "site" / "_static")
]  # the build copies MathJax there
html_title = f"{project} {release}"
html_theme_options = {
    "repository_url": _cfg["git_url"],
    "use_repository_button": True,
    "show_toc_level": 2,
    "home_page_in_toc": True,
    "use_download_button": False,
    "use_fullscreen_button": False,
}
html_css_files = ["site.css"]
html_favicon = "favicon.svg"  # without one the browser asks for /favicon.ico, a 404 on every host
html_context = {"default_mode": "light"}  # the theme logs an error for an unset colour mode on a first visit
html_last_updated_fmt = None
html_copy_source = False
html_show_sourcelink = False

# --- warnings: the build runs with -W --keep-going, so every warning fails it (after listing them all). ------------
# The ones the notebooks raised are fixed in tools/build_docs.py instead: show_doc's `---` rule (a docutils transition
# inside an output), nbdev's absolute doc-host links, Quarto cell options. Silenced, each for its reason:
suppress_warnings = [
    "myst.header",  # a skipped heading level (## then ####) renders as written; no page breaks over it
]
