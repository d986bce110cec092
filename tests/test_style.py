"""Code that reads: the formatter's output, one statement per line, small export cells each followed by its test,
methods in their class bodies, and one documented parameter per signature line. Checked on the sources so it stays true.
"""

import ast
import io
import json
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "subspace_opt"
LIBRARY_NBS = sorted((ROOT / "nbs").glob("[0-9]*.ipynb"))
MODULES = sorted(p for p in PKG.glob("*.py") if not p.name.startswith("_"))
MAX_EXPORT_LINES = 40
EXPORT = re.compile(r"^\s*#\|\s*export\b", re.M)
TEST = re.compile(r"\btest_\w+\(|^\s*assert\b", re.M)


def ruff(*args):
    "Run the ruff of this environment (the `dev` extra pins it) from the repository root."
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if exe is None:
        pytest.fail("ruff is not installed: pip install -e '.[dev]'")
    return subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True)


def code_cells(nb_path):
    "The code cells of a notebook, as source strings."
    cells = json.loads(nb_path.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def is_export(src):
    return EXPORT.search(src) is not None


def only_imports(src):
    "An export cell that only imports: nothing to test."
    body = ast.parse(src).body
    return all(isinstance(s, (ast.Import, ast.ImportFrom)) for s in body)


def all_block(path):
    "Line numbers of the `__all__ = [...]` that nbdev writes (wrapped at 120 plus its 10-character prefix)."
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(range(node.lineno, node.end_lineno + 1))
    return set()


def test_notebooks_tests_and_tools_are_formatted():
    r = ruff("format", "--check", "nbs", "tests", "tools", "docs/conf.py")
    assert r.returncode == 0, f"run `ruff format nbs tests tools docs/conf.py`:\n{r.stdout}{r.stderr}"


def test_one_statement_per_line_in_the_module():
    "E701/E702/E703 (one statement per line) and E501 (120 columns) on the exported module, as users read it."
    r = ruff("check", "--output-format", "json", "--select", "E701,E702,E703,E501,F401", "subspace_opt")
    hits = json.loads(r.stdout or "[]")
    blocks = {p: all_block(p) for p in MODULES}
    left = [
        f"{Path(h['filename']).name}:{h['location']['row']} {h['code']} {h['message']}"
        for h in hits
        if not (h["code"] == "E501" and h["location"]["row"] in blocks.get(Path(h["filename"]), ()))
    ]
    assert not left, "\n".join(left)


def test_tests_and_tools_pass_ruff():
    r = ruff("check", "tests", "tools", "docs/conf.py")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("nb", LIBRARY_NBS, ids=lambda p: p.stem)
def test_export_cells_are_small(nb):
    big = [
        f"export cell {i} has {len(s.splitlines())} lines"
        for i, s in enumerate(code_cells(nb))
        if is_export(s) and len(s.splitlines()) > MAX_EXPORT_LINES
    ]
    assert not big, f"{nb.name}: split these (at most {MAX_EXPORT_LINES} lines): {big}"


def first_line(src):
    lines = [l for l in src.splitlines() if not l.startswith("#|")]
    return lines[0][:60] if lines else ""


def untested_exports(cells):
    "First lines of the export cells (of code cells `cells`) that no test cell follows before the next export."
    untested, pending = [], None
    for s in cells:
        if is_export(s):
            if pending is not None:
                untested.append(pending)
            pending = None if only_imports(s) else first_line(s)
        elif pending is not None and TEST.search(s):
            pending = None
    if pending is not None:
        untested.append(pending)
    return untested


@pytest.mark.parametrize("nb", LIBRARY_NBS, ids=lambda p: p.stem)
def test_every_export_cell_is_followed_by_its_test(nb):
    "Between one export cell and the next there is a cell that tests it (fastcore `test_*` or `assert`)."
    untested = untested_exports(code_cells(nb))
    assert not untested, f"{nb.name}: no test after these export cells: {untested}"


def patched(tree):
    "(name, class) of every `@patch` function of a module."
    out = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and any(getattr(d, "id", None) == "patch" for d in node.decorator_list):
            ann = node.args.args[0].annotation if node.args.args else None
            out.append((node.name, ast.unparse(ann) if ann is not None else "?"))
    return out


def test_patch_only_for_public_methods():
    "Private helpers, dunders and overrides live in the class body; `@patch` adds one public method once."
    private, overrides = [], []
    seen = {}
    for mod in MODULES:
        for name, cls in patched(ast.parse(mod.read_text())):
            if name.startswith("_"):
                private.append(f"{mod.name}: {cls}.{name}")
            if name in seen:
                overrides.append(f"{mod.name}: {cls}.{name} (also on {seen[name]})")
            seen[name] = cls
    assert not private, f"move into the class body: {private}"
    assert not overrides, f"an override belongs in its class body: {overrides}"


def generated_methods(tree):
    "`line Class.attr` for each assignment onto a class of module `tree` after its definition."
    out, classes = [], {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        for t in targets:
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id in classes:
                out.append(f"{node.lineno} {t.value.id}.{t.attr}")
    return out


def test_no_generated_methods():
    "Methods are `def`s that editors and type checkers see, not assignments onto a class after the fact."
    generated = [f"{mod.name}:{g}" for mod in MODULES for g in generated_methods(ast.parse(mod.read_text()))]
    assert not generated, generated


def shared_parameter_lines(src):
    "`line name` of each function of `src` whose signature has comments but two parameters on one line."
    shared = []
    comments = {t.start[0] for t in tokenize.generate_tokens(io.StringIO(src).readline) if t.type == tokenize.COMMENT}
    for node in ast.walk(ast.parse(src)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        a = node.args
        params = a.posonlyargs + a.args + a.kwonlyargs + [p for p in (a.vararg, a.kwarg) if p]
        params = [p for p in params if p.arg not in ("self", "cls")]
        if not any(line in comments for line in range(node.lineno, node.body[0].lineno)):
            continue
        lines = [p.lineno for p in params]
        if len(set(lines)) < len(lines):
            shared.append(f"{node.lineno} {node.name}")
    return shared


def test_one_parameter_per_documented_line():
    "A signature with comments (docments) puts each parameter on its own line, so each gets its description."
    shared = [f"{mod.name}:{s}" for mod in MODULES for s in shared_parameter_lines(mod.read_text())]
    assert not shared, f"put one parameter per line, each with its comment: {shared}"


def test_the_style_checks_can_fail(tmp_path):
    "The checks above catch what they claim to: a planted module and notebook with each fault."
    bad = "from fastcore.basics import patch\nclass A:\n    pass\n@patch\ndef _x(self: A): pass\nA.y = A._x\n"
    tree = ast.parse(bad)
    assert patched(tree) == [("_x", "A")]
    assert only_imports("import os\nfrom x import y") and not only_imports("import os\nX = 1")
    assert first_line("#| export\ndef f(): pass") == "def f(): pass"
    assert TEST.search("test_eq(1, 1)") and TEST.search("  assert x") and not TEST.search("contest(1)")
    assert generated_methods(tree) == ["6 A.y"]
    assert shared_parameter_lines("def f(\n    a, b,  # two on one line\n):\n    pass\n") == ["1 f"]
    assert shared_parameter_lines("def f(\n    a,  # one\n    b,  # per line\n):\n    pass\n") == []
    exported, tested = "#| export\ndef f(): pass", "test_eq(f(), None)"
    assert untested_exports([exported, "f()", exported, tested]) == ["def f(): pass"]
    assert untested_exports(["#| export\nimport os", exported, tested]) == []
    f = tmp_path / "m.py"
    f.write_text("__all__ = ['" + "a" * 130 + "']\nx = 1; y = 2\n")
    assert all_block(f) == {1}
    r = ruff("check", "--output-format", "json", "--select", "E702,E501", "--no-cache", str(f))
    assert {h["code"] for h in json.loads(r.stdout)} == {"E501", "E702"}  # the long __all__ line and `x = 1; y = 2`
