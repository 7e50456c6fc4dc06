"""The reporter's stream aggregations as pure decisions: which window of which aggregate an event counts
toward, when an alert flaps, and what the windows say (``services/reporter/stream.py`` runs them in faust
agents over tables backed by changelog topics).

Every aggregate is a set of tumbling windows over the events' own time (an event's CloudEvents ``time``, a
dead letter's ``vigil_dlq_time``), kept until it expires:

- ``alerts``: alerts per minute by source and outcome. ``accepted``: a new alert of an incident;
  ``deduplicated``: an alert the detector had stored, seen again (once per detector batch, however often the
  batch held it); ``resolved``: its tool said it ended; ``dead_lettered``: a raw record the detector refused
  (its source is the sending tool's name, else its format, else ``unknown``). Suppressed alerts raise no
  event: the detector counts them (``vigil_detector_alerts_total``).
- ``incidents``: incidents opened per hour by type and severity.
- ``dead_letters``: dead letters per minute by topic (``alerts`` for raw alerts, ``events``) and reason code;
  hours are sums of their minutes.
- ``flapping``: per alert and flapping window, how often it changed state: resolved, or fired again after
  resolving. More changes than the threshold is flapping. Each window starts without knowing the alert's
  state, so its first resolution counts and its first firing does not.

An alert's source in a repeat or a resolution is the part of its key before the first ``:`` (keys are
``source:id``). Events an operator's merge or detach caused restate alerts counted when they came: they
count for nothing.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

from shared.events import EventBase, IncidentAlertsChanged, IncidentDetected, IncidentUpdated

Aggregate = Literal["alerts", "incidents", "dead_letters", "flapping"]
Outcome = Literal["accepted", "deduplicated", "resolved", "dead_lettered"]
Change = Literal["fired", "resolved"]
FlapState = Literal["unknown", "firing", "resolved"]
DeadLetterTopic = Literal["alerts", "events"]
OUTCOMES: tuple[Outcome, ...] = ("accepted", "deduplicated", "resolved", "dead_lettered")
UNKNOWN_SOURCE = "unknown"
# What a label's values beyond the most frequent ones are summed under, on /metrics.
OTHER = "other"


@dataclass(frozen=True)
class WindowSpec:
    """One aggregate's tumbling windows: their size, how long they are kept, and what their key holds."""

    aggregate: Aggregate
    size_s: int
    expires_s: int
    labels: tuple[str, ...]


ALERTS = WindowSpec("alerts", 60, 3600, ("source", "outcome"))
INCIDENTS = WindowSpec("incidents", 3600, 48 * 3600, ("type", "severity"))
DEAD_LETTERS = WindowSpec("dead_letters", 60, 24 * 3600, ("topic", "reason"))


def flapping_spec(window_s: int) -> WindowSpec:
    """The flapping windows, kept for two of them: the current one and the last complete one."""
    return WindowSpec("flapping", window_s, 2 * window_s, ("alert",))


# ---- what an event counts toward ------------------------------------------------------------------


@dataclass(frozen=True)
class Tally:
    """What one event adds to one key of one aggregate, at the event's time (epoch seconds)."""

    aggregate: Aggregate
    key: tuple[str, ...]
    at: float
    count: int = 1
    changes: tuple[Change, ...] = ()  # flapping only: the alert's changes, in order

    @property
    def table_key(self) -> str:
        """The key in the aggregate's table: the key's parts as a JSON array, whatever they hold."""
        return json.dumps(list(self.key), ensure_ascii=False)

    @property
    def partition_key(self) -> bytes:
        """The record key that puts every tally of one table key on one partition, in order."""
        return f"{self.aggregate}:{self.table_key}".encode()

    def to_json(self) -> dict[str, Any]:
        return {"a": self.aggregate, "k": list(self.key), "t": self.at, "n": self.count, "c": list(self.changes)}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Tally:
        return cls(
            aggregate=value["a"],
            key=tuple(value["k"]),
            at=float(value["t"]),
            count=int(value["n"]),
            changes=tuple(value.get("c") or ()),
        )


def source_of(alert_key: str) -> str:
    """The source an alert key names: keys are ``source:id``."""
    source, separator, _ = alert_key.partition(":")
    return source if separator and source else UNKNOWN_SOURCE


