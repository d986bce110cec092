"""Worker processes (`subspace_opt.workers.run_in_workers`) send a job's failure back with its cause."""

import math

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
