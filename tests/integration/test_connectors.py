"""The responder's connectors end to end: a step's call dispatched, enqueued and run by a real effects runner.

Against real things only: a webhook receiver on a local port that verifies each signature with
``verify_signature`` and acts once per idempotency key; a real program that records the arguments
and environment it got; Vigil's block lists in Postgres, polled over HTTP as firewalls poll them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import stat
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from services.responder.connectors import (
    Connector,
    Dispatch,
    StepCall,
    load_connectors,
    parse_connectors_config,
)
from shared.effects import enqueue
from shared.effects.builtin import IDEMPOTENCY_ENV, SIGNATURE_HEADER, TIMESTAMP_HEADER
from shared.effects.domain import verify_signature
from shared.settings import VigilSettings
from shared.topics import TopicNames
from tests.helpers import eventually
from tests.integration.test_blocklist_api import entries, responder_api
from tests.integration.test_effects import SERVICE, make_runner, reaches, running

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

SECRET = "a-signing-secret-only-tests-know"


def step_call(action: str, params: Mapping[str, str | int], *, step_id: str, **overrides: Any) -> StepCall:
    fields: dict[str, Any] = {
        "key": step_id,
        "incident_id": "inc-7",
        "step_id": step_id,
        "action": action,
        "params": dict(params),
        "reason": f"incident inc-7: {action}",
        "expires_at": None,
        **overrides,
    }
    return StepCall(**fields)


def connectors_for(pool: asyncpg.Pool, config: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Connector]:
    # JSON is YAML: the config goes through the same parser as a file.
    return load_connectors(parse_connectors_config(json.dumps(config)), pool=pool, environ=environ)


async def enqueue_call(pool: asyncpg.Pool, call: StepCall, dispatch: Dispatch) -> None:
    """Enqueue the dispatch as the executor does: the call's key is the effect's."""
    async with pool.acquire() as conn, conn.transaction():
        assert await enqueue(
            conn,
            service=SERVICE,
            kind=dispatch.kind,
            key=call.key,
            subject=call.incident_id,
            target=dispatch.target,
            payload=dispatch.payload,
        )


async def run_calls(
    settings: VigilSettings,
    pool: asyncpg.Pool,
    names: TopicNames,
    connector: Connector,
    calls: Sequence[StepCall],
    *,
    status: str = "succeeded",
) -> list[asyncpg.Record]:
    """Dispatch and enqueue each call, run the connector's effect kinds until each reaches ``status``."""
    for call in calls:
        await enqueue_call(pool, call, connector.dispatch(call))
    async with running(make_runner(settings, pool, names, connector.effect_kinds(None))):
        return [await reaches(pool, call.key, status) for call in calls]


# ---- webhook: a receiver that checks what a real one must ------------------------------------------


@dataclass(frozen=True)
class Delivery:
    headers: dict[str, str]
    body: bytes
    verified: bool
    received_at: float


