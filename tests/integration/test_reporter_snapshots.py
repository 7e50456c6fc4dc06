"""The reporter's incident rows from a run of incident events: one update per incident, the row the same
as applying each event in turn."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest

from services.detector.domain import summarise
from services.reporter import repository
from shared.events import IncidentType, Severity, SplitRecord
from tests.factories import T0, alert, snapshot

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

COMPARED = (
    "title, type, severity, alert_count, hosts, users, classification_reason, severity_reason, detected_at,"
    " created_at, first_alert_at, sources, rules"
)


def _events(incident_id: str) -> list[repository.SnapshotChange]:
    first = alert(id=f"{incident_id}-1", host="web-01", user="ana", source="falco", rule="Shell in container")
    second = alert(id=f"{incident_id}-2", minutes=-30, host="db-01", user="bob", source="suricata", rule="ET SCAN")
    third = alert(id=f"{incident_id}-3", minutes=5, host="web-01", user="cy", source="falco")
    return [
        repository.SnapshotChange(
            incident_id,
            snapshot(title="Shell", alert_count=1, hosts=["web-01"], users=["ana"], new_alerts=[summarise(first)]),
            detected=True,
            at=T0,
        ),
        repository.SnapshotChange(
            incident_id,
            snapshot(
                title="Shell and a scan",
                type=IncidentType.SECURITY_BREACH,
                alert_count=2,
                first_seen=T0 - timedelta(minutes=30),
                hosts=["db-01"],
                users=["bob"],
                new_alerts=[summarise(second)],
            ),
            detected=False,
            at=T0 + timedelta(minutes=1),
        ),
        repository.SnapshotChange(
            incident_id,
            snapshot(
                title="Shell, a scan and more",
                severity=Severity.SEV2,
                alert_count=3,
                hosts=["web-01"],
                users=["cy"],
                severity_reason="raised by breadth",
                new_alerts=[summarise(third)],
            ),
            detected=False,
            at=T0 + timedelta(minutes=2),
        ),
    ]


async def test_a_run_of_one_incidents_events_leaves_its_row_as_each_event_in_turn_would(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await repository.ensure_incidents(conn, incident_ids=["inc-run", "inc-each"])
        await repository.apply_snapshots(conn, changes=_events("inc-run"))
        for change in _events("inc-each"):
            await repository.apply_snapshots(conn, changes=[change])
    rows = {r["id"]: r for r in await pool.fetch(f"SELECT id, {COMPARED} FROM reporter_incidents")}
    # Sources and rules are sets (their order is Postgres' DISTINCT's).
    run, each = (
        {**r, "sources": sorted(r["sources"]), "rules": sorted(r["rules"])} for r in (rows["inc-run"], rows["inc-each"])
    )
    assert {k: v for k, v in run.items() if k != "id"} == {k: v for k, v in each.items() if k != "id"}
    assert run["title"] == "Shell, a scan and more" and run["hosts"] == ["web-01", "db-01"]
    assert run["users"] == ["ana", "bob", "cy"] and run["first_alert_at"] == T0 - timedelta(minutes=30)
    assert run["created_at"] == T0 and run["detected_at"] == T0 and run["alert_count"] == 3
    assert run["sources"] == ["falco", "suricata"]
    stored = await pool.fetchval("SELECT count(*) FROM reporter_alerts WHERE incident_id = 'inc-run'")
    assert stored == 3


async def test_a_split_restates_the_incident_that_keeps_its_alerts(pool: asyncpg.Pool) -> None:
    """Its type, severity, first alert, sources and rules are those of the alerts it keeps, as the detector
    judged them again (its page, list filters, MTTD and per-source metrics); a title a person edited stays."""
    shell = summarise(alert(id="shell", minutes=-30, host="web-01", source="falco", rule="Reverse shell"))
    scan = summarise(alert(id="scan", host="web-01", source="suricata", rule="ET SCAN"))
    both = snapshot(alert_count=2, first_seen=T0 - timedelta(minutes=30), new_alerts=[shell, scan])
    kept = snapshot(
        title="Port scan of web-01",
        type=IncidentType.SECURITY_BREACH,
        severity=Severity.SEV3,
        classification_reason="suricata alert mentions 'scan' -> security_breach",
        new_alerts=[scan],
    )
    split = SplitRecord(new_incident="inc-new", detached=[shell.key], actor="alice", command_id="c-1", incident=kept)
    async with pool.acquire() as conn, conn.transaction():
        await repository.ensure_incidents(conn, incident_ids=["inc-split", "inc-titled"])
        for incident_id in ("inc-split", "inc-titled"):
            await repository.apply_snapshots(
                conn, changes=[repository.SnapshotChange(incident_id, both, detected=True, at=T0)]
            )
        await repository.apply_edits(conn, incident_id="inc-titled", changes={"title": "Ours"}, reason="clearer")
        for incident_id in ("inc-split", "inc-titled"):
            await repository.apply_split(conn, incident_id=incident_id, split=split)
    rows = {r["id"]: r for r in await pool.fetch(f"SELECT id, {COMPARED} FROM reporter_incidents")}
    row = rows["inc-split"]
    assert (row["title"], row["type"], row["severity"]) == ("Port scan of web-01", "security_breach", "SEV3")
    assert row["classification_reason"] == kept.classification_reason and row["alert_count"] == 1
    assert row["first_alert_at"] == T0  # no longer the detached shell's, half an hour before
    assert (row["sources"], row["rules"]) == (["suricata"], ["ET SCAN"])
    assert (rows["inc-titled"]["title"], rows["inc-titled"]["type"]) == ("Ours", "security_breach")
