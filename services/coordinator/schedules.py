"""On-call schedules as data: who is on call, who is next, and which schedule an incident goes to.

A schedule has a time zone and layers; each layer is a rotation (members taking turns, daily,
weekly or in a custom length, handing off at a time of day in the schedule's zone) or the events of
an iCalendar file. Where several layers have someone, the later one wins; a layer may be restricted
to days of the week and hours of the day. Overrides put someone in for a while, for the whole
schedule or one layer. Routes choose a schedule by incident type, severity and service.

Rotation arithmetic runs on wall-clock time in the schedule's zone, so a hand-off at 09:00 stays at
09:00 across a daylight-saving change (that day's shift lasts 23 or 25 hours); a hand-off time that
a change skips happens as the clocks go forward (02:30 becomes 03:30). Every instant this module
returns is in UTC.

Everything here is pure but `load_oncall`, which reads the file and its iCalendar files, and
`fetch_calendars`, which fetches the calendars named by URL through a function the service gives.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import icalendar
import recurring_ical_events
import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from shared.events import IncidentType, Severity
from shared.yamlfile import YamlFileError, node_at

DEFAULT_ONCALL = Path(__file__).with_name("oncall.yaml")

# Layer names a shift may carry that no layer of the file may take.
FALLBACK = "fallback"
OVERRIDE = "override"
# How far around a moment on_call looks for where a shift begins and ends; past it, None.
HORIZON = timedelta(days=512)
# How far ahead the people of a calendar layer are read, for escalation.
CALENDAR_LOOKAHEAD = timedelta(days=90)


class OnCallError(YamlFileError):
    """An on-call file that cannot be used; ``problems`` are `line:column: where: why`."""


class NobodyOnCall(LookupError):
    """Nobody (else) to page: a layer of one person, or a calendar with nobody ahead."""


# ---- what the rest of the coordinator works with -------------------------------------------------


@dataclass(frozen=True)
class Shift:
    """Someone on call in a schedule, from ``starts`` to ``ends`` (None: no change within HORIZON).

    ``layer`` is the layer whose place the person holds (``fallback`` when no layer has anyone,
    ``override`` for an override over such a gap); ``covering`` is whom an override replaces.
    """

    person: str
    schedule: str
    layer: str
    starts: datetime | None
    ends: datetime | None
    covering: str | None = None


@dataclass(frozen=True)
class Rotation:
    """Members take turns; ``members[0]`` holds the shift that starts at the hand-off on ``start``."""

    length: timedelta  # of wall-clock time: 1 day, 7 days, or a custom number of hours or days
    handoff: time
    start: date
    members: tuple[str, ...]

    @property
    def anchor(self) -> datetime:
        return datetime.combine(self.start, self.handoff)


@dataclass(frozen=True)
class CalendarSource:
    """A layer's iCalendar file or URL; ``calendar`` is None until it is read or fetched."""

    file: str | None
    url: str | None
    person: Literal["attendee", "summary"]
    where: str  # the line of the on-call file that names it, for errors
    calendar: icalendar.Calendar | None = field(default=None, compare=False, repr=False)
    events: Any = field(default=None, compare=False, repr=False)  # its recurrences, expanded on demand

    @property
    def label(self) -> str:
        """The file, or the URL without its path and query (a private calendar's URL is a secret)."""
        if self.file is not None:
            return self.file
        parts = urlsplit(self.url or "")
        return f"{parts.scheme}://{parts.hostname}/…"


@dataclass(frozen=True)
class Window:
    """Days of the week (0 is Monday) and a stretch of the day when a layer applies, in local time."""

    days: frozenset[int]
    starts: time
    length: timedelta  # up to a day; past midnight it runs into the next day


@dataclass(frozen=True)
class Layer:
    name: str
    rotation: Rotation | None
    calendar: CalendarSource | None
    windows: tuple[Window, ...]  # none: the layer applies all the time
    active_from: datetime | None  # UTC
    active_until: datetime | None

    @property
    def always_on(self) -> bool:
        """A rotation with no restriction and no bounds always has someone."""
        return self.rotation is not None and not self.windows and self.active_from is self.active_until is None


@dataclass(frozen=True)
class Override:
    person: str
    starts: datetime  # UTC
    ends: datetime
    layer: str | None  # None: the whole schedule


