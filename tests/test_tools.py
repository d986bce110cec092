"""The GPU pilot (`tools/gpu_pilot.py`) runs on a CPU with `--small`; its table holds what FULL estimates use."""

import json
import os
import subprocess
import sys
from pathlib import Path
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_pilot_small_writes_its_table(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, str(ROOT / "tools" / "gpu_pilot.py"), "--small", "--workers", "2", "--repeats", "3"]
    out = subprocess.run([*cmd, "--out", str(tmp_path)], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    table = pd.read_csv(tmp_path / "pilot.csv")
    assert table.setting.tolist() == ["mlp, T=1", "mlp, T=10", "cnn, T=1, subsample"]
    times = table.filter(like="_ms")
    assert (times > 0).all().all(), table
    t1, t10 = table.set_index("setting").loc[["mlp, T=1", "mlp, T=10"]].itertuples()
    assert t1.products_per_step > 5 * t10.products_per_step > 0  # every step refreshes at T = 1, a tenth at T = 10
    assert t1.projected_step_ms > t1.base_step_ms and t1.cold_products > t1.products_per_step
    report = json.loads((tmp_path / "pilot.json").read_text())
    assert report["workers"] == 2 and report["throughput_gain"] > 0 and report["environment"]["device"] == "cpu"


def test_gpu_pilot_refuses_bad_arguments(tmp_path):
    cmd = [sys.executable, str(ROOT / "tools" / "gpu_pilot.py"), "--small", "--workers", "0", "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and out.stderr.strip().splitlines() == [
        "gpu_pilot: --workers and --repeats must be >= 1"
    ]
    assert not (tmp_path / "pilot.csv").exists()
