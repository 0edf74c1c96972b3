"""Each example script runs end to end (with --quick: a tiny network, an epoch or two)."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script):
    result = subprocess.run(
        [sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_all_user_stories_have_an_example():
    names = {p.name for p in EXAMPLES}
    assert {
        "quickstart.py",
        "pipeline_and_search.py",
        "grid_search.py",
        "save_and_load.py",
    } <= names
