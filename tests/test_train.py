"""The runner end to end: kill a real `subspace-opt run` mid-way, resume it, and get exactly the uninterrupted rows;
refuse what would corrupt a run folder — a planted checkpoint, a second process, a resume under another configuration,
rows that lost lines — with one line and status 2."""

import functools
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

import subspace_opt.cli as cli
import subspace_opt.curvature as curvature
from subspace_opt.config import config_from_dict
from subspace_opt.runfolder import RunFolder
from subspace_opt.train import run_experiment
from same_rows import assert_same_rows

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


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    "The config file of the experiment and the folder of its uninterrupted run."
    tmp = tmp_path_factory.mktemp("uninterrupted")
    (tmp / "cfg.json").write_text(json.dumps(CONFIG))
    done = _run(tmp / "cfg.json", tmp / "a")
    assert done.returncode == 0, done.stderr
    return tmp / "cfg.json", tmp / "a"


def test_kill_and_resume_equals_uninterrupted(uninterrupted, tmp_path):
    cfg, ref = uninterrupted
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
    a, b = pd.read_csv(ref / "results.csv"), pd.read_csv(tmp_path / "b" / "results.csv")
    assert a.step.max() == 300 and len(a) > 150 and not a.duplicated(["method", "seed", "step"]).any()
    assert_same_rows(a, b)  # none lost, none duplicated, same values


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
def test_bad_config_exits_2_with_one_line(tmp_path, capsys, content, message):
    "In this process, through the console script's `main` (tests/test_cli.py runs a bad config in a real process)."
    cfg = tmp_path / "cfg.json"
    if content is not None:
        cfg.write_text(content)
    code = cli.main(["run", str(cfg), "--out", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_missing_data_set_exits_2(tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"data": "mnist", "data_args": {"data_dir": str(tmp_path)}, "methods": [{"name": "a"}]}))
    code = cli.main(["run", str(cfg), "--out", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "mnist not found" in err and "Traceback" not in err, err


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _one_line_refusal(out, *parts):
    "The run exited with status 2 and one line naming `parts`, no traceback."
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    line = out.stderr.strip()
    assert len(line.splitlines()) == 1 and all(p in line for p in parts), line


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


@pytest.mark.parametrize("plant", ["torch.save", "bare pickle"])
def test_planted_checkpoint_is_refused_and_never_runs(uninterrupted, tmp_path, plant):
    cfg, ref = uninterrupted
    shutil.copytree(ref, tmp_path / "out")
    run = tmp_path / "out" / "runs" / "bulk-seed0"
    (run / "done.json").unlink()
    if plant == "torch.save":
        torch.save({"model": _Payload(tmp_path / "marker"), "step": 280}, run / "checkpoint.pt")
    else:
        (run / "checkpoint.pt").write_bytes(pickle.dumps(_Payload(tmp_path / "marker"), pickle.HIGHEST_PROTOCOL))
    before = _files(tmp_path / "out")
    _one_line_refusal(_run(cfg, tmp_path / "out"), "checkpoint.pt does not load as tensors and plain data: delete it")
    assert not (tmp_path / "marker").exists()
    assert _files(tmp_path / "out") == before


def test_two_runs_on_one_folder_one_is_refused(uninterrupted, tmp_path):
    "Started together on one --out: one runs to the end, the other is refused at once; no row twice."
    cfg, ref = uninterrupted
    cmd = [CLI, "run", str(cfg), "--out", str(tmp_path / "out"), "--device", "cpu"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [subprocess.CompletedProcess(cmd, p.wait(timeout=600), *p.communicate()) for p in procs]
    codes = sorted(o.returncode for o in outs)
    assert codes == [0, 2], [o.stderr[-2000:] for o in outs]
    _one_line_refusal(next(o for o in outs if o.returncode == 2), f"{tmp_path / 'out'} is in use by another process")
    a, b = pd.read_csv(ref / "results.csv"), pd.read_csv(tmp_path / "out" / "results.csv")
    assert not b.duplicated(["method", "seed", "step"]).any()
    assert_same_rows(a, b)
    for rows in (tmp_path / "out" / "runs").glob("*/rows.csv"):
        assert pd.read_csv(rows).step.is_unique


def test_a_folder_in_use_is_left_alone(uninterrupted, tmp_path):
    cfg, ref = uninterrupted
    shutil.copytree(ref, tmp_path / "out")
    before = _files(tmp_path / "out")
    with RunFolder(tmp_path / "out").lock():  # another process holds the folder
        _one_line_refusal(_run(cfg, tmp_path / "out"), "is in use by another process")
    assert _files(tmp_path / "out") == before


def test_refused_resume_keeps_config_json(uninterrupted, tmp_path):
    cfg, ref = uninterrupted
    shutil.copytree(ref, tmp_path / "out")
    before = _files(tmp_path / "out")
    (tmp_path / "other.json").write_text(json.dumps({**CONFIG, "steps": 200}))
    _one_line_refusal(_run(tmp_path / "other.json", tmp_path / "out"), "holds a run of another configuration")
    assert _files(tmp_path / "out") == before


def test_emptied_rows_are_refused_then_the_run_starts_over(uninterrupted, tmp_path):
    cfg, ref = uninterrupted
    shutil.copytree(ref, tmp_path / "out")
    run = tmp_path / "out" / "runs" / "sgd-seed1"
    (run / "done.json").unlink()
    (run / "rows.csv").write_text("")
    _one_line_refusal(_run(cfg, tmp_path / "out"), f"delete {run / 'checkpoint.pt'} to start that run over")
    (run / "checkpoint.pt").unlink()
    again = _run(cfg, tmp_path / "out")
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same_rows(pd.read_csv(ref / "results.csv"), pd.read_csv(tmp_path / "out" / "results.csv"))


def test_rows_of_another_run_are_refused_on_resume(uninterrupted, tmp_path):
    "Another seed's rows, with the same steps, copied into a run that resumes: refused, not sealed as this run's."
    cfg, ref = uninterrupted
    shutil.copytree(ref, tmp_path / "out")
    run = tmp_path / "out" / "runs" / "sgd-seed1"
    (run / "done.json").unlink()
    shutil.copy(tmp_path / "out" / "runs" / "sgd-seed0" / "rows.csv", run / "rows.csv")
    _one_line_refusal(_run(cfg, tmp_path / "out"), "they are not the rows this run wrote (copied from another run")
    assert not (run / "done.json").exists()


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, -signal.SIGTERM)])
def test_a_signal_keeps_the_step_reached(uninterrupted, tmp_path, sig, status):
    "Ctrl-C or SIGTERM between two checkpoints: the run checkpoints the step it reached, and the rerun loses nothing."
    _, ref = uninterrupted
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({**CONFIG, "checkpoint_every": CONFIG["steps"]}))  # only the end is scheduled
    proc = subprocess.Popen(
        [CLI, "run", str(cfg), "--out", str(tmp_path / "b"), "--device", "cpu"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=functools.partial(signal.signal, signal.SIGINT, signal.SIG_DFL),  # as a terminal gives it
    )
    run = tmp_path / "b" / "runs" / "bulk-seed0"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None or (run / "rows.csv").exists() and (run / "rows.csv").read_text().count("\n") >= 12:
            break
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err
    if sig == signal.SIGINT:
        assert err.strip().endswith("interrupted; the same command resumes the run from the step it reached"), err
    assert not (run / "done.json").exists(), "the run finished before it was interrupted"
    step = torch.load(run / "checkpoint.pt", weights_only=True)["state"]["step"]
    assert 50 <= step < CONFIG["steps"]
    assert pd.read_csv(run / "rows.csv").step.max() == step - step % CONFIG["log_every"]  # the rows up to it
    out = _run(cfg, tmp_path / "b")
    assert out.returncode == 0, out.stderr
    assert_same_rows(pd.read_csv(ref / "results.csv"), pd.read_csv(tmp_path / "b" / "results.csv"))


def test_run_experiment_with_worker_processes_gives_the_rows_of_one_process(tmp_path):
    "Two real worker processes share the runs; the table is that of one process, run after run, in config order."
    cfg = config_from_dict({**CONFIG, "steps": 40, "seeds": [0, 1]})
    alone = run_experiment(cfg, tmp_path / "alone", progress=False)
    shared = run_experiment(cfg, tmp_path / "shared", progress=False, workers=2)
    assert_same_rows(alone, shared)
    assert sorted(p.name for p in (tmp_path / "shared" / "runs").iterdir()) == [
        "bulk-seed0",
        "bulk-seed1",
        "sgd-seed0",
        "sgd-seed1",
    ]
    assert_same_rows(run_experiment(cfg, tmp_path / "shared", progress=False, workers=2), shared)  # read back


def test_compiled_products_give_the_same_run(tmp_path):
    """`subspace.compile`: the rows equal the uncompiled run's to float32 round-off, the products were compiled (no
    fallback), and the folder of the uncompiled run holds the compiled one (the same run: read back, not rerun)."""
    if not curvature.compiler_available("cpu"):
        pytest.skip("torch.compile has no C++ compiler here")
    base = {**CONFIG, "steps": 20, "seeds": [0], "methods": CONFIG["methods"][:1]}
    plain = run_experiment(config_from_dict(base), tmp_path / "plain", progress=False)
    compiled_cfg = config_from_dict({**base, "subspace": {**base["subspace"], "compile": True}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = run_experiment(compiled_cfg, tmp_path / "compiled", progress=False)
    assert not [w for w in caught if "torch.compile failed" in str(w.message)], [str(w.message) for w in caught]
    assert curvature._hessian_rows in curvature._COMPILED  # the tracker's and the logging tracker's products
    assert len(plain) == len(compiled) == 5 and plain.step.tolist() == compiled.step.tolist()
    for col in ("train_loss", "test_loss", "lambda_1", "lambda_6"):
        pd.testing.assert_series_equal(compiled[col], plain[col], rtol=1e-4, atol=0)
    assert_same_rows(run_experiment(compiled_cfg, tmp_path / "plain", progress=False), plain)


START_SLOWLY = """import sys, time
from pathlib import Path
import subspace_opt.train as train
from subspace_opt.config import config_from_dict
from subspace_opt.data import load_digits

slow_start = train.Run.start


def start(self):  # a start as slow as a large network's step-0 solve on a CPU
    Path(sys.argv[1], "starting").write_text("")
    time.sleep(60)
    return slow_start(self)


train.Run.start = start
cfg = config_from_dict({"name": "s", "hidden": [8], "steps": 5, "methods": [{"name": "sgd", "lr": 0.1}]})
train.run_one(cfg, cfg.methods[0], 0, Path(sys.argv[1]) / "run", load_digits(n_train=100, device="cpu"))
"""


def test_a_signal_while_a_run_starts_takes_effect_at_once(tmp_path):
    "SIGTERM while a run is built or measures its step 0: no step to keep, so it is not held until the start ends."
    (tmp_path / "slow.py").write_text(START_SLOWLY)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(tmp_path / "slow.py"), str(tmp_path)], env=env)
    deadline = time.time() + 120
    while not (tmp_path / "starting").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert (tmp_path / "starting").exists(), proc.poll()
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == -signal.SIGTERM and time.time() - t0 < 30  # not after the 60 s start
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # nothing to keep, nothing written


CTRL_C_IN_A_FINALIZER = """
import signal, sys
from pathlib import Path
import subspace_opt.train as train
from subspace_opt.config import config_from_dict
from subspace_opt.data import load_digits


class Bar(train.tqdm):
    def __del__(self):  # Ctrl-C just as the progress bar is freed: Python swallows an exception raised in a finalizer
        signal.raise_signal(signal.SIGINT)
        super().__del__()


signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C's default, whatever this process inherited
train.tqdm = Bar
cfg = config_from_dict({"name": "s", "hidden": [8], "steps": 5, "methods": [{"name": "sgd", "lr": 0.1}]})
try:
    train.run_one(cfg, cfg.methods[0], 0, Path(sys.argv[1]) / "run", load_digits(n_train=100, device="cpu"), False)
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_ctrl_c_as_the_progress_bar_is_freed_still_stops_the_program(tmp_path):
    "A Ctrl-C that lands in the progress bar's finalizer is held with the run's step, then delivered: never swallowed."
    (tmp_path / "finalizer.py").write_text(CTRL_C_IN_A_FINALIZER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, str(tmp_path / "finalizer.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 130 and "Exception ignored" not in out.stderr, (out.returncode, out.stderr[-2000:])
    assert (tmp_path / "run" / "done.json").exists()  # the run had ended: its rows are whole
