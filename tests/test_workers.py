"""Worker processes (`subspace_opt.workers.run_in_workers`) send a job's failure back with its cause."""

import math
import os
import subprocess
import sys

import pytest

from subspace_opt.workers import run_in_workers


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
            "a worker process ended abruptly (killed, e.g. for lack of memory, or it could not start: see any error "
            "above) with jobs unfinished: run again (finished runs are reused)"
        )
    )
