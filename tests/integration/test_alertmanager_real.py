"""A real Alertmanager, configured with the README's receiver, delivers to the detector's HTTP ingest.

The receiver block is read from README.md, so the documented configuration is the tested one; only
its two placeholders (HOST, TOKEN) are filled in, and the route and timings around it are the test's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from services.detector.adapters import FORMATS, parse_record
from shared.embedded import free_port
from shared.settings import VigilSettings
from shared.topics import ALERTS_RAW, TopicNames
from tests.helpers import eventually, read_all
from tests.integration.test_ingest_http import served_ingest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.skipif("alertmanager" not in FORMATS, reason="the alertmanager adapter is not registered yet"),
]

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = "<!-- alertmanager-receiver"
# Debian and Ubuntu name the binary prometheus-alertmanager; upstream releases name it alertmanager.
BINARY = shutil.which("alertmanager") or shutil.which("prometheus-alertmanager")


def readme_receiver() -> str:
    """The YAML block that follows the marker in README.md, exactly as written there."""
    text = README.read_text()
    assert MARKER in text, "README.md lost its Alertmanager receiver block"
    found = re.search(r"```yaml\n(.*?)```", text[text.index(MARKER) :], re.DOTALL)
    assert found, "no ```yaml block after the Alertmanager marker in README.md"
    return found.group(1)


def alertmanager_config(*, detector: str, token: str) -> str:
    receiver = readme_receiver()
    for placeholder in ("HOST:8081", "TOKEN"):
        assert receiver.count(placeholder) == 1, f"the README's receiver should hold {placeholder} once"
    receiver = receiver.replace("HOST:8081", detector).replace("TOKEN", token)
    # The test's own part: route everything to the receiver, and deliver at once.
    route = "route:\n  receiver: vigil\n  group_by: ['alertname']\n  group_wait: 1s\n  group_interval: 1s\n"
    return route + receiver


@contextlib.asynccontextmanager
async def alertmanager(config: str, tmp_path: Path) -> AsyncIterator[str]:
    """The real Alertmanager binary with this configuration; yields its base URL."""
    assert BINARY is not None
    (tmp_path / "alertmanager.yml").write_text(config)
    port = free_port()
    log = (tmp_path / "alertmanager.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        BINARY,
        f"--config.file={tmp_path / 'alertmanager.yml'}",
        f"--storage.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # no peers: clustering off
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=2) as client:

            async def ready() -> bool:
                if process.returncode is not None:
                    raise AssertionError(f"alertmanager exited: {(tmp_path / 'alertmanager.log').read_text()}")
                try:
                    return (await client.get("/-/ready")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(ready, timeout=30)
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()


@pytest.mark.skipif(BINARY is None, reason="Alertmanager is not installed (apt-get install prometheus-alertmanager)")
async def test_a_real_alertmanager_delivers_to_the_ingest_with_the_readme_receiver(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, tmp_path: Path
) -> None:
    token = secrets.token_urlsafe(16)
    configured = settings.model_copy(update={"ingest_tokens": SecretStr(f"alertmanager:{token},falco:other")})
    alert: dict[str, Any] = {
        "labels": {"alertname": "DiskFull", "instance": "db-07:9100", "severity": "critical"},
        "annotations": {"summary": "Disk almost full on db-07", "description": "/var is 97% full"},
        "startsAt": datetime.now(UTC).isoformat(),
        "generatorURL": "http://prometheus.example.com:9090/graph",
    }
    async with (
        served_ingest(configured, pool) as detector,
        alertmanager(alertmanager_config(detector=detector, token=token), tmp_path) as url,
        httpx.AsyncClient(base_url=url, timeout=5) as client,
    ):
        posted = await client.post("/api/v2/alerts", json=[alert])
        assert posted.status_code == 200, posted.text
        (record,) = await read_all(configured, names(ALERTS_RAW), expect=1, timeout=60)
        # The condition ends: Alertmanager sends the resolved notification too (send_resolved).
        ended = await client.post("/api/v2/alerts", json=[{**alert, "endsAt": datetime.now(UTC).isoformat()}])
        assert ended.status_code == 200, ended.text
        resolved = (await read_all(configured, names(ALERTS_RAW), expect=2, timeout=60))[-1]

    headers = dict(record.headers or ())
    assert headers["vigil_format"] == b"alertmanager"
    assert headers["vigil_ingest_source"] == b"alertmanager"  # the README's credentials were sent
    payload = json.loads(record.value)
    # Keyed by the group: the group's later notification (its resolution here) is read after this one.
    assert record.key == f"alertmanager:{payload['groupKey']}".encode()
    assert payload["receiver"] == "vigil" and payload["version"] == "4"
    (sent,) = payload["alerts"]
    assert sent["labels"] == alert["labels"] and sent["status"] == "firing"
    (read,) = parse_record(record.value).alerts
    assert (read.format, read.host, read.severity.value, read.title) == (
        "alertmanager",
        "db-07",
        "critical",
        "Disk almost full on db-07",
    )
    (closed,) = parse_record(resolved.value).alerts
    assert (closed.status, closed.id, resolved.key) == ("resolved", read.id, record.key)
