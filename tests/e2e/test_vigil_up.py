"""`vigil up --demo` on the embedded default: incidents flow, Ctrl-C stops everything, data survives."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from shared.embedded import port_is_free
from shared.settings import DEFAULT_HTTP_PORTS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")}
    env |= {"VIGIL_DATA_DIR": str(data_dir), "VIGIL_LOG_LEVEL": "WARNING"}
    return env


def _incidents(env: dict[str, str]) -> list[dict[str, Any]]:
    listed = subprocess.run(
        [sys.executable, "-m", "vigil.cli", "incidents", "list", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    if listed.returncode != 0 and "cannot reach the reporter" in listed.stderr:
        return []  # the stack is still starting: poll again
    assert listed.returncode == 0, f"vigil incidents list failed:\n{listed.stderr}"
    incidents: list[dict[str, Any]] = json.loads(listed.stdout)
    return incidents


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


def test_vigil_up_runs_the_stack_and_keeps_incidents(tmp_path: Path) -> None:
    ports = [9092, *DEFAULT_HTTP_PORTS.values()]
    if not all(port_is_free(p) for p in ports):
        pytest.skip(f"`vigil up` needs its default ports {ports}, and one is in use")
    env = _env(tmp_path / "data")
    log = tmp_path / "up.log"

    first = _run_until(env, log, lambda: _incidents(env), timeout=120)
    assert {"id", "type", "severity", "state", "alert_count", "commander", "created_at"} <= set(first[0])
    assert "Vigil is up" in log.read_text()
    # Everything stopped: the ports are free again.
    assert all(port_is_free(p) for p in ports), "a process outlived vigil up"

    # Postgres keeps its data under VIGIL_DATA_DIR: the incidents are still there after a restart.
    known = {i["id"] for i in first}
    again = _run_until(env, log, lambda: [i for i in _incidents(env) if i["id"] in known], timeout=120)
    assert again
