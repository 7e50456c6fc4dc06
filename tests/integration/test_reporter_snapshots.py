"""The reporter's incident rows from a run of incident events: one update per incident, the row the same
as applying each event in turn."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest

from services.detector.domain import summarise
from services.reporter import repository
from shared.events import IncidentType, Severity
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
