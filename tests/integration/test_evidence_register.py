"""The evidence register against the real Postgres: items, their chain of custody, the timeline and the
post-mortem, through the analyzer's API and the CLI, in the name of who authenticated."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from pathlib import Path

import asyncpg
import httpx
import pytest

from services.analyzer import evidence_api
from services.reporter import handlers as reporter
from services.reporter import repository as reporter_repository
from services.reporter import views
from services.reporter.measures import DEFAULT_SLA
from services.reporter.reports import postmortem
from shared import cloudevents, identity
from shared.auth import ANONYMOUS
from shared.consumer import HandlerContext, Inbound
from shared.events import EventBase, EvidenceChanged, IncidentDetected
from shared.service import Runtime, build_app
from shared.settings import VigilSettings
from shared.topics import TopicNames
from tests.factories import snapshot
from tests.helpers import serve_app

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

DUMP = hashlib.sha256(b"memory of web-1").hexdigest()
INC = "3f0e1c2a-0000-4000-8000-00000000e001"  # a whole id: the CLI takes it as it is


async def _emitted(pool: asyncpg.Pool) -> list[EventBase]:
    rows = await pool.fetch("SELECT value, headers FROM outbox WHERE service = 'analyzer' ORDER BY id")
    return [cloudevents.decode(r["value"], [(n, v.encode()) for n, v in r["headers"]]) for r in rows]


async def vigil(*args: str, analyzer_url: str, code: int = 0) -> str:
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("vigil")),
        *args,
        env={**os.environ, "VIGIL_ANALYZER_URL": analyzer_url, "VIGIL_ACTOR": "carol", "COLUMNS": "250"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == code, (out + err).decode()
    return (out + err).decode()


async def test_an_items_chain_of_custody_is_kept_and_told_on_the_timeline_and_in_the_post_mortem(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames, tmp_path: Path
) -> None:
    runtime = Runtime(service="analyzer", settings=settings, pool=pool, producer=None, names=names)  # type: ignore[arg-type]
    await pool.execute("INSERT INTO analyzer_incidents (incident_id) VALUES ($1)", INC)  # analysed already
    async with (
        serve_app(build_app(runtime, evidence_api.routers(runtime)), name="analyzer-api") as url,
        httpx.AsyncClient(base_url=f"{url}/api/v1") as http,
    ):
        item = {"name": "web-1 memory dump", "sha256": DUMP.upper(), "size_bytes": 15, "location": "s3://ir/web-1.mem",
                "actor": "alice", "note": "taken with avml"}  # fmt: skip
        made = await http.post(f"/incidents/{INC}/evidence-register", json=item)
        assert made.status_code == 201, made.text
        item_id = made.json()["id"]
        assert (made.json()["sha256"], made.json()["custodian"]) == (DUMP, "alice")
        again = await http.post(f"/incidents/{INC}/evidence-register", json=item)
        assert again.status_code == 409 and "already" in again.json()["detail"]
        unknown = await http.post("/incidents/inc-never-seen/evidence-register", json=item)
        assert unknown.status_code == 404 and "no incident inc-never-seen" in unknown.json()["detail"]
        huge = await http.post(f"/incidents/{INC}/evidence-register", json={**item, "size_bytes": 2**63})
        assert huge.status_code == 422

        handed = await http.post(f"/evidence-register/{item_id}/transfer", json={"to": "bob", "actor": "alice"})
        assert handed.status_code == 200 and handed.json()["custodian"] == "bob"
        twice = await http.post(f"/evidence-register/{item_id}/transfer", json={"to": "bob", "actor": "alice"})
        assert twice.status_code == 409
        wrong = await http.post(f"/evidence-register/{item_id}/verify", json={"sha256": "0" * 64, "actor": "bob"})
        assert wrong.json()["matched"] is False
        right = await http.post(f"/evidence-register/{item_id}/verify", json={"sha256": DUMP, "actor": "bob"})
        assert right.json()["matched"] is True
        # A check whose answer was lost, sent again with its key: one custody entry, the first answer.
        once = {"Idempotency-Key": "verify-once"}
        checked = await http.post(f"/evidence-register/{item_id}/verify", json={"sha256": DUMP}, headers=once)
        retried = await http.post(f"/evidence-register/{item_id}/verify", json={"sha256": DUMP}, headers=once)
        assert checked.status_code == 200 and (retried.status_code, retried.json()) == (200, checked.json())
        assert (await http.post("/evidence-register/999999/transfer", json={"to": "x"})).status_code == 404
        assert (await http.post(f"/evidence-register/{2**63}/verify", json={"sha256": DUMP})).status_code == 422

        [listed] = (await http.get(f"/incidents/{INC}/evidence-register")).json()
        assert [(c["action"], c["actor"], c["custodian"], c["verified"]) for c in listed["custody"]] == [
            ("registered", "alice", "alice", None),
            ("transferred", "alice", "bob", None),
            ("verified", "bob", "bob", False),
            ("verified", "bob", "bob", True),
            ("verified", "anonymous", "bob", True),
        ]

        # The CLI computes the hash of the file as it is, and says when it no longer matches.
        kept = tmp_path / "disk.img"
        kept.write_bytes(b"a disk image")
        printed = await vigil("evidence", "add", INC, str(kept), "--location", "nas:/ir/disk.img", analyzer_url=url)
        assert hashlib.sha256(b"a disk image").hexdigest() in printed and "nas:/ir/disk.img" in printed
        [_, disk] = (await http.get(f"/incidents/{INC}/evidence-register")).json()
        assert (disk["name"], disk["size_bytes"], disk["custodian"]) == ("disk.img", 12, "carol")
        assert "matches item" in await vigil("evidence", "verify", str(disk["id"]), str(kept), analyzer_url=url)
        kept.write_bytes(b"a disk image, altered")
        altered = await vigil("evidence", "verify", str(disk["id"]), str(kept), analyzer_url=url, code=1)
        assert "does not match item" in altered

    changes = [e for e in await _emitted(pool) if isinstance(e, EvidenceChanged)]
    assert [c.data.entry for c in changes] == sorted(c.data.entry for c in changes)  # the chain's order
    assert [(c.subject, c.data.action, c.data.custodian) for c in changes][:4] == [
        (INC, "registered", "alice"),
        (INC, "transferred", "bob"),
        (INC, "verified", "bob"),
        (INC, "verified", "bob"),
    ]
    audited = await pool.fetch(
        "SELECT action, principal, outcome FROM audit_log WHERE action LIKE 'evidence.%' ORDER BY id"
    )
    assert [(r["action"], r["outcome"]) for r in audited][:4] == [
        ("evidence.register", "ok"),
        ("evidence.transfer", "ok"),
        ("evidence.verify", "mismatch"),
        ("evidence.verify", "matched"),
    ]

    # The reporter keeps what the events told: on the timeline, and in the post-mortem's register.
    detected = IncidentDetected(source="/vigil/detector", subject=INC, data=snapshot(title="Memory implant"))
    events: list[EventBase] = [detected, *changes]
    async with pool.acquire() as conn, conn.transaction():
        ctx = HandlerContext(conn=conn, service="reporter", names=names)
        await reporter.handle(ctx, [Inbound(e.id, e, None) for e in events])
    async with pool.acquire() as conn:
        bundle = await reporter_repository.incident_bundle(conn, incident_id=INC)
        timeline = await reporter_repository.list_timeline(conn, incident_id=INC)
    assert bundle is not None
    said = [t["summary"] for t in timeline]
    assert f"evidence #{item_id} 'web-1 memory dump' (SHA-256 {DUMP[:16]}…) handed to bob" in said
    assert any("checked: its hash DOES NOT match" in s for s in said)
    text = postmortem(bundle, fmt="md", sla=DEFAULT_SLA, now=detected.time)
    assert f"| {item_id} | web-1 memory dump | `{DUMP}` | s3://ir/web-1.mem | alice, " in text
    assert "| bob (1 hand-over) | matched, " in text
    page = views.incident_page(bundle, merged=[], leases=[], sla=DEFAULT_SLA, now=detected.time, by=ANONYMOUS)
    assert f'<td class="num">{item_id}</td><td>web-1 memory dump</td><td class="mono">{DUMP}</td>' in page


async def test_only_a_role_that_may_note_registers_evidence_and_only_its_custodian_or_a_commander_hands_it_over(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    secured = settings.model_copy(update={"allow_unauthenticated": False})
    runtime = Runtime(service="analyzer", settings=secured, pool=pool, producer=None, names=names)  # type: ignore[arg-type]
    await pool.execute("INSERT INTO analyzer_incidents (incident_id) VALUES ('inc-s')")
    roles: list[tuple[str, identity.Role]] = [
        ("vic", "viewer"),
        ("rae", "responder"),
        ("ray", "responder"),
        ("cora", "commander"),
    ]
    async with pool.acquire() as conn:
        tokens = {
            name: (await identity.create_token(conn, name=f"{name}@example.com", role=role, created_by="test")).text
            for name, role in roles
        }

    def as_(name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[name]}"}

    item = {"name": "log export", "sha256": DUMP, "location": "s3://ir/logs.tar", "actor": "someone-else"}
    async with (
        serve_app(build_app(runtime, evidence_api.routers(runtime)), name="analyzer-api") as url,
        httpx.AsyncClient(base_url=f"{url}/api/v1") as http,
    ):
        refused = await http.post("/incidents/inc-s/evidence-register", json=item, headers=as_("vic"))
        assert refused.status_code == 403
        made = await http.post("/incidents/inc-s/evidence-register", json=item, headers=as_("rae"))
        assert made.status_code == 201 and made.json()["registered_by"] == made.json()["custodian"] == "rae@example.com"
        item_id = made.json()["id"]
        [seen] = (await http.get("/incidents/inc-s/evidence-register", headers=as_("vic"))).json()
        assert seen["id"] == item_id
        assert (
            await http.post(f"/evidence-register/{item_id}/verify", json={"sha256": DUMP}, headers=as_("vic"))
        ).status_code == 403

        # Only its custodian hands it over, to whom it names; a commander may take it from anyone.
        taken = await http.post(
            f"/evidence-register/{item_id}/transfer", json={"to": "ray@example.com"}, headers=as_("ray")
        )
        assert taken.status_code == 403 and "does not hold item" in taken.json()["detail"]
        handed = await http.post(
            f"/evidence-register/{item_id}/transfer", json={"to": " ray@example.com ", "actor": "x"}, headers=as_("rae")
        )
        assert handed.status_code == 200 and handed.json()["custodian"] == "ray@example.com"
        recalled = await http.post(
            f"/evidence-register/{item_id}/transfer", json={"to": "cora@example.com"}, headers=as_("cora")
        )
        assert recalled.status_code == 200
        chain = [(c["action"], c["actor"], c["custodian"]) for c in recalled.json()["custody"]]
        assert chain == [
            ("registered", "rae@example.com", "rae@example.com"),
            ("transferred", "rae@example.com", "ray@example.com"),
            ("transferred", "cora@example.com", "cora@example.com"),
        ]
