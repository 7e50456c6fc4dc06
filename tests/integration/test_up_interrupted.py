"""`vigil up` interrupted while it starts (loading, starting Postgres, starting the services): it stops what it
had started, says "stopped" and exits 0, as a Ctrl-C once it runs does; no traceback, no process left."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from shared.embedded import port_is_free
from shared.settings import DEFAULT_HTTP_PORTS
from tests.helpers import vigil_up_ports

# `vigil up` listens on fixed ports: these run one after another with tests/e2e/test_vigil_up.py (the lock
# of `ports` below, the group where pytest-xdist honours it); the wait for the lock counts in the timeout.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("e2e"), pytest.mark.timeout(300)]

PORTS = [9092, *DEFAULT_HTTP_PORTS.values()]
MARKER = "VIGIL_TEST_UP_RUN"  # inherited by every process `vigil up` starts: how those left behind are found


def handles_signals(up: psutil.Process) -> bool:
    """Its own handler is installed: SIGTERM is caught (Python alone leaves it to the default), while the
    commands are still loading."""
    try:
        status = Path(f"/proc/{up.pid}/status").read_text()
    except OSError:  # exited: the caller says so
        return False
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def starting_postgres(up: psutil.Process) -> bool:
    """initdb (the data directory is new) or pg_ctl runs."""
    return any(_name(p) in ("initdb", "pg_ctl") for p in up.children(recursive=True))


def starting_services(up: psutil.Process) -> bool:
    """The five services' processes exist (they take seconds more to be ready)."""
    return sum("services." in " ".join(_cmdline(p)) for p in up.children(recursive=True)) == len(DEFAULT_HTTP_PORTS)


def _name(process: psutil.Process) -> str:
    try:
        return str(process.name())
    except psutil.Error:
        return ""


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return list(process.cmdline())
    except psutil.Error:
        return []


def left_behind(run: str, data_dir: Path) -> list[str]:
    """Processes of this run still there: by the variable they inherited, or a Postgres serving its data."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(MARKER) == run or str(data_dir) in " ".join(process.cmdline()):
                found.append(f"{process.pid} {' '.join(process.cmdline())}")
        except psutil.Error:  # gone meanwhile, or a zombie: not running
            continue
    return found


@pytest.fixture
def ports() -> Iterator[None]:
    with vigil_up_ports():
        if not all(port_is_free(p) for p in PORTS):
            pytest.skip(f"`vigil up` needs its default ports {PORTS}, and one is in use")
        yield


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A new data directory (the first start makes the Postgres data with initdb), not under pytest's basetemp,
    which another pytest run on this machine may prune (as tests/e2e/test_vigil_up.py)."""
    folder = Path(tempfile.mkdtemp(prefix="vigil-up-interrupted-"))
    yield folder / "data"
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize(
    "moment",
    [handles_signals, starting_postgres, starting_services],
    ids=["loading", "starting-postgres", "starting-services"],
)
@pytest.mark.usefixtures("ports")
def test_an_interrupt_while_starting_stops_everything_cleanly(
    moment: Callable[[psutil.Process], bool], data_dir: Path, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")}
    env |= {"VIGIL_DATA_DIR": str(data_dir), "VIGIL_LOG_LEVEL": "WARNING", MARKER: run}
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        # A process group of its own, which gets the SIGINT as a terminal's foreground group gets a Ctrl-C.
        up = subprocess.Popen(
            [sys.executable, "-m", "vigil", "up"], env=env, stdout=stdout, stderr=stderr, start_new_session=True
        )
    try:
        watched = psutil.Process(up.pid)
        deadline = time.monotonic() + 60
        while not moment(watched):
            assert up.poll() is None, f"vigil up exited with {up.returncode} first:\n{err.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{moment.__name__} not seen within 60 s"
            time.sleep(0.02)
        os.killpg(up.pid, signal.SIGINT)
        code = up.wait(60)
        deadline = time.monotonic() + 5
        while (leftovers := left_behind(run, data_dir)) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        for leftover in left_behind(run, data_dir):  # never into the next test
            os.kill(int(leftover.split()[0]), signal.SIGKILL)

    output, errors = out.read_text(), err.read_text()
    assert "Traceback" not in errors + output and "KeyboardInterrupt" not in errors + output, errors
    assert "restarting" not in errors, errors  # no service was taken for crashed and started again
    assert code == 0, errors
    assert output.splitlines()[-1] == "stopped", output
    assert leftovers == [], "processes outlived vigil up"
    assert all(port_is_free(p) for p in PORTS), "a port of vigil up's is still listened on"
    assert not (data_dir / "stack.json").exists(), "a stopped stack is still named for the CLI"