class SignedReceiver:
    """A webhook endpoint on 127.0.0.1: refuses a bad signature (401), acts once per Idempotency-Key.

    ``fail_first`` requests are answered 503 after their signature checks out, as a busy receiver would.
    """

    def __init__(self, secret: str, *, fail_first: int = 0) -> None:
        self.secret = secret.encode()
        self.fail_first = fail_first
        self.deliveries: list[Delivery] = []
        self.acted: collections.Counter[str] = collections.Counter()
        self.port = 0
        self._server: asyncio.Server | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[SignedReceiver]:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readline()  # the request line
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            now = time.time()
            verified = verify_signature(
                self.secret, headers.get(TIMESTAMP_HEADER.lower()), headers.get(SIGNATURE_HEADER.lower()), body, now=now
            )
            self.deliveries.append(Delivery(headers, body, verified, now))
            key = headers.get("idempotency-key", "")
            if not verified:
                status = 401
            elif len(self.deliveries) <= self.fail_first:
                status = 503
            else:
                self.acted[key] += 1  # a real receiver acts on a key's first delivery only
                status = 200
            phrase = HTTPStatus(status).phrase
            writer.write(f"HTTP/1.1 {status} {phrase}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
        finally:
            writer.close()


def webhook_config(receiver: SignedReceiver) -> dict[str, Any]:
    return {
        "webhook": {
            "url": receiver.url("/hooks/vigil"),
            "actions": {"isolate_host": {"url": receiver.url("/edr/isolate")}},
            "secret_env": "VIGIL_WEBHOOK_SECRET",
        }
    }


async def test_a_webhook_step_reaches_a_receiver_that_verifies_its_signature(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    lease_end = datetime(2030, 1, 1, tzinfo=UTC)
    call = step_call("isolate_host", {"host": "web-01"}, step_id="isolate-host#0", expires_at=lease_end)
    async with SignedReceiver(SECRET).serving() as receiver:
        webhook = connectors_for(pool, webhook_config(receiver), {"VIGIL_WEBHOOK_SECRET": SECRET})["webhook"]
        [row] = await run_calls(settings, pool, names, webhook, [call])
    [delivery] = receiver.deliveries
    assert delivery.verified
    assert delivery.headers["idempotency-key"] == "isolate-host#0"
    assert delivery.headers["content-type"] == "application/json"
    assert json.loads(delivery.body) == {
        "key": "isolate-host#0",
        "incident_id": "inc-7",
        "step_id": "isolate-host#0",
        "action": "isolate_host",
        "params": {"host": "web-01"},
        "reason": "incident inc-7: isolate_host",
        "expires_at": "2030-01-01T00:00:00+00:00",
    }
    assert receiver.acted == {"isolate-host#0": 1}
    assert (row["attempts"], row["result"]["status_code"]) == (1, 200)
    # The secret signs; it is stored nowhere.
    assert SECRET not in json.dumps(row["payload"]) + json.dumps(row["result"])


async def test_a_retried_webhook_is_signed_afresh_with_the_same_key(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    call = step_call("collect_forensics", {"host": "db-02"}, step_id="collect-forensics#1")
    async with SignedReceiver(SECRET, fail_first=2).serving() as receiver:
        webhook = connectors_for(pool, webhook_config(receiver), {"VIGIL_WEBHOOK_SECRET": SECRET})["webhook"]
        [row] = await run_calls(settings, pool, names, webhook, [call])
    assert row["attempts"] == 3
    assert [d.verified for d in receiver.deliveries] == [True, True, True]
    assert {d.headers["idempotency-key"] for d in receiver.deliveries} == {"collect-forensics#1"}
    # Each attempt carries the time it was sent at, not the first attempt's.
    for delivery in receiver.deliveries:
        assert abs(delivery.received_at - int(delivery.headers[TIMESTAMP_HEADER.lower()])) <= 2
    assert receiver.acted == {"collect-forensics#1": 1}


async def test_a_receiver_holding_another_secret_refuses_and_the_step_fails_at_once(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    call = step_call("reset_credentials", {"user": "alice"}, step_id="reset-credentials#0")
    async with SignedReceiver("the-receivers-own-other-secret").serving() as receiver:
        webhook = connectors_for(pool, webhook_config(receiver), {"VIGIL_WEBHOOK_SECRET": SECRET})["webhook"]
        [row] = await run_calls(settings, pool, names, webhook, [call], status="failed")
    assert [d.verified for d in receiver.deliveries] == [False]
    assert receiver.acted == {}
    assert (row["attempts"], row["result"]["status_code"]) == (1, 401)


async def test_a_webhook_effect_naming_an_address_no_longer_configured_is_not_sent(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    call = step_call("isolate_host", {"host": "web-01"}, step_id="isolate-host#3")
    async with SignedReceiver(SECRET).serving() as receiver:
        before = connectors_for(pool, webhook_config(receiver), {"VIGIL_WEBHOOK_SECRET": SECRET})["webhook"]
        await enqueue_call(pool, call, before.dispatch(call))
        moved = {"webhook": {"url": receiver.url("/hooks/vigil"), "secret_env": "VIGIL_WEBHOOK_SECRET"}}
        after = connectors_for(pool, moved, {"VIGIL_WEBHOOK_SECRET": SECRET})["webhook"]
        async with running(make_runner(settings, pool, names, after.effect_kinds(None))):
            row = await reaches(pool, call.key, "failed")
    assert receiver.deliveries == []
    assert "is not configured here" in row["last_error"]


# ---- command: a real program records what it got --------------------------------------------------

RECORDER = """#!{python}
import json, os, sys
with open(os.path.join(os.path.dirname(sys.argv[0]), "calls.jsonl"), "a") as out:
    out.write(json.dumps({{"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd()}}) + "\\n")
"""


async def test_a_command_gets_hostile_values_as_single_literal_arguments_and_only_its_allowed_environment(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, tmp_path: Path
) -> None:
    program = tmp_path / "isolate"
    program.write_text(RECORDER.format(python=sys.executable))
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    workdir = tmp_path / "work"
    workdir.mkdir()
    config = {
        "command": {
            "actions": {
                "isolate_host": {
                    "argv": [str(program), "--host", "{host}", "--note=[{note}]", "--request", "{idempotency_key}"],
                    "env": ["EDR_TOKEN", "EDR_REGION"],
                    "cwd": str(workdir),
                }
            }
        }
    }
    environ = {
        "EDR_TOKEN": "edr-token-value",
        "DATABASE_URL": "postgresql://vigil:db-password@db/vigil",
        "KAFKA_SASL_PASSWORD": "broker-password",
        "PATH": os.environ.get("PATH", os.defpath),
    }
    hostile = [
        f"; touch {tmp_path}/shell-ran",
        f"$(touch {tmp_path}/substituted)",
        f"`touch {tmp_path}/backticks`",
        "{note}",
        "{idempotency_key}",
        "a b\tc\nd",
        "*",
        "'\"\\",
    ]
    calls = [
        step_call("isolate_host", {"host": value, "note": value}, step_id=f"isolate-host#{n}")
        for n, value in enumerate(hostile)
    ]
    command = connectors_for(pool, config, environ)["command"]
    rows = await run_calls(settings, pool, names, command, calls)

    records = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    by_key = {record["env"][IDEMPOTENCY_ENV]: record for record in records}
    assert len(records) == len(by_key) == len(hostile)
    for call, value in zip(calls, hostile, strict=True):
        record = by_key[call.key]
        assert record["argv"] == ["--host", value, f"--note=[{value}]", "--request", call.key]
        # Only PATH, the key and the allow-listed variable that is set (EDR_REGION is not).
        assert set(record["env"]) - {"LC_CTYPE"} == {"PATH", IDEMPOTENCY_ENV, "EDR_TOKEN"}
        assert record["env"]["EDR_TOKEN"] == "edr-token-value"
        assert record["cwd"] == str(workdir)
    assert not any((tmp_path / name).exists() for name in ("shell-ran", "substituted", "backticks"))
    # The names of the variables are stored with the effect, never their values.
    stored = json.dumps([row["payload"] for row in rows])
    assert "EDR_TOKEN" in stored
    assert not any(secret in stored for secret in ("edr-token-value", "db-password", "broker-password"))


# ---- blocklist: an entry appears on the list firewalls poll, and goes ------------------------------


async def listed(client: httpx.AsyncClient) -> list[str]:
    return entries(await client.get("/api/v1/blocklist/ip.txt"))


async def test_a_block_appears_on_the_polled_list_and_its_unblock_takes_it_off(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    lease_end = datetime.now(UTC) + timedelta(hours=24)
    block = step_call(
        "block", {"address": "203.0.113.77", "reason": "scanner"}, step_id="block-ip#0", expires_at=lease_end
    )
    unblock = step_call("unblock", {"address": "203.0.113.77"}, step_id="block-ip#0", key="block-ip#0:undo")
    blocklist = connectors_for(pool, {}, {})["blocklist"]
    async with responder_api(settings, pool) as client:  # the responder's real app, polled
        assert await listed(client) == []
        [blocked] = await run_calls(settings, pool, names, blocklist, [block])
        assert await eventually(lambda: listed(client)) == ["203.0.113.77"]
        [unblocked] = await run_calls(settings, pool, names, blocklist, [unblock])

        async def gone() -> bool:
            return await listed(client) == []

        assert await eventually(gone)
    assert blocked["result"] == {"kind": "ip", "value": "203.0.113.77", "added": True}
    assert unblocked["result"] == {"kind": "ip", "value": "203.0.113.77", "removed": True}
    entry = await pool.fetchrow("SELECT * FROM responder_blocklist WHERE value = '203.0.113.77'")
    assert entry is not None
    assert (entry["incident_id"], entry["step_id"], entry["reason"]) == ("inc-7", "block-ip#0", "scanner")
    assert entry["expires_at"] == lease_end
    assert entry["removed_at"] is not None


async def test_a_block_run_again_with_its_key_lists_the_value_once(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    """A repeat (a runner lost mid-call runs it again) changes nothing: the entry is the step's, once."""
    block = step_call("block", {"domain": "Evil.Example."}, step_id="block-domain#0")
    blocklist = connectors_for(pool, {}, {})["blocklist"]
    dispatch = blocklist.dispatch(block)
    [first] = await run_calls(settings, pool, names, blocklist, [block])
    async with pool.acquire() as conn, conn.transaction():  # the same dispatch again, under another effect key
        assert await enqueue(
            conn,
            service=SERVICE,
            kind=dispatch.kind,
            key="block-domain#0:again",
            subject="inc-7",
            target=dispatch.target,
            payload=dispatch.payload,
        )
    async with running(make_runner(settings, pool, names, blocklist.effect_kinds(None))):
        again = await reaches(pool, "block-domain#0:again", "succeeded")
    assert first["result"] == {"kind": "domain", "value": "evil.example", "added": True}
    assert again["result"] == {"kind": "domain", "value": "evil.example", "added": False}
    assert await pool.fetchval("SELECT count(*) FROM responder_blocklist") == 1
