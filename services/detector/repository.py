"""The detector's tables: open incidents and the alerts attached to them, repeated and resolved."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson
from pydantic import TypeAdapter

from services.detector.correlation import Member, Route
from services.detector.domain import IncidentState, Publication, Waiting
from services.detector.merging import Standing
from shared.alerts import Alert, AlertSeverity
from shared.db import Conn
from shared.events import AlertCorrelation, AlertSummary, IncidentType, Severity

# Correlation keys fall into this many buckets (advisory locks of the two-int form, a lock space of its
# own). A batch of up to MAX_KEY_LOCKS keys holds each bucket shared and each key exclusively; a larger one
# (a flood of alerts on as many hosts) holds its buckets exclusively instead: Postgres' lock table, shared
# by every session, holds some thousands of locks, and one per key would run it out.
KEY_BUCKETS = 1024
MAX_KEY_LOCKS = 1024
BUCKET_LOCK_CLASS = 0x56444B42  # "VDKB"


def lock_id(key: str) -> int:
    """The advisory lock id of a correlation key: 64 bits of its BLAKE2b digest, as Postgres' bigint."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


def bucket_of(lock: int) -> int:
    return lock % KEY_BUCKETS


async def lock_keys(conn: Conn, *, keys: Iterable[str]) -> None:
    """Hold each correlation key's lock until commit, so that one detector at a time decides a key.

    Every detector takes its buckets first, then its keys, each in sorted order, so that two never
    deadlock: a large batch's exclusive buckets wait for the smaller batches holding them shared, and
    keep new ones out; smaller batches share buckets and exclude each other key by key.
    """
    ids = sorted({lock_id(key) for key in keys})
    if not ids:
        return
    buckets = sorted({bucket_of(i) for i in ids})
    if len(ids) > MAX_KEY_LOCKS:
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1::int, b) FROM unnest($2::int[]) AS b", BUCKET_LOCK_CLASS, buckets
        )
        return
    # One statement: no key's lock is taken before the aggregate over every bucket's lock is done.
    await conn.execute(
        """WITH buckets AS (
               SELECT count(pg_advisory_xact_lock_shared($1::int, b)) FROM unnest($2::int[]) AS b)
           SELECT count(pg_advisory_xact_lock(id)) FROM buckets, unnest($3::bigint[]) AS id""",
        BUCKET_LOCK_CLASS,
        buckets,
        ids,
    )


async def get_open_by_keys(conn: Conn, *, keys: Iterable[str]) -> dict[str, IncidentState]:
    """Return the open incident that collects each key's alerts, locked until commit."""
    rows = await conn.fetch(
        # One per key (detector_incidents_collecting_key). Once locked, the row as it is then is checked
        # again: one merged away or ended meanwhile is left out.
        """SELECT * FROM detector_incidents WHERE correlation_key = ANY($1::text[]) AND NOT closed AND collecting
           FOR UPDATE""",
        list(keys),
    )
    return {row["correlation_key"]: _from_row(row) for row in rows}


def _from_row(row: asyncpg.Record) -> IncidentState:
    return IncidentState(
        id=row["id"],
        correlation_key=row["correlation_key"],
        title=row["title"],
        type=IncidentType(row["type"]),
        severity=Severity(row["severity"]),
        classification_reason=row["classification_reason"],
        severity_reason=row["severity_reason"],
        alert_count=row["alert_count"],
        max_alert_severity=AlertSeverity(row["max_alert_severity"]),
        type_votes=row["type_votes"],
        hosts=tuple(row["hosts"]),
        users=tuple(row["users"]),
        first_seen=row["first_seen"],
        last_seen=row["last_seen"],
        lead_kind=row["lead_kind"],
        lead_severity_reason=row["lead_severity_reason"],
        critical_asset=row["critical_asset"],
    )


