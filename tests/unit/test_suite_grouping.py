"""The suite's own machinery: `make test` keeps an xdist_group on one worker.

The end-to-end tests rely on it (`tests/conftest.py` groups them): they start `vigil up`, which listens on
fixed ports. A pytest or pytest-xdist release that stops honouring the group spreads them over the
workers without a word (pytest-dev/pytest-xdist#1386), and they then fail at random.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

GROUPED = """
import os

import pytest


@pytest.mark.xdist_group("together")
@pytest.mark.parametrize("i", range(6))
def test_grouped(i):
    with open(os.environ["WORKERS_FILE"], "a") as out:
        out.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")
"""


def test_an_xdist_group_runs_on_one_worker_as_make_test_distributes(tmp_path: Path) -> None:
    (tmp_path / "test_grouped.py").write_text(GROUPED)
    workers_file = tmp_path / "workers.txt"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "-n", "3"]
    command += ["--dist", "loadgroup", "--rootdir", str(tmp_path), "-c", "/dev/null", str(tmp_path)]
    run = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "WORKERS_FILE": str(workers_file)},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    workers = workers_file.read_text().split()
    assert len(workers) == 6
    # One worker for the whole group: else this pytest and pytest-xdist no longer keep groups together.
    assert len(set(workers)) == 1, f"the group ran on {sorted(set(workers))}"