def event_tallies(event: EventBase) -> list[Tally]:
    """What one incident event counts toward: incidents opened, alerts by source and outcome, state changes."""
    if event.causationid is not None:
        return []  # restated by an operator's merge or detach: counted when its alerts came
    at = event.time.timestamp()
    tallies: list[Tally] = []
    if isinstance(event, IncidentDetected | IncidentUpdated):
        snapshot = event.data
        if isinstance(event, IncidentDetected):
            tallies.append(Tally("incidents", (snapshot.type.value, snapshot.severity.value), at))
        accepted = Counter(alert.source for alert in snapshot.new_alerts)
        tallies += [Tally("alerts", (source, "accepted"), at, n) for source, n in sorted(accepted.items())]
    elif isinstance(event, IncidentAlertsChanged):
        change = event.data
        repeated = Counter(source_of(r.key) for r in change.repeated)
        resolved = Counter(source_of(r.key) for r in change.resolved)
        tallies += [Tally("alerts", (source, "deduplicated"), at, n) for source, n in sorted(repeated.items())]
        tallies += [Tally("alerts", (source, "resolved"), at, n) for source, n in sorted(resolved.items())]
        # Repeats come before resolutions: an alert in both fired again, then ended.
        changes: dict[str, list[Change]] = {}
        for repeat in change.repeated:
            changes.setdefault(repeat.key, []).append("fired")
        for resolution in change.resolved:
            changes.setdefault(resolution.key, []).append("resolved")
        tallies += [Tally("flapping", (key,), at, changes=tuple(seen)) for key, seen in changes.items()]
    return tallies


def dead_letter_tallies(
    topic: DeadLetterTopic, headers: Sequence[tuple[str, bytes]], *, received: float
) -> list[Tally]:
    """What one dead letter counts toward: its reason, and for a raw alert, an alert of its source dead-lettered."""
    found = {name: value.decode("utf-8", "replace") for name, value in headers if value is not None}
    at = _epoch(found.get("vigil_dlq_time")) or received
    tallies = [Tally("dead_letters", (topic, found.get("vigil_dlq_code") or "invalid"), at)]
    if topic == "alerts":
        source = found.get("vigil_ingest_source") or found.get("vigil_format") or UNKNOWN_SOURCE
        tallies.append(Tally("alerts", (source, "dead_lettered"), at))
    return tallies


def _epoch(text: str | None) -> float | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


def combine(tallies: Iterable[Tally], specs: Mapping[Aggregate, WindowSpec]) -> list[Tally]:
    """Tallies of one key and window summed into one (changes kept in order): a batch of events sends and
    counts a tally per key and window it touched, not one per event."""
    combined: dict[tuple[Aggregate, tuple[str, ...], float], Tally] = {}
    for tally in tallies:
        slot = (tally.aggregate, tally.key, window_start(tally.at, specs[tally.aggregate].size_s))
        found = combined.get(slot)
        combined[slot] = (
            tally
            if found is None
            else Tally(found.aggregate, found.key, found.at, found.count + tally.count, found.changes + tally.changes)
        )
    return list(combined.values())


def expired(tally: Tally, spec: WindowSpec, *, now: float) -> bool:
    """Whether the tally's window has expired already (a topic read from its beginning): nothing to count."""
    return window_start(tally.at, spec.size_s) + spec.size_s <= now - spec.expires_s


def horizon(specs: Iterable[WindowSpec], *, now: float) -> float:
    """Before this moment, nothing counts in any window kept: a record written then need not even be read."""
    return now - max(spec.expires_s + spec.size_s for spec in specs)


def window_start(at: float, size_s: int) -> float:
    """The start of the tumbling window of this size that holds the moment, as faust aligns them (on the epoch)."""
    return float(math.floor(at / size_s) * size_s)


# ---- flapping -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flapping:
    """An alert's state changes in one flapping window, and the state it was last seen in."""

    changes: int = 0
    state: FlapState = "unknown"

    def to_json(self) -> dict[str, Any]:
        return {"changes": self.changes, "state": self.state}

    @classmethod
    def from_json(cls, value: Mapping[str, Any] | None) -> Flapping:
        if not value:
            return cls()
        return cls(changes=int(value.get("changes", 0)), state=cast(FlapState, value.get("state", "unknown")))


