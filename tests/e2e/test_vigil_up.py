"""`vigil up --demo` on the embedded default: incidents flow, Ctrl-C stops everything, data survives."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.embedded import port_is_free
from shared.settings import DEFAULT_HTTP_PORTS
from tests.helpers import vigil_up_ports

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")}
    env |= {"VIGIL_DATA_DIR": str(data_dir), "VIGIL_LOG_LEVEL": "WARNING"}
    return env


def _vigil(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """A `vigil` command, as from another shell with this environment."""
    return subprocess.run(
        [sys.executable, "-m", "vigil.cli", *args], capture_output=True, text=True, env=env, timeout=30
    )


def _incidents(env: dict[str, str]) -> list[dict[str, Any]]:
    listed = _vigil(env, "incidents", "list", "--json")
    if listed.returncode != 0 and "cannot reach the reporter" in listed.stderr:
        return []  # the stack is still starting: poll again
    assert listed.returncode == 0, f"vigil incidents list failed:\n{listed.stderr}"
    incidents: list[dict[str, Any]] = json.loads(listed.stdout)
    return incidents


def _tokens(env: dict[str, str]) -> list[dict[str, Any]]:
    """`vigil tokens list`, a command that reads Vigil's database directly, from another shell's environment."""
    listed = _vigil(env, "tokens", "list", "--json")
    assert listed.returncode == 0, f"vigil tokens list failed:\n{listed.stderr}"
    tokens: list[dict[str, Any]] = json.loads(listed.stdout)
    return tokens


def _run_until(env: dict[str, str], log: Path, done: Any, timeout: float) -> Any:
    """Start `vigil up --demo`, wait for ``done`` to return something, then Ctrl-C it."""
    with open(log, "ab") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "vigil.cli", "up", "--demo", "--demo-interval", "0.3"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + timeout
            result = None
            while time.monotonic() < deadline and up.poll() is None:
                result = done()
                if result:
                    break
                time.sleep(1)
        finally:
            up.send_signal(signal.SIGINT)
            try:
                code = up.wait(60)
            except subprocess.TimeoutExpired as hung:
                up.kill()
                up.wait()
                tail = log.read_text()[-4000:]
                raise AssertionError(f"vigil up did not stop within 60s of Ctrl-C:\n{tail}") from hung
    assert result, f"not seen within {timeout}s:\n{log.read_text()[-4000:]}"
    assert code == 0, log.read_text()[-4000:]
    return result


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """The stack's data folder, not under pytest's basetemp: another pytest run on this machine prunes old
    basetemps, which would delete the embedded Postgres' data directory from under it (as tests/conftest.py)."""
    folder = Path(tempfile.mkdtemp(prefix="vigil-up-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def ports() -> Iterator[list[int]]:
    """`vigil up`'s ports, for this test alone (tests/integration/test_up_interrupted.py also starts it)."""
    ports = [9092, *DEFAULT_HTTP_PORTS.values()]
    with vigil_up_ports():
        if not all(port_is_free(p) for p in ports):
            pytest.skip(f"`vigil up` needs its default ports {ports}, and one is in use")
        yield ports


def test_vigil_up_runs_the_stack_and_keeps_incidents(tmp_path: Path, open_folder: Path, ports: list[int]) -> None:
    env = _env(open_folder / "data")
    log = tmp_path / "up.log"

    seen: dict[str, Any] = {}

    def incidents_and_tokens() -> list[dict[str, Any]]:
        incidents = _incidents(env)
        if incidents:
            # Commands that read the database find the embedded Postgres `vigil up` started (its socket is in
            # the data directory), named by nothing in their environment.
            seen["tokens"] = _tokens(env)
        return incidents

    first = _run_until(env, log, incidents_and_tokens, timeout=120)
    assert {"id", "type", "severity", "state", "alert_count", "commander", "created_at"} <= set(first[0])
    assert [t["created_by"] for t in seen["tokens"]] == ["vigil up"]
    assert not (open_folder / "data" / "stack.json").exists(), "a stopped stack is still named for the CLI"
    assert "Vigil is up" in log.read_text()
    # Everything stopped: the ports are free again.
    assert all(port_is_free(p) for p in ports), "a process outlived vigil up"

    # Postgres keeps its data under VIGIL_DATA_DIR: the incidents are still there after a restart.
    known = {i["id"] for i in first}
    again = _run_until(env, log, lambda: [i for i in _incidents(env) if i["id"] in known], timeout=120)
    assert again
