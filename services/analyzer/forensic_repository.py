"""The analyzer's forensic tables: each alert with what it names, and one row per value with its provenance
and, for an indicator, what threat intelligence last said of it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from services.analyzer.domain import IndicatorGroup, LookedUp
from services.analyzer.forensic import (
    INDICATOR_KINDS,
    MAX_ALERT_KEYS,
    MAX_FIELDS,
    OBSERVABLE_KINDS,
    AlertEvidence,
    Named,
    Tally,
    tally,
)
from services.analyzer.intel import Assessment
from shared.db import Conn

_INDICATOR_KINDS = sorted(INDICATOR_KINDS)
_OBSERVABLE_KINDS = sorted(OBSERVABLE_KINDS)


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
        # A new indicator is yet to be looked up in threat intelligence (-1); an observable never is (NULL).
        await conn.execute(
            """INSERT INTO analyzer_indicators AS i
                   (incident_id, kind, value, internal, fields, first_seen, last_seen, count, alert_keys, intel_checked)
               SELECT $1, t.kind, t.value, t.internal, t.fields[1:$3], t.first_seen, t.last_seen, t.count,
                      t.alert_keys[1:$4], CASE WHEN t.kind = ANY($5::text[]) THEN -1 END
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
            _INDICATOR_KINDS,
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
    await conn.execute("DELETE FROM analyzer_indicator_counts WHERE incident_id = $1", incident_id)  # all 0 now


_TALLY_COLUMNS = "kind, value, internal, fields, first_seen, last_seen, count, alert_keys"


def _tally(r: Any) -> Tally:
    return Tally(
        kind=r["kind"],
        value=r["value"],
        internal=r["internal"],
        first_seen=r["first_seen"],
        last_seen=r["last_seen"],
        count=r["count"],
        fields=list(r["fields"]),
        alert_keys=list(r["alert_keys"]),
    )


async def list_worst(conn: Conn, *, incident_id: str, limit: int) -> list[tuple[Tally, Assessment]]:
    """The incident's ``limit`` worst indicators (``domain.worst_first_key``), worst first, with their verdicts.

    Read in order from an index (analyzer_indicators_worst): as many rows as asked for, however many
    the incident has.
    """
    rows = await conn.fetch(
        f"""SELECT {_TALLY_COLUMNS}, intel_verdict, intel_confidence, intel_feeds, intel_tags
            FROM analyzer_indicators WHERE incident_id = $1 AND kind = ANY($2::text[])
            ORDER BY intel_rank, intel_confidence DESC, count DESC, kind COLLATE "C", value COLLATE "C"
            LIMIT $3""",
        incident_id,
        _INDICATOR_KINDS,
        limit,
    )
    return [
        (
            _tally(r),
            Assessment(r["intel_verdict"], r["intel_confidence"], tuple(r["intel_tags"]), tuple(r["intel_feeds"])),
        )
        for r in rows
    ]


async def count_indicators(conn: Conn, *, incident_id: str) -> list[IndicatorGroup]:
    """How many of the incident's indicators there are by kind, verdict and whether they are internal.

    From the counts triggers keep as rows change (analyzer_indicator_counts), not from the rows.
    """
    rows = await conn.fetch(
        """SELECT kind, nullif(verdict, '') AS verdict, internal, n FROM analyzer_indicator_counts
           WHERE incident_id = $1 AND kind = ANY($2::text[]) AND n > 0 ORDER BY kind, verdict, internal""",
        incident_id,
        _INDICATOR_KINDS,
    )
    return [IndicatorGroup(r["kind"], r["verdict"], r["internal"], r["n"]) for r in rows]


async def list_bad_internal(conn: Conn, *, incident_id: str) -> list[str]:
    """The incident's known-bad addresses marked internal (few, if any)."""
    rows = await conn.fetch(
        """SELECT value FROM analyzer_indicators
           WHERE incident_id = $1 AND intel_rank < 2 AND internal AND kind IN ('ipv4', 'ipv6')""",
        incident_id,
    )
    return [r["value"] for r in rows]


