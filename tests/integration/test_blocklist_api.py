"""The blocklists over HTTP as firewalls poll them, and the kill switch through the CLI, on real Postgres."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest
from typer.testing import CliRunner

from services.responder import api, blocklist
from services.responder.connectors import BlocklistConnector
from services.responder.guardrails import Action, RateLimiter, get_controls, load_guardrails
from shared.effects import Effect, PermanentEffectError
from shared.kafka import make_producer
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
from shared.topics import TopicNames
from vigil.cli import app as cli

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

HASH = "ab" * 32


@contextlib.asynccontextmanager
async def responder_api(settings: VigilSettings, pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    """The responder's real app (its routers on build_app) on the test database, over HTTP."""
    producer = make_producer(settings, client_id="responder-api-test")
    await producer.start()
    try:
        runtime = Runtime(
            service="responder",
            settings=settings,
            pool=pool,
            producer=producer,
            names=TopicNames(settings.topic_prefix),
        )
        app = build_app(runtime, [api.blocklist_router(runtime)])
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://responder") as client:
            yield client
    finally:
        await producer.stop()


async def add(pool: asyncpg.Pool, kind: str, value: str, step: str = "step-1", **kwargs: object) -> bool:
    async with pool.acquire() as conn, conn.transaction():
        _, created = await blocklist.add(
            conn,
            kind=kind,
            value=value,
            incident_id="inc-1",
            step_id=step,
            reason="test",
            **kwargs,  # type: ignore[arg-type]
        )
    return created


