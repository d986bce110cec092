"""The built docs site (`python tools/build_docs.py` -> `_site/`), checked in headless Chromium and against the package.

- every page loads with no console error, no failed resource load and no request leaving the site (it works offline);
- math is typeset by the bundled MathJax on every page that has math;
- every image on every page is decoded (naturalWidth > 0), and every experiment page shows at least one figure;
- every internal link resolves: the target file exists and, for `page.html#anchor`, the anchor is an id on that page;
- Sphinx's search finds an API name;
- docs coverage: every name in every module's `__all__` is documented — a function or class has an
  API entry (a heading from `show_doc`), any other name (a constant) appears as code on its module's page.

The browser checks skip when the site has not been built, or when Chromium, chromedriver or selenium is missing;
`.ci/run` installs all of them and builds the site first, so in CI they run.
"""

import functools
import html
import html.parser
import http.server
import importlib
import json
import os
import re
import threading
from pathlib import Path
from urllib.parse import urldefrag, urlsplit, unquote

import pytest
from browser import browser_missing, chromium

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "_site"
PAGE_LOAD_S = 60  # generous: a shared 2-core machine; a page that loads at all loads in well under a second

IN_CI = os.environ.get("CI") == "true"  # .ci/run builds the site and installs the browser: there nothing may skip


def _needs(missing):
    "Skip when `missing` (a reason) is set; in CI, fail instead."
    if not missing or not IN_CI:
        return pytest.mark.skipif(bool(missing), reason=str(missing))
    name = f"_fail_{len(_FAILS)}"

    @pytest.fixture
    def fail():
        pytest.fail(f"CI=true but {missing}")

    _FAILS.append(name)
    globals()[name] = fail
    return pytest.mark.usefixtures(name)


_FAILS = []
needs_site = _needs(
    None
    if (SITE / "index.html").exists()
    else f"docs site not built ({SITE}/index.html missing): run `python tools/build_docs.py`"
)


def site_pages():
    "Every HTML page of the site (Sphinx's own static and source folders excluded)."
    return sorted(
        p.relative_to(SITE).as_posix()
        for p in SITE.rglob("*.html")
        if p.relative_to(SITE).parts[0] not in ("_static", "_sources", "_images")
    )


# --- docs coverage: no browser needed ------------------------------------------------------------------------------


class _Text(html.parser.HTMLParser):
    "Heading texts (h1-h6, and rubrics: myst-nb's rendering of a heading inside an output) and code texts."

    def __init__(self):
        super().__init__()
        self.headings, self.code, self._stack = [], [], []

    def handle_starttag(self, tag, attrs):
        if re.fullmatch(r"h[1-6]|code", tag) or (tag == "p" and "rubric" in (dict(attrs).get("class") or "").split()):
            self._stack.append([tag, ""])
        elif tag == "a" and ("class", "headerlink") in attrs and self._stack:
            self._stack.append(["skip", ""])

    def handle_endtag(self, tag):
        if not self._stack:
            return
        if self._stack[-1][0] == "skip" and tag == "a":
            self._stack.pop()
            return
        if self._stack[-1][0] != tag:
            return
        t, text = self._stack.pop()
        (self.code if t == "code" else self.headings).append(" ".join(text.split()))
        if self._stack and self._stack[-1][0] != "skip":
            self._stack[-1][1] += text

    def handle_data(self, data):
        if self._stack and self._stack[-1][0] != "skip":
            self._stack[-1][1] += data


@functools.cache
def page_text(rel):
    p = _Text()
    p.feed((SITE / rel).read_text(encoding="utf-8"))
    return p


def module_pages():
    "Module name -> the site page of the notebook that exports it (from nbdev's `_modidx`)."
    from subspace_opt._modidx import d

    pages = {}
    for mod, syms in d["syms"].items():
        for url in syms.values():
            pages[mod] = urlsplit(url[0]).path.rsplit("/", 1)[-1]
            break
    return pages


def undocumented():
    """Names in some module's `__all__` without an API entry on their module's page, as 'module.name' strings.

    An API entry is a heading with the name: nbdev's `show_doc` writes one for every exported function and class
    (and for methods shown explicitly), the docs build one for every exported constant."""
    missing = []
    for mod, page in sorted(module_pages().items()):
        if not (SITE / page).exists():
            continue  # the module has no page at all: reported on its own
        heads = set(page_text(page).headings)
        missing += [
            f"{mod}.{name}" for name in getattr(importlib.import_module(mod), "__all__", []) if name not in heads
        ]
    return missing


