"""The project cites only itself and the papers: no page, notebook, source file or comment refers to documents the
repository does not contain, to files outside it, or to how the project is developed."""

import json
import re
import subprocess
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "_site"
_S = "SP" + "EC"  # spelled in two parts so that this file does not match its own patterns
FORBIDDEN = re.compile(
    "|".join(
        [
            rf"\b{_S}\b",
            r"\b(DESIGN|STYLE|TOOLCHAIN|DEVELOPERS)\.md\b",  # documents the repository does not contain
            r"\.\./shared\b",
            r"/work/main",  # folders outside the repository
            r"\bissues? #?\d+",
            r"\bthe issue\b",
            r"\bfoundation issue",
            r"\bintegrator",
            r"\bagents?\b",
            r"\bthis task\b",
            r"\b(earlier|this|last|previous|next) session\b",
            r"\bCEO\b",
            r"\bsub-?agents?\b",  # how the work is organised
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
        f"see {_S} §2",
        "the integrator will update this",
        "from issue 7",
        "../shared/gpu-wheels",
        "four other agents",
        "no GPU was available to this task",
        "an earlier session",
        "STYLE.md H13",
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
    files = [p for p in _tracked() if p.resolve() != Path(__file__).resolve()]
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