@dataclass(frozen=True)
class Schedule:
    name: str
    time_zone: ZoneInfo
    layers: tuple[Layer, ...]
    overrides: tuple[Override, ...] = ()
    fallback: str | None = None

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"schedule {self.name!r} has no layer {name!r}")


@dataclass(frozen=True)
class Route:
    schedule: str
    types: frozenset[str]
    severities: frozenset[str]
    services: tuple[str, ...]  # shell-style patterns: `payments-*`

    def matches(self, *, incident_type: str, severity: str, services: Collection[str]) -> bool:
        return (
            (not self.types or incident_type in self.types)
            and (not self.severities or severity in self.severities)
            and (not self.services or any(fnmatchcase(s, p) for s in services for p in self.services))
        )


@dataclass(frozen=True)
class OnCallConfig:
    schedules: dict[str, Schedule]  # in the file's order
    routes: tuple[Route, ...]
    default_schedule: str
    channel: str
    ack_deadline_minutes: dict[str, int]


# ---- the file ------------------------------------------------------------------------------------

_HHMM = re.compile(r"^(\d{1,2}):([0-5]\d)$")
_LENGTH = re.compile(r"^([1-9]\d{0,3})([hdw])$")
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class _Loader(yaml.SafeLoader):
    """YAML without base-60 numbers: an unquoted 10:30 stays the time it reads as, not the number 630."""


_INT = "tag:yaml.org,2002:int"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != _INT]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _INT,
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)


def people(config: OnCallConfig) -> set[str]:
    """Everyone the schedules name: rotation members, override people and fallbacks (not calendars' attendees,
    known only once their calendars are read)."""
    found: set[str] = set()
    for schedule in config.schedules.values():
        found.update(p for layer in schedule.layers if layer.rotation for p in layer.rotation.members)
        found.update(o.person for o in schedule.overrides)
        if schedule.fallback is not None:
            found.add(schedule.fallback)
    return found


def _minutes_of_day(value: Any) -> Any:
    if isinstance(value, str) and (found := _HHMM.match(value)) and int(found[1]) * 60 + int(found[2]) <= 24 * 60:
        return int(found[1]) * 60 + int(found[2])
    raise ValueError(f"not a time of day as HH:MM: {value!r}")


def _length(value: Any) -> Any:
    found = _LENGTH.match(value) if isinstance(value, str) else None
    if found is None:
        raise ValueError(f"not a length such as 12h, 3d or 2w: {value!r}")
    return timedelta(**{{"h": "hours", "d": "days", "w": "weeks"}[found[2]]: int(found[1])})


def _zone(value: Any) -> Any:
    try:
        return ZoneInfo(value) if isinstance(value, str) else value
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"not a time zone (an IANA name such as Europe/Berlin): {value!r}") from exc


MinutesOfDay = Annotated[int, BeforeValidator(_minutes_of_day)]
Length = Annotated[timedelta, BeforeValidator(_length)]
TimeZone = Annotated[ZoneInfo, BeforeValidator(_zone)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]
Person = Annotated[str, Field(min_length=1, max_length=254, pattern=r"^\S(.*\S)?$")]
Moment = datetime | date  # a date means its midnight; a time without offset is the schedule's


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


class RotationSpec(_Spec):
    type: Literal["daily", "weekly", "custom"]
    length: Length | None = Field(None, description="Only for `custom`: `12h`, `3d`, `2w`.")
    handoff: MinutesOfDay = Field(description="The time of day shifts change, in the schedule's zone: `09:00`.")
    start: date = Field(description="The first member's shift starts at the hand-off on this day.")
    members: list[Person] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> RotationSpec:
        if (self.type == "custom") != (self.length is not None):
            raise ValueError("a custom rotation needs a length; daily and weekly ones have none")
        if self.handoff == 24 * 60:
            raise ValueError("a hand-off at 24:00 is 00:00")
        doubles = sorted({m for m in self.members if self.members.count(m) > 1})
        if doubles:
            # Who comes after whom must be clear for escalation.
            raise ValueError(f"members appear twice: {', '.join(doubles)}")
        return self


class RestrictionSpec(_Spec):
    """When a layer applies: these days, from `from` to `to` (past midnight into the next day)."""

    model_config = ConfigDict(populate_by_name=True)

    days: list[Day] = Field(default_factory=lambda: list(_DAYS), min_length=1)
    from_: MinutesOfDay = Field(0, alias="from")
    to: MinutesOfDay = Field(0, description="The same as `from` (the default) means the whole day.")