@needs_site
def test_docs_cover_every_public_name():
    pages = site_pages()
    mods = module_pages()
    assert mods, "no modules in subspace_opt._modidx: run nbdev_export"
    absent = sorted({f"{m} ({p})" for m, p in mods.items() if p not in pages})
    missing = undocumented()
    assert not absent and not missing, (
        f"modules without a page in the site: {absent}; public names without an entry on their module's page: {missing}"
    )


@needs_site
def test_public_names_in_prose_link_to_their_entries():
    "No page shows a qualified public name, a constant or a call of a public function as plain code, outside code."
    import runpy

    entries, plain = runpy.run_path(str(ROOT / "tools" / "build_docs.py"))["api_entries"](), {}
    for rel in site_pages():
        text = (SITE / rel).read_text(encoding="utf-8")
        text = re.sub(r"<a\b[^>]*>.*?</a>|<pre\b.*?</pre>", "", text, flags=re.S)  # links and code blocks
        for m in re.finditer(r'<code[^>]*><span class="pre">([^<]+)</span></code>', text):
            code = re.fullmatch(r"([\w.]+)(\(.*\))?", html.unescape(m[1]))
            bare = rel == "changelog.html"  # which nbdev never processes: its bare names are linked too
            if code and code[1] in entries and (bare or "." in code[1] or code[1].isupper() or code[2]):
                plain.setdefault(rel, []).append(m[1])
    assert not plain, f"public names shown as code without a link to their entry: {plain}"


@needs_site
def test_no_page_shows_a_traceback():
    """No page shows a Python traceback: the build executes a notebook's import cells for `show_doc`, and an error it
    caught there must not replace the outputs the notebook saved. Notebooks show expected errors as printed text."""
    shown = {p: t[:200] for p in site_pages() if (t := _traceback((SITE / p).read_text()))}
    assert not shown, f"pages showing a traceback: {shown}"


def _traceback(page):
    text = re.sub(r"<[^>]+>", " ", page)
    m = re.search(r"Traceback\s+\(\s*most\s+recent\s+call\s+last\s*\)", text)
    return text[m.start() :] if m else ""


def test_the_traceback_check_catches_one():
    assert _traceback('<pre><span class="ansi">Traceback</span> (most recent call last):\n  File "x"</pre>')
    assert not _traceback("<p>the run ends with a one-line error, never a traceback</p>")


@needs_site
def test_source_links_sit_beside_their_headings():
    "Every API entry's source link follows its heading (styled `api-source`), never a paragraph of its own above it."
    stray = {
        p: n
        for p in site_pages()
        if (
            n := len(
                re.findall(r'<p><a class="reference external" href="[^"]*">source</a></p>', (SITE / p).read_text())
            )
        )
    }
    assert not stray, f"source links in paragraphs of their own: {stray}"
    assert sum((SITE / p).read_text().count('class="api-source"') for p in site_pages()) > 50


@needs_site
def test_dunder_headings_read_as_names():
    "An entry for `__add__` is headed `X.__add__`, not `X.` and a bold 'add'."
    bold = {
        p: h
        for p in site_pages()
        if (h := re.findall(r"<h[1-6][^>]*>[^<]*<strong>[^<]*</strong>", (SITE / p).read_text()))
    }
    assert not bold, bold
    generic = [p for p in site_pages() if "Call self as a function." in (SITE / p).read_text()]
    assert not generic, f"entries with Python's generic docstring instead of their own: {generic}"


def _visible(page):
    "A page's HTML without its collapsed blocks (the tests the builder folds away)."
    return re.sub(r"<details\b.*?</details>", "", (SITE / page).read_text(), flags=re.S)


@needs_site
def test_api_pages_open_with_usage_and_fold_their_tests():
    "Each API page shows a Usage section before its first API entry, and no test call outside a collapsed block."
    api = sorted(set(module_pages().values()))
    no_usage, late, tests_shown = [], [], {}
    for p in api:
        text = (SITE / p).read_text()
        usage = re.search(r"<h2[^>]*>Usage", text)
        entry = text.find('class="api-source"')
        if usage is None:
            no_usage.append(p)
        elif entry != -1 and usage.start() > entry:
            late.append(p)
        shown = [
            t
            for t in re.findall(r"<pre>(.*?)</pre>", _visible(p), re.S)
            if re.search(r"\btest_(eq|close|fail|ne|is|warns)\b", html.unescape(re.sub(r"<[^>]+>", "", t)))
        ]
        if shown:
            tests_shown[p] = len(shown)
    assert not no_usage, f"API pages without a Usage section: {no_usage}"
    assert not late, f"API pages whose Usage comes after an API entry: {late}"
    assert not tests_shown, f"test cells shown open: {tests_shown}"
    assert sum(len(re.findall(r"<details\b", (SITE / p).read_text())) for p in api) > 50  # the tests are there, folded