async def upsert_incidents(
    conn: Conn, *, incidents: Sequence[IncidentState], created: Iterable[str] = ()
) -> dict[str, Publication]:
    """Store the incidents; of those ``created``, the newest on each key collects its alerts from now on.

    Returns each one's last publication: a new one's is now (its first event goes out with this batch).
    """
    newest: dict[str, IncidentState] = {}
    for incident in incidents:
        if incident.correlation_key not in newest or incident.last_seen >= newest[incident.correlation_key].last_seen:
            newest[incident.correlation_key] = incident
    opened = set(created)
    if opened:
        # A gap on an entity opened a new incident: the one before stops collecting.
        await conn.execute(
            """UPDATE detector_incidents SET collecting = false, updated_at = now()
               WHERE correlation_key = ANY($1::text[]) AND collecting AND NOT closed AND id <> ALL($2::text[])""",
            list({i.correlation_key for i in incidents if i.id in opened}),
            list(opened),
        )
    # One statement for the batch (rows by unnest), not one execution per incident. An incident
    # changed twice in a batch is written once, as it ends, collecting only if every change said so.
    rows: dict[str, tuple[IncidentState, bool]] = {}
    for i in incidents:
        collecting = newest[i.correlation_key] is i
        if i.id in rows:
            collecting = collecting and rows.pop(i.id)[1]
        rows[i.id] = (i, collecting)
    columns: list[list[Any]] = [[] for _ in range(18)]
    for i, collecting in rows.values():
        values = (
            i.id,
            i.correlation_key,
            i.title,
            i.type.value,
            i.severity.value,
            i.classification_reason,
            i.severity_reason,
            i.alert_count,
            i.max_alert_severity.value,
            i.type_votes,
            orjson.dumps(i.hosts),  # as JSON: unnest would flatten an array of arrays
            orjson.dumps(i.users),
            i.first_seen,
            i.last_seen,
            i.lead_kind,
            i.lead_severity_reason,
            i.critical_asset,
            collecting,
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    stored = await conn.fetch(
        """INSERT INTO detector_incidents (id, correlation_key, title, type, severity, classification_reason,
               severity_reason, alert_count, max_alert_severity, type_votes, hosts, users, first_seen, last_seen,
               lead_kind, lead_severity_reason, critical_asset, collecting, published_at, published_type,
               published_severity)
           SELECT id, correlation_key, title, type, severity, classification_reason, severity_reason, alert_count,
                  max_alert_severity, type_votes, ARRAY(SELECT jsonb_array_elements_text(hosts)),
                  ARRAY(SELECT jsonb_array_elements_text(users)), first_seen, last_seen, lead_kind,
                  lead_severity_reason, critical_asset, collecting, now(), type, severity
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                       $8::int[], $9::text[], $10::jsonb[], $11::jsonb[], $12::jsonb[], $13::timestamptz[],
                       $14::timestamptz[], $15::text[], $16::text[], $17::text[], $18::bool[])
                AS n(id, correlation_key, title, type, severity, classification_reason, severity_reason,
                     alert_count, max_alert_severity, type_votes, hosts, users, first_seen, last_seen,
                     lead_kind, lead_severity_reason, critical_asset, collecting)
           ON CONFLICT (id) DO UPDATE SET
               title = EXCLUDED.title, type = EXCLUDED.type, severity = EXCLUDED.severity,
               classification_reason = EXCLUDED.classification_reason,
               severity_reason = EXCLUDED.severity_reason, alert_count = EXCLUDED.alert_count,
               max_alert_severity = EXCLUDED.max_alert_severity, type_votes = EXCLUDED.type_votes,
               hosts = EXCLUDED.hosts, users = EXCLUDED.users, first_seen = EXCLUDED.first_seen,
               last_seen = EXCLUDED.last_seen, lead_kind = EXCLUDED.lead_kind,
               lead_severity_reason = EXCLUDED.lead_severity_reason, critical_asset = EXCLUDED.critical_asset,
               collecting = detector_incidents.collecting AND EXCLUDED.collecting, updated_at = now()
           RETURNING id, now() - published_at AS since, published_type, published_severity,
                     EXISTS (SELECT 1 FROM detector_held_alerts h WHERE h.incident_id = detector_incidents.id)
                     AS held""",
        *columns,
    )
    return {
        row["id"]: Publication(row["since"], row["published_type"], row["published_severity"], row["held"])
        for row in stored
    }


# Alerts published now take with them those of the same incidents that waited (in the order they came);
# the rest wait in their turn. An incident holds alerts while it has rows here.
PUBLISH_AND_HOLD = """WITH taken AS (
       DELETE FROM detector_held_alerts WHERE incident_id = ANY($4::text[]) RETURNING incident_id, seq, alerts),
   published AS (
       UPDATE detector_incidents i SET published_at = now(), published_type = p.type, published_severity = p.severity
       FROM unnest($1::text[], $2::text[], $3::text[]) AS p(id, type, severity) WHERE i.id = p.id),
   kept AS (
       INSERT INTO detector_held_alerts (incident_id, alerts, since)
       SELECT h.id, h.alerts, coalesce(i.published_at, '-infinity')
       FROM unnest($5::text[], $6::bytea[]) AS h(id, alerts) JOIN detector_incidents i ON i.id = h.id)
   SELECT incident_id, alerts FROM taken ORDER BY incident_id, seq"""


async def publish_and_hold(
    conn: Conn, *, published: Sequence[IncidentState], taking: Iterable[str], holding: Sequence[tuple[str, bytes]]
) -> dict[str, list[AlertSummary]]:
    """Note the incidents ``published`` now, and take the alerts that waited for those ``taking`` (by id,
    in order); keep ``holding`` (an incident id, its alerts' summaries as a JSON list) until the interval ends.
    """
    rows = await conn.fetch(
        PUBLISH_AND_HOLD,
        [i.id for i in published],
        [i.type.value for i in published],
        [i.severity.value for i in published],
        list(taking),
        [incident_id for incident_id, _ in holding],
        [alerts for _, alerts in holding],
    )
    return _held_by_incident(rows)


# Held summaries are the detector's own JSON: kept as bytes (Postgres parses none of it) and read back by
# pydantic's JSON parser in one pass.
_SUMMARIES = TypeAdapter(list[AlertSummary])


def _held_by_incident(rows: Iterable[asyncpg.Record]) -> dict[str, list[AlertSummary]]:
    held: dict[str, list[AlertSummary]] = {}
    for row in rows:
        held.setdefault(row["incident_id"], []).extend(_SUMMARIES.validate_json(row["alerts"]))
    return held


# What the incidents held, taken in order, and the incidents that held some noted as published now.
TAKE_HELD = """WITH taken AS (
       DELETE FROM detector_held_alerts WHERE incident_id = ANY($1::text[]) RETURNING incident_id, seq, alerts),
   published AS (
       UPDATE detector_incidents i SET published_at = now(), published_type = i.type, published_severity = i.severity
       WHERE i.id IN (SELECT incident_id FROM taken))
   SELECT incident_id, alerts FROM taken ORDER BY incident_id, seq"""


async def take_held(
    conn: Conn, *, incident_ids: Iterable[str] | None = None, interval: timedelta | None = None, limit: int = 100
) -> list[tuple[IncidentState, list[AlertSummary]]]:
    """The incidents holding alerts, with those alerts (taken, in order), noted as published now; their rows
    locked until commit. Of ``incident_ids``, waiting for a consumer that holds one; else those whose
    ``interval`` since the last publication has ended, oldest first, skipping any a consumer holds."""
    if incident_ids is not None:
        incidents = await conn.fetch(
            """SELECT * FROM detector_incidents i WHERE id = ANY($1::text[])
                 AND EXISTS (SELECT 1 FROM detector_held_alerts h WHERE h.incident_id = i.id)
               ORDER BY id FOR UPDATE""",
            list(incident_ids),
        )
    else:
        incidents = await conn.fetch(
            """SELECT i.* FROM (
                   SELECT incident_id, min(since) AS since FROM detector_held_alerts
                   WHERE since <= now() - $1::interval GROUP BY incident_id) AS due
               JOIN detector_incidents i ON i.id = due.incident_id
               ORDER BY due.since LIMIT $2 FOR UPDATE OF i SKIP LOCKED""",
            interval or timedelta(0),
            limit,
        )
    if not incidents:
        return []
    # An incident whose held alerts another transaction took while this one waited for its row holds none
    # now: it is neither published nor returned.
    held = _held_by_incident(await conn.fetch(TAKE_HELD, [row["id"] for row in incidents]))
    return [(state, held[state.id]) for state in map(_from_row, incidents) if state.id in held]


@dataclass(frozen=True)
class StoredAlert:
    """A stored alert a batch repeated or resolved, as it stands after the update."""

    key: str
    incident_id: str
    repeats: int
    last_seen_at: datetime
    resolved_at: datetime | None


async def count_repeats(conn: Conn, *, sightings: Mapping[str, int]) -> tuple[dict[str, StoredAlert], set[str]]:
    """Count more sightings on the alerts already stored, or waiting for their rule's condition, under these
    keys, in one statement; return the stored ones found, and the keys of the waiting ones.

    A sighting is of the alert firing: one that had ended fires again.
    """
    rows = await conn.fetch(
        """WITH c AS (SELECT * FROM unnest($1::text[], $2::int[]) AS c(key, n)),
           stored AS (
               UPDATE detector_alerts SET repeats = repeats + c.n, last_seen_at = now(), resolved_at = NULL
               FROM c WHERE detector_alerts.key = c.key AND NOT detector_alerts.retired
               RETURNING detector_alerts.key, incident_id, repeats, last_seen_at, resolved_at),
           waiting AS (
               UPDATE detector_waiting SET repeats = repeats + c.n, last_seen_at = now(), resolved_at = NULL
               FROM c WHERE detector_waiting.key = c.key AND c.key NOT IN (SELECT key FROM stored)
               RETURNING detector_waiting.key)
           SELECT key, incident_id, repeats, last_seen_at, resolved_at FROM stored
           UNION ALL SELECT key, NULL, NULL, NULL, NULL FROM waiting""",
        list(sightings),
        list(sightings.values()),
    )
    stored = {row["key"]: StoredAlert(**row) for row in rows if row["incident_id"] is not None}
    return stored, {row["key"] for row in rows if row["incident_id"] is None}


async def resolve_alerts(conn: Conn, *, resolutions: Mapping[str, datetime]) -> dict[str, StoredAlert]:
    """Mark the stored alerts under these keys resolved at the given times; return those found."""
    rows = await conn.fetch(
        """UPDATE detector_alerts SET resolved_at = c.at
           FROM unnest($1::text[], $2::timestamptz[]) AS c(key, at)
           WHERE detector_alerts.key = c.key AND NOT detector_alerts.retired
           RETURNING detector_alerts.key, incident_id, repeats,
                     COALESCE(last_seen_at, received_at) AS last_seen_at, resolved_at""",
        list(resolutions),
        list(resolutions.values()),
    )
    return {row["key"]: StoredAlert(**row) for row in rows}


@dataclass(frozen=True)
class AlertTally:
    """An incident's alerts, how many still fire, and whether the incident still collects alerts."""

    type: IncidentType | None  # None: a type this version does not know
    closed: bool
    alerts: int
    firing: int
    held: bool  # new alerts of it wait for its update interval to end


async def tally_alerts(conn: Conn, *, incident_ids: Iterable[str]) -> dict[str, AlertTally]:
    """Return each incident's alert counts, after this transaction's updates."""
    rows = await conn.fetch(
        """SELECT i.id, i.type, i.closed, count(a.key) AS alerts,
                  EXISTS (SELECT 1 FROM detector_held_alerts h WHERE h.incident_id = i.id) AS held,
                  count(a.key) FILTER (WHERE a.resolved_at IS NULL) AS firing
           FROM detector_incidents i LEFT JOIN detector_alerts a ON a.incident_id = i.id
           WHERE i.id = ANY($1::text[]) GROUP BY i.id""",
        list(incident_ids),
    )
    return {
        row["id"]: AlertTally(
            type=IncidentType(row["type"]) if row["type"] in IncidentType._value2member_map_ else None,
            closed=row["closed"],
            alerts=row["alerts"],
            firing=row["firing"],
            held=row["held"],
        )
        for row in rows
    }


# The alert's JSON as bytes, without model_dump_json's decoding to text and encoding back.
_ALERT_JSON = Alert.__pydantic_serializer__.to_json


_WITHOUT_RAW = {"raw"}


def alert_json(alert: Alert) -> bytes:
    """The alert as its row's body holds it.

    The raw record, the bulk of a tool's alert, is written by orjson: the model's serializer is several times
    slower on a dict of anything. A record orjson cannot write (an integer beyond 64 bits) is left to it.
    """
    if alert.raw is None:
        return _ALERT_JSON(alert)
    try:
        raw = orjson.dumps(alert.raw)
    except orjson.JSONEncodeError:
        return _ALERT_JSON(alert)
    return _ALERT_JSON(alert, exclude=_WITHOUT_RAW)[:-1] + b',"raw":' + raw + b"}"


async def insert_alerts(
    conn: Conn,
    *,
    alerts: Sequence[tuple[Alert, str, str | None, AlertCorrelation | None]],
    bodies: Mapping[str, bytes] | None = None,
) -> None:
    """Store new alerts with the incident each joined, the rule that typed each and why each joined, by COPY.

    ``bodies``: the alerts' JSON (``alert_json``) by key, where the caller has it already.
    """
    known = bodies or {}
    await conn.copy_records_to_table(
        "detector_alerts",
        records=[
            (
                a.key,
                incident_id,
                a.source,
                a.title,
                a.severity.value,
                a.time,
                a.host,
                a.user,
                a.src_ip,
                a.dst_ip,
                known.get(a.key) or _ALERT_JSON(a),
                type_rule,
                _reason_json(reason),
            )
            for a, incident_id, type_rule, reason in alerts
        ],
        columns=[
            "key",
            "incident_id",
            "source",
            "title",
            "severity",
            "time",
            "host",
            "user",
            "src_ip",
            "dst_ip",
            "body",
            "type_rule",
            "correlation",
        ],
    )


def _reason_json(reason: AlertCorrelation | None) -> bytes | None:
    # One reason serves many alerts (the entity rule's are made once per entity and kept): each is
    # serialised once. The reason itself is kept beside its JSON, so that its id is never reused.
    if reason is None:
        return None
    known = _SAID.get(id(reason))
    if known is None or known[0] is not reason:
        if len(_SAID) >= MAX_SAID:
            _SAID.clear()
        known = _SAID[id(reason)] = (reason, reason.model_dump_json().encode())
    return known[1]


# Reasons serialised before, by id; as many as the entity rule keeps (see domain.entity_reason).
_SAID: dict[int, tuple[AlertCorrelation, bytes]] = {}
MAX_SAID = 16_384


async def record_heartbeats(
    conn: Conn, *, beats: Sequence[Alert], ended: Mapping[str, datetime], learning: float
) -> list[dict[str, Any]]:
    """Note tools' heartbeats: each one's firing sightings, when last seen firing and how often, or when it stopped.

    ``ended``: the heartbeats whose last sighting in the batch said they stopped, with when. A heartbeat's
    interval is a smooth mean of the time between its firing sightings (``learning``: the share of the
    latest), the time it was missing left out. Returns each heartbeat seen firing as it now stands, with
    ``resumed_alert`` and ``resumed_since``: the alert raised while it was missing, and since when, if it was.
    """
    last = {a.key: a for a in beats}
    firing = Counter(a.key for a in beats if a.status == "firing")
    rows = await conn.fetch(
        """WITH batch AS (
               SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[],
                                    $7::timestamptz[]) AS b(key, source, format, title, host, n, resolved_at)),
           -- Read as it stood before this statement (no lock: a row the upsert below updates would be skipped);
           -- two detectors noting one return both resolve the same alert, which is resolving it once.
           before AS (
               SELECT h.key, h.missed_alert, h.missed_since FROM detector_heartbeats h
               WHERE h.key = ANY($1::text[]) AND h.missed_alert IS NOT NULL),
           noted AS (
               INSERT INTO detector_heartbeats AS h
                   (key, source, format, title, host, sightings, last_seen_at, resolved_at)
               SELECT key, source, format, title, host, n, CASE WHEN n > 0 THEN now() END, resolved_at FROM batch
               ON CONFLICT (key) DO UPDATE SET
                   title = excluded.title, host = excluded.host, sightings = h.sightings + excluded.sightings,
                   last_seen_at = coalesce(excluded.last_seen_at, h.last_seen_at), resolved_at = excluded.resolved_at,
                   interval_s = CASE
                       WHEN excluded.sightings = 0 OR h.last_seen_at IS NULL OR h.missed_since IS NOT NULL
                           THEN h.interval_s
                       WHEN h.interval_s IS NULL THEN extract(epoch FROM now() - h.last_seen_at)
                       ELSE (1 - $8) * h.interval_s + $8 * extract(epoch FROM now() - h.last_seen_at) END,
                   missed_since = CASE WHEN excluded.sightings > 0 THEN NULL ELSE h.missed_since END,
                   missed_alert = CASE WHEN excluded.sightings > 0 THEN NULL ELSE h.missed_alert END
               RETURNING h.key, h.source, h.format, h.title, h.host, h.last_seen_at, h.interval_s, h.sightings)
           SELECT noted.*, before.missed_alert AS resumed_alert, before.missed_since AS resumed_since
           FROM noted JOIN batch USING (key) LEFT JOIN before USING (key)
           WHERE batch.n > 0 ORDER BY noted.key""",
        list(last),
        [a.source for a in last.values()],
        [a.format for a in last.values()],
        [a.title for a in last.values()],
        [a.host for a in last.values()],
        [firing[key] for key in last],
        [ended.get(key) for key in last],
        learning,
    )
    return [dict(row) for row in rows]


async def lock_heartbeat(conn: Conn, *, key: str) -> dict[str, Any] | None:
    """The heartbeat as it stands, locked until commit: the watch decides whether it went missing."""
    row = await conn.fetchrow(
        """SELECT key, source, format, title, host, last_seen_at, interval_s, sightings, missed_since, missed_alert
           FROM detector_heartbeats WHERE key = $1 FOR UPDATE""",
        key,
    )
    return dict(row) if row is not None else None


async def mark_heartbeat_missing(conn: Conn, *, key: str, since: datetime, alert_id: str) -> None:
    await conn.execute(
        "UPDATE detector_heartbeats SET missed_since = $2, missed_alert = $3 WHERE key = $1", key, since, alert_id
    )


async def list_heartbeats(conn: Conn, *, limit: int = 100) -> list[dict[str, Any]]:
    """The heartbeats noted, the most recently seen first."""
    rows = await conn.fetch(
        """SELECT key, source, format, title, host, first_seen_at, last_seen_at, sightings, resolved_at,
                  interval_s, missed_since, missed_alert
           FROM detector_heartbeats ORDER BY last_seen_at DESC NULLS LAST, key LIMIT $1""",
        limit,
    )
    return [dict(row) for row in rows]


async def get_waiting(conn: Conn, *, group_keys: Iterable[str], alerts: bool = False) -> dict[str, list[Waiting]]:
    """Return the alerts waiting in each group for its rule's condition; with ``alerts``, the alerts whole."""
    rows = await conn.fetch(
        f"""SELECT key, group_key, rule, value, time{", body, resolved_at" if alerts else ""} FROM detector_waiting
            WHERE group_key = ANY($1::text[]) ORDER BY time, key""",
        list(group_keys),
    )
    waiting: dict[str, list[Waiting]] = {}
    for row in rows:
        member = Member(row["key"], row["time"], row["rule"], row["value"])
        stored = row["body"] if alerts else None
        if stored is not None and row["resolved_at"] is not None:
            stored = {**stored, "status": "resolved"}  # it ended while it waited: it joins its incident resolved
        waiting.setdefault(row["group_key"], []).append(Waiting(member, stored))
    return waiting


async def add_waiting(conn: Conn, *, placed: Sequence[tuple[Alert, Route]]) -> None:
    """Store alerts whose correlation rule's condition does not hold yet."""
    await conn.copy_records_to_table(
        "detector_waiting",
        records=[
            (
                a.key,
                route.key,
                route.correlation.name,
                route.rule,
                route.member(a).value,
                a.time,
                alert_json(a),
            )
            for a, route in placed
        ],
        columns=["key", "group_key", "correlation", "rule", "value", "time", "body"],
    )


async def take_waiting(conn: Conn, *, group_keys: Iterable[str]) -> None:
    """Forget the waiting alerts of groups whose condition held: they are stored with their incident now, with
    the sightings counted and the resolutions seen while they waited."""
    await conn.execute(
        """WITH taken AS (
               DELETE FROM detector_waiting WHERE group_key = ANY($1::text[])
               RETURNING key, repeats, last_seen_at, resolved_at)
           UPDATE detector_alerts a
           SET repeats = a.repeats + t.repeats, last_seen_at = GREATEST(a.last_seen_at, t.last_seen_at),
               resolved_at = coalesce(a.resolved_at, t.resolved_at)
           FROM taken t WHERE a.key = t.key AND NOT a.retired""",
        list(group_keys),
    )


async def resolve_waiting(conn: Conn, *, resolutions: Mapping[str, datetime]) -> set[str]:
    """Mark the waiting alerts under these keys resolved; return the keys found."""
    rows = await conn.fetch(
        """UPDATE detector_waiting SET resolved_at = c.at
           FROM unnest($1::text[], $2::timestamptz[]) AS c(key, at)
           WHERE detector_waiting.key = c.key RETURNING detector_waiting.key""",
        list(resolutions),
        list(resolutions.values()),
    )
    return {row["key"] for row in rows}


async def list_waiting(conn: Conn, *, limit: int = 100) -> list[dict[str, Any]]:
    """Return the waiting alerts, newest first, with the group each waits in."""
    rows = await conn.fetch(
        """SELECT key, group_key, correlation, rule, value, time, repeats, resolved_at,
                  body->>'title' AS title, body->>'severity' AS severity
           FROM detector_waiting ORDER BY time DESC, key LIMIT $1""",
        limit,
    )
    return [dict(row) for row in rows]


async def list_alerts_since(conn: Conn, *, since: datetime) -> list[tuple[Alert, str | None]]:
    """Return the alerts seen since a time, with the incident each is in today (None: waiting)."""
    rows = await conn.fetch(
        """SELECT body, incident_id FROM detector_alerts WHERE time >= $1
           UNION ALL SELECT body::json, NULL FROM detector_waiting WHERE time >= $1""",
        since,
    )
    return [(Alert.model_validate(row["body"]), row["incident_id"]) for row in rows]


async def close_incident(conn: Conn, *, incident_id: str) -> None:
    """Stop attaching alerts to an incident that ended; its alerts retire, so one firing again is new."""
    await conn.execute("UPDATE detector_incidents SET closed = true, updated_at = now() WHERE id = $1", incident_id)
    await conn.execute("UPDATE detector_alerts SET retired = true WHERE incident_id = $1 AND NOT retired", incident_id)


# ---- silences, maintenance windows and suppressed alerts ------------------------------------------

# Every change to silences or windows is announced on this channel, in its transaction: each detector
# replica then reloads them (services/detector/suppressor.py).
SUPPRESSION_CHANNEL = "vigil_detector_suppression"


async def notify_suppression_changed(conn: Conn, *, what: str) -> None:
    await conn.execute("SELECT pg_notify($1, $2)", SUPPRESSION_CHANNEL, what)


async def create_silence(
    conn: Conn,
    *,
    silence_id: str,
    matchers: Sequence[str],
    starts_at: datetime,
    ends_at: datetime,
    created_by: str,
    comment: str,
) -> asyncpg.Record:
    row = await conn.fetchrow(
        """INSERT INTO detector_silences (id, matchers, starts_at, ends_at, created_by, comment)
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING *""",
        silence_id,
        list(matchers),
        starts_at,
        ends_at,
        created_by,
        comment,
    )
    assert row is not None
    return row


async def get_silence(conn: Conn, *, silence_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM detector_silences WHERE id = $1", silence_id)


async def expire_silence(conn: Conn, *, silence_id: str, expired_by: str) -> asyncpg.Record | None:
    """End a silence now (one that has not started yet ends before it starts); None if it had ended."""
    return await conn.fetchrow(
        """UPDATE detector_silences SET ends_at = now(), expired_by = $2
           WHERE id = $1 AND ends_at > now() RETURNING *""",
        silence_id,
        expired_by,
    )


async def list_silences(conn: Conn, *, include_ended: bool = False, limit: int = 500) -> list[asyncpg.Record]:
    """Silences that have not ended (and the ended ones when asked), the latest to end first."""
    return await conn.fetch(
        """SELECT * FROM detector_silences WHERE $1 OR ends_at > now()
           ORDER BY ends_at DESC, id LIMIT $2""",
        include_ended,
        limit,
    )


async def create_window(
    conn: Conn,
    *,
    window_id: str,
    name: str,
    matchers: Sequence[str],
    starts_at: datetime,
    ends_at: datetime | None,
    rrule: str | None,
    duration_s: int | None,
    time_zone: str,
    created_by: str,
    comment: str,
) -> asyncpg.Record:
    row = await conn.fetchrow(
        """INSERT INTO detector_maintenance_windows
               (id, name, matchers, starts_at, ends_at, rrule, duration_s, time_zone, created_by, comment)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING *""",
        window_id,
        name,
        list(matchers),
        starts_at,
        ends_at,
        rrule,
        duration_s,
        time_zone,
        created_by,
        comment,
    )
    assert row is not None
    return row


# A window not over yet: one-off until its end; recurring while an occurrence may start (up to its ends_at)
# or one that started by then goes on (an occurrence lasts its duration past the last start).
_WINDOW_IN_FORCE = """(ends_at IS NULL OR ends_at > now()
    OR (rrule IS NOT NULL AND ends_at + duration_s * interval '1 second' > now()))"""


async def end_window(conn: Conn, *, window_id: str, ended_by: str) -> asyncpg.Record | None:
    """End a window now (a recurring one has no occurrence from now on); None if it had ended."""
    return await conn.fetchrow(
        f"""UPDATE detector_maintenance_windows
           SET ends_at = now(), ended_by = $2
           WHERE id = $1 AND ended_by IS NULL AND {_WINDOW_IN_FORCE} RETURNING *""",
        window_id,
        ended_by,
    )


async def list_windows(conn: Conn, *, include_ended: bool = False, limit: int = 500) -> list[asyncpg.Record]:
    """Maintenance windows that have not ended (and the ended ones when asked)."""
    return await conn.fetch(
        f"""SELECT * FROM detector_maintenance_windows
           WHERE $1 OR (ended_by IS NULL AND {_WINDOW_IN_FORCE})
           ORDER BY starts_at, id LIMIT $2""",
        include_ended,
        limit,
    )


@dataclass(frozen=True)
class SuppressedAlert:
    """A firing alert held back from correlation, and what held it back."""

    alert: Alert
    kind: str
    suppressed_by: str
    rule: str | None
    reason: str
    sightings: int


async def store_suppressed(conn: Conn, *, alerts: Sequence[SuppressedAlert]) -> dict[str, tuple[int, int]]:
    """Store suppressed alerts (one per key), in one statement; one already held back counts the new sightings.

    Returns each key's stored row (its occurrence: the same while the alert stays held back) and its repeats in all.
    """
    columns: list[list[Any]] = [[] for _ in range(12)]
    for s in alerts:
        a = s.alert
        row = (a.key, a.source, a.title, a.severity.value, a.time, a.host, a.model_dump_json())
        for column, value in zip(
            columns, (*row, s.kind, s.suppressed_by, s.rule, s.reason[:2000], s.sightings - 1), strict=True
        ):
            column.append(value)
    rows = await conn.fetch(
        """INSERT INTO detector_suppressed_alerts AS held
               (key, source, title, severity, time, host, body, kind, suppressed_by, rule, reason, repeats)
           SELECT key, source, title, severity, time, host, body::jsonb, kind, suppressed_by, rule, reason, repeats
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::text[],
                       $8::text[], $9::text[], $10::text[], $11::text[], $12::int[])
                AS n(key, source, title, severity, time, host, body, kind, suppressed_by, rule, reason, repeats)
           ON CONFLICT (key) WHERE released_at IS NULL DO UPDATE SET
               repeats = held.repeats + EXCLUDED.repeats + 1, last_seen_at = now(), resolved_at = NULL,
               kind = EXCLUDED.kind, suppressed_by = EXCLUDED.suppressed_by, rule = EXCLUDED.rule,
               reason = CASE WHEN held.suppressed_by = EXCLUDED.suppressed_by THEN held.reason
                             ELSE left(EXCLUDED.reason || ' (before: ' || held.reason || ')', 2000) END
           RETURNING held.key, held.id, held.repeats""",
        *columns,
    )
    return {row["key"]: (row["id"], row["repeats"]) for row in rows}


async def release_suppressed(conn: Conn, *, keys: Iterable[str]) -> list[str]:
    """Mark the live suppressed alerts under these keys released (nothing holds them back now); return their keys."""
    rows = await conn.fetch(
        """UPDATE detector_suppressed_alerts SET released_at = now()
           WHERE key = ANY($1::text[]) AND released_at IS NULL RETURNING key""",
        list(keys),
    )
    return [row["key"] for row in rows]


@dataclass(frozen=True)
class EndedSuppressed:
    """A held-back alert that ended while held back: its occurrence and what held it back."""

    key: str
    occurrence: int
    kind: str
    suppressed_by: str
    resolved_at: datetime


async def resolve_suppression(
    conn: Conn, *, resolutions: Mapping[str, datetime]
) -> tuple[list[EndedSuppressed], set[str]]:
    """Mark ended alerts' inhibitions (stored or suppressed alike) and suppressed records resolved.

    Returns the suppressed alerts that ended, and the keys of the alerts that inhibited until now.
    """
    keys, times = list(resolutions), list(resolutions.values())
    sources = await conn.fetch(
        """UPDATE detector_inhibitors SET resolved_at = c.at
           FROM unnest($1::text[], $2::timestamptz[]) AS c(key, at)
           WHERE detector_inhibitors.source_key = c.key AND detector_inhibitors.resolved_at IS NULL
           RETURNING detector_inhibitors.source_key""",
        keys,
        times,
    )
    rows = await conn.fetch(
        """UPDATE detector_suppressed_alerts SET resolved_at = c.at
           FROM unnest($1::text[], $2::timestamptz[]) AS c(key, at)
           WHERE detector_suppressed_alerts.key = c.key AND released_at IS NULL
           RETURNING detector_suppressed_alerts.key, detector_suppressed_alerts.id, detector_suppressed_alerts.kind,
                     detector_suppressed_alerts.suppressed_by, detector_suppressed_alerts.resolved_at""",
        keys,
        times,
    )
    ended = [EndedSuppressed(r["key"], r["id"], r["kind"], r["suppressed_by"], r["resolved_at"]) for r in rows]
    return ended, {row["source_key"] for row in sources}


async def record_inhibitors(conn: Conn, *, sources: Sequence[tuple[str, str, str, datetime, datetime | None]]) -> None:
    """Record firing source alerts, in one statement: (rule, equal values, source key, seen at, inhibits until)."""
    await conn.execute(
        """INSERT INTO detector_inhibitors (rule, equal_values, source_key, last_seen_at, expires_at)
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[])
           ON CONFLICT (rule, equal_values, source_key) DO UPDATE SET
               last_seen_at = EXCLUDED.last_seen_at, expires_at = EXCLUDED.expires_at, resolved_at = NULL""",
        *(list(column) for column in zip(*sources, strict=True)),
    )


async def firing_inhibitors(
    conn: Conn, *, wanted: Iterable[tuple[str, str]], now: datetime
) -> dict[tuple[str, str], list[str]]:
    """The keys of the source alerts still firing for each (rule, equal values) asked about."""
    pairs = list(set(wanted))
    rows = await conn.fetch(
        """SELECT i.rule, i.equal_values, i.source_key FROM detector_inhibitors i
           JOIN unnest($1::text[], $2::text[]) AS w(rule, equal_values)
             ON i.rule = w.rule AND i.equal_values = w.equal_values
           WHERE i.resolved_at IS NULL AND (i.expires_at IS NULL OR i.expires_at > $3)""",
        [rule for rule, _ in pairs],
        [values for _, values in pairs],
        now,
    )
    found: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        found.setdefault((row["rule"], row["equal_values"]), []).append(row["source_key"])
    return found


async def list_suppressed(
    conn: Conn,
    *,
    kind: str | None = None,
    suppressed_by: str | None = None,
    include_released: bool = True,
    limit: int = 100,
) -> list[asyncpg.Record]:
    """Suppressed alerts, the latest first: what suppressed each, since when, how often seen, resolved or released."""
    return await conn.fetch(
        """SELECT id, key, source, title, severity, time, host, kind, suppressed_by, rule, reason, repeats,
                  received_at, last_seen_at, resolved_at, released_at
           FROM detector_suppressed_alerts
           WHERE ($1::text IS NULL OR kind = $1) AND ($2::text IS NULL OR suppressed_by = $2)
             AND ($3 OR released_at IS NULL)
           ORDER BY received_at DESC, id DESC LIMIT $4""",
        kind,
        suppressed_by,
        include_released,
        limit,
    )


async def still_held(conn: Conn, *, suppressed_by: str, formats: Iterable[str]) -> list[Alert]:
    """The alerts this silence, window or source still holds back that have not ended, from tools that say when."""
    rows = await conn.fetch(
        """SELECT body FROM detector_suppressed_alerts
           WHERE suppressed_by = $1 AND released_at IS NULL AND resolved_at IS NULL
             AND body->>'format' = ANY($2::text[])
           ORDER BY id""",
        suppressed_by,
        list(formats),
    )
    return [Alert.model_validate(row["body"]) for row in rows]


async def reassign_suppressed(conn: Conn, *, alerts: Sequence[SuppressedAlert]) -> None:
    """Record that held-back alerts are now held back by something else (their sightings unchanged)."""
    await conn.executemany(
        """UPDATE detector_suppressed_alerts SET kind = $2, suppressed_by = $3, rule = $4,
               reason = left($5 || ' (before: ' || reason || ')', 2000)
           WHERE key = $1 AND released_at IS NULL AND suppressed_by <> $3""",
        [(s.alert.key, s.kind, s.suppressed_by, s.rule, s.reason[:1000]) for s in alerts],
    )


# ---- merging and detaching -------------------------------------------------------------------


async def lock_for_command(conn: Conn, *, ids: Iterable[str]) -> dict[str, tuple[Standing, IncidentState]]:
    """Return the incidents a merge or detach names, locked until commit (in id order: two merges never deadlock)."""
    rows = await conn.fetch(
        "SELECT * FROM detector_incidents WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE", list(set(ids))
    )
    return {
        row["id"]: (Standing(id=row["id"], closed=row["closed"], merged_into=row["merged_into"]), _from_row(row))
        for row in rows
    }


@dataclass(frozen=True)
class HeldAlert:
    """A live alert of an incident, with the rule that typed it and how it stands (repeats, resolution)."""

    alert: Alert
    type_rule: str | None
    repeats: int
    last_seen_at: datetime
    resolved_at: datetime | None
    reason: AlertCorrelation | None = None  # why it joined the incident it was first placed in


_HELD = "body, type_rule, repeats, COALESCE(last_seen_at, received_at) AS last_seen_at, resolved_at, correlation"


def _held(row: asyncpg.Record) -> HeldAlert:
    return HeldAlert(
        alert=Alert.model_validate(row["body"]),
        type_rule=row["type_rule"],
        repeats=row["repeats"],
        last_seen_at=row["last_seen_at"],
        resolved_at=row["resolved_at"],
        reason=AlertCorrelation.model_validate(row["correlation"]) if row["correlation"] is not None else None,
    )


async def live_alerts(conn: Conn, *, incident_id: str) -> list[HeldAlert]:
    """Return an incident's live alerts, oldest first."""
    rows = await conn.fetch(
        f"SELECT {_HELD} FROM detector_alerts WHERE incident_id = $1 AND NOT retired ORDER BY time, key",
        incident_id,
    )
    return [_held(row) for row in rows]


async def move_alerts(conn: Conn, *, from_ids: Sequence[str], to_id: str) -> list[HeldAlert]:
    """Move the live alerts of the incidents merged away to the survivor; return them, oldest first."""
    rows = await conn.fetch(
        f"""UPDATE detector_alerts SET incident_id = $2
            WHERE incident_id = ANY($1::text[]) AND NOT retired
            RETURNING {_HELD}""",
        list(from_ids),
        to_id,
    )
    return sorted((_held(row) for row in rows), key=lambda held: (held.alert.time, held.alert.key))


async def mark_merged(conn: Conn, *, ids: Sequence[str], survivor: str) -> None:
    """The incidents merged away end, pointing at their survivor."""
    await conn.execute(
        """UPDATE detector_incidents SET closed = true, merged_into = $2, updated_at = now()
           WHERE id = ANY($1::text[])""",
        list(ids),
        survivor,
    )


async def move_keys(conn: Conn, *, merged: Mapping[str, str], survivor: IncidentState) -> dict[str, list[str]]:
    """Lead the correlation keys of the incidents merged away (``merged``: id -> own key), and the keys
    merged into them before, to the survivor; return each incident's keys that now do."""
    rows = await conn.fetch(
        """SELECT correlation_key, incident_id FROM detector_merged_keys WHERE incident_id = ANY($1::text[])""",
        list(merged),
    )
    moving: dict[str, list[str]] = {incident_id: [key] for incident_id, key in merged.items()}
    for row in rows:
        moving[row["incident_id"]].append(row["correlation_key"])
    records = [
        (key, survivor.id, incident_id)
        for incident_id, keys in moving.items()
        for key in dict.fromkeys(keys)
        if key != survivor.correlation_key  # the survivor's own key leads to it already
    ]
    await conn.execute("DELETE FROM detector_merged_keys WHERE incident_id = ANY($1::text[])", list(merged))
    await conn.executemany(
        """INSERT INTO detector_merged_keys (correlation_key, incident_id, merged_from) VALUES ($1, $2, $3)
           ON CONFLICT DO NOTHING""",
        records,
    )
    return {incident_id: list(dict.fromkeys(keys)) for incident_id, keys in moving.items()}


async def get_open_survivors(conn: Conn, *, keys: Iterable[str]) -> dict[str, IncidentState]:
    """Return the open incident each merged-away key now leads to (the newest, if several), locked until commit."""
    keys = list(keys)
    if not keys:
        return {}
    rows = await conn.fetch(
        """SELECT m.correlation_key AS merged_key, i.*
           FROM detector_merged_keys m JOIN detector_incidents i ON i.id = m.incident_id
           WHERE m.correlation_key = ANY($1::text[]) AND NOT i.closed
           ORDER BY i.last_seen
           FOR UPDATE OF i""",
        keys,
    )
    # Ordered by last alert: the newest survivor of a key is the one it keeps.
    return {row["merged_key"]: _from_row(row) for row in rows}


async def merged_keys_of(conn: Conn, *, incident_id: str) -> set[str]:
    rows = await conn.fetch("SELECT correlation_key FROM detector_merged_keys WHERE incident_id = $1", incident_id)
    return {row["correlation_key"] for row in rows}


async def detach_alerts(conn: Conn, *, keys: Sequence[str], from_id: str, to_id: str, following: Iterable[str]) -> None:
    """Move detached alerts to their new incident, and the merged-in keys that follow them."""
    await conn.execute(
        """UPDATE detector_alerts SET incident_id = $3
           WHERE incident_id = $2 AND key = ANY($1::text[]) AND NOT retired""",
        list(keys),
        from_id,
        to_id,
    )
    await conn.execute(
        """UPDATE detector_merged_keys SET incident_id = $3
           WHERE incident_id = $2 AND correlation_key = ANY($1::text[])""",
        list(following),
        from_id,
        to_id,
    )
