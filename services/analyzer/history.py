"""SQL for root cause: each incident's trace, and the features past incidents are found alike by."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from services.analyzer.rootcause import Trace
from services.analyzer.similar import MAX_SIMILAR, MIN_SCORE, Feature, PastIncident
from shared.db import Conn

# Past incidents read per shared value: a value common to thousands of incidents costs this many rows.
PER_FEATURE = 50


async def get_trace(conn: Conn, *, incident_id: str) -> Trace | None:
    row = await conn.fetchrow("SELECT trace FROM analyzer_traces WHERE incident_id = $1 FOR UPDATE", incident_id)
    return None if row is None else Trace.model_validate(row["trace"])


async def save_trace(conn: Conn, *, incident_id: str, title: str, trace: Trace) -> None:
    first_seen = trace.earliest[0].time if trace.earliest else None
    await conn.execute(
        """INSERT INTO analyzer_traces (incident_id, title, first_seen, trace) VALUES ($1, $2, $3, $4)
           ON CONFLICT (incident_id) DO UPDATE SET title = EXCLUDED.title, first_seen = EXCLUDED.first_seen,
               trace = EXCLUDED.trace, updated_at = now()""",
        incident_id,
        title,
        first_seen,
        trace.model_dump_json().encode(),
    )


async def forget_trace(conn: Conn, *, incident_id: str) -> None:
    """Drop the incident's root-cause trace: it is folded again from the alerts it keeps (after a detach)."""
    await conn.execute("DELETE FROM analyzer_traces WHERE incident_id = $1", incident_id)


async def forget_features(conn: Conn, *, incident_id: str) -> None:
    """What the incident had is no longer its own (alerts detached, or it was merged away)."""
    await conn.execute("DELETE FROM analyzer_incident_features WHERE incident_id = $1", incident_id)


async def add_features(conn: Conn, *, incident_id: str, features: Sequence[Feature], seen_at: datetime) -> None:
    """Record what this incident has (known values are kept as they were: first seen stays first)."""
    if not features:
        return
    await conn.execute(
        """INSERT INTO analyzer_incident_features (kind, value, incident_id, first_seen)
           SELECT f.kind, f.value, $3, $4 FROM unnest($1::text[], $2::text[]) AS f(kind, value)
           ON CONFLICT DO NOTHING""",
        [f.kind for f in features],
        [f.value for f in features],
        incident_id,
        seen_at,
    )


async def most_alike(conn: Conn, *, incident_id: str, weighed: Mapping[Feature, tuple[str, int]]) -> list[PastIncident]:
    """The past incidents that share the most weight of these features (``similar.weights``), most alike first.

    Those of equal weight, the more recent first; below ``MIN_SCORE``, none. Scored in Postgres: of the
    hundreds of incidents a common value can be shared with, only the few named come back.
    """
    if not weighed:
        return []
    features = list(weighed)
    rows = await conn.fetch(
        """SELECT t.incident_id, t.title, t.first_seen, array_agg(w.n) AS shared
           FROM unnest($1::text[], $2::text[], $3::int[]) WITH ORDINALITY AS w(kind, value, points, n)
           CROSS JOIN LATERAL (
               SELECT f.incident_id FROM analyzer_incident_features f
               WHERE f.kind = w.kind AND f.value = w.value AND f.incident_id <> $4
               ORDER BY f.first_seen DESC LIMIT $5
           ) p
           JOIN analyzer_traces t ON t.incident_id = p.incident_id
           GROUP BY t.incident_id
           HAVING sum(w.points) >= $6
           ORDER BY sum(w.points) DESC, t.first_seen DESC NULLS LAST, t.incident_id COLLATE "C"
           LIMIT $7""",
        [f.kind for f in features],
        [f.value for f in features],
        [points for _, points in weighed.values()],
        incident_id,
        PER_FEATURE,
        MIN_SCORE,
        MAX_SIMILAR,
    )
    return [
        PastIncident(r["incident_id"], r["title"], r["first_seen"], tuple(features[n - 1] for n in r["shared"]))
        for r in rows
    ]
