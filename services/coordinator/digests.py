"""Incident review digests: a period's incidents summed up, sent on a schedule to the people who review them.

A team reviews its incidents every week or month: how many, how bad, how fast they were taken and
ended, what is still open and what follow-up work is late. Each digest of ``digests.yaml``
(``VIGIL_DIGESTS``) names when it goes (an iCalendar RRULE in a time zone: every Monday at 09:00),
the period it covers (``covers``: the last 7 days), to whom (people and groups of the notifications
file) and, optionally, which severities it counts. It is a notice of kind ``digest``, routed and
rendered as every notice is, sent once per digest and period through the effects runner.

Each digest has one durable timer, which carries the time it is for. The coordinator sets it at
start-up where none is pending (or moves it where the rule changed), and each firing sets the next;
a digest whose time passed while no coordinator ran goes out once when one starts, for the period
that ended then. A digest goes at most daily.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from services.coordinator.tasks import duration
from shared import timers
from shared.db import Conn
from shared.yamlfile import YamlFileError, validate_yaml

DEFAULT_DIGESTS = Path(__file__).with_name("digests.yaml")
SERVICE = "coordinator"
TIMER = "digest_due"
NOTABLE = 10  # the SEV1 and SEV2 incidents a digest names, the latest first
SEVERITIES = ("SEV1", "SEV2", "SEV3", "SEV4")


class DigestsError(YamlFileError):
    """A digests file that cannot be used; each problem says where and why."""


def _zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"not a time zone: {name!r} (e.g. Europe/Lisbon, UTC)") from None
    return name


def _span(text: str) -> str:
    duration(text)
    return text


class Digest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="Its name: lower case, digits and -.")
    every: str = Field(description="When it goes: an RRULE (FREQ=WEEKLY;BYDAY=MO;BYHOUR=9;BYMINUTE=0).")
    time_zone: Annotated[str, AfterValidator(_zone)] = "UTC"
    covers: Annotated[str, AfterValidator(_span)] = Field("7d", description="The period before each sending.")
    to: list[Annotated[str, Field(pattern=r"^[^:\s]{1,200}$")]] = Field(
        min_length=1, description="People and groups of the notifications file."
    )
    severities: list[Literal["SEV1", "SEV2", "SEV3", "SEV4"]] | None = Field(
        None, min_length=1, description="Only incidents of these severities are counted; all when omitted."
    )

    @model_validator(mode="after")
    def _rule(self) -> Digest:
        rule = self.every.upper()
        if rule.startswith(("DTSTART", "RRULE:")) or "\n" in rule:
            raise ValueError("every: give only the RRULE part (e.g. FREQ=WEEKLY;BYDAY=MO;BYHOUR=9;BYMINUTE=0)")
        parts = dict(part.partition("=")[::2] for part in rule.split(";"))
        if parts.get("FREQ") in ("SECONDLY", "MINUTELY", "HOURLY"):
            raise ValueError("every: a digest goes at most daily (FREQ=DAILY, WEEKLY, MONTHLY or YEARLY)")
        if "COUNT" in parts:
            raise ValueError("every: COUNT is not taken (it would count from a day of Vigil's choosing); use UNTIL")
        try:
            upcoming = self.next_after(datetime.now(UTC))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"every: {self.every!r} is not an RRULE: {exc}") from None
        if upcoming is None:
            raise ValueError(f"every: {self.every!r} has no time to come")
        return self

    def next_after(self, at: datetime) -> datetime | None:
        """When it goes next, strictly after ``at`` (None: its rule has no more occurrences).

        The rule counts from midnight of a fixed Monday in its zone (BYHOUR, BYDAY and BYMONTHDAY say the
        rest). Compared in UTC: on the night clocks go back, a local 01:30 comes twice.
        """
        # Imported here: a coordinator with no digest does without it (its idle memory is counted).
        from dateutil.rrule import rrulestr  # type: ignore[import-untyped]

        zone = ZoneInfo(self.time_zone)
        rule = rrulestr(self.every, dtstart=datetime(2024, 1, 1, tzinfo=zone))
        occurrence = rule.after(at.astimezone(zone), inc=False)
        while occurrence is not None and occurrence.astimezone(UTC) <= at:
            occurrence = rule.after(occurrence, inc=False)
        return None if occurrence is None else occurrence.astimezone(UTC)

    def start_of(self, end: datetime) -> datetime:
        """Where the period ending at ``end`` starts: ``covers`` before it on the zone's clock (a week is a week
        of mornings, across a change of clocks)."""
        zone = ZoneInfo(self.time_zone)
        local = end.astimezone(zone).replace(tzinfo=None) - duration(self.covers)
        return local.replace(tzinfo=zone).astimezone(UTC)


class DigestsFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    digests: list[Digest] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> DigestsFile:
        names = [d.name for d in self.digests]
        if doubled := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"digest names are unique: {', '.join(doubled)} more than once")
        return self


def parse_digests(document: str, *, source: str = "digests") -> dict[str, Digest]:
    file = validate_yaml(document, DigestsFile, source=source, raises=DigestsError)
    return {digest.name: digest for digest in file.digests}


def load_digests(path: Path = DEFAULT_DIGESTS) -> dict[str, Digest]:
    try:
        document = path.read_text()
    except OSError as exc:
        raise DigestsError([f"{path}: cannot be read: {exc.strerror or exc}"]) from exc
    return parse_digests(document, source=str(path))


# ---- what a digest says: pure -------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime
    time_zone: str

    def words(self) -> str:
        zone = ZoneInfo(self.time_zone)
        start, end = self.start.astimezone(zone), self.end.astimezone(zone)
        return f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} ({self.time_zone})"


def _minutes(spans: Sequence[timedelta]) -> float | None:
    return round(statistics.median(s.total_seconds() for s in spans) / 60, 1) if spans else None


def _by_severity(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    counted = Counter(str(r["severity"]) for r in rows)
    return {severity: counted[severity] for severity in SEVERITIES if counted[severity]}


def summarise(
    digest: Digest,
    incidents: Sequence[Mapping[str, Any]],
    *,
    period: Period,
    ended: Sequence[str],
    overdue_tasks: int,
    open_follow_ups: int,
) -> dict[str, Any]:
    """The digest's data (JSON-able, for its template): the period's incidents and where they stand now.

    ``incidents``: rows of the coordinator's incidents, merged ones left out, with severity, title,
    state, resolution and the times they were detected, acknowledged and resolved.
    """
    chosen = [r for r in incidents if digest.severities is None or r["severity"] in digest.severities]

    def within(at: datetime | None) -> bool:
        return at is not None and period.start <= at < period.end

    opened = [r for r in chosen if within(r["detected_at"])]
    # Resolved and not reopened since: a reopened incident keeps its first resolution's time.
    resolved = [r for r in chosen if within(r["resolved_at"]) and r["state"] in ended]
    still_open = [r for r in chosen if r["state"] not in ended]
    acknowledged = [r["acknowledged_at"] - r["detected_at"] for r in opened if r["acknowledged_at"]]
    ended_spans = [r["resolved_at"] - r["detected_at"] for r in opened if r["resolved_at"]]
    notable = sorted(
        (r for r in opened if r["severity"] in ("SEV1", "SEV2")), key=lambda r: r["detected_at"], reverse=True
    )
    return {
        "name": digest.name,
        "period": period.words(),
        "opened": len(opened),
        "opened_by_severity": _by_severity(opened),
        "resolved": len(resolved),
        "resolved_by_resolution": dict(Counter(str(r["resolution"] or "unknown") for r in resolved).most_common()),
        "open_now": len(still_open),
        "open_by_severity": _by_severity(still_open),
        "mtta_minutes": _minutes(acknowledged),
        "mttr_minutes": _minutes(ended_spans),
        "notable": [
            {
                "incident_id": r["incident_id"],
                "short_id": r["incident_id"][:8],
                "severity": r["severity"],
                "title": r["title"],
                "state": r["state"],
            }
            for r in notable[:NOTABLE]
        ],
        "notable_more": max(0, len(notable) - NOTABLE),
        "overdue_tasks": overdue_tasks,
        "open_follow_ups": open_follow_ups,
    }


def highest_severity(data: Mapping[str, Any]) -> str:
    """The worst severity the digest names (opened, or open now): what routes it, as a notice's severity."""
    seen = {*data["opened_by_severity"], *data["open_by_severity"]}
    return next((severity for severity in SEVERITIES if severity in seen), "SEV4")