def _signatures():
    "The text of every code block on every page, with its page."
    for p in site_pages():
        for pre in re.findall(r"<pre>(.*?)</pre>", (SITE / p).read_text(), re.S):
            yield p, html.unescape(re.sub(r"<[^>]+>", "", pre))


@needs_site
def test_signatures_read_as_written():
    "Classes as `class Name(`, no `NoneType` nbdev infers from a `None` default, no raw markdown links in code."
    import inspect
    from subspace_opt._modidx import d

    classes = {
        n
        for m in d["syms"]
        for n, o in vars(importlib.import_module(m)).items()
        if inspect.isclass(o) and o.__module__.startswith("subspace_opt")
    }
    sigs = list(_signatures())
    as_def = [(p, t[:60]) for p, t in sigs if (m := re.match(r"\s*def (\w+)\(", t)) and m[1] in classes]
    assert not as_def, as_def
    assert any(t.lstrip().startswith("class DominantSubspace(") for _, t in sigs)
    api = sorted(set(module_pages().values()))
    assert not [p for p in api if "NoneType" in re.sub(r"<[^>]+>", "", _visible(p))], (
        "NoneType shown as a type"  # (a folded test may quote an error message that names it)
    )
    raw = [(p, l.strip()) for p, t in sigs for l in t.splitlines() if re.search(r"\]\((https?://|[\w./-]+\.html)", l)]
    assert not raw, raw


@needs_site
def test_site_names_version_repository_and_changelog():
    from configparser import ConfigParser

    cfg = ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini", encoding="utf-8")
    cfg = cfg["DEFAULT"]
    home = (SITE / "index.html").read_text()
    assert f"{cfg['lib_name']} {cfg['version']}" in home and f'href="{cfg["git_url"]}"' in home
    assert 'href="changelog.html"' in home and "Changelog" in page_text("changelog.html").headings


@needs_site
def test_cuda_only_cells_are_marked():
    "Each cell that runs only on a CUDA GPU carries a visible note, so a FULL setting does not read as run here."
    marked = 0
    for nb in sorted((ROOT / "nbs" / "experiments").glob("E*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        want = sum(
            c["cell_type"] == "code" and bool(re.search(r"^\s*#\s*\|\s*cuda\s*$", "".join(c["source"]), re.M))
            for c in cells
        )
        page = SITE / "experiments" / f"{nb.stem.lower()}.html"
        assert page.read_text().count('class="cuda-only"') == want, (nb.name, want)
        marked += want
    assert marked >= 10


@needs_site
def test_experiments_landing_page_lists_every_verdict():
    "One table: every experiment, linked, with its question, verdict, setting and device."
    page = (SITE / "experiments" / "index.html").read_text()
    notebooks = sorted((ROOT / "nbs" / "experiments").glob("E*.ipynb"))
    rows = [r for r in re.findall(r"<tr[^>]*>(.*?)</tr>", page, re.S) if "<strong>" in r]
    assert len(rows) == len(notebooks) >= 10
    for nb, row in zip(notebooks, rows):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        assert len(cells) == 5 and f'href="{nb.stem.lower()}.html"' in cells[0], (nb.name, row[:300])
        assert all(re.sub(r"<[^>]+>", "", c).strip() for c in cells), (nb.name, "an empty column")
        assert "not recorded" not in cells[4], (nb.name, "no device in the notebook's output")
    assert (
        "experiments/index.html" in site_pages()
        and 'href="experiments/index.html"' in (SITE / "index.html").read_text()
    )


# --- the browser ---------------------------------------------------------------------------------------------------

needs_browser = _needs(browser_missing())


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


@pytest.fixture(scope="module")
def server():
    "The site served over HTTP on localhost, as a user would host it (fonts and scripts load as they do online)."
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(SITE)))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    drv = chromium(PAGE_LOAD_S, console_log=True)
    yield drv
    drv.quit()


