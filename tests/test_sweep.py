"""`subspace-opt sweep` with worker processes, and its resumption."""

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from same_rows import assert_same_rows

CLI = shutil.which("subspace-opt", path=str(Path(sys.executable).parent)) or shutil.which("subspace-opt")


def test_sweep_with_workers_then_resume(tmp_path):
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(
        json.dumps(
            {
                "name": "grid",
                "data_args": {"n_train": 150},
                "hidden": [8],
                "steps": 20,
                "log_every": 10,
                "methods": [{"name": "sgd"}, {"name": "bulk", "dom": 0.0}],
                "subspace": {"k": 3},
                "seeds": [0, 1],
                "grid": {"methods.lr": [0.1, 0.4], "subspace.refresh_every": [1, 4]},
                "workers": 2,
            }
        )
    )
    cmd = [CLI, "sweep", str(cfg), "--out", str(tmp_path / "out"), "--device", "cpu"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "leaked semaphore" not in first.stderr, first.stderr  # the workers were closed and joined, not killed
    res = pd.read_csv(tmp_path / "out" / "results.csv")
    assert len(res) == 4 * 2 * 2 * 3  # points x methods x seeds x logged steps
    assert set(res["methods.lr"]) == {0.1, 0.4} and (tmp_path / "out" / "heatmap.png").stat().st_size > 10_000
    done = sorted((tmp_path / "out" / "points").glob("*/*/done.json"))
    assert len(done) == 16
    # lose one job's completion marker: the rerun redoes that job only, to the same table
    untouched = {r: (r.stat().st_mtime_ns, r.read_bytes()) for r in (d.parent / "rows.csv" for d in done[1:])}
    assert len(untouched) == 15
    done[0].unlink()
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert done[0].exists()  # the lost job ran again and finished
    assert {r: (r.stat().st_mtime_ns, r.read_bytes()) for r in untouched} == untouched  # no other job was redone
    assert_same_rows(pd.read_csv(tmp_path / "out" / "results.csv"), res)  # the redone steps took other seconds


def _sweep(tmp_path, grid, **base):
    cfg = tmp_path / "sweep.json"
    cfg.write_text(
        json.dumps(
            {
                "data_args": {"n_train": 100},
                "hidden": [8],
                "steps": 10,
                "methods": [{"name": "sgd"}],
                **base,
                "grid": grid,
            }
        )
    )
    cmd = [CLI, "sweep", str(cfg), "--out", str(tmp_path / "out"), "--device", "cpu"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_repeated_grid_value_is_refused(tmp_path):
    "The same value twice would run one folder twice (two workers writing the same rows): one line, status 2."
    out = _sweep(tmp_path, {"methods.lr": [0.1, 0.2, 0.1]})
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines() == [
        "subspace-opt sweep: error: `grid.methods.lr` repeats the value 0.1; each value must appear once"
    ]
    assert not (tmp_path / "out").exists()


def test_grid_value_cannot_lead_out_of_the_sweep(tmp_path):
    (tmp_path / "base").mkdir()
    out = _sweep(tmp_path / "base", {"name": ["a", "../../../escaped"]})
    assert out.returncode == 2 and "cannot be part of a folder name" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["base", "sweep.json"]  # nothing written, anywhere


def test_sweep_over_a_fixed_and_the_auto_rank(tmp_path):
    "A grid may mix ranks and 'auto': each point's rows say the rank its optimizer projects with; the plot is drawn."
    cfg = tmp_path / "sweep.json"
    base = {"data_args": {"n_train": 100}, "hidden": [8], "steps": 10, "log_every": 5, "seeds": [0]}
    grid = {"subspace.k": [3, "auto"], "methods.lr": [0.1, 0.2]}
    cfg.write_text(
        json.dumps({**base, "methods": [{"name": "bulk", "dom": 0.0}], "subspace": {"max_k": 6}, "grid": grid})
    )
    cmd = [CLI, "sweep", str(cfg), "--out", str(tmp_path / "out"), "--device", "cpu"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    res = pd.read_csv(tmp_path / "out" / "results.csv")
    assert sorted(set(res["subspace.k"].astype(str))) == ["3", "auto"] and len(res) == 2 * 2 * 3
    fixed, auto = (res[res["subspace.k"].astype(str) == v] for v in ("3", "auto"))
    assert (fixed.tracked_k == 3).all()
    assert auto[auto.step == 0].tracked_k.isna().all()  # not chosen before the first refresh
    chosen = auto[auto.step > 0].tracked_k
    assert chosen.between(1, 6).all() and chosen.nunique() == 1  # chosen at step 1 on the same θ0, then kept
    assert [c for c in res if c.startswith("lambda_")] == [f"lambda_{i}" for i in range(1, 8)]  # max_k + 1 logged
    assert (tmp_path / "out" / "heatmap.png").stat().st_size > 10_000


def test_a_job_that_raises_fails_alone_and_a_rerun_resumes_it(tmp_path, monkeypatch, capsys):
    """The other jobs run to their end; one error names the failed run's folder; the rerun resumes that one run from
    its checkpoint, says so as it starts, and ends with the same table."""
    from subspace_opt import train
    from subspace_opt.sweep import run_sweep
    from subspace_opt.workers import JobsFailed

    base = {"data_args": {"n_train": 100}, "hidden": [8], "steps": 10, "log_every": 2, "checkpoint_every": 5}
    base |= {"seeds": [0, 1], "methods": [{"name": "bulk", "dom": 0.0}], "subspace": {"k": 3}}
    grid = {"methods.lr": [0.1, 0.2]}
    whole = run_sweep(base, grid, tmp_path / "whole", progress=False)
    step = train.Run.step

    def faulty(run):  # the first job (lr 0.1, seed 0) fails at its step 8, after its checkpoint at step 5
        if run.tag["seed"] == 0 and run.cfg.methods[0].lr == 0.1 and run.state["step"] == 7:
            raise RuntimeError("device lost")
        return step(run)

    monkeypatch.setattr(train.Run, "step", faulty)
    with pytest.raises(JobsFailed) as failed:
        run_sweep(base, grid, tmp_path / "out", progress=False)
    assert str(failed.value) == (
        "1 of 4 runs failed: points/methods.lr=0.1/bulk-seed0 (RuntimeError: device lost); 3 finished; "
        "the same command reruns only the runs that did not finish"
    )
    assert isinstance(failed.value.__cause__, RuntimeError)
    runs = sorted((tmp_path / "out" / "points").glob("*/*"))
    assert [(r.parent.name, r.name, (r / "done.json").exists()) for r in runs] == [
        ("methods.lr=0.1", "bulk-seed0", False),
        ("methods.lr=0.1", "bulk-seed1", True),
        ("methods.lr=0.2", "bulk-seed0", True),
        ("methods.lr=0.2", "bulk-seed1", True),
    ]
    assert pd.read_csv(runs[0] / "rows.csv").step.max() == 6  # rows up to the failure; the checkpoint is at 5
    monkeypatch.setattr(train.Run, "step", step)
    start, starts = train.Run.start, []
    monkeypatch.setattr(train.Run, "start", lambda run: starts.append(start(run)) or starts[-1])
    capsys.readouterr()
    assert_same_rows(run_sweep(base, grid, tmp_path / "out", progress="lines"), whole)
    assert starts == [5]  # only the failed job ran again, from its checkpoint
    said = capsys.readouterr().err.splitlines()
    assert said[0] == "sweep: 4 runs: 3 finished earlier, 1 to resume, 0 new", said


def _assert_group_ends(pgid: int):
    "Within 30 s no process of group `pgid` is left: the workers, the fork server and the resource tracker all end."
    for _ in range(300):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError("processes of the stopped sweep are still running")


@pytest.mark.parametrize("to_group", [True, False], ids=["ctrl-c-to-the-group", "sigterm-to-the-sweep-alone"])
def test_a_stopped_sweep_with_workers_keeps_every_runs_steps(tmp_path, to_group):
    """SIGINT to the whole process group (Ctrl-C, a deadline's `timeout`), or SIGTERM to the sweep's process alone
    (`kill PID`): each worker checkpoints the step it reached, and no process is left running."""
    base = {
        "data_args": {"n_train": 150},
        "hidden": [8],
        "steps": 1000,
        "log_every": 10,
        "log_curvature": False,  # loss rows only: what is checked is where each run stopped and how it resumed
        "checkpoint_every": 1000,  # only the end is scheduled
        "methods": [{"name": "sgd", "lr": 0.1}],
        "seeds": [0, 1],
        "grid": {"loss": ["mse"]},
        "workers": 2,
    }
    cfg = tmp_path / "sweep.json"
    cfg.write_text(json.dumps(base))
    cmd = lambda out: [CLI, "sweep", str(cfg), "--out", str(tmp_path / out), "--device", "cpu"]
    proc = subprocess.Popen(
        cmd("cut"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as a shell job has
        # a shell without job control starts background commands with SIGINT ignored: give Ctrl-C its default back
        preexec_fn=functools.partial(signal.signal, signal.SIGINT, signal.SIG_DFL),
    )
    rows = [tmp_path / "cut" / "points" / "loss=mse" / f"sgd-seed{s}" / "rows.csv" for s in (0, 1)]
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None or all(r.exists() and r.read_text().count("\n") >= 6 for r in rows):
            break
        time.sleep(0.02)
    if to_group:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == (130 if to_group else -signal.SIGTERM), err
    assert "leaked semaphore" not in err, err  # the workers' stop leaves no named semaphore behind
    _assert_group_ends(proc.pid)
    for r in rows:
        assert not (r.parent / "done.json").exists(), f"{r.parent.name} finished before the interruption"
        step = torch.load(r.parent / "checkpoint.pt", weights_only=True)["state"]["step"]
        assert 40 <= step < base["steps"], step
    again = subprocess.run(cmd("cut"), capture_output=True, text=True, timeout=600)
    whole = subprocess.run(cmd("whole"), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and whole.returncode == 0, again.stderr + whole.stderr
    assert_same_rows(pd.read_csv(tmp_path / "whole" / "results.csv"), pd.read_csv(tmp_path / "cut" / "results.csv"))


def test_ctrl_c_with_idle_workers_ends_at_once_in_one_line(tmp_path):
    """Ctrl-C to the group while some workers wait with no job left (their runs done): the sweep ends with 130 and one
    line, its running jobs checkpointed, no process left; a worker interrupted while waiting once hung the pool."""
    base = {
        "data_args": {"n_train": 150},
        "hidden": [8],
        "log_every": 10,
        "checkpoint_every": 2000,
        "methods": [{"name": "sgd", "lr": 0.1}],
        "seeds": [0, 1],
        "grid": {"steps": [20, 2000]},  # two short runs end first, and their workers wait
        "workers": 4,
    }
    cfg = tmp_path / "sweep.json"
    cfg.write_text(json.dumps(base))
    proc = subprocess.Popen(
        [CLI, "sweep", str(cfg), "--out", str(tmp_path / "cut"), "--device", "cpu"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=functools.partial(signal.signal, signal.SIGINT, signal.SIG_DFL),
    )
    short = [tmp_path / "cut" / "points" / "steps=20" / f"sgd-seed{s}" / "done.json" for s in (0, 1)]
    long = [tmp_path / "cut" / "points" / "steps=2000" / f"sgd-seed{s}" / "rows.csv" for s in (0, 1)]
    deadline = time.time() + 300
    while time.time() < deadline:
        ready = all(d.exists() for d in short) and all(r.exists() and r.read_text().count("\n") >= 6 for r in long)
        if proc.poll() is not None or ready:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)  # a hung pool would pass this
    first, *rest = [line for line in err.splitlines() if not line.startswith("sweep: ")]  # not the progress lines
    assert proc.returncode == 130 and first.startswith("subspace-opt sweep: interrupted"), err
    assert "Traceback" not in err and all("resource_tracker" in line or "warnings.warn" in line for line in rest), err
    _assert_group_ends(proc.pid)
    for r in long:
        assert 40 <= torch.load(r.parent / "checkpoint.pt", weights_only=True)["state"]["step"] < 2000


def _group_workers(pgid: int):
    "The pids of the pool's worker processes in process group `pgid`: children of its forkserver."
    procs = {}
    for d in Path("/proc").iterdir():
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state, ppid, pgrp, ...
        if d.name.isdigit() and int(fields[2]) == pgid:
            procs[int(d.name)] = (int(fields[1]), b"forkserver" in cmd)
    return [pid for pid, (ppid, fs) in procs.items() if fs and procs.get(ppid, (0, False))[1]]


def test_a_killed_worker_fails_its_run_alone_and_a_rerun_finishes_it(tmp_path):
    """`kill -9` of a worker (or the kernel's, for lack of memory): its run fails, named; the other runs go on to
    their end in a fresh pool — a `multiprocessing.Pool` lost the job and waited forever — the sweep ends with status
    2 and one error line, and the same command then finishes it exactly."""
    base = {
        "data_args": {"n_train": 150},
        "hidden": [8],
        "steps": 1200,
        "log_every": 10,
        "log_curvature": False,  # loss rows only: what is checked is which runs finished and how the rerun ends
        "checkpoint_every": 1200,
        "methods": [{"name": "sgd", "lr": 0.1}],
        "seeds": [0, 1],
        "grid": {"methods.lr": [0.1, 0.2]},
        "workers": 2,
    }
    cfg = tmp_path / "sweep.json"
    cfg.write_text(json.dumps(base))
    cmd = lambda out: [CLI, "sweep", str(cfg), "--out", str(tmp_path / out), "--device", "cpu"]
    proc = subprocess.Popen(
        cmd("cut"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline, workers = time.time() + 300, []
    while time.time() < deadline and proc.poll() is None:
        rows = list((tmp_path / "cut" / "points").glob("*/sgd-seed*/rows.csv"))
        workers = _group_workers(proc.pid)
        if len(rows) >= 2 and all(r.read_text().count("\n") >= 3 for r in rows) and len(workers) == 2:
            break
        time.sleep(0.02)
    assert len(workers) == 2, workers
    os.kill(workers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)  # a pool that lost the job would wait here forever
    said = [line for line in err.splitlines() if not line.startswith("sweep: ")]  # not the progress lines
    assert proc.returncode == 2 and len(said) == 1 and "Traceback" not in err, err
    assert said[0].startswith("subspace-opt sweep: error: 1 of 4 runs failed: points/methods.lr=0."), err
    assert "/sgd-seed" in said[0] and "(UserError: its worker process ended abruptly (killed by SIGKILL" in said[0]
    assert said[0].endswith("3 finished; the same command reruns only the runs that did not finish"), err
    assert len(list((tmp_path / "cut" / "points").glob("*/*/done.json"))) == 3  # the others ran to their end
    _assert_group_ends(proc.pid)
    again = subprocess.run(cmd("cut"), capture_output=True, text=True, timeout=600)
    whole = subprocess.run(cmd("whole"), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and whole.returncode == 0, again.stderr + whole.stderr
    assert again.stderr.startswith("sweep: 4 runs: 3 finished earlier, "), again.stderr
    assert_same_rows(pd.read_csv(tmp_path / "whole" / "results.csv"), pd.read_csv(tmp_path / "cut" / "results.csv"))
