"""Run folders under hostile conditions: planted and foreign checkpoints, kills in the middle of a rewrite, damaged
rows, two processes on one folder, names and links that lead out of the folder."""

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest
import torch

from subspace_opt.config import MethodConfig, UserError, config_from_dict
from subspace_opt.distributed import rank, run_processes
from subspace_opt.runfolder import LOCK, RunFolder, all_ranks, safe_name
from subspace_opt.train import run_experiment
from same_rows import assert_same_rows

CONFIG = dict(
    name="folders",
    data="digits",
    data_args={"n_train": 150},
    hidden=[8],
    steps=50,
    log_every=5,
    checkpoint_every=20,
    batch_size=20,
    subspace={"k": 3},
    methods=[{"name": "bulk", "dom": 0.0, "lr": 0.1}, {"name": "sgd", "lr": 0.2}],
    seeds=[0, 1],
    device="cpu",
)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class Payload:
    "An object whose unpickling runs code: it creates the file `marker`."

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    "A finished experiment: its folder and its results (runs end at step 50, checkpoints at 20 and 40)."
    out = tmp_path_factory.mktemp("ref") / "out"
    return out, run_experiment(config_from_dict(CONFIG), out, progress=False)


def _interrupted(reference, dest):
    "A copy of the finished experiment whose run bulk-seed0 was interrupted after its step-40 checkpoint."
    shutil.copytree(reference[0], dest)
    run = dest / "runs" / "bulk-seed0"
    (run / "done.json").unlink()
    return run


