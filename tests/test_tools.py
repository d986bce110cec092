"""The GPU pilot (`tools/gpu_pilot.py`) runs on a CPU with `--small`; its table holds what FULL estimates use."""

import io
import json
import os
import re
import runpy
import signal
import shutil
import subprocess
import sys
import tarfile
import time
import types
from pathlib import Path
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_pilot_small_writes_its_table(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, str(ROOT / "tools" / "gpu_pilot.py"), "--small", "--workers", "2", "--repeats", "3"]
    out = subprocess.run([*cmd, "--out", str(tmp_path)], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    table = pd.read_csv(tmp_path / "pilot.csv")
    settings = ["mlp, T=1", "mlp, T=1, power", "mlp, T=10", "mlp, T=1, k auto", "cnn, T=1, subsample"]
    assert table.setting.tolist() == settings
    times = table.filter(like="_ms")
    assert (times > 0).all().all(), table
    t1, t10 = table.set_index("setting").loc[["mlp, T=1", "mlp, T=10"]].itertuples()
    assert t1.products_per_step > 5 * t10.products_per_step > 0  # every step refreshes at T = 1, a tenth at T = 10
    assert t1.projected_step_ms > t1.base_step_ms and t1.cold_products > t1.products_per_step
    power = table.set_index("setting").loc["mlp, T=1, power"]  # one block of k + 2 = 12 products a refresh
    assert power.products_per_step == 12 < t1.products_per_step, table
    report = json.loads((tmp_path / "pilot.json").read_text())
    assert report["workers"] == 2 and report["throughput_gain"] > 0 and report["environment"]["device"] == "cpu"
    parts = pd.read_csv(tmp_path / "parts.csv")  # a warm refresh, and what it is made of besides its products
    assert parts.part[0].startswith("warm refresh (") and parts.part[1] == "block product (12 vectors)", parts
    assert len(parts) == 7 and (parts.ms > 0).all() and parts.ms[0] > parts.ms[1], parts
    blocks = float(re.search(r"\(([\d.]+) block products\)", parts.part[0]).group(1))
    assert blocks >= 2 and 12 * blocks >= t1.products_per_step, parts  # after a step, as a refresh in training at T = 1
    assert [p["part"] for p in report["parts"]] == parts.part.tolist()
    stacked = pd.read_csv(tmp_path / "stacked.csv")  # 12 runs one after another, and stacked into one batched call
    assert stacked.what.tolist() == ["SGD step", "Hessian block of 12"] and (stacked.members == 12).all(), stacked
    assert (stacked.separate_ms > 0).all() and (stacked.stacked_ms > 0).all() and (stacked.speedup > 0).all(), stacked
    assert stacked.rel_diff[1] < 1e-4, stacked  # the stacked products are the separate ones, to float32 rounding


def test_refresh_bench_small_writes_its_table(tmp_path):
    "`refresh_bench.py --small` on digits: the six ways, their products, and the accurate solves agreeing."
    cmd = [sys.executable, str(ROOT / "tools" / "refresh_bench.py"), "--small", "--data", "digits", "--repeats", "1"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*cmd, "--out", str(tmp_path)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    table = pd.read_csv(tmp_path / "refresh.csv")
    ways = ["eigsh, cold", "eigsh, cold, tol 1e-4", "block Krylov, cold", "refresh, one block"]
    ways += ["refresh, one block, ahead", "refresh, default"]
    assert table.way.tolist() == ways and (table.data == "digits").all(), table
    assert (table.p == 64 * 32 + 32 + 32 * 10 + 10).all(), table  # the 64-32-10 MLP
    assert (table.products > 0).all() and (table.seconds > 0).all(), table
    assert table.products[3] == table.products[4] == 12, table  # one block: k + oversampling products
    assert table.products[1] <= table.products[0] and (table.eigsh4_over_this > 0).all(), table  # the cheaper eigsh
    cos = table.set_index("way").min_cos_vs_eigsh
    assert cos["eigsh, cold"] > 0.999999 and cos["block Krylov, cold"] > 0.999, cos  # two accurate solves agree
    assert cos["eigsh, cold, tol 1e-4"] > 0.99, cos
    assert cos.between(0, 1 + 1e-6).all(), cos
    assert json.loads((tmp_path / "refresh.json").read_text())["environment"]["device"] == "cpu"
    bad = subprocess.run([*cmd[:2], "--repeats", "0"], capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and "refresh_bench: --repeats must be >= 1" in bad.stderr, bad.stderr
    bad = subprocess.run([*cmd[:2], "--threads", "0"], capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and "refresh_bench: --threads must be >= 1" in bad.stderr, bad.stderr


def test_gpu_pilot_refuses_bad_arguments(tmp_path):
    cmd = [sys.executable, str(ROOT / "tools" / "gpu_pilot.py"), "--small", "--workers", "0", "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and out.stderr.strip().splitlines() == [
        "gpu_pilot: --workers and --repeats must be >= 1, --members >= 2"
    ]
    assert not (tmp_path / "pilot.csv").exists()
    one = subprocess.run(
        [*cmd[:3], "--members", "1", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert one.returncode != 0 and "--members >= 2" in one.stderr and not (tmp_path / "pilot.csv").exists()


def _notebook(path: Path, *cells: str):
    "Write a notebook of code cells."
    cell = lambda src: dict(cell_type="code", source=src, metadata={}, outputs=[], execution_count=None)  # noqa: E731
    nb = dict(cells=[cell(c) for c in cells], metadata={}, nbformat=4, nbformat_minor=5)
    path.write_text(json.dumps(nb))


def _finished_run(folder: Path):
    "A run folder that counts as finished (it holds a done.json), as a resumed run beside the notebooks does."
    folder.mkdir(parents=True)
    (folder / "done.json").write_text("{}")


RENDEZVOUS = """import time
from pathlib import Path
Path("{me}.started").touch()
t0 = time.time()
while not Path("{other}.started").exists():  # the other notebook must run at the same time
    assert time.time() - t0 < 120, "ran alone"
    time.sleep(0.05)
print("met {other}")"""


def test_gpu_experiments_run_notebooks_at_once_and_name_the_failed_one(tmp_path):
    "`--jobs 2` runs two notebooks together (each waits for the other), a failing third is named, exit status 1."
    _notebook(tmp_path / "a.ipynb", RENDEZVOUS.format(me="a", other="b"))
    _notebook(tmp_path / "b.ipynb", RENDEZVOUS.format(me="b", other="a"))
    _notebook(tmp_path / "c.ipynb", "print('before')", "raise ValueError('boom in c')")
    logs = tmp_path / "logs"
    cmd = ["bash", str(ROOT / "tools" / "run_gpu_experiments.sh"), "--allow-cpu", "--jobs", "2", "--log-dir", str(logs)]
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(
        [*cmd, *(str(tmp_path / f"{n}.ipynb") for n in "abc")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "FAIL: 1 of 3 notebooks failed or did not start: c" in out.stderr and "boom in c" in out.stderr
    summary = pd.read_csv(logs / "summary.tsv", sep="\t", dtype=str).set_index("notebook")
    assert summary.exit.to_dict() == {"a": "0", "b": "0", "c": "1", "all": "1"}
    for name, other in [("a", "b"), ("b", "a")]:  # executed in place, with their outputs
        outputs = json.loads((tmp_path / f"{name}.ipynb").read_text())["cells"][0]["outputs"]
        assert f"met {other}" in "".join(outputs[0]["text"])
    assert "boom in c" in (logs / "c.log").read_text()


FINISHED_RUN = """from pathlib import Path
finished, unfinished = ["rows.csv", "run.json", "done.json", "checkpoint.pt", ".lock"], ["rows.csv", "checkpoint.pt"]
for run, files in [("m-0", finished), ("m-1", unfinished)]:
    folder = Path("runs/E/full") / run
    folder.mkdir(parents=True)
    for f in files:
        (folder / f).write_text(f)
print("a ran")"""


@pytest.mark.parametrize("keep", [[], ["--keep-going"]])
def test_gpu_experiments_stop_at_the_deadline_and_pack_what_finished(tmp_path, keep):
    """`--deadline`: a notebook running then is stopped and not saved (with `--keep-going` too, where the cell after
    the interrupted one would otherwise run), a later one not started; `--pack` holds only what finished."""
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "a.ipynb", FINISHED_RUN)
    sleep = "import time\ntry:\n    time.sleep(300)\nexcept KeyboardInterrupt:\n"
    sleep += "    open('b.interrupted', 'w').close()\n    raise"  # what a run's step does: it sees the interrupt
    _notebook(nbs / "b.ipynb", sleep, "open('b.after', 'w').close()")
    _notebook(nbs / "c.ipynb", "print('c ran')")
    logs, pack = tmp_path / "logs", tmp_path / "results.tar.gz"
    cmd = ["bash", str(ROOT / "tools" / "run_gpu_experiments.sh"), "--allow-cpu", "--log-dir", str(logs)]
    cmd += [*keep, "--deadline", "20", "--pack", str(pack), *(str(nbs / f"{n}.ipynb") for n in "abc")]
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert time.monotonic() - t0 < 120, "the deadline did not stop the sleeping notebook"
    assert out.returncode == 1, out.stdout + out.stderr
    assert "FAIL: 2 of 3 notebooks failed or did not start: b c" in out.stderr, out.stderr
    assert "b: FAILED (stopped at the deadline)" in out.stdout and "c: not started" in out.stdout, out.stdout
    summary = pd.read_csv(logs / "summary.tsv", sep="\t", dtype=str).set_index("notebook")
    assert summary.exit.to_dict() == {"a": "0", "b": "deadline", "c": "not-started", "all": "2"}
    b_cells = json.loads((nbs / "b.ipynb").read_text())["cells"]
    assert [c["outputs"] for c in b_cells] == [[], []]  # an interrupted notebook is not saved
    assert (nbs / "b.interrupted").exists() and not (nbs / "b.after").exists()  # SIGINT in its cell, no cell after
    with tarfile.open(pack) as tar:
        names = sorted(tar.getnames())
        assert "a ran" in tar.extractfile("nbs/a.ipynb").read().decode()
    run = "nbs/runs/E/full/m-0/"  # the finished run, without its checkpoint and lock; the unfinished m-1 not at all
    logged = [f"gpu-logs/{n}" for n in ("a.log", "a.status", "b.log", "b.status", "c.status", "summary.tsv")]
    assert names == sorted([*logged, "nbs/a.ipynb", run + "done.json", run + "rows.csv", run + "run.json"]), names


def test_gpu_experiments_keep_going_saves_a_notebook_whose_cell_failed(tmp_path):
    "`--keep-going`: the cells after a failing one run, the notebook is saved with the error and packed; exit 1."
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "a.ipynb", "print('before')", "assert 1 == 2, 'an outcome FULL missed'", "print('after')")
    _notebook(nbs / "b.ipynb", "print('b ran')")
    logs, pack = tmp_path / "logs", tmp_path / "results.tar.gz"
    cmd = [
        "bash",
        str(ROOT / "tools" / "run_gpu_experiments.sh"),
        "--allow-cpu",
        "--keep-going",
        "--log-dir",
        str(logs),
    ]
    cmd += ["--pack", str(pack), str(nbs / "a.ipynb"), str(nbs / "b.ipynb")]
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "a: FAILED (cells failed; saved with their errors)" in out.stdout, out.stdout
    assert "FAIL: 1 of 2 notebooks failed or did not start: a" in out.stderr and "an outcome FULL missed" in out.stderr
    summary = pd.read_csv(logs / "summary.tsv", sep="\t", dtype=str).set_index("notebook")
    assert summary.exit.to_dict() == {"a": "3", "b": "0", "all": "1"}
    cells = json.loads((nbs / "a.ipynb").read_text())["cells"]
    kinds = [[o["output_type"] for o in c["outputs"]] for c in cells]
    assert "error" in kinds[1] and "error" not in kinds[0] + kinds[2], kinds
    assert "after" in "".join(cells[2]["outputs"][0]["text"])
    with tarfile.open(pack) as tar:
        assert {"nbs/a.ipynb", "nbs/b.ipynb"} <= set(tar.getnames())


def test_gpu_session_runs_the_notebooks_within_its_budget_and_packs_them(tmp_path):
    "`gpu_session.sh` (here on a CPU, tests and pilot skipped): a relative --data made absolute, everything in --out."
    nbs, data = tmp_path / "nbs", tmp_path / "data"
    nbs.mkdir()
    data.mkdir()
    (data / "train-images-idx3-ubyte.gz").touch()  # what run_gpu_experiments.sh looks for
    _notebook(nbs / "a.ipynb", "import os\nprint('data at', os.environ['SUBSPACE_OPT_DATA'])")
    out = tmp_path / "out"
    cmd = ["bash", str(ROOT / "tools" / "gpu_session.sh"), "--out", str(out), "--budget", "200", "--allow-cpu"]
    cmd += ["--no-tests", "--no-pilot", "--no-bench", "--data", "data", str(nbs / "a.ipynb")]
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    # 200 s less 60, less the start (its checks and imports: seconds, more on a loaded machine)
    assert re.search(r"deadline 1[0-4]\d s", done.stdout) and "a: done" in done.stdout, done.stdout
    assert done.stdout.rstrip().endswith("exit status 0"), done.stdout
    printed = "".join(json.loads((nbs / "a.ipynb").read_text())["cells"][0]["outputs"][0]["text"])
    assert printed.strip() == f"data at {data}", printed  # absolute: the notebook runs in its own folder
    assert (out / "session.log").read_text() == done.stdout
    with tarfile.open(out / "results.tar.gz") as tar:
        assert "nbs/a.ipynb" in tar.getnames()
    _notebook(nbs / "b.ipynb", "raise ValueError('b fails')")  # a failing notebook makes the exit status 1
    cmd[-1] = str(nbs / "b.ipynb")
    failed = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert failed.returncode == 1 and failed.stdout.rstrip().endswith("exit status 1"), failed.stdout
    outputs = json.loads((nbs / "b.ipynb").read_text())["cells"][0]["outputs"]  # --keep-going: saved with its error
    assert [o["evalue"] for o in outputs if o["output_type"] == "error"] == ["b fails"], outputs
    given = ["--out", str(out), "--budget", "60"]
    for args, message in [
        (["--budget", "60"], "--out DIR is required"),
        (["--out", str(out)], "--budget must be"),
        ([*given, str(nbs / "typo.ipynb")], "no notebook"),  # refused before any stage spends the budget
        ([*given, "--jobs", "two"], "--jobs must be an int >= 1, got 'two'"),
        ([*given, "--reserve", "61"], "--reserve must be a whole number of seconds from 0 to the budget"),
        ([*given, "--data", str(nbs)], "--data: no Fashion-MNIST IDX files"),
    ]:
        bad = subprocess.run(["bash", str(ROOT / "tools" / "gpu_session.sh"), *args], capture_output=True, text=True)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
    no_gpu = subprocess.run(
        ["bash", str(ROOT / "tools" / "gpu_session.sh"), *given], capture_output=True, text=True, env=env
    )
    assert no_gpu.returncode == 1 and "FAIL: no CUDA device" in no_gpu.stdout, no_gpu.stdout  # at once: no stage ran
    assert "==" not in no_gpu.stdout, no_gpu.stdout


def test_gpu_session_packs_the_finished_runs_when_stopped_by_a_signal(tmp_path):
    "SIGTERM while the notebooks run: they are interrupted, and the runs finished so far are packed before it exits."
    nbs = tmp_path / "nbs"
    _finished_run(nbs / "runs" / "E" / "x" / "m-0")
    _notebook(nbs / "slow.ipynb", "import time\ntime.sleep(120)")
    out = tmp_path / "out"
    cmd = ["bash", str(ROOT / "tools" / "gpu_session.sh"), "--out", str(out), "--budget", "300", "--allow-cpu"]
    cmd += ["--no-tests", "--no-pilot", "--no-bench", str(nbs / "slow.ipynb")]
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    t0 = time.monotonic()
    while "slow: started" not in (out / "session.log").read_text() if (out / "session.log").exists() else True:
        assert time.monotonic() - t0 < 60 and proc.poll() is None, proc.poll()
        time.sleep(0.5)
    time.sleep(3)  # the notebook's kernel is up and sleeping
    proc.send_signal(signal.SIGTERM)
    printed, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "stopped by a signal" in printed, printed
    assert time.monotonic() - t0 < 90, printed  # the notebook was interrupted, not waited for
    with tarfile.open(out / "results.tar.gz") as tar:
        assert "nbs/runs/E/x/m-0/done.json" in tar.getnames(), tar.getnames()
    _notebook(nbs / "quick.ipynb", "print('quick ran')")  # the next run, with the same --out: its notebooks run
    again = subprocess.run([*cmd[:-1], str(nbs / "quick.ipynb")], capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0 and "quick: done" in again.stdout, again.stdout


def test_gpu_session_resumes_only_the_finished_runs_of_an_earlier_archive(tmp_path):
    "`--resume`: the archive's run files are unpacked in the repository; its notebooks, logs and escapes are not."
    repo = tmp_path / "repo"  # a copy of the tools, so that the archive lands in a repository of the test's own
    shutil.copytree(ROOT / "tools", repo / "tools")
    nbs = repo / "nbs" / "experiments"
    nbs.mkdir(parents=True)
    _notebook(
        nbs / "a.ipynb", "from pathlib import Path\nprint(sorted(p.name for p in Path('runs/E/full/m-0').iterdir()))"
    )
    archive = tmp_path / "results.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, text in [
            ("nbs/experiments/runs/E/full/m-0/done.json", "{}"),
            ("nbs/experiments/runs/E/full/m-0/rows.csv", "step\n0\n"),
            ("nbs/experiments/a.ipynb", "an old notebook"),  # not a run: left out
            ("gpu-logs/a.log", "old log"),
            ("nbs/experiments/runs/../../../../escaped.txt", "outside"),  # '..': the whole archive is refused
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text.encode()))
    cmd = ["bash", str(repo / "tools" / "gpu_session.sh"), "--out", str(tmp_path / "out"), "--budget", "200"]
    cmd += ["--allow-cpu", "--no-tests", "--no-pilot", "--no-bench", "--resume", str(archive), str(nbs / "a.ipynb")]
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    refused = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(refused) == 1 and "--resume" in refused[0] and "escaped.txt" in refused[0]
    assert not (tmp_path / "escaped.txt").exists() and not (repo / "escaped.txt").exists()
    assert not (repo / "nbs" / "experiments" / "runs").exists()  # refused whole: nothing of it unpacked
    with tarfile.open(archive, "w:gz") as tar:  # the same without the escaping member ('./' paths are the same paths)
        for name in ["done.json", "rows.csv"]:
            info = tarfile.TarInfo(f"{'./' if name == 'rows.csv' else ''}nbs/experiments/runs/E/full/m-0/{name}")
            tar.addfile(info, io.BytesIO(b""))
        info = tarfile.TarInfo("nbs/experiments/a.ipynb")
        tar.addfile(info, io.BytesIO(b""))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0 and "resumed 2 files of finished runs" in done.stdout, done.stdout
    printed = "".join(json.loads((nbs / "a.ipynb").read_text())["cells"][0]["outputs"][0]["text"])
    assert printed.strip() == "['done.json', 'rows.csv']", printed  # the notebook ran (not the archive's copy)


def test_gpu_experiments_refuse_bad_arguments(tmp_path):
    script = ["bash", str(ROOT / "tools" / "run_gpu_experiments.sh")]
    for args, message in [
        (["--jobs", "0"], "FAIL: --jobs must be an int >= 1, got '0'"),
        (["--bogus"], "FAIL: unknown option --bogus (see --help)"),
        ([str(tmp_path / "missing.ipynb")], f"FAIL: no notebook {tmp_path / 'missing.ipynb'}"),
        (["--deadline", "0"], "FAIL: --deadline must be a whole number of seconds >= 1, got '0'"),
        (["--deadline", "1.5"], "FAIL: --deadline must be a whole number of seconds >= 1, got '1.5'"),
        (["--pack", str(tmp_path / "out.zip")], f"FAIL: --pack must name a .tar.gz file, got '{tmp_path / 'out.zip'}'"),
        (["--pack", str(tmp_path / "no" / "out.tar.gz")], f"FAIL: --pack: no folder {tmp_path / 'no'}"),
    ]:
        out = subprocess.run([*script, *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and out.stderr.strip().splitlines() == [message], (args, out.stderr)
    usage = subprocess.run([*script, "--help"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 0 and "--deadline S" in usage.stdout and not usage.stderr, usage.stderr


def _with_outputs(path: Path, prose: str, printed: str):
    "Write a notebook of one markdown cell and one code cell that printed `printed`."
    md = dict(cell_type="markdown", source=prose, metadata={})
    out = dict(output_type="stream", name="stdout", text=printed)
    code = dict(cell_type="code", source="print(...)", metadata={}, outputs=[out], execution_count=1)
    path.write_text(json.dumps(dict(cells=[md, code], metadata={}, nbformat=4, nbformat_minor=5)))


def _prose_numbers(tmp_path: Path, prose: str, old: str, new: str, *, against_itself=False):
    "tools/prose_numbers.py on two notebooks of the same `prose` whose code printed `old` and `new`."
    _with_outputs(tmp_path / "old.ipynb", prose, old)
    _with_outputs(tmp_path / "new.ipynb", prose, new)
    second = tmp_path / ("old.ipynb" if against_itself else "new.ipynb")
    tool = [sys.executable, str(ROOT / "tools" / "prose_numbers.py")]
    return subprocess.run([*tool, tmp_path / "old.ipynb", second], capture_output=True, text=True)


def test_prose_numbers_lists_the_quoted_numbers_the_new_outputs_lost(tmp_path):
    "Quoted from the old outputs and gone from the new: reported; in both, never printed, or integers: not."
    prose = "Bulk reaches 0.118 (k = 10) and SGD 0.25 in 40 steps; the ratio 2.12 is derived; v1.13 is a version."
    printed = ("final 0.1176 0.2501 steps 40 version 1.13\n", "final 0.1707 0.2499 steps 41 version 1.13\n")
    out = _prose_numbers(tmp_path, prose, *printed)
    assert (out.returncode, out.stdout) == (1, "old.ipynb cell 0: 0.118\n"), out
    assert out.stderr == "1 quoted numbers no longer in the outputs\n"
    same = _prose_numbers(tmp_path, prose, *printed, against_itself=True)
    assert (same.returncode, same.stdout) == (0, ""), same


def test_prose_numbers_checks_a_decimal_that_ends_a_sentence_but_not_a_version(tmp_path):
    "A decimal before a full stop ('on MSE 0.71.') is quoted; one inside a version string ('1.2.3') is not."
    prose = "Adam needs 0.85 of the steps, and on MSE 0.71. With torch 1.2.3 it also prints 2.4.1."
    out = _prose_numbers(
        tmp_path, prose, "ratios 0.853 0.712 versions 1.2 2.4\n", "ratios 0.911 0.934 versions 1.3 2.5\n"
    )
    assert (out.returncode, out.stdout) == (1, "old.ipynb cell 0: 0.85, 0.71\n"), out


def test_dry_run_full_shrinks_the_full_setting_and_softens_assertions():
    sys.path.insert(0, str(ROOT / "tools"))
    from dry_run_full import shrink, soften

    full = dict(
        tag="full",
        data_args={"n_train": 5000},
        steps=1500,
        n_hessian=[100, 2000],
        seeds=[0, 1, 2],
        lrs=[0.1, 0.2],
        log_curvature=True,
        models=[dict(model="mlp", hidden=[200, 200], steps=1200), dict(model="cnn", hidden=[32], steps=600)],
    )
    toy = shrink(full)
    assert toy == dict(
        tag="dryrun",
        data_args={"n_train": 256},
        steps=6,
        n_hessian=[16, 100],
        seeds=[0, 1, 2],
        lrs=[0.1, 0.2],
        log_curvature=True,
        models=[dict(model="mlp", hidden=[200, 200], steps=6), dict(model="cnn", hidden=[4], steps=6)],
    )
    assert full["steps"] == 1500 and full["models"][1]["hidden"] == [32]  # FULL itself untouched
    namespace = {}
    exec(soften("x = 1\nassert x == 2, 'no'\ny = 3"), namespace)  # prints instead of raising, then goes on
    assert namespace["y"] == 3
    assert soften("%time x = 1\nassert x") == "%time x = 1\nassert x"  # not plain Python: left as it is


def test_dry_run_full_runs_the_toy_setting_and_fails_only_on_raised_errors(tmp_path):
    "A toy FULL: `P = FULL` becomes the shrunk setting, a failing assert is counted, a raised error fails the run."
    params = "FULL = dict(tag='full', steps=1000)\nSMALL = dict(FULL, steps=10)\nP = SMALL"
    read = "print(open('table.csv').read())"  # a file beside the notebook, copied beside its copy
    _notebook(tmp_path / "ok.ipynb", params, "#| cuda\nP = FULL", "assert P['steps'] > 100, 'toy'", "print(P)", read)
    (tmp_path / "table.csv").write_text("a measured table")
    _notebook(tmp_path / "bad.ipynb", params, "#| cuda\nP = FULL", "raise KeyError('no such key in FULL')")
    _notebook(tmp_path / "none.ipynb", params, "P = FULL")
    _notebook(tmp_path / "two.ipynb", params, "#| cuda\nP = FULL", "#| cuda\nP = FULL")
    cmd = [sys.executable, str(ROOT / "tools" / "dry_run_full.py"), "--out-dir", str(tmp_path / "out")]
    out = subprocess.run([*cmd, str(tmp_path / "ok.ipynb")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok: " in out.stdout and "1 assertions would fail, 0 errors" in out.stdout
    done = [c["outputs"] for c in json.loads((tmp_path / "out" / "ok.ipynb").read_text())["cells"]]
    assert "'tag': 'dryrun', 'steps': 6" in "".join(done[3][0]["text"])
    assert "a measured table" in "".join(done[4][0]["text"]), done[4]
    assert json.loads((tmp_path / "ok.ipynb").read_text())["cells"][1]["source"] == "#| cuda\nP = FULL"  # source kept
    out = subprocess.run([*cmd, str(tmp_path / "bad.ipynb")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "cell 2: KeyError" in out.stdout and "FAIL: cells raised in bad" in out.stderr
    for name in ["none", "two"]:
        out = subprocess.run([*cmd, str(tmp_path / f"{name}.ipynb")], capture_output=True, text=True, timeout=300)
        assert out.returncode == 1 and "needs exactly one `#| cuda` cell setting P = FULL" in out.stderr, name


def test_pack_results_keeps_what_a_rerun_reuses(tmp_path):
    "Finished runs whole (snapshots too), records beside the runs; not checkpoints, locks or unfinished runs."
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from pack_results import finished_runs
    finally:
        sys.path.remove(str(ROOT / "tools"))
    runs = tmp_path / "runs" / "E10" / "small"
    files = [
        "mlp/curvature-settings.json",  # an analysis's settings, beside the runs: kept
        "mlp/runs/bulk-seed0/done.json",
        "mlp/runs/bulk-seed0/rows.csv",
        "mlp/runs/bulk-seed0/run.json",
        "mlp/runs/bulk-seed0/checkpoint.pt",  # left out
        "mlp/runs/bulk-seed0/snapshots/step-100.pt",  # kept: the analysis reads it
        "mlp/runs/sgd-seed0/run.json",  # unfinished: nothing of it
        "mlp/runs/sgd-seed0/rows.csv",
        "mlp/runs/sgd-seed0/snapshots/step-100.pt",
        "mlp/curvature.csv",  # a table: made again by the rerun
    ]
    for f in files:
        (runs / f).parent.mkdir(parents=True, exist_ok=True)
        (runs / f).write_text("x")
    got = sorted(p.relative_to(runs).as_posix() for p in finished_runs(tmp_path))
    assert got == sorted(files[i] for i in (0, 1, 2, 3, 5)), got


def _session_left(sid: int) -> list:
    "The processes still alive in the session that the process `sid` (started with start_new_session) leads."
    table = subprocess.run(["ps", "-e", "-o", "pid=,sid=,stat=,args="], capture_output=True, text=True).stdout
    rows = [line.split(None, 3) for line in table.splitlines()]
    return [r for r in rows if len(r) > 2 and r[1] == str(sid) and not r[2].startswith("Z")]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_gpu_session_stopped_by_a_signal_to_its_process_group_packs_and_leaves_nothing_running(tmp_path, sig):
    """A signal to the whole process group (Ctrl-C, `timeout`, a job runner): its `tee` outlives it, the notebook is
    interrupted and recorded, the finished runs are packed, and no process of the session is left running."""
    nbs = tmp_path / "nbs"
    _finished_run(nbs / "runs" / "E" / "x" / "m-0")
    _notebook(
        nbs / "slow.ipynb", "from pathlib import Path\nimport time\nPath('slow.started').touch()\ntime.sleep(120)"
    )
    out = tmp_path / "out"
    cmd = ["bash", str(ROOT / "tools" / "gpu_session.sh"), "--out", str(out), "--budget", "300", "--allow-cpu"]
    cmd += ["--no-tests", "--no-pilot", "--no-bench", str(nbs / "slow.ipynb")]
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    try:
        t0 = time.monotonic()
        while not (nbs / "slow.started").exists():  # the notebook's kernel is in its sleeping cell
            assert time.monotonic() - t0 < 60 and proc.poll() is None, proc.poll()
            time.sleep(0.2)
        os.killpg(proc.pid, sig)
        printed, _ = proc.communicate(timeout=60)
        left = _session_left(proc.pid)
        while left and time.monotonic() - t0 < 90:  # what exits on its own (tee, at its end of file) may take a moment
            time.sleep(0.2)
            left = _session_left(proc.pid)
    finally:
        for row in _session_left(proc.pid):  # never leave the session's processes behind, even when failing
            os.kill(int(row[0]), signal.SIGKILL)
    assert not left, left
    assert proc.returncode == 143 and "stopped by a signal" in printed, printed
    assert (out / "session.log").read_text().rstrip().endswith("exit status 143")
    assert (out / "notebook-logs" / "slow.status").read_text().split()[0] == "stopped"
    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
    assert "nbs/runs/E/x/m-0/done.json" in names and "gpu-logs/slow.status" in names, names
    assert json.loads((nbs / "slow.ipynb").read_text())["cells"][0]["outputs"] == []  # interrupted: not saved


def test_gpu_session_refuses_a_bad_resume_archive_before_any_stage(tmp_path):
    "Cut short, garbled, not a .tar.gz, or no file under nbs/**/runs/: one line naming --resume, exit 2, at once."
    _notebook(tmp_path / "a.ipynb", "print('a ran')")
    good = io.BytesIO()
    with tarfile.open(fileobj=good, mode="w:gz") as tar:
        for name in ["done.json", "rows.csv"]:
            tar.addfile(tarfile.TarInfo(f"nbs/experiments/runs/E/full/m-0/{name}"), io.BytesIO(b""))
    archives = {"cut.tar.gz": good.getvalue()[: len(good.getvalue()) // 2], "page.tar.gz": b"<html>not found</html>"}
    one = io.BytesIO()
    with tarfile.open(fileobj=one, mode="w:gz") as tar:  # paths from inside nbs/experiments
        tar.addfile(tarfile.TarInfo("runs/E/full/m-0/done.json"), io.BytesIO(b""))
    archives["garbled.tar.gz"] = good.getvalue()[:20] + bytes(b ^ 0x5A for b in good.getvalue()[20:-8]) + b"\0" * 8
    archives["inside.tar.gz"] = one.getvalue()  # last: the check after the loop runs it again
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    for name, data in archives.items():
        (tmp_path / name).write_bytes(data)
        out = tmp_path / f"out-{name}"
        cmd = ["bash", str(ROOT / "tools" / "gpu_session.sh"), "--out", str(out), "--budget", "300", "--allow-cpu"]
        cmd += ["--no-tests", "--resume", str(tmp_path / name), str(tmp_path / "a.ipynb")]  # the pilot not skipped
        t0 = time.monotonic()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("FAIL: --resume: "), (name, done)
        assert done.stdout == "" and not (out / "session.log").exists(), (name, done.stdout)  # no stage ran
        assert time.monotonic() - t0 < 20, name
    assert "no file under nbs/**/runs/" in subprocess.run(cmd, capture_output=True, text=True, env=env).stderr


def test_gpu_session_checks_nbdev_before_any_stage_and_runs_the_notebooks_with_its_python(tmp_path):
    "nbdev that does not import: failed before the pilot; the notebooks run with the interpreter the session checked."
    shadow = tmp_path / "shadow" / "nbdev"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('a broken nbdev')")
    _notebook(tmp_path / "a.ipynb", "print('a ran')")
    out = tmp_path / "out"
    cmd = ["bash", str(ROOT / "tools" / "gpu_session.sh"), "--out", str(out), "--budget", "300", "--allow-cpu"]
    cmd += ["--no-tests", "--no-bench", str(tmp_path / "a.ipynb")]  # the pilot not skipped
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(shadow.parent)}
    t0 = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 1 and "FAIL: cannot import nbdev, execnb and IPython" in done.stdout, done.stdout
    assert "pilot" not in done.stdout and time.monotonic() - t0 < 30, done.stdout
    repo, bin_ = tmp_path / "repo", tmp_path / "bin"  # a repository whose .venv python must not be used
    shutil.copytree(ROOT / "tools", repo / "tools")
    (repo / ".venv" / "bin").mkdir(parents=True)
    bin_.mkdir()
    (repo / ".venv" / "bin" / "python").write_text(f"#!/bin/sh\ntouch {tmp_path / 'venv-used'}\nexit 1\n")
    (bin_ / "python3").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    for f in [repo / ".venv" / "bin" / "python", bin_ / "python3"]:
        f.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"} | {"CUDA_VISIBLE_DEVICES": ""}
    env["PATH"] = f"{bin_}:{env['PATH']}"
    cmd = ["bash", str(repo / "tools" / "gpu_session.sh"), "--out", str(out), "--budget", "200", "--allow-cpu"]
    cmd += ["--no-tests", "--no-pilot", "--no-bench", str(tmp_path / "a.ipynb")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0 and "a: done" in done.stdout, done.stdout
    assert not (tmp_path / "venv-used").exists()


def test_gpu_experiments_pack_even_when_nbdev_clean_fails(tmp_path):
    "A failing nbdev_clean is reported and makes the exit status 1, but the results are still packed."
    shadow = tmp_path / "shadow" / "nbdev"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    (shadow / "clean.py").write_text("def nbdev_clean(fname=None, **kwargs):\n    raise RuntimeError('clean broke')\n")
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "a.ipynb", "print('a ran')")
    logs, pack = tmp_path / "logs", tmp_path / "results.tar.gz"
    cmd = ["bash", str(ROOT / "tools" / "run_gpu_experiments.sh"), "--allow-cpu", "--log-dir", str(logs)]
    cmd += ["--pack", str(pack), str(nbs / "a.ipynb")]
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(shadow.parent)}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert out.returncode == 1 and "FAIL: nbdev_clean failed" in out.stderr and "clean broke" in out.stderr, out
    with tarfile.open(pack) as tar:
        assert "nbs/a.ipynb" in tar.getnames() and "a ran" in tar.extractfile("nbs/a.ipynb").read().decode()


def test_execute_notebooks_does_not_save_a_notebook_interrupted_in_its_last_cell(tmp_path):
    "SIGINT in the last cell (a deadline), with --keep-going: the notebook is left as it was, and no stray file."
    nb = tmp_path / "nb.ipynb"
    _notebook(nb, "x = 1", "from pathlib import Path\nimport time\nPath('last.started').touch()\ntime.sleep(120)")
    before = nb.read_bytes()
    cmd = [sys.executable, str(ROOT / "tools" / "execute_notebooks.py"), "--keep-going", "--skip-flags", "--", str(nb)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        t0 = time.monotonic()
        while not (tmp_path / "last.started").exists():
            assert time.monotonic() - t0 < 60 and proc.poll() is None, proc.poll()
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        printed, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "the notebook is not saved" in printed, printed
    assert nb.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.started", "nb.ipynb"]


def test_pack_results_gives_the_same_bytes_for_the_same_files(tmp_path):
    "Two packs of the same files at different times: the same bytes; members in name order, owners and times fixed."
    repo = tmp_path / "repo"
    run = repo / "nbs" / "experiments" / "runs" / "E" / "full" / "m-0"
    run.mkdir(parents=True)
    for name in ["run.json", "rows.csv", "done.json"]:
        (run / name).write_text(name)
    (run / "rows.csv").chmod(0o600)
    nb, logs = repo / "nbs" / "experiments" / "E.ipynb", tmp_path / "logs"
    nb.write_text("{}")
    logs.mkdir()
    (logs / "E.log").write_text("log")
    cmd = [sys.executable, str(ROOT / "tools" / "pack_results.py"), "--repo", str(repo), "--logs", str(logs)]
    cmd += ["--notebooks", str(nb), "--runs-beside", str(nb), "--out"]
    subprocess.run([*cmd, str(tmp_path / "a.tar.gz")], check=True, capture_output=True)
    time.sleep(1.1)  # the next second: a gzip header's time, were it kept, would differ
    for f in [*run.iterdir(), nb, logs / "E.log"]:
        os.utime(f, (1e9, 1e9))
    subprocess.run([*cmd, str(tmp_path / "b.tar.gz")], check=True, capture_output=True)
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names) and len(names) == 5, names
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(1796342400, 0, 0, "", "")}
    modes = {m.name.rsplit("/", 1)[-1]: m.mode for m in members}
    assert modes["rows.csv"] == 0o600 and modes["done.json"] == (run / "done.json").stat().st_mode & 0o777, modes


def test_build_docs_refuses_jobs_below_one():
    "`--jobs 0` or `-1`: an argparse error naming --jobs (exit 2), before anything is deleted or started."
    for jobs in ["0", "-1"]:
        out = subprocess.run(
            [sys.executable, str(ROOT / "tools" / "build_docs.py"), "--jobs", jobs], capture_output=True, text=True
        )
        assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].endswith(f"--jobs must be >= 1, got {jobs}")


def test_build_docs_links_the_public_names_nbdev_leaves_as_code():
    "Qualified names, constants and calls get a link to their entry; prose, links, bare names and code blocks do not."
    b = types.SimpleNamespace(**runpy.run_path(str(ROOT / "tools" / "build_docs.py")))
    host, entries = b.DOC_HOST, {"results.tuned": "results.html#tuned", "tuned": "results.html#tuned"}
    entries |= {"MAX_EXACT_SEEDS": "results.html#max_exact_seeds", "so.tuned": "results.html#tuned"}
    text = "`results.tuned(t)`, `so.tuned`, `MAX_EXACT_SEEDS`, `tuned(t, by)`, `tuned`, `results.csv`, [`tuned`](x)\n"
    assert b.link_names(text + "```\n`results.tuned`\n```\n", entries) == (
        f"[`results.tuned(t)`]({host}results.html#tuned), [`so.tuned`]({host}results.html#tuned), "
        f"[`MAX_EXACT_SEEDS`]({host}results.html#max_exact_seeds), [`tuned(t, by)`]({host}results.html#tuned), "
        "`tuned`, `results.csv`, [`tuned`](x)\n```\n`results.tuned`\n```\n"
    )
    found = b.api_entries()  # the package's own index: functions, constants, the top-level names
    assert found["results.time_to_target"] == "results.html#time_to_target", found.get("results.time_to_target")
    assert found["results.MAX_EXACT_SEEDS"] == found["MAX_EXACT_SEEDS"] == "results.html#max_exact_seeds"
    assert found["so.DominantSubspace"] == "subspace.html#dominantsubspace"
    assert b.relink("`results.tuned`", 1) == "[`results.tuned`](../results.html#tuned)"
    assert b.link_names("`tuned`, `gone`", entries, bare=True) == f"[`tuned`]({host}results.html#tuned), `gone`"


STAND_IN = """#!/bin/sh
# the stages of gpu_session.sh, each at once and failing when $FAILING names it; anything else: the real interpreter
case "$1 $2" in
  "-m pytest") [ "$FAILING" = pytest ] && exit 3; echo "1 passed"; exit 0 ;;  # 3: an internal error, no summary
esac
case "$1" in
  -c) case "$2" in *nbdev_test*) [ "$FAILING" != nbdev ]; exit ;; esac ;;
  tools/gpu_pilot.py) [ "$FAILING" != pilot-slow ] || {{ touch "$PILOT_STARTED"; exec sleep 5; }}
    sleep 2; [ "$FAILING" != pilot ]; exit ;;
  tools/refresh_bench.py) [ "$FAILING" != refresh ]; exit ;;
  tools/execute_notebooks.py) [ "$FAILING" != B05 ]; exit ;;
esac
exec {python} "$@"
"""


def _stand_in(tmp_path: Path, failing: str) -> dict:
    "An environment whose PYTHON runs gpu_session.sh's stages as STAND_IN does, the stage `failing` failing."
    python = tmp_path / "python"
    python.write_text(STAND_IN.format(python=sys.executable))
    python.chmod(0o755)
    return {**os.environ, "PYTHON": str(python), "CUDA_VISIBLE_DEVICES": "", "FAILING": failing}


@pytest.mark.parametrize("failing", ["none", "pytest", "nbdev", "pilot", "refresh", "B05"])
def test_gpu_session_times_its_stages_from_the_budget_and_fails_when_one_fails(tmp_path, failing):
    """Each stage runs within its cap and what the budget leaves past the notebooks' reserve (half the budget); the
    notebooks' deadline is what is left less 60 s, and they run `--jobs` at once; a stage that fails (pytest too when
    it ends without a summary) is named and makes the exit status 1, and the notebooks still run."""
    for me, other in [("a", "b"), ("b", "a")]:
        _notebook(tmp_path / f"{me}.ipynb", RENDEZVOUS.format(me=me, other=other))
    cmd = ["bash", str(ROOT / "tools" / "gpu_session.sh"), "--out", str(tmp_path / "out"), "--budget", "400"]
    cmd += ["--allow-cpu", "--jobs", "2", str(tmp_path / "a.ipynb"), str(tmp_path / "b.ipynb")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_stand_in(tmp_path, failing))
    printed = done.stdout
    assert done.returncode == (0 if failing == "none" else 1), printed + done.stderr
    assert re.search(r"CUDA tests \(.*at most 1([5-6]\d|70) s\)", printed), (
        printed
    )  # 400 - 200 reserved - 30, less the start
    deadline = int(re.search(r"notebooks, 2 at once, deadline (\d+) s", printed).group(1))
    assert 300 <= deadline <= 400 - 60 - 2, printed  # the pilot took 2 s of the budget
    assert "a: done" in printed and "b: done" in printed, printed
    named = dict(
        pytest="FAILED: pytest (see tests.log)",
        nbdev="FAILED: ",
        pilot="FAILED: the pilot",
        refresh="FAILED: the refresh benchmark",
        B05="FAILED: benchmark B05",
    )
    assert failing == "none" or named[failing] in printed, printed
    assert (failing == "none") == ("FAILED" not in printed), printed


def test_gpu_session_skips_a_stage_the_budget_leaves_no_time_for(tmp_path):
    """A reserve of the whole budget leaves no stage its 20 s: the pilot is skipped, which is a failure, and the
    notebooks run in the time kept for them; the stages' own caps apply when the budget leaves more."""
    _notebook(tmp_path / "a.ipynb", "print('a ran')")
    cmd = ["bash", str(ROOT / "tools" / "gpu_session.sh"), "--out", str(tmp_path / "out"), "--allow-cpu"]
    cmd += ["--no-tests", "--no-bench", "--budget", "200", "--reserve", "200", str(tmp_path / "a.ipynb")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_stand_in(tmp_path, "none"))
    assert done.returncode == 1 and "SKIPPED: the pilot (no time left in the budget)" in done.stdout, done.stdout
    assert "a: done" in done.stdout and done.stdout.rstrip().endswith("exit status 1"), done.stdout
    cmd = [*cmd[:5], "--no-pilot", "--no-bench", "--budget", "400", "--reserve", "100", str(tmp_path / "a.ipynb")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_stand_in(tmp_path, "none"))
    assert done.returncode == 0 and "at most 240 s" in done.stdout, done.stdout  # 400 - 100 - 30 > the cap of 240


def test_gpu_session_stopped_during_a_stage_packs_the_finished_runs(tmp_path):
    """A signal to the process group while the pilot runs: the stage is waited for, no notebook starts, and the runs
    already finished beside the notebooks (say, resumed ones) are packed; exit status 143."""
    nbs = tmp_path / "nbs"
    _finished_run(nbs / "runs" / "E" / "x" / "m-0")
    _notebook(nbs / "a.ipynb", "print('a ran')")
    out = tmp_path / "out"
    cmd = ["bash", str(ROOT / "tools" / "gpu_session.sh"), "--out", str(out), "--budget", "600", "--allow-cpu"]
    cmd += ["--no-tests", "--no-bench", str(nbs / "a.ipynb")]
    env = _stand_in(tmp_path, "pilot-slow") | {"PILOT_STARTED": str(tmp_path / "pilot.started")}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    try:
        t0 = time.monotonic()
        while not (tmp_path / "pilot.started").exists():
            assert time.monotonic() - t0 < 60 and proc.poll() is None, proc.poll()
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGTERM)
        printed, _ = proc.communicate(timeout=60)
    finally:
        for row in _session_left(proc.pid):
            os.kill(int(row[0]), signal.SIGKILL)
    assert proc.returncode == 143 and "stopped by a signal" in printed and "a: " not in printed, printed
    with tarfile.open(out / "results.tar.gz") as tar:
        assert tar.getnames() == ["nbs/runs/E/x/m-0/done.json"], tar.getnames()


def test_execute_notebooks_on_a_cpu_skips_cuda_cells_and_clears_stale_outputs(tmp_path):
    """Without a GPU a `#| cuda` cell is skipped and keeps its outputs; any other cell loses its old outputs even when
    it now prints nothing; `--out-dir` writes the executed copy there and leaves the notebook as it was."""
    nb = tmp_path / "src" / "nb.ipynb"
    nb.parent.mkdir()
    _notebook(nb, "x = 1", "#| cuda\nraise RuntimeError('a cuda cell ran')", "#| slow\nprint('slow ran')")
    cells = json.loads(nb.read_text())
    old = [dict(output_type="stream", name="stdout", text="from the last run\n")]
    for c in cells["cells"]:
        c["outputs"] = old
    nb.write_text(json.dumps(cells))
    before = nb.read_bytes()
    cmd = [sys.executable, str(ROOT / "tools" / "execute_notebooks.py"), str(nb), "--out-dir", str(tmp_path / "out")]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert nb.read_bytes() == before
    outputs = [c["outputs"] for c in json.loads((tmp_path / "out" / "nb.ipynb").read_text())["cells"]]
    assert outputs[0] == [] and outputs[1] == old and "slow ran" in "".join(outputs[2][0]["text"]), outputs


def test_pack_results_packs_no_link_and_refuses_what_it_cannot_pack(tmp_path):
    """A linked file or linked runs/ folder is left out (an archive holding a link is one `--resume` refuses), and so
    are the log folder's subfolders; nothing but the archive is left beside it. Two files of one name in the archive,
    an --out that is no .tar.gz, or a missing notebook: refused, and no archive is written."""
    repo = tmp_path / "repo"
    run = repo / "nbs" / "runs" / "E" / "full" / "m-0"
    run.mkdir(parents=True)
    for name in ["done.json", "rows.csv"]:
        (run / name).write_text(name)
    (run / "linked.csv").symlink_to(run / "rows.csv")
    (repo / "other").mkdir()
    (repo / "other" / "runs").symlink_to(repo / "nbs" / "runs")
    nb, logs = repo / "nbs" / "E.ipynb", tmp_path / "logs"
    nb.write_text("{}")
    (logs / "sub").mkdir(parents=True)
    (logs / "E.log").write_text("log")
    out = tmp_path / "packed" / "results.tar.gz"
    out.parent.mkdir()
    cmd = [sys.executable, str(ROOT / "tools" / "pack_results.py"), "--repo", str(repo), "--logs", str(logs)]
    cmd += ["--runs-beside", str(nb), str(repo / "other" / "E.ipynb"), "--notebooks", str(nb)]
    subprocess.run([*cmd, "--out", str(out)], check=True, capture_output=True)
    with tarfile.open(out) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [
        "gpu-logs/E.log",
        "nbs/E.ipynb",
        "nbs/runs/E/full/m-0/done.json",
        "nbs/runs/E/full/m-0/rows.csv",
    ] and all(m.isfile() for m in members), [m.name for m in members]
    assert [p.name for p in out.parent.iterdir()] == ["results.tar.gz"]
    twin = tmp_path / "twin" / "nbs" / "E.ipynb"  # outside the repository: named from its folder's parent, as nb is
    twin.parent.mkdir(parents=True)
    twin.write_text("{}")
    for args, message in [
        (["--notebooks", str(nb), str(twin)], "two files would share a name in the archive"),
        (["--notebooks", str(tmp_path / "gone.ipynb")], f"pack_results: no notebook {tmp_path / 'gone.ipynb'}"),
        (["--out", str(tmp_path / "results.zip")], "pack_results: --out must name a .tar.gz file"),
    ]:
        bad = subprocess.run([*cmd, "--out", str(tmp_path / "bad.tar.gz"), *args], capture_output=True, text=True)
        assert bad.returncode != 0 and message in bad.stderr, (args, bad.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs", "packed", "repo", "twin"]


def test_prose_numbers_reads_displayed_results_and_a_decimal_above_every_output(tmp_path):
    """Numbers shown as a cell's result (a table's text) count as outputs; one that moved by less than a unit of the
    quoted precision (0.5312 to 0.5391) no longer rounds to 0.53; a decimal above every output is no error."""
    md = dict(cell_type="markdown", source="Bulk reaches 0.53 after 12.5 epochs.", metadata={})
    for name, shown in [("old", "   loss\n0  0.5312\n"), ("new", "   loss\n0  0.5391\n")]:
        result = dict(output_type="execute_result", data={"text/plain": shown}, metadata={}, execution_count=1)
        code = dict(cell_type="code", source="table", metadata={}, outputs=[result], execution_count=1)
        nb = dict(cells=[md, code], metadata={}, nbformat=4, nbformat_minor=5)
        (tmp_path / f"{name}.ipynb").write_text(json.dumps(nb))
    tool = [sys.executable, str(ROOT / "tools" / "prose_numbers.py"), str(tmp_path / "old.ipynb")]
    out = subprocess.run([*tool, str(tmp_path / "new.ipynb")], capture_output=True, text=True)
    assert (out.returncode, out.stdout) == (1, "old.ipynb cell 0: 0.53\n"), out


def test_build_docs_runs_only_the_imports_of_a_cell_of_imports_and_other_code(tmp_path):
    "nbdev would run it whole (a test that trains, starts processes): only its imports run, its saved output stays."
    saved = dict(output_type="stream", name="stdout", text=["the saved output\n"])
    cells = [
        dict(cell_type="code", source='#| export\ndef f():\n    "A function."\n    return 1', metadata={}),
        dict(
            cell_type="code",
            source=f"import json\nfrom pathlib import Path\nPath({str(tmp_path / 'ran')!r}).touch()\nprint('new')",
            metadata={},
            outputs=[saved],
        ),
        dict(cell_type="code", source="import not_a_module_anywhere\nx = 1", metadata={}),
        dict(cell_type="code", source="#| export\ndef g(a=json.dumps(1)):  # needs the import above\n    return a"),
    ]
    for c in cells:
        c.setdefault("outputs", [])
        c.update(execution_count=None, metadata={})
    (tmp_path / "nb.ipynb").write_text(json.dumps(dict(cells=cells, metadata={}, nbformat=4, nbformat_minor=5)))
    code = (
        "import json, runpy, sys; from pathlib import Path\n"
        f"b = runpy.run_path({str(ROOT / 'tools' / 'build_docs.py')!r})\n"
        "b['nbdev_process'].__globals__['ROOT'] = Path(sys.argv[1])  # the notebook's folder, not the repository\n"
        "print(json.dumps(b['nbdev_process'](Path(sys.argv[1]) / 'nb.ipynb', Path(sys.argv[1]) / 'out.ipynb')))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert not (tmp_path / "ran").exists()  # the cell's other code did not run
    assert any(": its imports failed" in w and "not_a_module_anywhere" in w for w in found), found  # reported
    out = json.loads((tmp_path / "out.ipynb").read_text())["cells"]
    shown = [c for c in out if "Path(" in "".join(c["source"])]
    assert [o.get("text") for o in shown[0]["outputs"]] in ([["the saved output\n"]], [("the saved output\n")]), shown