class CalendarSpec(_Spec):
    file: str | None = Field(None, description="An .ics file, relative to the on-call file.")
    url: str | None = Field(None, description="Fetched by the coordinator at start-up.")
    person: Literal["attendee", "summary"] = Field(
        "attendee", description="Who each event names: its first ATTENDEE (else its SUMMARY), or its SUMMARY."
    )

    @model_validator(mode="after")
    def _one_source(self) -> CalendarSpec:
        if (self.file is None) == (self.url is None):
            raise ValueError("give either a file or a url")
        if self.url is not None and urlsplit(self.url).scheme not in ("http", "https", "webcal"):
            raise ValueError("a calendar url is http(s) or webcal")
        return self


class LayerSpec(_Spec):
    name: Name
    rotation: RotationSpec | None = None
    ical: CalendarSpec | None = None
    restrictions: list[RestrictionSpec] = Field(
        default_factory=list, description="When the layer applies; none: all the time."
    )
    active_from: Moment | None = None
    active_until: Moment | None = None

    @model_validator(mode="after")
    def _one_source(self) -> LayerSpec:
        if (self.rotation is None) == (self.ical is None):
            raise ValueError("a layer is either a rotation or an ical calendar")
        return self


class OverrideSpec(_Spec):
    person: Person
    starts: Moment
    ends: Moment
    layer: str | None = Field(None, description="Only this layer; none: the whole schedule.")
    reason: str = ""


class ScheduleSpec(_Spec):
    name: Name
    time_zone: TimeZone = Field(ZoneInfo("UTC"))
    layers: list[LayerSpec] = Field(default_factory=list, description="Later layers win where they have someone.")
    ical: CalendarSpec | None = Field(None, description="A schedule read whole from a calendar: its one layer.")
    overrides: list[OverrideSpec] = Field(default_factory=list, description="Later overrides win over earlier.")
    fallback: Person | None = Field(None, description="Who is on call where no layer has anyone.")

    @model_validator(mode="after")
    def _has_layers(self) -> ScheduleSpec:
        if (not self.layers) == (self.ical is None):
            raise ValueError("a schedule has either layers or an ical calendar")
        return self


class RouteSpec(_Spec):
    """Incidents this schedule takes; an empty list matches anything."""

    schedule: str
    types: list[IncidentType] = Field(default_factory=list)
    severities: list[Severity] = Field(default_factory=list)
    services: list[str] = Field(default_factory=list, description="Shell-style patterns: `payments-*`.")


class OnCallFile(_Spec):
    schedules: list[ScheduleSpec] = Field(min_length=1)
    routes: list[RouteSpec] = Field(default_factory=list, description="The first that matches wins.")
    default_schedule: str = Field(description="For incidents no route matches.")
    channel: str = "pager"
    # Unused since escalation.yaml gives each step's wait; still read, so that older files load.
    ack_deadline_minutes: dict[Severity, Annotated[int, Field(gt=0)]] = Field(default_factory=dict)


def _where(root: yaml.Node | None, loc: Sequence[int | str]) -> str:
    """`line:column` of a path in the file."""
    mark = node_at(root, loc).start_mark if root is not None else None
    return f"{mark.line + 1}:{mark.column + 1}" if mark else "1:1"


def _problems(root: yaml.Node | None, located: Iterable[tuple[Sequence[int | str], str]]) -> list[str]:
    return [f"{_where(root, loc)}: {'.'.join(map(str, loc)) or '(file)'}: {why}" for loc, why in located]


