"""Worker processes (`subspace_opt.workers.run_in_workers`) send a job's failure back with its cause."""

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from subspace_opt.config import UserError
from subspace_opt.workers import JobsFailed, run_in_workers


class TwoArgs(Exception):
    "An exception whose constructor takes two arguments: pickle cannot rebuild it from its message alone."

    def __init__(self, what, why):
        super().__init__(f"{what}: {why}")


def fails_with_two_args(job):
    if job == 2:
        raise TwoArgs(f"run{job}", "config value out of range")
    return job


def test_an_exception_that_does_not_unpickle_comes_back_with_its_cause():
    "Not 'a worker process ended abruptly (killed, e.g. for lack of memory)': the job's own error, named."
    with pytest.raises(RuntimeError, match=r"^TwoArgs: run2: config value out of range\n(.|\n)*fails_with_two_args"):
        run_in_workers(fails_with_two_args, [1, 2], workers=2)
    with pytest.raises(ValueError, match="math domain error"):  # one that travels, as it is
        run_in_workers(math.sqrt, [4.0, -1.0], workers=2)


def flaky(job):  # (what to do, its value): return the value after a nap, raise, or kill this worker
    what, value = job
    if what == "raise":
        raise ValueError(f"bad value {value}")
    if what == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.2)
    return value


def test_with_keep_going_every_other_job_runs_and_one_error_names_each_failure():
    "A job that raises and a worker killed mid-job: each fails alone, named; every other job ends, in a fresh pool."
    jobs = [("ok", 1), ("raise", 2), ("ok", 3), ("kill", 4), ("ok", 5), ("ok", 6), ("ok", 7)]
    with pytest.raises(JobsFailed) as failed:
        run_in_workers(flaky, jobs, workers=2, keep_going=True, names=[f"run{v}" for _, v in jobs])
    e = failed.value
    assert sorted(name for name, _ in e.failures) == ["run2", "run4"] and (e.finished, e.total) == (5, 7), str(e)
    assert "run2 (ValueError: bad value 2)" in str(e) and str(e).endswith("; 5 finished"), str(e)
    killed = dict(e.failures)["run4"]
    assert isinstance(killed, UserError) and "killed by SIGKILL" in str(killed), killed
    assert isinstance(e.__cause__, (ValueError, UserError))  # the first failure


def test_a_lambda_or_a_nested_function_is_refused_before_any_worker_starts():
    "Workers import `fn` by its module and name: one without such a name (in an importable module) is named at once."

    def nested(job):
        return job

    for fn in (nested, lambda job: job):
        with pytest.raises(UserError, match=r"^`fn` must be a module-level function of an importable module"):
            run_in_workers(fn, [1, 2], workers=2)
    assert run_in_workers(nested, [1, 2]) == [1, 2]  # in this process (one worker), any function does


def test_a_script_without_a_main_guard_fails_fast_and_says_why(tmp_path):
    "Workers import the script that started them: unguarded, they fail as they start; both errors say so, no hang."
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import math\nfrom subspace_opt.workers import run_in_workers\n"
        "print(run_in_workers(math.sqrt, [1.0, 4.0], workers=2))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode != 0
    assert "__main__" in proc.stderr  # Python's own advice, from the worker that could not start
    assert (
        proc.stderr.rstrip()
        .splitlines()[-1]
        .endswith(
            "a worker process ended abruptly (exit status 1: it failed, or could not start: see any error above) "
            "with jobs unfinished: run again (finished runs are reused)"
        )
    )


JOBS = """import os, signal, time
from pathlib import Path


def nap(job):  # (folder, seconds, hold SIGTERM): note this worker's pid, then sleep
    folder, seconds, hold = job
    asked = []
    if hold:  # as a training run holds SIGTERM until its step is checkpointed, then takes it
        signal.signal(signal.SIGTERM, lambda sig, frame: asked.append(sig))
    Path(folder, f"{os.getpid()}.pid").write_text("")
    time.sleep(seconds)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if asked:
        signal.raise_signal(signal.SIGTERM)
    return os.getpid()
"""


