"""The code passes ruff's lint and format checks, with the settings in pyproject.toml."""

import subprocess
import sys

import pytest

from helpers import REPO


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_ruff(command):
    proc = subprocess.run([sys.executable, "-m", "ruff", *command, "."], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, f"ruff {' '.join(command)}: run `ruff check --fix . && ruff format .`\n{proc.stdout}"