# ---- reading the period: SQL --------------------------------------------------------------------


async def gather(conn: Conn, digest: Digest, *, end: datetime, ended: Sequence[str], now: datetime) -> dict[str, Any]:
    """The digest's data for the period that ends at ``end``."""
    period = Period(start=digest.start_of(end), end=end, time_zone=digest.time_zone)
    rows = await conn.fetch(
        """SELECT incident_id, severity, title, state, resolution, detected_at, acknowledged_at, resolved_at
           FROM coordinator_incidents
           WHERE merged_into IS NULL
             AND ((detected_at >= $1 AND detected_at < $2) OR (resolved_at >= $1 AND resolved_at < $2)
                  OR NOT state = ANY($3::text[]))""",
        period.start,
        period.end,
        list(ended),
    )
    severities = list(digest.severities or SEVERITIES)
    tasks = await conn.fetchrow(
        """SELECT count(*) FILTER (WHERE t.due_at <= $1) AS overdue,
                  count(*) FILTER (WHERE t.phase = 'post_mortem') AS follow_ups
           FROM coordinator_tasks t JOIN coordinator_incidents i USING (incident_id)
           WHERE t.state = 'open' AND i.merged_into IS NULL AND i.severity = ANY($2::text[])""",
        now,
        severities,
    )
    assert tasks is not None  # an aggregate: one row
    return summarise(
        digest,
        [dict(r) for r in rows],
        period=period,
        ended=ended,
        overdue_tasks=int(tasks["overdue"]),
        open_follow_ups=int(tasks["follow_ups"]),
    )