_VISIT = """
const done = arguments[arguments.length - 1];
(async () => {
  // the whole page first: a driver may hand over while the document is still loading (chromedriver 150 does)
  if (document.readyState !== 'complete') await new Promise(r => window.addEventListener('load', r, {once: true}));
  // math: wait for MathJax to typeset, when the page loads it
  let math = document.querySelectorAll('.math').length, typeset = -1;
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
    typeset = document.querySelectorAll('mjx-container').length;
  }
  // images: force loading, then decode each one
  const imgs = [...document.images];
  imgs.forEach(i => { i.loading = 'eager'; });
  const decoded = await Promise.all(imgs.map(i => i.decode().then(() => [i.src, i.naturalWidth], () => [i.src, 0])));
  const figures = document.querySelectorAll('.cell_output img, .output img').length;
  const links = [...document.querySelectorAll('a[href]')].map(a => a.href);
  const ids = [...document.querySelectorAll('[id], a[name]')].map(e => e.id || e.getAttribute('name'));
  const resources = performance.getEntriesByType('resource').map(e => e.name);
  // tables: a table wider than the article must sit in a container that scrolls sideways, or it is cut off
  const article = (document.querySelector('.bd-article') || document.body).getBoundingClientRect().width;
  const cut = [...document.querySelectorAll('table')].filter(t => {
    for (let e = t.parentElement; e && e !== document.body; e = e.parentElement)
      if (['auto', 'scroll'].includes(getComputedStyle(e).overflowX)) return false;
    return t.getBoundingClientRect().width > article + 1;
  }).length;
  done({math, typeset, decoded, figures, links, ids, resources, cut, title: document.title});
})().catch(e => done({error: String(e)}));
"""


@pytest.fixture(scope="module")
def visited(server, browser):
    "Every page visited once: what the page loaded, logged, showed and linked to."
    out = {}
    browser.get_log("browser")  # drop anything logged before the first page
    for rel in site_pages():
        browser.get(server + rel)
        info = browser.execute_async_script(_VISIT)
        info["log"] = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        out[rel] = info
    return out


@needs_site
@needs_browser
def test_every_page_loads_without_errors(visited, server):
    bad = {}
    for rel, info in visited.items():
        problems = []
        if "error" in info:
            problems.append("script: " + info["error"])
        problems += [f"console {e['level']}: {e['message']}" for e in info.get("log", []) if e["level"] == "SEVERE"]
        problems += [
            f"request leaves the site: {r}"
            for r in info.get("resources", [])
            if not r.startswith((server, "data:", "blob:"))
        ]
        if info.get("math") and info.get("typeset", -1) <= 0:
            problems.append(f"{info['math']} math elements but MathJax typeset nothing")
        if info.get("cut"):
            problems.append(f"{info['cut']} wide tables cut off (no sideways scrolling)")
        if problems:
            bad[rel] = problems
    assert visited and "index.html" in visited
    assert not bad, json.dumps(bad, indent=1)


@needs_site
@needs_browser
def test_every_image_decodes_and_experiments_show_figures(visited):
    broken = {rel: [s for s, w in info["decoded"] if not w] for rel, info in visited.items()}
    broken = {k: v for k, v in broken.items() if v}
    assert not broken, f"images that did not load or decode: {broken}"
    experiments = [rel for rel in visited if rel.startswith("experiments/") and rel != "experiments/index.html"]
    bare = [rel for rel in experiments if visited[rel]["figures"] < 1]
    assert not bare, f"experiment pages without a figure: {bare}"


@needs_site
@needs_browser
def test_internal_links_resolve(visited, server):
    ids = {rel: set(info["ids"]) for rel, info in visited.items()}
    bad = set()
    for rel, info in visited.items():
        for href in info["links"]:
            if not href.startswith(server):
                continue  # other hosts (the source on GitHub, papers): not ours to check
            url, frag = urldefrag(href)
            target = unquote(url[len(server) :].split("?")[0]) or "index.html"
            if target.endswith("/"):
                target += "index.html"
            if not (SITE / target).is_file():
                bad.add(f"{rel} -> {target}: no such file")
            elif frag and target in ids and unquote(frag) not in ids[target]:
                bad.add(f"{rel} -> {target}#{frag}: no such anchor")
    assert not bad, "\n".join(sorted(bad))


@needs_site
@needs_browser
def test_search_finds_api_names(server, browser):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    links = lambda d: d.execute_script("return [...document.querySelectorAll('#search-results li a')].map(a => a.href)")
    browser.get(server + "search.html?q=lanczos")
    try:  # the search page adds its results one by one: wait for the page sought, not for the first result
        WebDriverWait(browser, PAGE_LOAD_S).until(
            lambda d: any(h.split("#")[0].endswith("lanczos.html") for h in links(d))
        )
    except TimeoutException:
        raise AssertionError(f"no result links to lanczos.html: {links(browser)}") from None
