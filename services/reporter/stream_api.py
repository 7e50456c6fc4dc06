"""The stream aggregations over HTTP: the windows their tables hold, newest first (role `viewer` and up).

Each answer says whether the aggregations are enabled (``VIGIL_STREAM_ENABLED``) and ready (running, their
tables recovered from the changelog), the windows' size and how long they are kept. With more than one
reporter, each answers for the keys it counts.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Generic, Literal, TypeVar, cast

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from services.reporter import windows
from services.reporter.queries import UtcTime
from services.reporter.stream import WindowView
from services.reporter.windows import DeadLetterTopic, Outcome, Window, WindowSpec
from shared.auth import require
from shared.events import IncidentType, Severity
from shared.service import Runtime

Since = Annotated[UtcTime | None, Query(description="Only windows that end after this (ISO 8601; UTC unless it says).")]
Word = Annotated[str | None, Query(max_length=200)]
Per = Annotated[Literal["minute", "hour"], Query(description="Minute windows, or their sums per hour.")]

W = TypeVar("W", bound=BaseModel)


class AlertWindow(BaseModel):
    start: datetime
    end: datetime
    source: str
    outcome: windows.Outcome
    count: int


class IncidentWindow(BaseModel):
    start: datetime
    end: datetime
    type: str
    severity: str
    count: int


class DeadLetterWindow(BaseModel):
    start: datetime
    end: datetime
    topic: windows.DeadLetterTopic = Field(description="`alerts`: raw alerts the detector refused; `events`: events.")
    reason: str = Field(description="The dead letter's reason code (`vigil_dlq_code`).")
    count: int


class FlappingAlert(BaseModel):
    key: str = Field(description="The alert's deduplication key (`source:id`).")
    source: str
    start: datetime = Field(description="The flapping window it flapped in.")
    end: datetime
    changes: int = Field(description="Times it resolved, or fired again after resolving, in the window.")
    state: windows.FlapState = Field(description="The state it was last seen in.")


class Windows(BaseModel, Generic[W]):
    enabled: bool = Field(description="Whether the reporter runs the stream aggregations (VIGIL_STREAM_ENABLED).")
    ready: bool = Field(description="Running, with their tables recovered from the changelog topics.")
    window_s: int = Field(description="Each window's length, in seconds.")
    kept_s: int = Field(description="How long a window is kept after it ends, in seconds.")
    windows: list[W]


class Flapping(BaseModel):
    enabled: bool
    ready: bool
    window_s: int = Field(description="The flapping window, in seconds (VIGIL_STREAM_FLAPPING_WINDOW_S).")
    threshold: int = Field(description="More state changes than this in a window is flapping.")
    alerts: list[FlappingAlert] = Field(description="Flapping in the current window or the last one, most first.")


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _since(found: list[Window], since: datetime | None) -> list[Window]:
    return found if since is None else [w for w in found if w.end > since.timestamp()]


def router(runtime: Runtime, view: WindowView | None) -> APIRouter:
    """The routes answer with no windows (``enabled: false``) when the reporter runs without the aggregations."""
    api = APIRouter(prefix="/api/v1/stream", tags=["stream"], dependencies=[require(runtime, "incidents.read")])
    flapping_s = runtime.settings.stream_flapping_window_s

    def read(spec: WindowSpec, since: datetime | None) -> list[Window]:
        return _since(view.windows(spec), since) if view is not None else []

    def state() -> dict[str, bool]:
        return {"enabled": view is not None, "ready": view is not None and view.ready}

    @api.get("/alerts")
    async def alert_windows(
        since: Since = None, source: Word = None, outcome: windows.Outcome | None = None
    ) -> Windows[AlertWindow]:
        """Alerts per minute by source and outcome (accepted, deduplicated, resolved, dead_lettered)."""
        spec = windows.ALERTS
        found = [
            AlertWindow(
                start=_at(w.start), end=_at(w.end), source=w.key[0], outcome=cast(Outcome, w.key[1]), count=w.value
            )
            for w in read(spec, since)
            if (source is None or w.key[0] == source) and (outcome is None or w.key[1] == outcome)
        ]
        return Windows(**state(), window_s=spec.size_s, kept_s=spec.expires_s, windows=found)

    @api.get("/incidents")
    async def incident_windows(
        since: Since = None, type: IncidentType | None = None, severity: Severity | None = None
    ) -> Windows[IncidentWindow]:
        """Incidents opened per hour by type and severity."""
        spec = windows.INCIDENTS
        found = [
            IncidentWindow(start=_at(w.start), end=_at(w.end), type=w.key[0], severity=w.key[1], count=w.value)
            for w in read(spec, since)
            if (type is None or w.key[0] == type.value) and (severity is None or w.key[1] == severity.value)
        ]
        return Windows(**state(), window_s=spec.size_s, kept_s=spec.expires_s, windows=found)

    @api.get("/dead-letters")
    async def dead_letter_windows(
        since: Since = None,
        per: Per = "minute",
        topic: windows.DeadLetterTopic | None = None,
        reason: Word = None,
    ) -> Windows[DeadLetterWindow]:
        """Dead letters per minute or per hour, by topic (alerts, events) and reason code."""
        spec = windows.DEAD_LETTERS
        size = spec.size_s if per == "minute" else windows.INCIDENTS.size_s
        found = read(spec, None) if per == "minute" else windows.roll_up(read(spec, None), size)
        listed = [
            DeadLetterWindow(
                start=_at(w.start),
                end=_at(w.end),
                topic=cast(DeadLetterTopic, w.key[0]),
                reason=w.key[1],
                count=w.value,
            )
            for w in _since(found, since)
            if (topic is None or w.key[0] == topic) and (reason is None or w.key[1] == reason)
        ]
        return Windows(**state(), window_s=size, kept_s=spec.expires_s, windows=listed)

    @api.get("/flapping")
    async def flapping_alerts() -> Flapping:
        """Alerts that changed state more often than the threshold in the current or the last flapping window."""
        found = view.flapping() if view is not None else []
        return Flapping(
            **state(),
            window_s=flapping_s,
            threshold=runtime.settings.stream_flapping_threshold,
            alerts=[
                FlappingAlert(
                    key=a.key, source=a.source, start=_at(a.start), end=_at(a.end), changes=a.changes, state=a.state
                )
                for a in found
            ],
        )

    return api