async def ensure_scheduled(conn: Conn, digests: Mapping[str, Digest], *, now: datetime) -> list[str]:
    """Give each digest its timer for its next time: set where none is pending, moved where its rule changed.

    A pending timer already due stays (it goes out now, for the period that ended then); one parked
    after failing is set anew. Return the digests whose timer was set or moved.
    """
    pending = {
        row["subject"]: row
        for row in await conn.fetch(
            """SELECT subject, due_at, parked_at FROM timers
               WHERE service = $1 AND kind = $2 AND fired_at IS NULL AND cancelled_at IS NULL""",
            SERVICE,
            TIMER,
        )
    }
    changed = []
    for name, digest in digests.items():
        upcoming = digest.next_after(now)
        row = pending.get(name)
        if upcoming is None or (row is not None and row["parked_at"] is None and row["due_at"] <= now):
            continue
        if row is not None and row["parked_at"] is None and row["due_at"] == upcoming:
            continue
        await timers.schedule(
            conn, service=SERVICE, kind=TIMER, subject=name, due_at=upcoming, payload=scheduled(upcoming)
        )
        changed.append(name)
    return changed


def scheduled(at: datetime) -> dict[str, str]:
    """A digest timer's payload: the time it is for (a failed attempt moves the timer, never the period)."""
    return {"at": at.astimezone(UTC).isoformat()}


def scheduled_time(payload: Mapping[str, Any], due_at: datetime) -> datetime:
    """The time a digest timer is for: its payload's, else (a timer from before) when it is due."""
    at = payload.get("at")
    return datetime.fromisoformat(at) if isinstance(at, str) else due_at
