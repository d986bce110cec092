"""A fresh machine has no optional data set: with the data hidden (`SUBSPACE_OPT_DATA` set and empty), everything that
needs Fashion-MNIST skips with a one-line reason or falls back to the bundled digits, and CI (`CI=true`) refuses to
skip it."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
HIDDEN = {"SUBSPACE_OPT_DATA": "", "OMP_NUM_THREADS": "1"}  # set and empty: no data set is installed anywhere
LOADS = re.compile(r"(?<!def )load_fashion_mnist\(|load_task\(\s*['\"]fashion-mnist")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    return {**env, **HIDDEN, **extra}


def _pytest(*args, **env):
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_env(**env),
        timeout=600,
    )


def test_data_tests_skip_with_a_one_line_reason_without_the_data():
    p = _pytest("tests/test_data.py")
    assert p.returncode == 0, p.stdout[-3000:]
    reasons = [l for l in p.stdout.splitlines() if l.startswith("SKIPPED")]
    assert len(reasons) == 2, p.stdout[-3000:]
    for line in reasons:
        assert re.search(r"fashion-mnist not installed \(optional; apt-get install dataset-fashion-mnist", line), line
    assert re.search(r"\b2 skipped\b", p.stdout) and "failed" not in p.stdout


def test_ci_refuses_to_skip_them():
    p = _pytest("tests/test_data.py", "-k", "fashion", CI="true")
    assert p.returncode == 1 and re.search(r"\b2 failed\b", p.stdout), p.stdout[-3000:]
    assert "fashion-mnist not found: looked for train-labels-idx1-ubyte.gz in nowhere" in p.stdout


def _code_cells(path):
    for c in json.loads(path.read_text())["cells"]:
        if c["cell_type"] == "code":
            yield "".join(c["source"])


def _flagged(src):
    return bool(re.search(r"^\s*#\s*\|\s*(cuda|slow)\s*$", src, re.M))


NOTEBOOKS = sorted(p for p in NBS.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
# the notebooks whose default run (cells flagged cuda or slow are skipped) may read it: a notebook that loads it only
# in a flagged cell runs the same cells with the data or without it
LOADERS = [
    p for p in NOTEBOOKS if any((LOADS.search(s) or "load_task(name" in s) and not _flagged(s) for s in _code_cells(p))
]


def test_every_unflagged_load_of_fashion_mnist_is_guarded():
    "A notebook cell that the default test run executes loads Fashion-MNIST only where it asks `data_available` first."
    for path in NOTEBOOKS:
        for src in _code_cells(path):
            if LOADS.search(src) and not _flagged(src):
                assert src.find("data_available(") in range(0, LOADS.search(src).start()), (path.name, src[:300])


@pytest.mark.parametrize("path", LOADERS, ids=[p.stem for p in LOADERS])
def test_notebooks_that_load_it_pass_without_it(path):
    "The notebooks that read Fashion-MNIST in their default setting run to the end on a machine without it."
    p = subprocess.run(
        [str(Path(sys.executable).parent / "nbdev_test"), "--path", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_env(),
        timeout=600,
    )
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
