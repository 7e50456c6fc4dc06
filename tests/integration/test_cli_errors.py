"""The CLI on everyday failures: a database it cannot use, a broker it cannot reach, a file it cannot read,
a port another stack holds. Each is one line saying what is wrong and a non-zero exit, never a traceback."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from typer.testing import CliRunner, Result

from shared.embedded import free_port
from shared.settings import VigilSettings
from tests.helpers import empty_database
from vigil import stack
from vigil.cli import app

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def vigil(*args: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, app, list(args))


def failed_cleanly(result: Result, says: str) -> None:
    assert result.exit_code == 1, result.output
    assert says in result.output, result.output
    # One line, however long what it names: a script greps for it, a log keeps it whole.
    assert result.output.strip().count("\n") == 0, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


async def test_a_database_that_refuses_the_connection_or_is_not_vigils_is_said_so(
    postgres_admin_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = urlsplit(postgres_admin_url)._replace(path="/no_such_vigil_database").geturl()
    monkeypatch.setenv("DATABASE_URL", missing)
    failed_cleanly(await vigil("outbox", "parked"), "the database refused the connection")
    async with empty_database(postgres_admin_url) as url:
        monkeypatch.setenv("DATABASE_URL", url)
        failed_cleanly(await vigil("outbox", "parked"), "not a Vigil database")


async def test_following_events_with_the_broker_unreachable_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")
    failed_cleanly(await vigil("events", "tail"), "cannot reach the broker")


async def test_sending_alerts_from_a_file_that_is_not_there_says_so(tmp_path: Path) -> None:
    failed_cleanly(await vigil("alert", "send", str(tmp_path / "missing.json")), "cannot be read")


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something listens on, as another stack's service would."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def test_a_stack_whose_service_ports_are_taken_does_not_start(
    listening: int, settings: VigilSettings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(stack, "DEFAULT_HTTP_PORTS", {"reporter": listening})
    with pytest.raises(stack.PortsInUse, match=f"reporter :{listening}"):
        await stack.run_stack(settings, demo=False, demo_interval=1.0, console=None)  # type: ignore[arg-type]


async def test_an_export_that_fails_leaves_the_file_it_would_replace_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = tmp_path / "incidents.csv"
    kept.write_text("last week's export\n")
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/vigil")
    failed_cleanly(await vigil("export", "incidents", "--out", str(kept)), "cannot reach the database")
    assert kept.read_text() == "last week's export\n"
    assert await asyncio.to_thread(os.listdir, tmp_path) == ["incidents.csv"]  # nothing half-written left
