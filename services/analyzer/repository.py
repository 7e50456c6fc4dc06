"""The analyzer's table: what it has gathered so far about each incident."""

from __future__ import annotations

from services.analyzer.domain import Gathered
from shared.db import Conn
from shared.events import Indicator


async def get(conn: Conn, *, incident_id: str) -> Gathered | None:
    row = await conn.fetchrow("SELECT * FROM analyzer_incidents WHERE incident_id = $1 FOR UPDATE", incident_id)
    if row is None:
        return None
    return Gathered(
        alert_count=row["alert_count"],
        hosts=list(row["hosts"]),
        users=list(row["users"]),
        indicators=[Indicator.model_validate(i) for i in row["indicators"]],
    )


async def save(conn: Conn, *, incident_id: str, gathered: Gathered) -> None:
    await conn.execute(
        """INSERT INTO analyzer_incidents (incident_id, alert_count, hosts, users, indicators)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (incident_id) DO UPDATE SET alert_count = EXCLUDED.alert_count,
               hosts = EXCLUDED.hosts, users = EXCLUDED.users, indicators = EXCLUDED.indicators,
               updated_at = now()""",
        incident_id,
        gathered.alert_count,
        gathered.hosts,
        gathered.users,
        [i.model_dump() for i in gathered.indicators],
    )
