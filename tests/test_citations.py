"""The project cites only itself and the papers: no page, notebook, source file or comment refers to documents the
repository does not contain, to files outside it, or to how the project is developed."""

import codecs
import json
import re
import subprocess
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "_site"


def _w(text):
    "Words of the patterns and examples below, kept in rot13: this file must not hold what it forbids."
    return codecs.decode(text, "rot13")


FORBIDDEN = re.compile(
    "|".join(
        [
            rf"\b{_w('FCRP')}\b",
            rf"\b({_w('QRFVTA|FGLYR|GBBYPUNVA|QRIRYBCREF')})\.md\b",  # documents the repository does not contain
            rf"\.\./{_w('funerq')}\b",
            rf"/{_w('jbex/znva')}",  # folders outside the repository
            rf"\b{_w('vffhrf? #?')}\d+",
            rf"\b{_w('gur vffhr')}\b",
            rf"\b{_w('sbhaqngvba vffhr')}",
            rf"\b{_w('vagrtengbe')}",
            rf"\b{_w('ntragf?')}\b",
            rf"\b{_w('guvf gnfx')}\b",
            rf"\b({_w('rneyvre|guvf|ynfg|cerivbhf|arkg) frffvba')}\b",
            rf"\b{_w('PRB')}\b",
            rf"\b{_w('fho-?ntragf?')}\b",
        ]
    )
)
TEXT = {".ipynb", ".md", ".py", ".sh", ".ini", ".cfg", ".toml", ".txt", ".css", ".svg", ".yaml", ".yml", ""}


def _tracked():
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        pytest.skip("not a git checkout")
    return [ROOT / f for f in out.stdout.splitlines() if (ROOT / f).suffix in TEXT and (ROOT / f).is_file()]


def _strings(path):
    "The text a reader sees: a notebook's sources and text outputs, any other file whole."
    text = path.read_text(errors="replace")
    if path.suffix != ".ipynb":
        return text
    parts = []
    for c in json.loads(text)["cells"]:
        parts.append("".join(c["source"]))
        for o in c.get("outputs", []):
            parts += ["".join(o.get("text", ""))] + [
                "".join(v) for k, v in o.get("data", {}).items() if k.startswith("text/")
            ]
    return "\n".join(parts)


def _hits(text):
    return [text[max(0, m.start() - 60) : m.end() + 30].replace("\n", " ") for m in FORBIDDEN.finditer(text)]


def test_the_patterns_catch_what_they_should():
    for bad in [
        _w("frr FCRP §2"),
        _w("gur vagrtengbe jvyy hcqngr guvf"),
        _w("sebz vffhr 7"),
        _w("../funerq/tch-jurryf"),
        _w("sbhe bgure ntragf"),
        _w("ab TCH jnf ninvynoyr gb guvf gnfx"),
        _w("na rneyvre frffvba"),
        _w("FGLYR.zq U13"),
    ]:
        assert _hits(bad), bad
    for fine in [
        "a spectrum",
        "the spectral density",
        "the Jupyter server starts a kernel session",
        "issue a collective",
    ]:
        assert not _hits(fine), fine


def test_no_file_of_the_repository_refers_outside_it():
    files = _tracked()  # this file too: its patterns are stored in rot13
    assert len(files) > 40
    bad = {str(p.relative_to(ROOT)): h[:3] for p in files if (h := _hits(_strings(p)))}
    assert not bad, bad


def test_no_page_of_the_built_site_refers_outside_it():
    pages = sorted(SITE.rglob("*.html")) if SITE.exists() else []
    if not pages:
        pytest.skip("docs site not built (python tools/build_docs.py)")
    bad = {}
    for page in pages:
        text = re.sub(r"<[^>]+>", " ", page.read_text(errors="replace"))  # the words on the page, not its markup
        if h := _hits(text):
            bad[str(page.relative_to(SITE))] = h[:3]
    assert not bad, bad
