"""Pure rendering of history into timeline entries: one table of renderers, keyed by event type.

Every event the reporter consumes is kept as a ``HistoryEvent`` (envelope and JSON data), whether
this version of Vigil knows its type or not. A known type renders through its model; a type that
has no renderer yet renders generically (its name, its actor, a few of its fields), so nothing
new is ever missing from a timeline. A renderer for a new type is one entry in ``RENDERERS``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from shared.events import (
    EVENT_ADAPTER,
    EVENT_TYPES,
    AlertsSuppressed,
    AlertsSuppressedResolved,
    EventBase,
    IncidentDetected,
    IncidentUpdated,
)
from shared.timeline import TimelineEntry, timeline_entry

# How many fields a generic line names, and how long each value may be.
GENERIC_FIELDS = 4
GENERIC_VALUE_CHARS = 80
# Fields that say who acted, in the order they are believed.
ACTOR_FIELDS = ("actor", "by", "person", "commander")
# Events about no incident (their subject names something else): kept as history, on no timeline.
# Alerts held back from incidents are in the alert history instead.
OFF_TIMELINE = frozenset(
    {AlertsSuppressed.model_fields["type"].default, AlertsSuppressedResolved.model_fields["type"].default}
)


class ModelData(Mapping[str, Any]):
    """A decoded event's data as the JSON object it is kept as, made only if something reads it as one.

    Kept history takes its JSON text (``json``) and a known type renders from the model, so most
    events never need the Python dict.
    """

    def __init__(self, model: BaseModel) -> None:
        self.model = model
        self._dumped: dict[str, Any] | None = None

    def json(self) -> bytes:
        return self.model.model_dump_json().encode()

    def _dict(self) -> dict[str, Any]:
        if self._dumped is None:
            self._dumped = self.model.model_dump(mode="json")
        return self._dumped

    def __getitem__(self, name: str) -> Any:
        return self._dict()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())


@dataclass(frozen=True)
class HistoryEvent:
    """One event as the reporter keeps it, known type or not.

    ``model``: the event as decoded, when it came off a topic as a type this version knows; kept
    history read back has none, and renders from its data.
    """

    id: str
    type: str
    source: str
    subject: str
    time: datetime
    data: Mapping[str, Any] = field(default_factory=dict)
    correlationid: str | None = None
    causationid: str | None = None
    model: EventBase | None = field(default=None, compare=False, repr=False)

    @property
    def service(self) -> str:
        """`/vigil/coordinator/api` -> `coordinator`."""
        parts = self.source.strip("/").split("/")
        return parts[1] if len(parts) > 1 and parts[0] == "vigil" else self.source

    @property
    def actor(self) -> str:
        """The person or service the data names as acting, else the producing service."""
        for name in ACTOR_FIELDS:
            value = self.data.get(name)
            if isinstance(value, str) and value:
                return value
        return self.service


Renderer = Callable[[HistoryEvent], TimelineEntry]


def event_name(event_type: str) -> str:
    """`vigil.incident.merged.v1` -> `incident merged`."""
    parts = event_type.split(".")
    if parts and parts[0] == "vigil":
        parts = parts[1:]
    if parts and parts[-1][:1] == "v" and parts[-1][1:].isdigit():
        parts = parts[:-1]
    return " ".join(p.replace("_", " ") for p in parts) or event_type


def generic(event: HistoryEvent) -> TimelineEntry:
    """Any event without a renderer: its name and its first few plain fields."""
    said = []
    # By name: stored JSON does not keep the producer's order, and a line should not change with it.
    for name, value in sorted(event.data.items()):
        if name in ACTOR_FIELDS or isinstance(value, dict | list) or value is None or value == "":
            continue
        text = str(value)
        if len(text) > GENERIC_VALUE_CHARS:
            text = text[: GENERIC_VALUE_CHARS - 1] + "…"
        said.append(f"{name}={text}")
        if len(said) == GENERIC_FIELDS:
            break
    summary = event_name(event.type) + (f": {', '.join(said)}" if said else "")
    return TimelineEntry(actor=event.actor, summary=summary)


def typed(event: HistoryEvent) -> TimelineEntry:
    """A type this version knows: rendered from its model (``shared.timeline``)."""
    return timeline_entry(model_of(event))


def model_of(event: HistoryEvent) -> EventBase:
    """The event's model: as decoded, else validated from its kept data."""
    if event.model is not None:
        return event.model
    return EVENT_ADAPTER.validate_python(
        {
            "id": event.id,
            "type": event.type,
            "source": event.source,
            "subject": event.subject,
            "time": event.time,
            "data": dict(event.data),
        },
        extra="ignore",
    )


def snapshot(event: HistoryEvent) -> TimelineEntry:
    """An incident snapshot; one batch's alerts may come in several events: say which this is."""
    model = model_of(event)
    entry = timeline_entry(model)
    if isinstance(model, IncidentDetected | IncidentUpdated) and model.data.parts > 1:
        return TimelineEntry(entry.actor, f"{entry.summary} (part {model.data.part} of {model.data.parts})")
    return entry


RENDERERS: dict[str, Renderer] = {
    **dict.fromkeys(EVENT_TYPES, typed),
    IncidentDetected.model_fields["type"].default: snapshot,
    IncidentUpdated.model_fields["type"].default: snapshot,
    # Types this version has no model for, rendered better than generically, one line each:
    # "vigil.incident.archived.v1": lambda e: TimelineEntry(e.actor, f"archived: {e.data.get('reason')}"),
}


def on_timeline(event: HistoryEvent) -> bool:
    """Whether the event belongs on its incident's timeline: it is about an incident."""
    return event.type not in OFF_TIMELINE


def render(event: HistoryEvent, renderers: Mapping[str, Renderer] = RENDERERS) -> TimelineEntry:
    """Say who caused an event and what it means, in one line; never fails on what a producer sent."""
    renderer = renderers.get(event.type, generic)
    try:
        return renderer(event)
    except (ValidationError, KeyError, TypeError, ValueError):
        # Data an older or newer producer shaped differently: still on the timeline, generically.
        return generic(event)
