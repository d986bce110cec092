"""The runner end to end: kill a real `subspace-opt run` mid-way, resume it, and get exactly the uninterrupted rows."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

CLI = shutil.which("subspace-opt", path=str(Path(sys.executable).parent)) or shutil.which("subspace-opt")
CONFIG = dict(
    name="resume",
    data="digits",
    data_args={"n_train": 300},
    hidden=[16],
    steps=300,
    log_every=5,
    checkpoint_every=20,
    batch_size=20,
    subspace={"k": 5, "refresh_every": 2},
    methods=[
        {"name": "bulk", "dom": 0.0, "bulk": 1.0, "lr": 0.05, "base": "momentum", "mode": "gradient"},
        {"name": "sgd", "lr": 0.2},
    ],
    seeds=[0, 1],
)


def _run(cfg_path, out, **kw):
    return subprocess.run(
        [CLI, "run", str(cfg_path), "--out", str(out), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=600,
        **kw,
    )


def test_kill_and_resume_equals_uninterrupted(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(CONFIG))
    assert _run(cfg, tmp_path / "a").returncode == 0
    # interrupt a real process once the first run is past a checkpoint (step 40) but not finished
    proc = subprocess.Popen(
        [CLI, "run", str(cfg), "--out", str(tmp_path / "b"), "--device", "cpu"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rows = tmp_path / "b" / "runs" / "bulk-seed0" / "rows.csv"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None or rows.exists() and rows.read_text().count("\n") >= 12:  # header + steps 0..50
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "b" / "runs" / "bulk-seed0" / "done.json").exists(), (
        "the run finished before it was interrupted"
    )
    assert (tmp_path / "b" / "runs" / "bulk-seed0" / "checkpoint.pt").exists()
    out = _run(cfg, tmp_path / "b")
    assert out.returncode == 0, out.stderr
    a, b = pd.read_csv(tmp_path / "a" / "results.csv"), pd.read_csv(tmp_path / "b" / "results.csv")
    assert a.step.max() == 300 and len(a) > 150 and not a.duplicated(["method", "seed", "step"]).any()
    pd.testing.assert_frame_equal(a, b)  # none lost, none duplicated, same values


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        ('{"methods": [', "cannot parse"),
        (
            '{"methods": [{"name": "a"}], "learning_rate": 0.1}',
            "unknown key `config.learning_rate`; accepted: name, data",
        ),
        ('{"methods": [{"name": "a", "lr": "fast"}]}', "`config.methods[0].lr` must be float, got str 'fast'"),
        ('{"data": "imagenet", "methods": [{"name": "a"}]}', "`config.data` must be one of digits, fashion-mnist"),
        (
            '{"methods": [{"name": "a", "base": "lbfgs"}]}',
            "`config.methods[0].base` must be one of sgd, momentum, adam",
        ),
        ('{"methods": [{"name": "a", "mode": "both"}]}', "`config.methods[0].mode` must be one of gradient, update"),
    ],
)
def test_bad_config_exits_2_with_one_line(tmp_path, content, message):
    cfg = tmp_path / "cfg.json"
    if content is not None:
        cfg.write_text(content)
    out = _run(cfg, tmp_path / "out")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr, out.stderr


def test_missing_data_set_exits_2(tmp_path, monkeypatch):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"data": "mnist", "data_args": {"data_dir": str(tmp_path)}, "methods": [{"name": "a"}]}))
    out = _run(cfg, tmp_path / "out")
    assert out.returncode == 2 and "mnist not found" in out.stderr and "Traceback" not in out.stderr