def flap(state: Flapping, changes: Iterable[Change]) -> Flapping:
    """The state after these changes: resolving is a change unless it had resolved already; firing is one only
    after a resolution (a repeat of a firing alert is no change, nor is a first firing of unknown state)."""
    count, current = state.changes, state.state
    for change in changes:
        if change == "resolved":
            count += current != "resolved"
            current = "resolved"
        else:
            count += current == "resolved"
            current = "firing"
    return Flapping(changes=count, state=current)


def worth_writing(before: Flapping, after: Flapping) -> bool:
    """Whether a new state need be written: a firing alert and one of unknown state change alike next, so a
    repeat of a firing alert (the common case) writes nothing to the table or its changelog."""
    return after.changes != before.changes or (after.state == "resolved") != (before.state == "resolved")


# ---- what the windows say -------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """One key's value in one window."""

    start: float
    end: float
    key: tuple[str, ...]
    value: Any


def read_windows(items: Iterable[tuple[Any, Any]], spec: WindowSpec, *, now: float) -> list[Window]:
    """The windows a table holds that have not expired, newest first, then by key.

    ``items`` are a windowed table's entries: ``((table key, (start, end)), value)``. Expired windows are
    left out here too: the table drops its own only some time after, and never those it recovered.
    """
    horizon = now - spec.expires_s
    windows = []
    for (table_key, (start, _end)), value in items:
        end = float(start) + spec.size_s
        if end > horizon:
            windows.append(Window(float(start), end, tuple(json.loads(table_key)), value))
    windows.sort(key=lambda w: (-w.start, w.key))
    return windows


def roll_up(windows: Iterable[Window], size_s: int) -> list[Window]:
    """Counting windows summed into longer ones of ``size_s`` (minutes into hours), newest first."""
    sums: Counter[tuple[float, tuple[str, ...]]] = Counter()
    for window in windows:
        sums[(window_start(window.start, size_s), window.key)] += int(window.value)
    rolled = [Window(start, start + size_s, key, total) for (start, key), total in sums.items()]
    rolled.sort(key=lambda w: (-w.start, w.key))
    return rolled


def last_complete(windows: Iterable[Window], size_s: int, *, now: float) -> dict[tuple[str, ...], int]:
    """Each key's count in the last window of this size that has ended by ``now``."""
    start = window_start(now, size_s) - size_s
    counts: Counter[tuple[str, ...]] = Counter()
    for window in windows:
        if window.start == start and window.end - window.start == size_s:
            counts[window.key] += int(window.value)
    return dict(counts)


def bounded(counts: Mapping[tuple[str, ...], int], *, position: int, limit: int) -> dict[tuple[str, ...], int]:
    """The counts with at most ``limit`` values at one key position: the largest ones, the rest summed as ``other``.

    Prometheus labels must stay few; sources and reasons are words from outside.
    """
    totals: Counter[str] = Counter()
    for key, count in counts.items():
        totals[key[position]] += count
    kept = {value for value, _ in sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:limit]}
    bounded_counts: Counter[tuple[str, ...]] = Counter()
    for key, count in counts.items():
        value = key[position] if key[position] in kept else OTHER
        bounded_counts[(*key[:position], value, *key[position + 1 :])] += count
    return dict(bounded_counts)


@dataclass(frozen=True)
class FlappingAlert:
    """An alert that changed state more often than the threshold in a flapping window."""

    key: str
    source: str
    start: float
    end: float
    changes: int
    state: FlapState


def flapping_alerts(windows: Iterable[Window], *, threshold: int, size_s: int, now: float) -> list[FlappingAlert]:
    """The alerts flapping in the current window or the last complete one (each once, at its most changes)."""
    current = window_start(now, size_s)
    found: dict[str, FlappingAlert] = {}
    for window in windows:
        if window.start not in (current, current - size_s):
            continue
        state = Flapping.from_json(window.value)
        key = window.key[0]
        if state.changes > threshold and (key not in found or state.changes > found[key].changes):
            found[key] = FlappingAlert(key, source_of(key), window.start, window.end, state.changes, state.state)
    return sorted(found.values(), key=lambda a: (-a.changes, a.key))
