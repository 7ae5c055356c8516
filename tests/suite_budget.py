"""A pytest plugin that fails a whole-suite run (no paths, -k or -m given) over its time budget."""

import os
import sys
import time

import pytest

_START = pytest.StashKey[float]()


def budget_seconds() -> float:
    """`pytest -n 2` on 2 CPU cores (the goal is 300 s); ODEDIFF_SUITE_BUDGET_S overrides it."""
    return float(os.environ.get("ODEDIFF_SUITE_BUDGET_S", 540))


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_START] = time.monotonic()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if os.environ.get("PYTEST_XDIST_WORKER") or exitstatus != 0:
        return
    whole = config.args_source is pytest.Config.ArgsSource.TESTPATHS
    elapsed, budget = time.monotonic() - config.stash[_START], budget_seconds()
    if whole and not config.option.keyword and not config.option.markexpr and elapsed > budget:
        print(
            f"\nthe whole suite took {elapsed:.0f} s, over its budget of {budget:.0f} s "
            f"(ODEDIFF_SUITE_BUDGET_S): make the slowest tests (--durations=25) cheaper",
            file=sys.stderr,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