async def list_internal(conn: Conn, *, incident_id: str, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of these (kind, value) of the incident forensics marked internal."""
    rows = await conn.fetch(
        """SELECT i.kind, i.value FROM unnest($2::text[], $3::text[]) AS q(kind, value)
             JOIN analyzer_indicators i ON i.incident_id = $1 AND i.kind = q.kind AND i.value = q.value
            WHERE i.internal""",
        incident_id,
        [k for k, _ in keys],
        [v for _, v in keys],
    )
    return {(r["kind"], r["value"]) for r in rows}


async def list_observables(conn: Conn, *, incident_id: str) -> list[Tally]:
    """Every observable the incident's alerts name (accounts, processes, …), ordered by kind and value."""
    rows = await conn.fetch(
        f"""SELECT {_TALLY_COLUMNS} FROM analyzer_indicators
            WHERE incident_id = $1 AND kind = ANY($2::text[]) ORDER BY kind, value""",
        incident_id,
        _OBSERVABLE_KINDS,
    )
    return [_tally(r) for r in rows]


async def list_addresses(conn: Conn, *, incident_id: str) -> list[Named]:
    """Every address the incident's alerts name, for the asset inventory."""
    rows = await conn.fetch(
        """SELECT kind, value, internal FROM analyzer_indicators
           WHERE incident_id = $1 AND kind IN ('ipv4', 'ipv6') ORDER BY kind, value""",
        incident_id,
    )
    return [Named(r["kind"], r["value"], r["internal"]) for r in rows]


async def list_due(conn: Conn, *, incident_id: str, changed: int, limit: int) -> list[tuple[str, str]]:
    """Up to ``limit`` indicators whose verdict may be out of date, the longest unchecked first.

    Those looked up before the feeds' last change (``changed``, ``intel.FeedState``), never looked up,
    or asked for again; and those past what gave their verdict. Both read from an index, ``limit`` rows
    at most.
    """
    rows = await conn.fetch(
        """SELECT kind, value FROM (
               (SELECT kind, value, intel_checked FROM analyzer_indicators
                 WHERE incident_id = $1 AND intel_checked < $2 ORDER BY intel_checked LIMIT $3)
               UNION
               (SELECT kind, value, intel_checked FROM analyzer_indicators
                 WHERE incident_id = $1 AND intel_expires_at <= now() ORDER BY intel_expires_at LIMIT $3)
           ) due ORDER BY intel_checked, kind, value LIMIT $3""",
        incident_id,
        changed,
        limit,
    )
    return [(r["kind"], r["value"]) for r in rows]


async def save_verdicts(conn: Conn, *, incident_id: str, verdicts: Sequence[LookedUp], checked: int) -> None:
    """Keep what threat intelligence said of the indicators; ``checked``: the feeds' last change it saw."""
    await conn.execute(
        """UPDATE analyzer_indicators i SET
               intel_verdict = v.verdict, intel_confidence = v.confidence, intel_feeds = v.feeds,
               intel_tags = v.tags, intel_expires_at = v.expires_at, intel_checked = $3, intel_checked_at = now()
           FROM jsonb_to_recordset($2::jsonb) AS v(kind text, value text, verdict text, confidence smallint,
                feeds text[], tags text[], expires_at timestamptz)
           WHERE i.incident_id = $1 AND i.kind = v.kind AND i.value = v.value""",
        incident_id,
        [
            {
                "kind": v.kind,
                "value": v.value,
                "verdict": v.assessment.verdict,
                "confidence": v.assessment.confidence if v.assessment.verdict else 0,
                "feeds": list(v.assessment.feeds),
                "tags": list(v.assessment.tags),
                "expires_at": v.expires_at,
            }
            for v in sorted(verdicts, key=lambda v: (v.kind, v.value))  # rows locked in one order
        ],
        checked,
    )


async def take_answered(conn: Conn, *, incident_id: str) -> list[tuple[str, str]]:
    """What online providers answered since for values the incident waited for, as (intel kind, value)."""
    rows = await conn.fetch(
        "DELETE FROM analyzer_intel_answered WHERE incident_id = $1 RETURNING kind, value", incident_id
    )
    return sorted({(r["kind"], r["value"]) for r in rows})


async def add_answered(conn: Conn, *, incident_ids: Sequence[str], kind: str, value: str) -> None:
    """An online provider answered for the value: each incident that waited looks it up again when next analysed."""
    await conn.execute(
        "INSERT INTO analyzer_intel_answered (incident_id, kind, value) SELECT unnest($1::text[]), $2, $3",
        list(incident_ids),
        kind,
        value,
    )


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
    """Every value the incident's alerts name, with its provenance and what threat intelligence last said of it."""
    rows = await conn.fetch(
        f"""SELECT {_TALLY_COLUMNS}, intel_verdict AS verdict,
                   CASE WHEN intel_verdict IS NOT NULL THEN intel_confidence END AS confidence,
                   intel_feeds AS feeds, intel_tags AS tags, intel_checked_at AS looked_up_at
            FROM analyzer_indicators WHERE incident_id = $1 ORDER BY kind, value""",
        incident_id,
    )
    return [dict(r) for r in rows]


async def incident_known(conn: Conn, *, incident_id: str) -> bool:
    return bool(await conn.fetchval("SELECT true FROM analyzer_incidents WHERE incident_id = $1", incident_id))
