"""Ctrl-C's default for the tests and the processes they start; and with `--durations`, the seconds spent in each test
file (setup, call and teardown summed): under `pytest -n 2 --dist loadfile` each file runs whole in one worker, so these
sums are what the workers' loads are made of.
"""

import signal
from collections import defaultdict


def pytest_configure(config):
    """SIGINT raises KeyboardInterrupt here and is the default in every process a test starts, as under a terminal,
    whatever this process inherited: a shell without job control (`nohup pytest &`, a CI runner) starts commands with
    SIGINT ignored, children inherit that, and a tool a test interrupts with SIGINT would ignore it (a bash script
    cannot even trap a signal ignored when it started)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


_SECONDS = defaultdict(float)  # test file -> seconds of its tests' phases, as reported (by the workers under xdist)


def pytest_runtest_logreport(report):
    _SECONDS[report.nodeid.split("::")[0]] += report.duration


def pytest_terminal_summary(terminalreporter, config):
    if not config.getoption("durations", None) or not _SECONDS:
        return
    terminalreporter.section("seconds per test file")
    for path, seconds in sorted(_SECONDS.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{seconds:8.1f} s  {path}")
    terminalreporter.write_line(f"{sum(_SECONDS.values()):8.1f} s  in all")
