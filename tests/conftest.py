"""With `--durations`, pytest also prints the seconds spent in each test file (setup, call and teardown summed): under
`pytest -n 2 --dist loadfile` each file runs whole in one worker, so these sums are what the workers' loads are made of.
"""

from collections import defaultdict

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
