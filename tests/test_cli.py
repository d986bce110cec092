"""The console script end to end, as a user runs it: its jobs, and how it answers bad input, Ctrl-C and bugs."""

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import subspace_opt.cli as cli

# the installed console script: beside this Python (a venv), else on PATH
CLI = shutil.which("subspace-opt", path=str(Path(sys.executable).parent)) or shutil.which("subspace-opt")


def _as_from_a_terminal(cmd, env):
    """Start `cmd` with pipes and Ctrl-C's default handler. A shell without job control starts background commands
    with SIGINT ignored, and children inherit that (Python then installs no KeyboardInterrupt handler): give the child
    Ctrl-C's default, as a terminal would."""
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=functools.partial(signal.signal, signal.SIGINT, signal.SIG_DFL),
    )


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
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["config"]["tol"] == 1e-5  # the default: what float32 products reach with room to spare
    assert table.eigenvalue.is_monotonic_decreasing and (table.rel_residual <= 1e-5).all()
    assert (run / "spectrum.png").stat().st_size > 10_000
    assert cfg["config"]["k"] == 4 and cfg["config"]["converged"] and cfg["environment"]["device"] == "cpu"


def test_a_demo_stopped_by_ctrl_c_keeps_the_methods_it_finished_and_the_same_command_finishes_it(tmp_path):
    "SIGINT once SGD's run is done: exit 130 and one line, nothing that looks like a result; the rerun keeps that run."
    cmd = [CLI, "demo", "--steps", "4", "--out", str(tmp_path), "--device", "cpu"]  # the others' runs: seconds
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = _as_from_a_terminal(cmd, env)
    deadline = time.time() + 300
    while (
        proc.poll() is None and time.time() < deadline and not list(tmp_path.glob(".demo-*/runs/sgd-seed0/done.json"))
    ):
        time.sleep(0.01)
    assert proc.poll() is None, "the demo ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    then = "resumes the demo, keeping the methods it finished and the others' last checkpoints"
    assert proc.returncode == 130 and err == f"subspace-opt demo: interrupted; the same command {then}\n", err
    (hidden,) = tmp_path.iterdir()  # no run folder, only the hidden work
    sgd_rows = hidden / "runs" / "sgd-seed0" / "rows.csv"
    kept, dom_done = sgd_rows.stat().st_mtime_ns, (hidden / "runs" / "dom-sgd-seed0" / "done.json").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stderr
    (run,) = tmp_path.iterdir()
    assert run.name.startswith("demo-") and f"run folder: {run}" in again.stdout and not dom_done
    assert (run / "runs" / "sgd-seed0" / "rows.csv").stat().st_mtime_ns == kept  # SGD's run was not trained again
    results = pd.read_csv(run / "results.csv")
    assert results.groupby("method").step.max().to_dict() == dict.fromkeys(
        ["bulk-sgd", "damped-dominant-0.5", "dom-sgd", "sgd"], 4
    )