def _cross_checks(spec: OnCallFile) -> Iterator[tuple[tuple[int | str, ...], str]]:
    """What each part of the file may be right about alone, but not together."""
    names = [s.name for s in spec.schedules]
    for i, schedule in enumerate(spec.schedules):
        if names.index(schedule.name) != i:
            yield ("schedules", i, "name"), f"another schedule is named {schedule.name!r}"
        layers = [layer.name for layer in schedule.layers]
        for j, name in enumerate(layers):
            if name in (FALLBACK, OVERRIDE):
                yield ("schedules", i, "layers", j, "name"), f"{name!r} names what a shift says when no layer has it"
            elif layers.index(name) != j:
                yield ("schedules", i, "layers", j, "name"), f"another layer of {schedule.name!r} is named {name!r}"
        for j, override in enumerate(schedule.overrides):
            if override.layer is not None and override.layer not in layers:
                yield ("schedules", i, "overrides", j, "layer"), f"{schedule.name!r} has no layer {override.layer!r}"
        for j, layer in enumerate(schedule.layers):
            if (
                layer.active_from
                and layer.active_until
                and _to_utc(layer.active_until, schedule.time_zone) <= (_to_utc(layer.active_from, schedule.time_zone))
            ):
                yield ("schedules", i, "layers", j, "active_until"), "ends before it begins"
        for j, override in enumerate(schedule.overrides):
            if _to_utc(override.ends, schedule.time_zone) <= _to_utc(override.starts, schedule.time_zone):
                yield ("schedules", i, "overrides", j, "ends"), "ends before it begins"
        if schedule.fallback is None and not any(_layer(layer, schedule).always_on for layer in schedule.layers):
            # A new incident must always find a commander.
            yield (
                ("schedules", i),
                (
                    "may leave nobody on call: give it a fallback person, or a rotation layer without "
                    "restrictions or active_from/active_until"
                ),
            )
    for i, route in enumerate(spec.routes):
        if route.schedule not in names:
            yield ("routes", i, "schedule"), f"no schedule {route.schedule!r}"
    if spec.default_schedule not in names:
        yield ("default_schedule",), f"no schedule {spec.default_schedule!r}"