def entries(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    lines = response.text.splitlines()
    body = [line for line in lines if not line.startswith("#")]
    assert lines[: len(lines) - len(body)] == [line for line in lines if line.startswith("#")]  # comments on top
    return body


async def test_each_list_serves_its_active_entries_one_a_line(settings: VigilSettings, pool: asyncpg.Pool) -> None:
    past = datetime.now(UTC) - timedelta(minutes=1)
    future = datetime.now(UTC) + timedelta(hours=1)
    assert await add(pool, "ip", "203.0.113.77/24")
    assert await add(pool, "ip", "198.51.100.7", expires_at=future)
    assert await add(pool, "ip", "2001:DB8::1")
    assert await add(pool, "ip", "192.0.2.1", expires_at=past)  # already expired
    assert await add(pool, "ip", "203.0.113.9", step="step-2")
    assert await add(pool, "domain", "Evil.Example.")
    assert await add(pool, "domain", "evil.example", step="step-2")  # a second step, served once
    assert await add(pool, "url", "https://evil.example/drop?x=1")
    assert await add(pool, "sha256", HASH.upper())
    assert not await add(pool, "ip", "203.0.113.0/24")  # the same value from the same step: no new entry
    async with pool.acquire() as conn:
        assert await blocklist.remove(conn, kind="ip", value="203.0.113.9", step_id="step-2")
        assert not await blocklist.remove(conn, kind="ip", value="203.0.113.9", step_id="step-2")
        assert await conn.fetchval("SELECT count(*) FROM responder_blocklist") == 9  # removal keeps the row

    async with responder_api(settings, pool) as client:
        assert entries(await client.get("/api/v1/blocklist/ip.txt")) == [
            "198.51.100.7",
            "2001:db8::1",
            "203.0.113.0/24",
        ]
        assert entries(await client.get("/api/v1/blocklist/domain.txt")) == ["evil.example"]
        assert entries(await client.get("/api/v1/blocklist/url.txt")) == ["evil.example/drop?x=1"]
        assert entries(await client.get("/api/v1/blocklist/sha256.txt")) == [HASH]
        nft = await client.get("/api/v1/blocklist/nftables.nft")
        # Read-only: nothing can be written through the lists.
        assert (await client.post("/api/v1/blocklist/ip.txt", content="10.0.0.1")).status_code == 405
        assert (await client.delete("/api/v1/blocklist/ip.txt")).status_code == 405
    assert nft.status_code == 200
    assert "elements = { 198.51.100.7, 203.0.113.0/24 }" in nft.text
    assert "elements = { 2001:db8::1 }" in nft.text
    assert "192.0.2.1" not in nft.text and "203.0.113.9" not in nft.text


async def test_the_nftables_script_is_accepted_by_nft(
    settings: VigilSettings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    nft = shutil.which("nft")
    if nft is None:
        pytest.skip("nft is not installed (apt-get install nftables) so the script cannot be checked")
    for value in ("203.0.113.0/24", "203.0.113.5", "198.51.100.7", "2001:db8::/32", "2001:db8::1"):
        await add(pool, "ip", value)
    async with responder_api(settings, pool) as client:
        script = (await client.get("/api/v1/blocklist/nftables.nft")).text
    path = tmp_path / "blocklist.nft"
    path.write_text(script)
    checked = await asyncio.to_thread(
        subprocess.run, [nft, "-c", "-f", str(path)], capture_output=True, text=True, check=False
    )
    if checked.returncode != 0 and "Operation not permitted" in checked.stderr:
        pytest.skip("nft -c needs CAP_NET_ADMIN here")
    assert checked.returncode == 0, checked.stderr


async def test_a_poller_gets_304_until_an_entry_is_added_removed_or_expires(
    settings: VigilSettings, pool: asyncpg.Pool
) -> None:
    await add(pool, "ip", "203.0.113.1")
    await add(pool, "ip", "203.0.113.2", expires_at=datetime.now(UTC) + timedelta(days=1))
    url = "/api/v1/blocklist/ip.txt"
    async with responder_api(settings, pool) as client:
        first = await client.get(url)
        tag = first.headers["etag"]
        unchanged = await client.get(url, headers={"If-None-Match": tag})
        assert (unchanged.status_code, unchanged.content, unchanged.headers["etag"]) == (304, b"", tag)

        await add(pool, "ip", "203.0.113.3")
        added = await client.get(url, headers={"If-None-Match": tag})
        assert entries(added) == ["203.0.113.1", "203.0.113.2", "203.0.113.3"]
        tag = added.headers["etag"]

        async with pool.acquire() as conn:
            assert await blocklist.remove(conn, kind="ip", value="203.0.113.3", step_id="step-1")
        removed = await client.get(url, headers={"If-None-Match": tag})
        assert entries(removed) == ["203.0.113.1", "203.0.113.2"]
        tag = removed.headers["etag"]

        # Its expiry comes: the entry leaves the list by itself.
        await pool.execute("UPDATE responder_blocklist SET expires_at = now() WHERE value = '203.0.113.2'")
        expired = await client.get(url, headers={"If-None-Match": tag})
        assert entries(expired) == ["203.0.113.1"]
        assert (await client.get(url, headers={"If-None-Match": expired.headers["etag"]})).status_code == 304


async def test_a_poller_using_last_modified_gets_304_until_the_list_changes(
    settings: VigilSettings, pool: asyncpg.Pool
) -> None:
    url = "/api/v1/blocklist/domain.txt"
    async with responder_api(settings, pool) as client:
        never_used = await client.get(url)
        assert entries(never_used) == [] and "last-modified" not in never_used.headers

        await add(pool, "domain", "evil.example")
        fresh = await client.get(url)
        # Changed within the current second: no Last-Modified yet, or a later change in that
        # second would look older than the poller's copy.
        assert "last-modified" not in fresh.headers

        await pool.execute("UPDATE responder_blocklist SET created_at = created_at - interval '1 minute'")
        first = await client.get(url)
        since = first.headers["last-modified"]
        assert (await client.get(url, headers={"If-Modified-Since": since})).status_code == 304

        await add(pool, "domain", "worse.example")
        await pool.execute(
            "UPDATE responder_blocklist SET created_at = created_at - interval '2 seconds'"
            " WHERE value = 'worse.example'"
        )
        changed = await client.get(url, headers={"If-Modified-Since": since})
        assert entries(changed) == ["evil.example", "worse.example"]
        assert changed.headers["last-modified"] != since


async def test_pause_and_resume_through_the_cli(
    settings: VigilSettings, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    runner = CliRunner()

    status = await asyncio.to_thread(runner.invoke, cli, ["response", "status", "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["paused"] is False

    paused = await asyncio.to_thread(
        runner.invoke, cli, ["response", "pause", "--reason", "false positives", "--actor", "alice"]
    )
    assert paused.exit_code == 0, paused.output
    async with pool.acquire() as conn:
        controls = await get_controls(conn)
    assert (controls.paused, controls.reason, controls.changed_by) == (True, "false positives", "alice")
    status = await asyncio.to_thread(runner.invoke, cli, ["response", "status"])
    assert "paused" in status.output and "alice" in status.output and "false positives" in status.output

    resumed = await asyncio.to_thread(runner.invoke, cli, ["response", "resume", "--actor", "bob"])
    assert resumed.exit_code == 0, resumed.output
    async with pool.acquire() as conn:
        controls = await get_controls(conn)
    assert (controls.paused, controls.changed_by) == (False, "bob")
    status = await asyncio.to_thread(runner.invoke, cli, ["response", "status", "--json"])
    assert json.loads(status.output)["paused"] is False and json.loads(status.output)["changed_by"] == "bob"


async def test_the_cli_shows_how_much_of_each_rate_limit_the_dispatches_use(
    settings: VigilSettings,
    pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    rate_limiter: RateLimiter,
) -> None:
    rails = tmp_path / "guardrails.yaml"
    rails.write_text(
        "never_block: {networks: [10.0.0.0/8]}\n"
        "rate_limits:\n"
        "  - {action: block_ip, per: action, limit: 5, window: 10m}\n"
        "  - {action: '*', per: target, limit: 2, window: 1h}\n"
        "blast_radius: {per_step: 50, per_incident: 200}\n"
    )
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("VIGIL_RESPONDER_GUARDRAILS", str(rails))
    limits = load_guardrails(rails).rate_limits
    limiter = rate_limiter
    block = Action(name="block_ip", target_kind="ip", incident_id="inc-u")
    now = datetime.now(UTC)
    for n, address in enumerate(["203.0.113.7", "203.0.113.7", "203.0.113.8"]):
        assert (await limiter.take(f"inc-u:block:{n}", block, [address], limits, now=now)).allowed
    status = await asyncio.to_thread(CliRunner().invoke, cli, ["response", "status", "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["rate_limits"] == [
        {"action": "block_ip", "per": "action", "limit": 5, "window": "10m", "used": 3},
        {"action": "*", "per": "target", "limit": 2, "window": "1h", "used": 2, "target": "203.0.113.7"},
    ]
    table = await asyncio.to_thread(CliRunner().invoke, cli, ["response", "status"])
    assert "3 of 5" in table.output and "2 of 2" in table.output and "203.0.113.7" in table.output


async def test_the_undo_of_a_block_another_step_made_too_is_confirmed_with_the_other_named(pool: asyncpg.Pool) -> None:
    """Two incidents block one address; the first one's lease ends: its entry is off, the address still served."""
    connector = BlocklistConnector(pool)
    validate = next(kind for kind in connector.effect_kinds(None) if kind.name == connector.validate_kind)

    def check(op: str, step_id: str) -> Effect:
        now = datetime.now(UTC)
        payload = {"op": op, "kind": "ip", "value": "203.0.113.7", "step_id": step_id}
        return Effect(
            1, "responder", validate.name, f"{step_id}:undo:validate", "inc", "blocklist", payload, 0, now, now
        )

    async with pool.acquire() as conn:
        for step_id in ("inc-a:block:1", "inc-b:block:1"):
            await blocklist.add(conn, kind="ip", value="203.0.113.7", incident_id="inc", step_id=step_id, reason="c2")
        await blocklist.remove(conn, kind="ip", value="203.0.113.7", step_id="inc-a:block:1")
    found = await validate.execute(check("remove", "inc-a:block:1"))
    assert found == {"list": "ip", "value": "203.0.113.7", "listed": True, "listed_by": ["inc-b:block:1"]}
    # The other step's own entry is still on: its undo is not done, and its check says so.
    with pytest.raises(PermanentEffectError, match=r"203\.0\.113\.7 is still in the served ip list"):
        await validate.execute(check("remove", "inc-b:block:1"))
