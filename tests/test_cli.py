"""The console script end to end, as a user runs it."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

# the installed console script: beside this Python (a venv), else on PATH
CLI = shutil.which("subspace-opt", path=str(Path(sys.executable).parent)) or shutil.which("subspace-opt")


def test_spectrum_writes_table_figure_and_config(tmp_path):
    cmd = [
        CLI,
        "spectrum",
        "--k",
        "4",
        "--hidden",
        "16",
        "--train-steps",
        "30",
        "--out",
        str(tmp_path),
        "--device",
        "cpu",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    run = next(tmp_path.iterdir())
    assert f"run folder: {run}" in out.stdout
    table = pd.read_csv(run / "spectrum.csv")
    assert list(table.columns) == ["i", "eigenvalue", "rel_residual", "lr_x_eigenvalue"] and len(table) == 4
    assert table.eigenvalue.is_monotonic_decreasing and (table.rel_residual <= 1e-6).all()
    assert (run / "spectrum.png").stat().st_size > 10_000
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["config"]["k"] == 4 and cfg["config"]["converged"] and cfg["environment"]["device"] == "cpu"


def test_help_and_bad_arguments():
    help_out = subprocess.run([CLI, "spectrum", "--help"], capture_output=True, text=True)
    assert help_out.returncode == 0 and "--solver" in help_out.stdout
    bad = subprocess.run([CLI, "spectrum", "--solver", "arpack"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice: 'arpack'" in bad.stderr


def test_demo_at_reduced_size(tmp_path):
    out = subprocess.run(
        [CLI, "demo", "--steps", "50", "--out", str(tmp_path), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    run = next(tmp_path.iterdir())
    summary = pd.read_csv(run / "summary.csv")
    assert list(summary.method) == ["sgd", "dom-sgd", "bulk-sgd", "damped-dominant-0.5"]
    assert {"final_train_loss", "final_test_acc", "steps_to_threshold", "ms_per_step"} <= set(summary.columns)
    for fig in ("loss.png", "test_acc.png", "sharpness.png"):
        assert (run / fig).stat().st_size > 10_000
    assert "bulk-sgd" in out.stdout and f"run folder: {run}" in out.stdout
    replot = subprocess.run([CLI, "plot", str(run)], capture_output=True, text=True, timeout=300)
    assert replot.returncode == 0 and "loss.png" in replot.stdout


def test_a_distributed_run_leaves_through_finish(tmp_path, monkeypatch, capsys):
    "Under torchrun, `run` ends through `distributed.finish` with its exit status, success or failure (see `finish`)."
    import subspace_opt.cli as cli

    codes = []
    monkeypatch.setattr(
        cli, "init_from_env", lambda: True
    )  # as if launched by torchrun (one process: no group to join)
    monkeypatch.setattr(cli, "finish", codes.append)  # the real one ends the process
    cfg = tmp_path / "cfg.json"
    cfg.write_text(
        json.dumps(
            {
                "name": "t",
                "data": "digits",
                "data_args": {"n_train": 100},
                "hidden": [8],
                "batch_size": 20,
                "steps": 4,
                "log_every": 2,
                "subspace": {"k": 2},
                "device": "cpu",
                "methods": [{"name": "sgd", "lr": 0.1}],
            }
        )
    )
    assert cli.main(["run", str(cfg), "--out", str(tmp_path / "ok")]) == 0 and codes == [0]

    def boom(*a, **k):
        raise RuntimeError("rank lost")

    monkeypatch.setattr(cli, "run_experiment", boom)
    assert cli.main(["run", str(cfg), "--out", str(tmp_path / "bad")]) == 1 and codes == [0, 1]
    assert "RuntimeError: rank lost" in capsys.readouterr().err  # the traceback is printed before the exit