def _owner(tmp_path, seconds, hold, keep_going=False):
    "A process that runs two `nap` jobs in two workers (its script's folder holds the jobs' module); and their pids."
    (tmp_path / "jobs.py").write_text(JOBS)
    (tmp_path / "owner.py").write_text(
        "from jobs import nap\nfrom subspace_opt.workers import run_in_workers\n"
        "if __name__ == '__main__':\n"
        f"    run_in_workers(nap, [({str(tmp_path)!r}, {seconds}, {hold})] * 2, workers=2, "
        f"keep_going={keep_going})\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # stderr to a file: the workers hold a pipe open past the owner
    proc = subprocess.Popen([sys.executable, str(tmp_path / "owner.py")], env=env, stderr=(tmp_path / "err").open("w"))
    deadline = time.time() + 120
    while len(list(tmp_path.glob("*.pid"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    pids = [int(f.stem) for f in tmp_path.glob("*.pid")]
    assert len(pids) == 2, (pids, proc.poll())
    return proc, pids


def _running(pid):
    "Whether `pid` runs (a zombie has ended)."
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_workers_end_when_their_owner_is_killed(tmp_path):
    "`kill -9` of the pool's owner (or the kernel's, for lack of memory): its workers stop too, not after their jobs."
    proc, pids = _owner(tmp_path, 120, False)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    deadline = time.time() + 30  # the jobs would sleep 120 s
    while any(_running(p) for p in pids) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(_running(p) for p in pids), "a worker runs on without its owner"


@pytest.mark.parametrize("keep_going", [False, True])
def test_the_owner_waits_for_its_workers_when_the_forkserver_is_stopped(tmp_path, keep_going):
    """SIGTERM to the forkserver (a `pkill -f` that matches it): the owner returns only once its workers have ended;
    with `keep_going` too, the whole pool's end, not a failure of the jobs its workers ran, nor a fresh pool."""
    proc, pids = _owner(tmp_path, 4, True, keep_going)
    parents = {int(Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()[1]) for p in pids}
    assert len(parents) == 1, parents  # the forkserver that started both
    os.kill(parents.pop(), signal.SIGTERM)
    proc.wait(timeout=120)
    running = [p for p in pids if _running(p)]
    err = (tmp_path / "err").read_text()
    assert proc.returncode == 1 and "a worker process ended abruptly (exit status 255" in err, err
    assert not running, "the owner returned while a worker was running"


def nap_then(job):  # (seconds, value): the value, after a nap
    seconds, value = job
    time.sleep(seconds)
    return value


def test_results_come_in_job_order_whatever_order_the_jobs_end_in():
    "The first job ends last, its worker busy while the other takes every other job: its result is still the first."
    jobs = [(3.0, "a"), (0.0, "b"), (0.0, "c"), (0.0, "d")]
    assert run_in_workers(nap_then, jobs, workers=2) == ["a", "b", "c", "d"]


HANGS = """
import time
from subspace_opt.workers import run_in_workers


def test_a_job_that_never_ends():
    run_in_workers(time.sleep, [1e9, 1e9], workers=2)
"""


def test_a_test_that_hangs_in_its_worker_processes_fails_by_the_timeout_naming_itself(tmp_path):
    """pytest.ini's timeout (pytest-timeout: every thread's stack, then the process ends) turns a pool whose jobs never
    end into a failed test instead of a suite stalled to CI's limit; the timeout lies above the slowest test."""
    ini = Path(__file__).parents[1] / "pytest.ini"
    assert int(dict(l.split(" = ") for l in ini.read_text().splitlines() if " = " in l)["timeout"]) >= 600
    (tmp_path / "test_hangs.py").write_text(HANGS)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(ini), "--rootdir", str(tmp_path)]
    start, env = time.monotonic(), {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [*cmd, "-o", "timeout=8", "test_hangs.py"], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env
    )
    printed = out.stdout + out.stderr
    assert out.returncode != 0 and time.monotonic() - start < 90, printed[-3000:]
    assert "Timeout" in printed and "test_a_job_that_never_ends" in printed, printed[-3000:]


def modules_loaded(names):  # in a worker: which of these modules were imported before its job came
    return [name in sys.modules for name in names]


def test_workers_start_with_the_package_and_torchs_compiler_front_end_imported(tmp_path):
    "The forkserver imports them once (`workers.PRELOAD`): no worker pays for them, not even the first job's."
    script = tmp_path / "probe.py"  # a fresh process, whose forkserver starts with this module's list
    script.write_text(
        f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_workers import modules_loaded\nfrom subspace_opt.workers import PRELOAD, run_in_workers\n"
        "if __name__ == '__main__':\n"
        "    print(run_in_workers(modules_loaded, [['subspace_opt.train', 'torch._dynamo']] * 2, workers=2))\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[[True, True], [True, True]]", done.stdout
