"""ruff (pyproject.toml's [tool.ruff]) finds nothing in the repository: the linter runs with the tests,
so `.ci/run` and the README's test command gate on it."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "."],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, f"ruff check . found (fix with `.venv/bin/ruff check --fix .`):\n{result.stdout}{result.stderr}"
