"""The suite's time budget is enforced on whole-suite runs only."""

import pytest


@pytest.mark.parametrize(
    "budget, args, code", [("0", [], 1), ("1e9", [], 0), ("0", ["test_x.py"], 0), ("0", ["-k", "ok"], 0)]
)
def test_a_whole_suite_over_its_budget_fails(pytester, monkeypatch, budget, args, code):
    pytester.makeini("[pytest]\ntestpaths = .\n")
    pytester.makepyfile(test_x="def test_ok():\n    pass\n")
    monkeypatch.setenv("ODEDIFF_SUITE_BUDGET_S", budget)
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    result = pytester.runpytest_inprocess("-p", "suite_budget", *args)
    assert result.ret == code
    assert ("over its budget" in result.stderr.str()) == bool(code)