def test_help_and_bad_arguments():
    help_out = subprocess.run([CLI, "spectrum", "--help"], capture_output=True, text=True)
    assert help_out.returncode == 0 and "--solver" in help_out.stdout
    bad = subprocess.run([CLI, "spectrum", "--solver", "arpack"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice: 'arpack'" in bad.stderr


def test_demo_at_reduced_size(tmp_path):
    out = subprocess.run(
        [CLI, "demo", "--steps", "3", "--out", str(tmp_path), "--device", "cpu"],
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


# --- bad input, interruptions and internal errors: one line on stderr, never a traceback ---

SMALL = {
    "name": "small",
    "data": "digits",
    "data_args": {"n_train": 60},
    "hidden": [8],
    "steps": 4,
    "log_every": 2,
    "batch_size": 20,
    "subspace": {"k": 2},
    "device": "cpu",
    "methods": [{"name": "sgd", "lr": 0.1}],
}


def _config(**changes):
    "SMALL with `changes`: `subspace__k=...` sets subspace.k, `method__lr=...` sets methods[0].lr."
    d = json.loads(json.dumps(SMALL))
    for key, value in changes.items():
        part, _, sub = key.partition("__")
        target = d["subspace"] if part == "subspace" else d["methods"][0] if part == "method" else d
        target[sub or part] = value
    return d


BAD_CONFIGS = [  # (configuration, what the one line names)
    (_config(hidden=[0]), "`config.hidden[0]` must be >= 1"),
    (_config(hidden=[-3, 8]), "`config.hidden[0]`"),
    (_config(hidden=["wide"]), "`config.hidden[0]`"),
    (_config(subspace__k=-1), "`config.subspace.k`"),
    (_config(subspace__k=0), "`config.subspace.k`"),
    (_config(subspace__k=10**6), "`config.subspace.k` must be below p=610"),
    (_config(subspace__refresh_every=0), "`config.subspace.refresh_every`"),
    (_config(subspace__tol=0), "`config.subspace.tol`"),
    (_config(subspace__solver="lobpcg"), "`config.subspace.solver` must be one of warm, cold"),
    (_config(method__lr=-1), "`config.methods[0].lr`"),
    (_config(method__base="lbfgs"), "`config.methods[0].base` must be one of"),
    (_config(method__momentum=2.0, method__base="momentum"), "`config.methods[0].momentum`"),
    (_config(method__start_step=-1), "`config.methods[0].start_step`"),
    (_config(device="banana"), "`config.device`"),
    (_config(device="cuda:7"), "`config.device` is 'cuda:7', but this machine has"),
    (_config(data_args={"n_train": 0}), "`config.data_args.n_train` must be an int in [1, 1438], got 0"),
    (_config(data_args={"ntrain": 10}), "`config.data_args.ntrain`"),
    (_config(data="imagenet"), "`config.data` must be one of"),
    (_config(steps=0), "`config.steps`"),
    (_config(methods=[]), "`config.methods` must list at least one method"),
    (_config(seeds=[-1]), "`config.seeds[0]`"),
    (_config(name="../../elsewhere"), "`config.name`"),
    (_config(learning_rate=0.1), "unknown key `config.learning_rate`"),
    # checked against the data once it is loaded: before, clipped in silence or an internal error (exit 1)
    (_config(batch_size=61), "`config.batch_size` must be at most the 60 training samples, got 61"),
    (_config(subspace__hessian_data="subsample", subspace__n_hessian=61), "`config.subspace.n_hessian` must be"),
    (_config(model="cnn", data_args={"n_train": 60, "flatten": True}), "`config.model` cnn needs images"),
    (
        _config(data_args={"n_train": 60, "test_fraction": 1e-9}),
        "`config.data_args.test_fraction` must leave both sets non-empty",
    ),
]


def _bad_arguments(tmp):
    "(command line, what the one line names) for bad arguments, with the files they refer to made under `tmp`."
    (tmp / "file").write_text("not a folder")
    (tmp / "ok.json").write_text(json.dumps(SMALL))
    (tmp / "sweep.json").write_text(json.dumps({**SMALL, "grid": {"methods.lr": [0.1, 0.2]}}))
    (tmp / "nogrid.json").write_text(json.dumps(SMALL))
    (tmp / "broken.yaml").write_text("methods: [\n")
    (tmp / "empty").mkdir()
    (tmp / "garbage").mkdir()
    (tmp / "garbage" / "results.csv").write_text("a,b\n1,2\n")
    ok, file = str(tmp / "ok.json"), str(tmp / "file")
    return [
        ([], "the following arguments are required: {demo,run,sweep,plot,spectrum,compare,analyze}"),
        (["banana"], "invalid choice: 'banana'"),
        (["spectrum", "--k", "0"], "argument --k: must be an int >= 1, got '0'"),
        (["spectrum", "--k", "-3"], "argument --k: must be an int >= 1, got '-3'"),
        (["spectrum", "--k", "ten"], "argument --k: must be an int >= 1, got 'ten'"),
        (["spectrum", "--k", "100000", "--hidden", "8"], "`--k` must be in [1, 203] for solver block (p = 610)"),
        (
            ["spectrum", "--k", "300", "--hidden", "8", "--solver", "block"],
            "`--k` must be in [1, 203] for solver block",
        ),
        (["spectrum", "--solver", "arpack"], "argument --solver: invalid choice: 'arpack'"),
        (["spectrum", "--hidden", "0"], "argument --hidden: must be an int >= 1, got '0'"),
        (["spectrum", "--hidden"], "argument --hidden: expected at least one argument"),
        (["spectrum", "--lr", "-0.1"], "argument --lr: must be a finite number in (0, 1000000], got '-0.1'"),
        (["spectrum", "--lr", "nan"], "argument --lr: must be a finite number in (0, 1000000], got 'nan'"),
        (["spectrum", "--lr", "1e308"], "argument --lr: must be a finite number in (0, 1000000], got '1e308'"),
        (  # an η that is valid but too large for the network: SGD blows up (it crashed inside the optimizer)
            ["spectrum", "--lr", "50", "--k", "3", "--hidden", "8", "--train-steps", "20", "--out", str(tmp / "o")],
            " of 20 (lr=50): choose a smaller `lr`",
        ),
        (["spectrum", "--tol", "0"], "argument --tol: must be a finite number in (0, 1], got '0'"),
        (["spectrum", "--tol", "5"], "argument --tol: must be a finite number in (0, 1], got '5'"),
        (["spectrum", "--train-steps", "-1"], "argument --train-steps: must be an int >= 0"),
        (["spectrum", "--seed", "-1"], "argument --seed: must be an int in [0, 4294967295]"),
        (["spectrum", "--activation", "sigmoid"], "argument --activation: invalid choice: 'sigmoid'"),
        (["spectrum", "--loss", "hinge"], "argument --loss: invalid choice: 'hinge'"),
        (["spectrum", "--device", "banana"], "`--device` must be cpu, cuda, cuda:<index> or mps, got 'banana'"),
        (["spectrum", "--device", "cuda:7"], "`--device` is 'cuda:7', but this machine has"),
        (["spectrum", "--out", file], f"`--out`: cannot write into {file} (a file, not a folder)"),
        (["spectrum", "--out", f"{file}/runs"], f"`--out`: cannot write into {file} (a file, not a folder)"),
        (["spectrum", "--out", "/sys/subspace-opt-runs"], "`--out`: cannot write into /sys ("),
        (
            ["spectrum", "--out", str(tmp / ("a" * 300))],
            "`--out`: the name aaaaaaaaaaaa... has 300 bytes, more than 255",
        ),
        (["spectrum", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["demo", "--steps", "0"], "argument --steps: must be an int >= 1, got '0'"),
        (["demo", "--device", "cuda:7"], "`--device` is 'cuda:7', but this machine has"),
        (["demo", "--out", file], "`--out`: cannot write into"),
        (["run"], "the following arguments are required: config"),
        (["run", str(tmp / "missing.json")], "does not exist"),
        (["run", str(tmp / "broken.yaml")], "cannot parse"),
        (["run", ok, "--device", "banana"], "`--device` must be cpu, cuda, cuda:<index> or mps"),
        (["run", ok, "--device", "cuda:7"], "`--device` is 'cuda:7', but this machine has"),
        (["run", ok, "--out", file], "`--out`: cannot write into"),
        (
            ["run", ok, "--out", f"{tmp}/{'b' * 256}/run"],
            "`--out`: the name bbbbbbbbbbbb... has 256 bytes, more than 255",
        ),
        (["sweep", str(tmp / "missing.json")], "does not exist"),
        (["sweep", str(tmp / "nogrid.json")], "missing key `grid`"),
        (["sweep", str(tmp / "sweep.json"), "--workers", "0"], "argument --workers: must be an int >= 1"),
        (["sweep", str(tmp / "sweep.json"), "--device", "banana"], "`--device` must be cpu, cuda"),
        (["sweep", str(tmp / "sweep.json"), "--out", file], "`--out`: cannot write into"),
        (["plot"], "the following arguments are required: run_dir"),
        (["plot", str(tmp / "nowhere")], "`run_dir` must be the folder of a run or sweep, but"),
        (["plot", file], f"`run_dir` must be the folder of a run or sweep, but {file} is a file"),
        (["plot", str(tmp / "empty")], "no results.csv in"),
        (["plot", str(tmp / "garbage")], "is not the results of a run or sweep: no column method"),
    ]


def _one_line_exit_2(code, err, expected):
    assert code == 2, (code, err)
    assert "Traceback" not in err and err.endswith("\n") and err.count("\n") == 1, err
    assert expected in err, err


def test_bad_arguments_are_one_line_exit_2(tmp_path, capsys):
    cases = _bad_arguments(tmp_path)
    assert len(cases) >= 30
    before = {q: q.stat().st_mtime_ns for q in tmp_path.rglob("*")}
    for argv, expected in cases:
        code = cli.main(argv)
        _one_line_exit_2(code, capsys.readouterr().err, expected)
    assert {q: q.stat().st_mtime_ns for q in tmp_path.rglob("*")} == before  # nothing was written, nothing touched


@pytest.mark.parametrize(
    "config, expected", BAD_CONFIGS, ids=[e.split("`")[1] + f"-{i}" for i, (_, e) in enumerate(BAD_CONFIGS)]
)
def test_bad_configs_are_one_line_exit_2(tmp_path, capsys, config, expected):
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    code = cli.main(["run", str(tmp_path / "cfg.json"), "--out", str(tmp_path / "out")])
    _one_line_exit_2(code, capsys.readouterr().err, expected)


def test_bad_input_through_the_console_script(tmp_path):
    "The same in real processes: the exit status, and stderr as the shell shows it."
    (tmp_path / "cfg.json").write_text(json.dumps(_config(hidden=[0])))
    for argv, expected in (
        (["spectrum", "--k", "0"], "subspace-opt spectrum: error: argument --k: must be an int >= 1, got '0'\n"),
        (["spectrum", "--device", "cuda:7"], "subspace-opt spectrum: error: `--device` is 'cuda:7', but this machine"),
        (["run", str(tmp_path / "cfg.json")], "subspace-opt run: error: `config.hidden[0]` must be >= 1, got 0\n"),
        (["plot", str(tmp_path / "nowhere")], "subspace-opt plot: error: `run_dir` must be the folder of a run or"),
        (
            ["frobnicate"],
            "subspace-opt: error: argument {demo,run,sweep,plot,spectrum,compare,analyze}: invalid choice: "
            "'frobnicate'",
        ),
    ):
        p = subprocess.run([CLI, *argv], capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert p.returncode == 2 and p.stderr.startswith(expected) and p.stderr.count("\n") == 1, p.stderr
        assert p.stdout == ""
    assert subprocess.run([CLI, "run", "--help"], capture_output=True, text=True, timeout=300).returncode == 0


def test_an_internal_error_is_one_line_naming_the_saved_traceback(tmp_path, monkeypatch, capsys):
    "A bug: exit status 1, one line with the file that holds the full traceback."
    (tmp_path / "cfg.json").write_text(json.dumps(SMALL))

    def boom(*a, **k):
        raise RuntimeError("something broke\nover two lines")

    monkeypatch.setattr(cli, "run_experiment", boom)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the traceback file goes
    assert cli.main(["run", str(tmp_path / "cfg.json"), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    head = "subspace-opt run: internal error: RuntimeError: something broke over two lines (the full traceback is in "
    assert err.startswith(head) and err.endswith(")\n"), err
    saved = Path(err[len(head) : -2])
    assert saved.parent == tmp_path and saved.name.startswith("subspace-opt-")
    text = saved.read_text()
    assert text.startswith(f"subspace-opt run {tmp_path / 'cfg.json'} --out {tmp_path / 'out'}\npython ")
    assert "Traceback (most recent call last)" in text and "in boom" in text and "RuntimeError: something broke" in text


def test_an_internal_error_in_a_real_process(tmp_path):
    code = (
        "import sys, subspace_opt.cli as cli\n"
        "def boom(a): raise ZeroDivisionError('division by zero')\n"
        "cli._job = boom\n"
        "sys.exit(cli.main(['plot', '.']))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith("subspace-opt plot: internal error: ZeroDivisionError: division by zero (the full")
    saved = Path(p.stderr.split("the full traceback is in ")[1].rstrip(")\n"))
    assert "ZeroDivisionError" in saved.read_text()
    saved.unlink()


INTERRUPTED = {**SMALL, "name": "interrupted", "data_args": {"n_train": 100}, "steps": 1500, "log_every": 10}
INTERRUPTED |= {"checkpoint_every": 50}


def test_ctrl_c_is_one_line_and_the_same_command_resumes(tmp_path):
    "SIGINT once the run is logging: exit 130 and one line; the same command then finishes the run, rows complete."
    (tmp_path / "cfg.json").write_text(json.dumps(INTERRUPTED))
    cmd = [CLI, "run", str(tmp_path / "cfg.json"), "--out", str(tmp_path / "out"), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = _as_from_a_terminal(cmd, env)
    rows = tmp_path / "out" / "runs" / "sgd-seed0" / "rows.csv"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not (rows.exists() and rows.read_text().count("\n") >= 2):
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, (proc.returncode, err)
    assert err == "subspace-opt run: interrupted; the same command resumes the run from the step it reached\n", err
    assert not (tmp_path / "out" / "runs" / "sgd-seed0" / "done.json").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0 and again.stderr == "", again.stderr
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert results.step.tolist() == list(range(0, 1501, 10))  # every logged step once, in order


def test_the_command_line_chapter_shows_the_help_the_cli_prints_now():
    "The help texts saved in nbs/09_cli.ipynb (the docs' Usage section) are those of today's subcommands."
    nb = json.loads((Path(__file__).resolve().parents[1] / "nbs" / "09_cli.ipynb").read_text())
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code" and '"--help"' in "".join(c["source"]))
    saved = "".join("".join(o.get("text", "")) for o in cell["outputs"] if o.get("name") == "stdout")
    now = ""
    for sub in ("demo", "run", "sweep", "plot", "spectrum", "compare", "analyze"):
        out = subprocess.run(
            [sys.executable, "-m", "subspace_opt.cli", sub, "--help"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "80"},
        )
        now += f"$ subspace-opt {sub} --help  # exit status {out.returncode}\n{out.stdout}\n"
    assert saved == now, "re-execute nbs/09_cli.ipynb: its saved --help outputs are out of date"


@pytest.mark.parametrize("fault", ["memory", "bug"])
def test_a_sweep_whose_run_fails_runs_the_others_and_exits_as_that_failure(tmp_path, monkeypatch, capsys, fault):
    """Every other run finishes; one line names the failed run's folder, with status 2 for lack of memory and 1 (its
    traceback saved) for a bug; off a terminal a line per finished run, and one as the sweep starts and ends."""
    from subspace_opt import train

    (tmp_path / "sweep.json").write_text(json.dumps({**SMALL, "seeds": [0, 1], "grid": {"methods.lr": [0.1, 0.2]}}))
    step = train.Run.step

    def faulty(run):  # the run of lr 0.1, seed 0 fails at its step 3
        if run.tag["seed"] == 0 and run.cfg.methods[0].lr == 0.1 and run.state["step"] == 3:
            raise MemoryError("no room") if fault == "memory" else ZeroDivisionError("a bug")
        return step(run)

    monkeypatch.setattr(train.Run, "step", faulty)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where a traceback file goes
    argv = ["sweep", str(tmp_path / "sweep.json"), "--out", str(tmp_path / "out"), "--device", "cpu"]
    code = cli.main(argv)
    err = capsys.readouterr().err.splitlines()
    runs = len(list((tmp_path / "out" / "points").glob("*/*")))
    failed = f"1 of {runs} runs failed: points/methods.lr=0.1/sgd-seed0 ("
    assert err[0] == f"sweep: {runs} runs: 0 finished earlier, 0 to resume, {runs} new", err
    assert sum(line.startswith("sweep: ") and " done (points/" in line for line in err) == runs - 1, err
    assert err[-2].startswith(f"sweep: {runs - 1} of {runs} runs done, 1 failed ("), err
    assert len(list((tmp_path / "out" / "points").glob("*/*/done.json"))) == runs - 1  # the others ran to their end
    if fault == "memory":
        assert code == 2 and err[-1].startswith(f"subspace-opt sweep: error: {failed}MemoryError: no room); "), err
        assert err[-1].endswith("did not finish: out of memory (MemoryError): lower the model, data or batch sizes")
    else:
        assert code == 1 and err[-1].startswith(f"subspace-opt sweep: internal error: {failed}ZeroDivisionError"), err
        saved = Path(err[-1].split("the full traceback is in ")[1].rstrip(")"))
        assert "ZeroDivisionError: a bug" in saved.read_text() and "in faulty" in saved.read_text()