def _files(folder):
    "Every file under `folder` with its bytes."
    return {p.relative_to(folder): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.mark.parametrize("plant", ["torch.save", "bare pickle", "pickle protocol 0"])
def test_planted_checkpoint_is_refused_and_runs_nothing(reference, tmp_path, plant):
    run = _interrupted(reference, tmp_path / "out")
    marker = tmp_path / "marker"
    if plant == "torch.save":
        torch.save({"model": Payload(marker), "step": 40}, run / "checkpoint.pt")
    else:
        (run / "checkpoint.pt").write_bytes(pickle.dumps(Payload(marker), protocol=2 if plant == "bare pickle" else 0))
    before = _files(tmp_path / "out")
    with pytest.raises(UserError, match="checkpoint.pt does not load as tensors and plain data: delete it") as e:
        run_experiment(config_from_dict(CONFIG), tmp_path / "out", progress=False)
    assert "\n" not in str(e.value)
    assert not marker.exists()  # the payload never ran
    assert _files(tmp_path / "out") == before  # refused before anything was written, config.json included


KILLER = textwrap.dedent(
    """
    import json, os, signal, sys
    from pathlib import Path

    where, out, config = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    real_replace = os.replace

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def replace(src, dst):
        if Path(dst).name == "rows.csv" and where == "before replace":
            die()  # the new rows are written and synced in the temporary file, not yet in place
        real_replace(src, dst)
        if Path(dst).name == "rows.csv" and where == "after replace":
            die()

    os.replace = replace
    from subspace_opt.config import config_from_dict
    from subspace_opt.train import run_experiment

    run_experiment(config_from_dict(config), out, progress=False)
    """
)


@pytest.mark.parametrize("where", ["before replace", "after replace"])  # the rewrite replaces, never deletes
def test_kill_during_the_rows_rewrite_then_rerun_keeps_every_row(reference, tmp_path, where):
    "SIGKILL while a resumed run cuts rows.csv back to its checkpoint; the next run still ends with every row."
    run = _interrupted(reference, tmp_path / "out")
    assert pd.read_csv(run / "rows.csv").step.max() == 50  # rows after the step-40 checkpoint: a rewrite is due
    p = subprocess.run(
        [sys.executable, "-c", KILLER, where, str(tmp_path / "out"), json.dumps(CONFIG)],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert p.returncode == -9, p.stderr[-2000:]  # killed at that point
    again = run_experiment(config_from_dict(CONFIG), tmp_path / "out", progress=False)
    assert_same_rows(again, reference[1])  # none lost, none repeated, same values
    assert not list((tmp_path / "out").rglob("*.tmp")) and not list((tmp_path / "out").rglob(LOCK))


def _damage(rows: Path, how: str):
    lines = rows.read_text().splitlines(keepends=True)  # header, steps 0, 5, ..., 50
    if how == "emptied":
        rows.write_text("")
    elif how == "deleted":
        rows.unlink()
    elif how == "header only":
        rows.write_text(lines[0])
    elif how == "truncated":
        rows.write_text("".join(lines[:4]))  # steps 0, 5, 10
    elif how == "cut mid-line":
        rows.write_bytes(rows.read_bytes()[: len("".join(lines[:6])) + 7])
    elif how == "a row twice":
        rows.write_text("".join(lines[:3] + lines[2:]))
    elif how == "a middle row lost":
        rows.write_text("".join(lines[:3] + lines[4:]))


@pytest.mark.parametrize(
    "how", ["emptied", "deleted", "header only", "truncated", "cut mid-line", "a row twice", "a middle row lost"]
)
def test_damaged_rows_next_to_a_checkpoint_are_refused(reference, tmp_path, how):
    run = _interrupted(reference, tmp_path / "out")
    _damage(run / "rows.csv", how)
    before = _files(tmp_path / "out")
    with pytest.raises(UserError) as e:
        run_experiment(config_from_dict(CONFIG), tmp_path / "out", progress=False)
    msg = str(e.value)
    assert "\n" not in msg and f"delete {run / 'checkpoint.pt'} to start that run over" in msg, msg
    assert msg.startswith(f"{run / 'rows.csv'} does not match checkpoint.pt (step 40): "), msg
    assert _files(tmp_path / "out") == before
    (run / "checkpoint.pt").unlink()  # as the message says: that run starts over
    again = run_experiment(config_from_dict(CONFIG), tmp_path / "out", progress=False)
    assert_same_rows(again, reference[1])


@pytest.mark.parametrize("source", ["another seed", "another method", "another configuration"])
def test_foreign_checkpoint_is_refused(reference, tmp_path, source):
    run = _interrupted(reference, tmp_path / "out")
    if source == "another configuration":
        other = config_from_dict({**CONFIG, "methods": [{"name": "bulk", "dom": 0.0, "lr": 0.15}], "seeds": [0]})
        run_experiment(other, tmp_path / "other", progress=False)
        foreign = tmp_path / "other" / "runs" / "bulk-seed0" / "checkpoint.pt"
    else:
        foreign = run.parent / ("bulk-seed1" if source == "another seed" else "sgd-seed0") / "checkpoint.pt"
    shutil.copy(foreign, run / "checkpoint.pt")
    before = _files(tmp_path / "out")
    with pytest.raises(UserError, match="checkpoint.pt belongs to another run") as e:
        run_experiment(config_from_dict(CONFIG), tmp_path / "out", progress=False)
    assert "\n" not in str(e.value) and "delete it to start that run over" in str(e.value)
    assert _files(tmp_path / "out") == before


RACER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from subspace_opt.config import UserError
    from subspace_opt.runfolder import RunFolder

    folder, me = Path(sys.argv[1]), sys.argv[2]
    (folder.parent / f"ready-{me}").touch()
    while not (folder.parent / "go").exists():
        time.sleep(0.001)
    try:
        with RunFolder(folder).lock():
            (folder / f"held-{me}").touch()
            time.sleep(1.0)
        print("locked")
    except UserError as e:
        print("refused:", e)
    """
)


def test_one_of_several_processes_gets_the_lock(tmp_path):
    "Four processes try to lock one folder at the same instant: one holds it, three are refused at once."
    folder = tmp_path / "run"
    procs = [
        subprocess.Popen([sys.executable, "-c", RACER, str(folder), str(i)], stdout=subprocess.PIPE, text=True, env=ENV)
        for i in range(4)
    ]
    deadline = time.time() + 120
    while len(list(tmp_path.glob("ready-*"))) < 4 and time.time() < deadline:
        time.sleep(0.01)
    (tmp_path / "go").touch()
    outs = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert outs[0] == "locked" and all(o.startswith("refused:") and "in use by another process" in o for o in outs[1:])
    assert len(list(folder.glob("held-*"))) == 1 and not (folder / LOCK).exists()


def test_lock_dies_with_a_killed_holder(tmp_path):
    code = f"import os, signal; from subspace_opt.runfolder import RunFolder; RunFolder({str(tmp_path)!r}).lock(); "
    code += "os.kill(os.getpid(), signal.SIGKILL)"
    assert subprocess.run([sys.executable, "-c", code], env=ENV, timeout=120).returncode == -9
    assert (tmp_path / LOCK).exists()  # left behind, but no longer held
    with RunFolder(tmp_path).lock():
        pass
    assert not (tmp_path / LOCK).exists()


def _refused_on_rank_1():
    "Under two ranks: a check that fails on rank 1 only."
    try:
        all_ranks(lambda: safe_name("..") if rank() == 1 else None)
    except UserError as e:
        return str(e)
    return "no error"


def _crash_on_rank_1():
    "Under two ranks: another error on rank 1 only."
    try:
        all_ranks(lambda: 1 / 0 if rank() == 1 else None)
    except Exception as e:
        return type(e).__name__, str(e)
    return "no error"


def _lock_on_every_rank(path):
    try:
        RunFolder(path).lock().unlock()
    except UserError as e:
        return str(e)
    return "locked"


def test_a_refusal_on_one_rank_stops_every_rank(tmp_path):
    assert (
        run_processes(_refused_on_rank_1, 2)
        == ["'..' cannot name a file or folder: use up to 200 letters, digits and . _ - = , + (no leading '.')"] * 2
    )
    assert run_processes(_crash_on_rank_1, 2) == [
        ("RuntimeError", "division by zero"),
        ("ZeroDivisionError", "division by zero"),
    ]
    with RunFolder(tmp_path).lock():  # held here: rank 0 of the group is refused, and so is rank 1
        got = run_processes(_lock_on_every_rank, 2, (str(tmp_path),))
    assert got == [f"{tmp_path} is in use by another process: wait for it to end, or use another folder"] * 2
    assert run_processes(_lock_on_every_rank, 2, (str(tmp_path),)) == ["locked", "locked"]


def test_names_and_links_cannot_lead_out(tmp_path):
    cfg = config_from_dict(CONFIG)
    cfg.methods = [MethodConfig("../../escaped", lr=0.1)]  # past the configuration's own checks
    with pytest.raises(UserError, match="cannot name a file or folder"):
        run_experiment(cfg, tmp_path / "out", progress=False)
    assert not list(tmp_path.iterdir())  # nothing escaped, and the folder the refused run made is gone
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "runs").symlink_to(tmp_path / "elsewhere")  # runs/ points out of the experiment folder
    with pytest.raises(UserError, match="leads outside"):
        run_experiment(config_from_dict(CONFIG), tmp_path / "linked", progress=False)
    assert not list((tmp_path / "elsewhere").iterdir())
    assert sorted(p.name for p in (tmp_path / "linked").iterdir()) == ["runs"]  # no config.json either


def test_config_json_is_written_only_after_every_run_is_checked(reference, tmp_path):
    shutil.copytree(reference[0], tmp_path / "out")
    before = _files(tmp_path / "out")
    changed = config_from_dict({**CONFIG, "seeds": [0, 1, 2], "methods": [{**CONFIG["methods"][0]}, {"name": "sgd"}]})
    with pytest.raises(UserError, match="sgd-seed0 holds a run of another configuration .differs in method.lr"):
        run_experiment(changed, tmp_path / "out", progress=False)
    assert _files(tmp_path / "out") == before  # bulk's runs would resume fine, but nothing was written
    assert json.loads((tmp_path / "out" / "config.json").read_text())["config"] == asdict(config_from_dict(CONFIG))
