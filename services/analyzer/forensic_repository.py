"""The analyzer's forensic tables: each alert with what it names, and one row per value with its provenance."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from services.analyzer.forensic import MAX_ALERT_KEYS, MAX_FIELDS, AlertEvidence, Tally, tally
from shared.db import Conn


async def record(conn: Conn, *, incident_id: str, alerts: Sequence[AlertEvidence]) -> list[AlertEvidence]:
    """Store the alerts not stored before and fold what they name into the provenance; return those new ones.

    An alert carried again (a re-sent event, a replay) is stored once and counted once: the work is
    proportional to the new alerts, never to the incident's.
    """
    if not alerts:
        return []
    stored = await conn.fetch(
        """INSERT INTO analyzer_alerts
               (incident_id, alert_key, time, source, format, title, severity, host, "user", sightings, raw, raw_cut)
           SELECT $1, a.key, a.time, a.source, a.format, a.title, a.severity, a.host, a.user, a.sightings, a.raw,
                  a.raw_cut
           FROM jsonb_to_recordset($2::jsonb) AS a(key text, time timestamptz, source text, format text, title text,
                severity text, host text, "user" text, sightings jsonb, raw jsonb, raw_cut boolean)
           ON CONFLICT (incident_id, alert_key) DO NOTHING
           RETURNING alert_key""",
        incident_id,
        [_alert_row(a) for a in alerts],
    )
    new_keys = {r["alert_key"] for r in stored}
    new = [a for a in alerts if a.key in new_keys]
    tallies = tally(new)
    if tallies:
        # Sorted by kind and value (``tally`` orders them): two transactions lock rows in one order.
        await conn.execute(
            """INSERT INTO analyzer_indicators AS i
                   (incident_id, kind, value, internal, fields, first_seen, last_seen, count, alert_keys)
               SELECT $1, t.kind, t.value, t.internal, t.fields[1:$3], t.first_seen, t.last_seen, t.count,
                      t.alert_keys[1:$4]
               FROM jsonb_to_recordset($2::jsonb) AS t(kind text, value text, internal boolean, fields text[],
                    first_seen timestamptz, last_seen timestamptz, count integer, alert_keys text[])
               ON CONFLICT (incident_id, kind, value) DO UPDATE SET
                   internal = i.internal OR EXCLUDED.internal,
                   fields = ARRAY(SELECT f FROM unnest(i.fields || EXCLUDED.fields) WITH ORDINALITY AS u(f, n)
                                  GROUP BY f ORDER BY min(n) LIMIT $3),
                   first_seen = LEAST(i.first_seen, EXCLUDED.first_seen),
                   last_seen = GREATEST(i.last_seen, EXCLUDED.last_seen),
                   count = i.count + EXCLUDED.count,
                   alert_keys = (i.alert_keys || EXCLUDED.alert_keys)[1:$4]""",
            incident_id,
            [_tally_row(t) for t in tallies],
            MAX_FIELDS,
            MAX_ALERT_KEYS,
        )
    return new


def _alert_row(alert: AlertEvidence) -> dict[str, Any]:
    return {
        "key": alert.key,
        "time": alert.time,
        "source": alert.source,
        "format": alert.format,
        "title": alert.title,
        "severity": alert.severity,
        "host": alert.host,
        "user": alert.user,
        "sightings": [
            {"kind": s.kind, "value": s.value, "field": s.field, "internal": s.internal} for s in alert.sightings
        ],
        "raw": alert.raw,
        "raw_cut": alert.raw_cut,
    }


def _tally_row(t: Tally) -> dict[str, Any]:
    return {
        "kind": t.kind,
        "value": t.value,
        "internal": t.internal,
        "fields": t.fields,
        "first_seen": t.first_seen,
        "last_seen": t.last_seen,
        "count": t.count,
        "alert_keys": t.alert_keys,
    }


async def forget(conn: Conn, *, incident_id: str) -> None:
    """Drop what the incident's alerts named: it is read again from the alerts it keeps (after a detach)."""
    await conn.execute("DELETE FROM analyzer_alerts WHERE incident_id = $1", incident_id)
    await conn.execute("DELETE FROM analyzer_indicators WHERE incident_id = $1", incident_id)


async def list_tallies(conn: Conn, *, incident_id: str) -> list[Tally]:
    """Every value the incident's alerts name, with its provenance, ordered by kind and value."""
    rows = await conn.fetch(
        """SELECT kind, value, internal, fields, first_seen, last_seen, count, alert_keys
           FROM analyzer_indicators WHERE incident_id = $1 ORDER BY kind, value""",
        incident_id,
    )
    return [
        Tally(
            kind=r["kind"],
            value=r["value"],
            internal=r["internal"],
            first_seen=r["first_seen"],
            last_seen=r["last_seen"],
            count=r["count"],
            fields=list(r["fields"]),
            alert_keys=list(r["alert_keys"]),
        )
        for r in rows
    ]


TIMELINE_COLUMNS = 'alert_key, time, source, format, title, severity, host, "user", sightings, raw_cut'


async def list_evidence(
    conn: Conn, *, incident_id: str, after: tuple[datetime, str] | None, limit: int
) -> list[dict[str, Any]]:
    """The incident's alerts in time order (then by key), each with what it names; a page after ``after``."""
    rows = await conn.fetch(
        f"""SELECT {TIMELINE_COLUMNS} FROM analyzer_alerts
            WHERE incident_id = $1 AND ($2::timestamptz IS NULL OR (time, alert_key) > ($2, $3))
            ORDER BY time, alert_key LIMIT $4""",
        incident_id,
        after[0] if after else None,
        after[1] if after else "",
        limit,
    )
    return [dict(r) for r in rows]


async def get_evidence(conn: Conn, *, incident_id: str, alert_key: str) -> dict[str, Any] | None:
    """One alert of the incident with what it names and the tool's record as the analyzer received it."""
    row = await conn.fetchrow(
        f"SELECT {TIMELINE_COLUMNS}, raw FROM analyzer_alerts WHERE incident_id = $1 AND alert_key = $2",
        incident_id,
        alert_key,
    )
    return dict(row) if row else None


async def list_indicators(conn: Conn, *, incident_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT kind, value, internal, fields, first_seen, last_seen, count, alert_keys
           FROM analyzer_indicators WHERE incident_id = $1 ORDER BY kind, value""",
        incident_id,
    )
    return [dict(r) for r in rows]


async def incident_known(conn: Conn, *, incident_id: str) -> bool:
    return bool(await conn.fetchval("SELECT true FROM analyzer_incidents WHERE incident_id = $1", incident_id))