def parse_oncall(document: str) -> OnCallConfig:
    """Validate an on-call file's text; every problem names its line and its reason.

    Calendars are named, not read: ``load_oncall`` reads their files, ``fetch_calendars`` their URLs.
    """
    try:
        data = yaml.load(document, Loader=_Loader)
        root = yaml.compose(document, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{mark.line + 1}:{mark.column + 1}" if mark else "1:1"
        raise OnCallError([f"{where}: not YAML: {exc.problem}"]) from exc
    try:
        spec = OnCallFile.model_validate(data)
    except ValidationError as exc:
        located = [([p for p in e["loc"] if isinstance(p, int | str)], e["msg"]) for e in exc.errors()]
        raise OnCallError(_problems(root, located)) from exc
    problems = _problems(root, _cross_checks(spec))
    if problems:
        raise OnCallError(problems)

    schedules = {}
    for i, s in enumerate(spec.schedules):
        layers = [
            _layer(layer, s, where=_where(root, ("schedules", i, "layers", j, "ical")))
            for j, layer in enumerate(s.layers)
        ]
        if s.ical is not None:
            layers.append(_layer(LayerSpec(name=s.name, ical=s.ical), s, where=_where(root, ("schedules", i, "ical"))))
        overrides = tuple(
            Override(o.person, _to_utc(o.starts, s.time_zone), _to_utc(o.ends, s.time_zone), o.layer)
            for o in s.overrides
        )
        schedules[s.name] = Schedule(s.name, s.time_zone, tuple(layers), overrides, s.fallback)
    return OnCallConfig(
        schedules=schedules,
        routes=tuple(
            Route(r.schedule, frozenset(r.types), frozenset(r.severities), tuple(r.services)) for r in spec.routes
        ),
        default_schedule=spec.default_schedule,
        channel=spec.channel,
        ack_deadline_minutes={severity.value: minutes for severity, minutes in spec.ack_deadline_minutes.items()},
    )


def _layer(spec: LayerSpec, schedule: ScheduleSpec, *, where: str = "") -> Layer:
    rotation = None
    if spec.rotation is not None:
        r = spec.rotation
        length = {"daily": timedelta(days=1), "weekly": timedelta(weeks=1)}.get(r.type, r.length)
        assert length is not None  # a custom rotation has its length (validated)
        rotation = Rotation(length, _time_of_day(r.handoff), r.start, tuple(r.members))
    calendar = None
    if spec.ical is not None:
        calendar = CalendarSource(spec.ical.file, spec.ical.url, spec.ical.person, where)
    windows = tuple(
        Window(
            frozenset(_DAYS.index(d) for d in w.days),
            _time_of_day(w.from_),
            timedelta(minutes=(w.to - w.from_) % (24 * 60) or 24 * 60),
        )
        for w in spec.restrictions
    )
    zone = schedule.time_zone
    return Layer(
        spec.name,
        rotation,
        calendar,
        windows,
        _to_utc(spec.active_from, zone) if spec.active_from is not None else None,
        _to_utc(spec.active_until, zone) if spec.active_until is not None else None,
    )


def _time_of_day(minutes: int) -> time:
    return time(minutes // 60 % 24, minutes % 60)


def _to_utc(moment: datetime | date, zone: ZoneInfo) -> datetime:
    """A date is its local midnight; a datetime without offset is local time in ``zone``."""
    if not isinstance(moment, datetime):
        moment = datetime.combine(moment, time())
    return _instant(moment, zone) if moment.tzinfo is None else moment.astimezone(UTC)


def _instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant of a wall-clock time; one skipped by a DST change counts as after it (fold=0)."""
    return wall.replace(tzinfo=zone).astimezone(UTC)


# ---- calendars -----------------------------------------------------------------------------------


def with_calendars(config: OnCallConfig, texts: Mapping[str, str | bytes]) -> OnCallConfig:
    """Return the config with the calendars whose file or URL ``texts`` holds parsed into their layers."""
    problems = []
    schedules = {}
    for name, schedule in config.schedules.items():
        layers = []
        for layer in schedule.layers:
            source = layer.calendar
            key = None if source is None else source.file or source.url
            if source is not None and key is not None and key in texts:
                try:
                    calendar = icalendar.Calendar.from_ical(texts[key])
                    events = recurring_ical_events.of(calendar)  # reads every rule: a broken one is refused here
                except ValueError as exc:
                    problems.append(f"{source.where}: {source.label}: not a usable iCalendar file: {exc}")
                    continue
                layer = replace(layer, calendar=replace(source, calendar=calendar, events=events))
            layers.append(layer)
        schedules[name] = replace(schedule, layers=tuple(layers))
    if problems:
        raise OnCallError(problems)
    return replace(config, schedules=schedules)


def calendar_urls(config: OnCallConfig) -> list[str]:
    """Every calendar URL the file names."""
    return [
        layer.calendar.url
        for schedule in config.schedules.values()
        for layer in schedule.layers
        if layer.calendar is not None and layer.calendar.url is not None
    ]


def load_oncall(path: Path = DEFAULT_ONCALL) -> OnCallConfig:
    """Read and validate an on-call file and the calendar files it names (relative to it)."""
    try:
        config = parse_oncall(path.read_text())
    except OnCallError as exc:
        raise OnCallError([f"{path}:{problem}" for problem in exc.problems]) from exc
    except OSError as exc:
        raise OnCallError([f"{path}: cannot be read: {exc.strerror or exc}"]) from exc
    texts: dict[str, bytes] = {}
    problems = []
    for schedule in config.schedules.values():
        for layer in schedule.layers:
            if layer.calendar is not None and layer.calendar.file is not None:
                try:
                    texts[layer.calendar.file] = (path.parent / layer.calendar.file).read_bytes()
                except OSError as exc:
                    problems.append(f"{path}:{layer.calendar.where}: {layer.calendar.file}: {exc.strerror or exc}")
    if problems:
        raise OnCallError(problems)
    try:
        return with_calendars(config, texts)
    except OnCallError as exc:
        raise OnCallError([f"{path}:{problem}" for problem in exc.problems]) from exc


async def fetch_calendars(config: OnCallConfig, fetch: Callable[[str], Awaitable[bytes]]) -> OnCallConfig:
    """Fetch every calendar URL with ``fetch`` (the service's HTTP client) and parse it into its layer.

    A URL that cannot be fetched raises OnCallError naming its host only; the URL of a private
    calendar carries its secret.
    """
    texts: dict[str, bytes] = {}
    problems = []
    for schedule in config.schedules.values():
        for layer in schedule.layers:
            source = layer.calendar
            if source is None or source.url is None or source.url in texts:
                continue
            try:
                texts[source.url] = await fetch(source.url.replace("webcal://", "https://", 1))
            except Exception as exc:  # any failure of the caller's client: reported, with the layer's line
                problems.append(f"{source.where}: {source.label}: cannot be fetched: {type(exc).__name__}")
    if problems:
        raise OnCallError(problems)
    return with_calendars(config, texts)


# ---- who is on call ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Span:
    person: str
    starts: datetime
    ends: datetime


@dataclass(frozen=True)
class _Answer:
    person: str
    layer: str
    covering: str | None


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError(f"a time without a time zone is ambiguous: {at.isoformat()}")
    return at.astimezone(UTC)


def _boundary(rotation: Rotation, zone: ZoneInfo, index: int) -> datetime:
    """When shift ``index`` of a rotation starts (shift 0 at the hand-off on the start date)."""
    return _instant(rotation.anchor + index * rotation.length, zone)


def _shift_index(rotation: Rotation, zone: ZoneInfo, at: datetime) -> int:
    """Which shift of a rotation holds ``at`` (negative before the start: the turns go back too)."""
    wall = at.astimezone(zone).replace(tzinfo=None)
    index = (wall - rotation.anchor) // rotation.length
    # The wall-clock guess can be one off around a DST change; the instants decide.
    while _boundary(rotation, zone, index + 1) <= at:
        index += 1
    while _boundary(rotation, zone, index) > at:
        index -= 1
    return index


def _rotation_spans(rotation: Rotation, zone: ZoneInfo, a: datetime, b: datetime) -> list[_Span]:
    if len(rotation.members) == 1:  # always the same person: no shift to count
        return [_Span(rotation.members[0], a, b)] if a < b else []
    spans: list[_Span] = []
    index = _shift_index(rotation, zone, a)
    while (starts := _boundary(rotation, zone, index)) < b:
        ends = _boundary(rotation, zone, index + 1)
        person = rotation.members[index % len(rotation.members)]
        if spans and spans[-1].person == person:  # one person's shifts in a row are one span
            spans[-1] = _Span(person, spans[-1].starts, min(ends, b))
        elif ends > starts:  # a shift that a DST change leaves without time has nobody
            spans.append(_Span(person, max(starts, a), min(ends, b)))
        index += 1
    return spans


def _event_person(event: icalendar.Event, mode: Literal["attendee", "summary"]) -> str:
    attendees = event.get("ATTENDEE")
    if isinstance(attendees, list):
        attendees = attendees[0] if attendees else None
    if mode == "attendee" and attendees is not None:
        return re.sub(r"^mailto:", "", str(attendees), flags=re.IGNORECASE).strip()
    summary = str(event.get("SUMMARY", "")).strip()
    found = re.search(r"[^\s<>(),;:]+@[^\s<>(),;:]+\.[^\s<>(),;:]+", summary)
    return found[0] if found else summary


def _calendar_spans(source: CalendarSource, zone: ZoneInfo, a: datetime, b: datetime) -> list[_Span]:
    if source.events is None:
        return []  # not fetched (yet): the layer has nobody
    events = []
    # A day's margin: the library may place an event without a zone ("floating") in UTC, not in ours.
    for event in source.events.between(a - timedelta(days=1), b + timedelta(days=1)):
        person = _event_person(event, source.person)
        if not person or "DTSTART" not in event:
            continue
        starts = _to_utc(event.decoded("DTSTART"), zone)
        if "DTEND" in event:
            ends = _to_utc(event.decoded("DTEND"), zone)
        elif "DURATION" in event:
            ends = starts + event.decoded("DURATION")
        else:  # RFC 5545: a day's event lasts the day, a moment's event no time at all
            start_value = event.decoded("DTSTART")
            ends = _to_utc(start_value + timedelta(days=1), zone) if not isinstance(start_value, datetime) else starts
        if min(ends, b) > max(starts, a):
            events.append(_Span(person, max(starts, a), min(ends, b)))
    return _flatten(events)


def _flatten(spans: list[_Span]) -> list[_Span]:
    """Make overlapping events one line: where two overlap, the one that started later has it."""
    points = sorted({p for s in spans for p in (s.starts, s.ends)})
    flat: list[_Span] = []
    for p, q in itertools.pairwise(points):
        holding = [s for s in spans if s.starts <= p < s.ends]
        if not holding:
            continue
        person = max(enumerate(holding), key=lambda pair: (pair[1].starts, -pair[0]))[1].person
        if flat and flat[-1].person == person and flat[-1].ends == p:
            flat[-1] = _Span(person, flat[-1].starts, q)
        else:
            flat.append(_Span(person, p, q))
    return flat


def _windows(layer: Layer, zone: ZoneInfo, a: datetime, b: datetime) -> list[tuple[datetime, datetime]]:
    """When the layer applies within [a, b), as sorted, disjoint UTC intervals."""
    lo, hi = max(a, layer.active_from or a), min(b, layer.active_until or b)
    if lo >= hi:
        return []
    if not layer.windows:
        return [(lo, hi)]
    found = []
    day = lo.astimezone(zone).date() - timedelta(days=1)  # a window from the day before may run past midnight
    while day <= hi.astimezone(zone).date():
        for window in layer.windows:
            if day.weekday() in window.days:
                wall = datetime.combine(day, window.starts)
                starts, ends = _instant(wall, zone), _instant(wall + window.length, zone)
                if starts < hi and ends > lo:
                    found.append((max(starts, lo), min(ends, hi)))
        day += timedelta(days=1)
    merged: list[tuple[datetime, datetime]] = []
    for starts, ends in sorted(found):
        if merged and starts <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(ends, merged[-1][1]))
        else:
            merged.append((starts, ends))
    return merged


def _layer_spans(schedule: Schedule, layer: Layer, a: datetime, b: datetime) -> list[_Span]:
    """Who a layer has on call within [a, b), its restrictions applied."""
    windows = _windows(layer, schedule.time_zone, a, b)
    if not windows:
        return []
    lo, hi = windows[0][0], windows[-1][1]
    if layer.rotation is not None:
        spans = _rotation_spans(layer.rotation, schedule.time_zone, lo, hi)
    else:
        assert layer.calendar is not None  # a layer is one or the other (validated)
        spans = _calendar_spans(layer.calendar, schedule.time_zone, lo, hi)
    clipped = []
    for span in spans:
        for starts, ends in windows:
            if starts < span.ends and ends > span.starts:
                clipped.append(_Span(span.person, max(starts, span.starts), min(ends, span.ends)))
    return clipped


class _Lookup:
    """The person a sorted, disjoint list of spans has at a moment."""

    def __init__(self, spans: list[_Span]) -> None:
        self.spans = spans
        self.starts = [s.starts for s in spans]

    def at(self, moment: datetime) -> str | None:
        i = bisect.bisect_right(self.starts, moment) - 1
        return self.spans[i].person if i >= 0 and moment < self.spans[i].ends else None


def _answer(schedule: Schedule, lookups: list[_Lookup], overrides: list[Override], at: datetime) -> _Answer | None:
    top: _Answer | None = None
    for layer, lookup in zip(schedule.layers, lookups, strict=True):
        person = lookup.at(at)
        if person is None:
            continue
        answer = _Answer(person, layer.name, None)
        for override in overrides:  # later ones win
            if override.layer == layer.name and override.starts <= at < override.ends and override.person != person:
                answer = _Answer(override.person, layer.name, person)
        top = answer
    # Of the whole schedule's overrides the latest wins; it covers whom the layers have, not another override.
    latest = next((o for o in reversed(overrides) if o.layer is None and o.starts <= at < o.ends), None)
    if latest is not None:
        if top is None:
            top = _Answer(latest.person, OVERRIDE, None)
        elif latest.person != top.person:
            top = _Answer(latest.person, top.layer, top.covering or top.person)
    if top is None and schedule.fallback is not None:
        top = _Answer(schedule.fallback, FALLBACK, None)
    return top


def _render(schedule: Schedule, a: datetime, b: datetime) -> list[tuple[_Answer | None, datetime, datetime]]:
    """The schedule's final line within [a, b): who is on call from when to when (None: nobody)."""
    lookups = [_Lookup(_layer_spans(schedule, layer, a, b)) for layer in schedule.layers]
    overrides = [o for o in schedule.overrides if o.starts < b and o.ends > a]
    points = {a, b}
    for lookup in lookups:
        points.update(p for s in lookup.spans for p in (s.starts, s.ends))
    points.update(p for o in overrides for p in (o.starts, o.ends) if a < p < b)
    line: list[tuple[_Answer | None, datetime, datetime]] = []
    ordered = sorted(points)
    for p, q in itertools.pairwise(ordered):
        answer = _answer(schedule, lookups, overrides, p)
        if line and line[-1][0] == answer:
            line[-1] = (answer, line[-1][1], q)
        else:
            line.append((answer, p, q))
    return line


def on_call(schedule: Schedule, at: datetime) -> Shift:
    """Return who is on call in ``schedule`` at ``at``, and from when until when."""
    at = _utc(at)
    reach = timedelta(days=8)
    while True:
        a, b = at - reach, at + reach
        answer, starts, ends = next(part for part in _render(schedule, a, b) if part[1] <= at < part[2])
        settled = (starts > a and ends < b) or reach >= HORIZON
        if settled:
            break
        reach *= 4
    if answer is None:  # a parsed schedule has a fallback or an always-on layer
        raise NobodyOnCall(f"nobody is on call in schedule {schedule.name!r} at {at.isoformat()}")
    return Shift(
        person=answer.person,
        schedule=schedule.name,
        layer=answer.layer,
        starts=starts if starts > a else None,
        ends=ends if ends < b else None,
        covering=answer.covering,
    )


def who_is_on_call(config: OnCallConfig, at: datetime) -> list[Shift]:
    """Who is on call at ``at`` in every schedule, in the file's order."""
    return [on_call(schedule, at) for schedule in config.schedules.values()]


def route(config: OnCallConfig, *, incident_type: str, severity: str, services: Collection[str]) -> Schedule:
    """Return the schedule of the first route the incident matches (any of its services a route's), or the default."""
    for r in config.routes:
        if r.matches(incident_type=incident_type, severity=severity, services=services):
            return config.schedules[r.schedule]
    return config.schedules[config.default_schedule]


# ---- escalation ----------------------------------------------------------------------------------


def _upcoming(schedule: Schedule, layer: Layer, at: datetime) -> list[_Span]:
    """A calendar layer's shifts from ``at`` on, within the lookahead."""
    return _layer_spans(schedule, layer, at, at + CALENDAR_LOOKAHEAD)


def layer_members(schedule: Schedule, layer: str, *, at: datetime) -> list[str]:
    """Everyone in a layer in turn order: a rotation's members, or a calendar's people ahead of ``at``."""
    found = schedule.layer(layer)
    if found.rotation is not None:
        return list(found.rotation.members)
    return list(dict.fromkeys(span.person for span in _upcoming(schedule, found, _utc(at))))


def _order_after(schedule: Schedule, layer: Layer, at: datetime, person: str) -> list[str]:
    """The layer's people in the order they are paged after ``person``, wrapping round to them last.

    After someone the layer does not have (an override), the order goes on from whom the layer has
    at ``at``, who then comes last: they are the one being stood in for.
    """
    if layer.rotation is not None:
        people = list(layer.rotation.members)
        on_shift = people[_shift_index(layer.rotation, schedule.time_zone, at) % len(people)]
        pivot: str | None = person if person in people else on_shift
    else:
        upcoming = _upcoming(schedule, layer, at)
        people = list(dict.fromkeys(span.person for span in upcoming))
        holding = upcoming[0].person if upcoming and upcoming[0].starts <= at else None
        pivot = person if person in people else holding
    if pivot is None:
        return people
    i = people.index(pivot)
    return [*people[i + 1 :], *people[: i + 1]]


def escalation_order(schedule: Schedule, at: datetime) -> list[str]:
    """Whom to page, in order: who is on call at ``at``, then everyone else of the layer they stand in."""
    shift = on_call(schedule, at)
    if shift.layer in (FALLBACK, OVERRIDE):
        return [shift.person]
    after = _order_after(schedule, schedule.layer(shift.layer), _utc(at), shift.person)
    return list(dict.fromkeys([shift.person, *after]))


def next_on_call(schedule: Schedule, at: datetime, *, after: str) -> Shift:
    """Return the next person after ``after`` in the layer on call at ``at``, for escalation.

    The shift returned is that person's next turn in the layer (for a rotation, restrictions and
    overrides aside). Raise NobodyOnCall when the layer has nobody else.
    """
    at = _utc(at)
    shift = on_call(schedule, at)
    if shift.layer in (FALLBACK, OVERRIDE):
        raise NobodyOnCall(f"{after} stands in for no layer of schedule {schedule.name!r}")
    layer = schedule.layer(shift.layer)
    order = [person for person in _order_after(schedule, layer, at, after) if person != after]
    if not order:
        raise NobodyOnCall(f"nobody after {after} in layer {layer.name!r} of schedule {schedule.name!r}")
    person = order[0]
    if layer.rotation is not None:
        rotation, zone = layer.rotation, schedule.time_zone
        current = _shift_index(rotation, zone, at)
        turns = (rotation.members.index(person) - current) % len(rotation.members) or len(rotation.members)
        starts, ends = _boundary(rotation, zone, current + turns), _boundary(rotation, zone, current + turns + 1)
    else:
        span = next(s for s in _upcoming(schedule, layer, at) if s.person == person)
        starts, ends = span.starts, span.ends
    return Shift(person=person, schedule=schedule.name, layer=layer.name, starts=starts, ends=ends)
