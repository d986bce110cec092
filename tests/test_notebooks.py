"""House rules of the notebooks that a reader relies on (flagged cells, the experiment template), checked on sources."""

import json
import re
from pathlib import Path
import pytest

NBS = Path(__file__).resolve().parents[1] / "nbs"
EXPERIMENTS = sorted((NBS / "experiments").glob("E*.ipynb"))
ALL = sorted(p for p in NBS.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
SECTIONS = ["Claim", "Parameters", "Run", "Results", "Figure", "Verdict"]


def _cells(path):
    return [(c["cell_type"], "".join(c["source"])) for c in json.loads(path.read_text())["cells"]]


def _flags(src):
    return {m.group(1) for m in re.finditer(r"^\s*#\s*\|\s*(\w+)\s*$", src, re.M)}


def test_every_experiment_of_the_method_has_a_notebook():
    ids = {int(re.match(r"E(\d+)", p.name).group(1)) for p in EXPERIMENTS}
    assert set(range(0, 11)) <= ids, f"missing experiments: {sorted(set(range(0, 11)) - ids)}"  # E11 lives in E01


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_experiment_template(path):
    cells = _cells(path)
    first_md = next(s for t, s in cells if t == "markdown")
    assert re.match(r"# E\d+ — .+\n> ", first_md), (
        'the first markdown cell is the H1 title "E<n> — ..." with a subtitle'
    )
    h2 = [m.group(1).strip() for t, s in cells if t == "markdown" for m in re.finditer(r"^## (.+)$", s, re.M)]
    assert [h for h in h2 if h in SECTIONS] == SECTIONS, f"H2 sections in order {SECTIONS}, got {h2}"
    code = [s for t, s in cells if t == "code"]
    assert not [s for s in code if re.search(r"^\s*(def|class) ", s, re.M)], "no def/class in experiment notebooks"
    params = [s for s in code if re.search(r"^SMALL\s*=", s, re.M)]
    assert len(params) == 1 and re.search(r"^FULL\s*=", params[0], re.M), "one parameter cell with SMALL and FULL"
    assert any("cuda" in _flags(s) and re.search(r"^P\s*=\s*FULL\s*$", s, re.M) for s in code), (
        "a `#| cuda` cell sets P = FULL"
    )
    assert "VERDICT_PLACEHOLDER" not in "".join(s for _, s in cells)
    assert any("environment(" in s for s in code), "the output records device and versions"


@pytest.mark.parametrize("path", ALL, ids=[str(p.relative_to(NBS)) for p in ALL])
def test_flagged_cells_are_skippable(path):
    "A `cuda`/`slow` cell is skipped by the default test run, so it must not hold imports, exports or show_doc."
    for t, s in _cells(path):
        if t == "code" and _flags(s) & {"cuda", "slow"}:
            assert (
                not re.search(r"^\s*(import|from \S+ import) ", s, re.M)
                and "export" not in _flags(s)
                and "show_doc" not in s
            ), s[:200]


@pytest.mark.parametrize("path", ALL, ids=[str(p.relative_to(NBS)) for p in ALL])
def test_notebooks_name_their_kernel(path):
    "JupyterLab starts the kernel a notebook names; without one it stops every reader at a 'Select Kernel' dialog."
    assert json.loads(path.read_text())["metadata"].get("kernelspec", {}).get("name") == "python3"


def test_experiments_index_shows_the_current_verdicts():
    "The landing page's table is an output: it must be re-executed when a verdict's first sentence changes."
    cells = json.loads((NBS / "experiments" / "index.ipynb").read_text())["cells"]
    shown = " ".join(
        "".join(o.get("data", {}).get("text/markdown", [])) for c in cells for o in c.get("outputs", [])
    ).split()
    shown = " ".join(shown)
    for path in EXPERIMENTS:
        verdict = next(s for t, s in _cells(path) if "## Verdict" in s).split("## Verdict", 1)[1]
        said = " ".join(re.search(r"\*\*(.+?)\*\*", verdict, re.S)[1].split())
        assert f"**{said}**" in shown, (
            f"{path.name}'s verdict is not the one nbs/experiments/index.ipynb shows: re-execute the index"
        )
