"""Silences, maintenance windows and inhibition: which alerts are stored but open no incident, and why. No I/O here.

- A **silence** (as Alertmanager's) covers the alerts its matchers all match, from its start to its end.
- A **maintenance window** does the same for a host or service (its matchers), once or on an iCalendar
  RRULE, each occurrence lasting its duration, read in the window's time zone.
- An **inhibition rule** lets a firing *source* alert suppress the *target* alerts whose ``equal``
  fields hold the same values (a host down suppresses that host's service alerts).

A matcher is ``name=value``, ``name!=value``, ``name=~regex`` or ``name!~regex`` (the regex matches the
whole value, as in Alertmanager). ``name`` is a normalised field of the alert (``FIELDS``), else one of
its labels (``labels.NAME`` says a label explicitly); a field or label the alert lacks reads as "".
Decisions are judged at the moment the detector handles the alert, in this order: silence, then
maintenance window, then inhibition; the first that applies is recorded with the alert.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, Protocol, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import re2  # type: ignore[import-untyped]
from dateutil.rrule import HOURLY, rrulestr  # type: ignore[import-untyped]
from dateutil.rrule import rrule as RRule
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from shared.alerts import Alert
from shared.yamlfile import YamlFileError, validate_yaml

# A regex matcher remembers its verdicts on this many values at most, each this long at most: the few values
# that come again and again (rule names, formats, hosts), in a few hundred kilobytes for a hundred matchers.
MATCHER_VERDICTS = 512
MATCHER_VERDICT_CHARS = 128
# RE2 logs a pattern it refuses to stderr from C++ as well: the refusal reaches the operator as an error.
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False

SuppressionKind = Literal["silence", "maintenance", "inhibition"]
Op = Literal["=", "!=", "=~", "!~"]

# The alert's own fields a matcher may name; any other name is a label.
FIELDS = frozenset(
    {
        "source",
        "title",
        "description",
        "severity",
        "host",
        "user",
        "src_ip",
        "dst_ip",
        "format",
        "status",
        "kind",
        "rule",
        "category",
        "resource",
        "url",
        "entity",
        "key",
    }
)
LABEL_PREFIX = "labels."
# A silence has no name but its comment (up to 2,000 characters): this much of it names the silence.
NAME_CHARS = 200
MAX_MATCHERS = 32
MAX_PATTERN = 1000


class Pattern(Protocol):
    """A compiled matcher regex: RE2's, whose matching time grows with the text, never exponentially.

    Matchers come from operators through the API and are tried on every alert in the consume loop: Python's
    backtracking ``re`` would let one pattern such as ``(a+)+b`` stop the detector. RE2 is also the engine
    Alertmanager's matchers use, so a matcher copied from Alertmanager means the same here.
    """

    def fullmatch(self, text: str) -> object | None: ...


MAX_OCCURRENCE = timedelta(days=31)  # of a recurring maintenance window
SHIPPED_INHIBITION = Path(__file__).with_name("inhibition.yaml")
# Formats whose tools say when an alert ends: an alert of theirs not said to have ended still fires,
# and is released when the silence or window that held it back ends. Other tools' alerts (one-off
# detections) stay held back; a later sighting of one is judged afresh.
RESOLVING_FORMATS = frozenset({"alertmanager", "pagerduty", "defender", "elastic", "guardduty", "ocsf", "sentinelone"})

_MATCHER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.:/-]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$", re.S)


class SuppressionError(ValueError):
    """A matcher, silence, window or rule that cannot be used; the message says why."""


def field_value(alert: Alert, name: str) -> str:
    """Return what a matcher named ``name`` reads of the alert: a field, else a label; "" when absent."""
    return _reader(name)(alert)


def _reader(name: str) -> Callable[[Alert], str]:
    """What a matcher named ``name`` reads, decided once: matching runs for every alert."""
    if name.startswith(LABEL_PREFIX) or name not in FIELDS:
        label = name.removeprefix(LABEL_PREFIX)
        return lambda alert: alert.labels.get(label, "")

    def read(alert: Alert) -> str:
        value = getattr(alert, name)
        return "" if value is None else str(value)

    return read


@dataclass(frozen=True)
class Matcher:
    """One condition on one field or label of an alert."""

    name: str
    op: Op
    value: str
    pattern: Pattern | None = field(default=None, compare=False, repr=False)
    read: Callable[[Alert], str] = field(default=lambda _alert: "", compare=False, repr=False)
    # A regex's verdict on the values it met: few values (rule names, formats) come again and again.
    _verdicts: dict[str, bool] = field(default_factory=dict, compare=False, repr=False, init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "read", _reader(self.name))
        if self.op in ("=~", "!~") and self.pattern is None:
            object.__setattr__(self, "pattern", re2.compile(self.value, _RE2_OPTIONS))

    @classmethod
    def parse(cls, text: str) -> Matcher:
        """Read ``name=value`` (``=``, ``!=``, ``=~``, ``!~``; the value may be in double quotes)."""
        found = _MATCHER.match(text)
        if not found:
            raise SuppressionError(
                f"matcher {text!r} is not NAME=VALUE, NAME!=VALUE, NAME=~REGEX or NAME!~REGEX (e.g. host=web-01)"
            )
        name, op, value = found.groups()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise SuppressionError(f"matcher {text!r}: the quoted value is not a valid string") from exc
        return cls.of(name, op, value)  # type: ignore[arg-type]

    @classmethod
    def of(cls, name: str, op: Op, value: str) -> Matcher:
        if op in ("=~", "!~") and len(value) > MAX_PATTERN:
            raise SuppressionError(f"matcher on {name}: the regex is over {MAX_PATTERN} characters")
        try:
            return cls(name, op, value)
        except re2.error as exc:
            why = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
            raise SuppressionError(f"matcher on {name}: {value!r} is not a regex Vigil reads (RE2): {why}") from exc

    def matches(self, alert: Alert) -> bool:
        actual = self.read(alert)
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        verdict = self._verdicts.get(actual)
        if verdict is None:
            assert self.pattern is not None
            found = self.pattern.fullmatch(actual) is not None
            verdict = found if self.op == "=~" else not found
            if len(actual) <= MATCHER_VERDICT_CHARS:
                if len(self._verdicts) >= MATCHER_VERDICTS:  # a field of many values (addresses): start again
                    self._verdicts.clear()
                self._verdicts[actual] = verdict
        return verdict

    def __str__(self) -> str:
        return f"{self.name}{self.op}{json.dumps(self.value)}"


def parse_matchers(texts: Iterable[str], *, match_all: bool = False) -> tuple[Matcher, ...]:
    """Read a list of matchers; at least one, at most MAX_MATCHERS.

    Unless ``match_all`` (an inhibition rule's side, narrowed by its ``equal`` fields), at least one
    matcher must need a non-empty value.
    """
    matchers = tuple(Matcher.parse(text) for text in texts)
    if not matchers:
        raise SuppressionError("at least one matcher is needed (e.g. host=web-01)")
    if len(matchers) > MAX_MATCHERS:
        raise SuppressionError(f"at most {MAX_MATCHERS} matchers")
    # As Alertmanager: a silence that would match every alert (even one with no fields) is a mistake.
    if not match_all and all(_matches_empty(m) for m in matchers):
        raise SuppressionError("the matchers would match every alert: at least one must need a non-empty value")
    return matchers


def _matches_empty(matcher: Matcher) -> bool:
    if matcher.op == "=":
        return matcher.value == ""
    if matcher.op == "!=":
        return matcher.value != ""
    assert matcher.pattern is not None
    found = matcher.pattern.fullmatch("") is not None
    return found if matcher.op == "=~" else not found


def matches_all(matchers: Sequence[Matcher], alert: Alert) -> bool:
    return all(m.matches(alert) for m in matchers)


# ---- silences and maintenance windows -----------------------------------------------------------


@dataclass(frozen=True)
class Silence:
    id: str
    matchers: tuple[Matcher, ...]
    starts_at: datetime
    ends_at: datetime
    created_by: str
    comment: str

    def active(self, now: datetime) -> bool:
        return self.starts_at <= now < self.ends_at


@dataclass(frozen=True)
class Window:
    """A maintenance window: one span (``rrule`` None), or occurrences of ``duration`` from ``starts_at`` on."""

    id: str
    name: str
    matchers: tuple[Matcher, ...]
    starts_at: datetime
    ends_at: datetime | None = None  # one-off: its end; recurring: no occurrence starts after it
    rrule: str | None = None
    duration: timedelta | None = None
    time_zone: str = "UTC"
    created_by: str = ""
    comment: str = ""

    def occurrence(self, now: datetime) -> tuple[datetime, datetime] | None:
        """Return the occurrence (start, end) that ``now`` falls in, or None."""
        if self.rrule is None:
            assert self.ends_at is not None
            return (self.starts_at, self.ends_at) if self.starts_at <= now < self.ends_at else None
        assert self.duration is not None
        start: datetime | None = self.recurrence().before(now, inc=True)
        if start is None:
            return None
        begun = [instant for instant in self._instants(start) if instant <= now]
        if not begun:
            return None
        # Its duration is elapsed time, not the local clock's: a clock change during it makes it no shorter
        # or longer (a local datetime plus a timedelta moves the clock face).
        begins = begun[-1]
        ends = begins + self.duration
        return (begins, ends) if now < ends else None

    def next_start(self, now: datetime) -> datetime | None:
        """Return when the next occurrence after ``now`` starts, or None if there is none."""
        if self.rrule is None:
            return self.starts_at if self.starts_at > now else None
        rule = self.recurrence()
        # The second instant of an hourly occurrence the clock repeated may still be to come.
        candidates = [rule.before(now, inc=True), rule.after(now)] if self._hourly else [rule.after(now)]
        starts = [instant for found in candidates if found for instant in self._instants(found) if instant > now]
        return min(starts, default=None)

    def end_after(self, now: datetime) -> datetime | None:
        """When the occurrence in progress ends, else when the next one will; None if none is left."""
        if (span := self.occurrence(now)) is not None:
            return span[1]
        start = self.next_start(now)
        if start is None:
            return None
        return start + self.duration if self.duration is not None else self.ends_at

    @functools.cached_property
    def _recurrence(self) -> RRule:
        return recurrence(self.rrule or "", self.starts_at, self.time_zone, self.ends_at)

    @functools.cached_property
    def _hourly(self) -> bool:
        return bool(self.recurrence()._freq == HOURLY)

    def _instants(self, local: datetime) -> list[datetime]:
        """The instants an occurrence's local time names, earliest first.

        The rule counts on the local clock, which names the hour the autumn change repeats once; an
        hourly window means every hour that passes, so there it has both (a day's 25 hours, no hour
        missing); a daily or slower one happens once, at the first.
        """
        first = local.replace(fold=0).astimezone(UTC)
        if not self._hourly:
            return [first]
        second = local.replace(fold=1).astimezone(UTC)
        if second == first or (self.ends_at is not None and second > self.ends_at):
            return [first]
        return sorted((first, second))

    def recurrence(self) -> RRule:
        return self._recurrence


def time_zone_of(name: str) -> ZoneInfo:
    """The IANA time zone named, or SuppressionError (``America`` names a folder of zones, not one)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise SuppressionError(f"unknown time zone {name!r}") from exc


def recurrence(rule: str, starts_at: datetime, time_zone: str, until: datetime | None = None) -> RRule:
    """Read an RRULE (``FREQ=WEEKLY;BYDAY=SU;BYHOUR=2``) from ``starts_at``, in the window's time zone."""
    zone = time_zone_of(time_zone)
    text = rule.strip()
    text = text[len("RRULE:") :] if text.upper().startswith("RRULE:") else text
    if not text or "\n" in text or "DTSTART" in text.upper():
        raise SuppressionError(f"rrule {rule!r}: give only the RRULE part (e.g. FREQ=WEEKLY;BYDAY=SU;BYHOUR=2)")
    try:
        parsed = rrulestr(text, dtstart=starts_at.astimezone(zone))
    except (ValueError, TypeError) as exc:
        raise SuppressionError(f"rrule {rule!r} cannot be read: {exc}") from exc
    if not isinstance(parsed, RRule):
        raise SuppressionError(f"rrule {rule!r}: one rule only")
    # Finding the occurrence in progress walks every one since the start: at most one an hour, however
    # the rule is worded (BYMINUTE or BYSECOND lists would make many an hour of any FREQ).
    if parsed._freq > HOURLY or len(parsed._byminute or ()) > 1 or len(parsed._bysecond or ()) > 1:
        raise SuppressionError(
            f"rrule {rule!r}: a maintenance window recurs once an hour at most (FREQ=HOURLY or slower, "
            "one BYMINUTE and one BYSECOND)"
        )
    if until is not None:
        parsed = parsed.replace(until=until.astimezone(zone))
    return parsed


# How far back a new recurring window may start.
MAX_RECURRING_PAST = timedelta(days=366)


def check_window(window: Window, now: datetime) -> None:
    """Refuse a window that cannot be used: no end, an end before its start, a broken or empty rule."""
    time_zone_of(window.time_zone)  # shown on its clock, whether it recurs or not
    if window.rrule is None:
        if window.ends_at is None or window.ends_at <= window.starts_at:
            raise SuppressionError("a one-off window needs an end after its start")
        return
    if window.duration is None or window.duration <= timedelta(0):
        raise SuppressionError("a recurring window needs a positive duration (e.g. 2h)")
    if window.duration > MAX_OCCURRENCE:
        raise SuppressionError("an occurrence lasts at most 31 days")
    if window.ends_at is not None and window.ends_at <= window.starts_at:
        raise SuppressionError("the window's end comes before its start")
    if window.starts_at < now - MAX_RECURRING_PAST:
        # Each look-up walks its occurrences from the first: an hourly rule from 1800 took seconds each time.
        raise SuppressionError(
            "a recurring window starts at most a year ago: give one of its recent occurrences as starts_at"
        )
    rule = window.recurrence()
    if rule.after(window.starts_at, inc=True) is None:
        raise SuppressionError(f"rrule {window.rrule!r} has no occurrence from {window.starts_at.isoformat()}")


# ---- inhibition rules ---------------------------------------------------------------------------


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``6h``, ``2d`` as a timedelta; ValueError otherwise."""
    found = re.fullmatch(r"\s*(\d{1,6})\s*([smhd])\s*", text)
    if not found:
        raise ValueError(f"{text!r} is not a duration such as 30m, 6h or 2d")
    amount, unit = int(found.group(1)), found.group(2)
    return timedelta(**{{"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[unit]: amount})


def _duration(value: object) -> object:
    return parse_duration(value) if isinstance(value, str) else value


Duration = Annotated[timedelta, BeforeValidator(_duration)]


class InhibitRule(BaseModel):
    """A firing source alert suppresses the target alerts whose ``equal`` fields hold its values."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    source_matchers: tuple[str, ...] = Field(min_length=1)
    target_matchers: tuple[str, ...] = Field(min_length=1)
    equal: tuple[str, ...] = Field(min_length=1, description="Fields or labels whose values must be the same.")
    source_max_age: Duration | None = Field(
        None, description="A source not seen again for this long stops inhibiting, though it never said it ended."
    )

    @field_validator("source_matchers", "target_matchers")
    @classmethod
    def _readable(cls, texts: tuple[str, ...]) -> tuple[str, ...]:
        try:
            parse_matchers(texts, match_all=True)
        except SuppressionError as exc:
            raise ValueError(str(exc)) from exc
        return texts


class InhibitionFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    inhibit_rules: list[InhibitRule] = Field(default_factory=list)

    @field_validator("inhibit_rules")
    @classmethod
    def _unique(cls, rules: list[InhibitRule]) -> list[InhibitRule]:
        names = [r.name for r in rules]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"rule names must be unique: {', '.join(dupes)}")
        return rules


class InhibitionError(YamlFileError):
    """An inhibition rules file that cannot be used; each problem with its line."""


@dataclass(frozen=True)
class Inhibition:
    name: str
    source: tuple[Matcher, ...]
    target: tuple[Matcher, ...]
    equal: tuple[str, ...]
    source_max_age: timedelta | None


def parse_inhibition(text: str, *, source: str = "inhibition rules") -> tuple[Inhibition, ...]:
    model = validate_yaml(text or "{}", InhibitionFile, source=source, raises=InhibitionError)
    return tuple(
        Inhibition(
            name=r.name,
            source=parse_matchers(r.source_matchers, match_all=True),
            target=parse_matchers(r.target_matchers, match_all=True),
            equal=r.equal,
            source_max_age=r.source_max_age,
        )
        for r in model.inhibit_rules
    )


def load_inhibition(path: Path | None = None) -> tuple[Inhibition, ...]:
    """Read and validate an inhibition rules file (the shipped one by default)."""
    path = path or SHIPPED_INHIBITION
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise InhibitionError([f"{path}:1:1: cannot be read: {exc}"]) from exc
    return parse_inhibition(text, source=str(path))


def equal_values(rule: Inhibition, alert: Alert) -> str | None:
    """The values of the rule's ``equal`` fields, as one string; None when one is empty.

    Stricter than Alertmanager (where two missing labels are equal): an alert without a host is
    never inhibited by another alert without a host.
    """
    values = [field_value(alert, name) for name in rule.equal]
    return json.dumps(values, separators=(",", ":")) if all(values) else None


# ---- deciding -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Suppression:
    """What suppressed an alert: a silence, a window or the inhibiting alert (its key); its name; and why, in words."""

    kind: SuppressionKind
    by: str
    reason: str
    rule: str | None = None  # the inhibition rule
    name: str = ""  # the silence's comment (its first NAME_CHARS), the window's name, the inhibition rule's


@dataclass(frozen=True)
class Source:
    """A firing alert that inhibits the targets of ``rule`` with the same ``equal_values``."""

    rule: str
    equal_values: str
    key: str
    expires_after: timedelta | None


class Suppressor:
    """Silences, windows and inhibition rules held in memory, indexed by an equality matcher each."""

    def __init__(
        self,
        silences: Iterable[Silence] = (),
        windows: Iterable[Window] = (),
        inhibitions: Iterable[Inhibition] = (),
    ) -> None:
        self.silences = sorted(silences, key=lambda s: (s.starts_at, s.id))
        self.windows = sorted(windows, key=lambda w: (w.starts_at, w.id))
        self.inhibitions = tuple(inhibitions)
        self._rules = {rule.name: rule for rule in self.inhibitions}
        self._silences = _Index(self.silences)
        self._windows = _Index(self.windows)
        self._sources = _Index(self.inhibitions, lambda r: r.source)
        self._targets = _Index(self.inhibitions, lambda r: r.target)
        # A recurring window's state holds until its occurrence ends or its next one starts.
        self._spans: dict[str, tuple[datetime, datetime, tuple[datetime, datetime] | None]] = {}

    def with_changes(self, silences: Iterable[Silence], windows: Iterable[Window]) -> Suppressor:
        """The same inhibition rules with these silences and windows."""
        return Suppressor(silences, windows, self.inhibitions)

    def silence_of(self, alert: Alert, now: datetime) -> Suppression | None:
        """The first active silence or maintenance window that covers the alert, or None."""
        silence = self._silences.first(alert, lambda s: s.active(now) and matches_all(s.matchers, alert))
        if silence is not None:
            return Suppression(
                kind="silence",
                by=silence.id,
                reason=f"silenced by {silence.created_by} until {_at(silence.ends_at)}: {silence.comment}",
                name=silence.comment[:NAME_CHARS],
            )
        window = self._windows.first(alert, lambda w: self._span(w, now) is not None and matches_all(w.matchers, alert))
        if window is not None:
            span = self._span(window, now)
            assert span is not None
            return Suppression(
                kind="maintenance",
                by=window.id,
                reason=f"maintenance window {window.name!r} from {_at(span[0])} to {_at(span[1])}"
                + (f": {window.comment}" if window.comment else ""),
                name=window.name,
            )
        return None

    def _span(self, window: Window, now: datetime) -> tuple[datetime, datetime] | None:
        if window.rrule is None:
            return window.occurrence(now)
        cached = self._spans.get(window.id)
        if cached is not None and cached[0] <= now < cached[1]:
            return cached[2]
        span = window.occurrence(now)
        if span is not None:
            valid = (span[0], span[1])
        else:
            following = window.next_start(now)
            valid = (now, following or datetime.max.replace(tzinfo=UTC))
        self._spans[window.id] = (*valid, span)
        return span

    def sources(self, alert: Alert) -> list[Source]:
        """The inhibition rules whose source side this firing alert matches, with its equal values."""
        found = []
        for rule in self._sources.all(alert, lambda r: matches_all(r.source, alert)):
            if (values := equal_values(rule, alert)) is not None:
                found.append(Source(rule.name, values, alert.key, rule.source_max_age))
        return found

    def targets(self, alert: Alert) -> list[tuple[str, str]]:
        """The (rule, equal values) under which a firing source would inhibit this alert."""
        found = []
        for rule in self._targets.all(alert, lambda r: matches_all(r.target, alert)):
            if (values := equal_values(rule, alert)) is not None:
                found.append((rule.name, values))
        return found

    def decide(
        self,
        alert: Alert,
        now: datetime,
        firing_sources: Mapping[tuple[str, str], Sequence[str]],
        targets: Sequence[tuple[str, str]] | None = None,
    ) -> Suppression | None:
        """Return what suppresses the alert, or None.

        ``firing_sources`` maps (rule, equal values) to the keys of the alerts firing on that side;
        an alert never inhibits itself. ``targets``: the alert's ``targets()``, when already known.
        """
        if (silenced := self.silence_of(alert, now)) is not None:
            return silenced
        if not firing_sources:  # nothing fires that could inhibit: no need to read the alert as a target
            return None
        for rule, values in self.targets(alert) if targets is None else targets:
            keys = [key for key in firing_sources.get((rule, values), ()) if key != alert.key]
            if keys:
                source = min(keys)
                shown = ", ".join(
                    f"{name}={value}" for name, value in zip(self._rules[rule].equal, json.loads(values), strict=True)
                )
                return Suppression(
                    kind="inhibition",
                    by=source,
                    rule=rule,
                    reason=f"inhibited by firing alert {source} (rule {rule}; same {shown})",
                    name=rule,
                )
        return None


def _at(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


T = TypeVar("T")


# ``a|b`` or ``(a|b)`` of words that are their own regex (no dot, class or quantifier).
_LITERAL_ALTERNATIVES = re.compile(r"\(?([\w:/@-]+(?:\|[\w:/@-]+)*)\)?")


def _literal_values(matcher: Matcher) -> frozenset[str]:
    """The only values a matcher accepts, when it names them: ``=value``, or ``=~a|b`` of plain words; else none."""
    if matcher.op == "=":
        return frozenset({matcher.value}) if matcher.value else frozenset()
    if matcher.op == "=~" and (found := _LITERAL_ALTERNATIVES.fullmatch(matcher.value)):
        return frozenset(found.group(1).split("|"))
    return frozenset()


# Fields of few values: an equality on one of them narrows little, and is an item's key only when it has no other.
FEW_VALUES = frozenset({"severity", "status", "kind", "format"})
# A regex's literal start, up to its first special character (an anchored match begins with it).
_LITERAL_START = re.compile(r"[^.^$*+?{}\[\]\\|()]*")
# A literal start shorter than this narrows too little to be worth a look-up.
MIN_PREFIX = 3


def _literal_prefix(matcher: Matcher) -> str:
    """What every value an ``=~`` matcher accepts starts with, when its regex says (``web-.*``: ``web-``); else ""."""
    if matcher.op != "=~" or "|" in matcher.value:
        return ""
    prefix = _LITERAL_START.match(matcher.value)
    text = prefix.group() if prefix else ""
    if len(text) < len(matcher.value) and matcher.value[len(text)] in "*?{":
        text = text[:-1]  # the last character is optional or repeated: not part of every match
    return text if len(text) >= MIN_PREFIX else ""


class _Index(Generic[T]):
    """Items by their most selective matcher, the rest in a list every alert is checked against.

    A hundred silences on a hundred hosts cost an alert one look-up per field the silences test, not a
    hundred checks. An item's key is its first equality on a field of many values; else the literal start
    of one of its regexes (``host=~db-.*``); else an equality on a field of few values (``severity=low``).
    """

    def __init__(self, items: Sequence[T], matchers: Any = None) -> None:
        get = matchers or (lambda item: item.matchers)
        # By the field an equality matcher reads: (its reader, items by the value it wants).
        self.by_field: dict[str, tuple[Callable[[Alert], str], dict[str, list[tuple[int, T]]]]] = {}
        # By the field a regex reads: (its reader, items by the length and text of its literal start).
        self.by_prefix: dict[str, tuple[Callable[[Alert], str], dict[int, dict[str, list[tuple[int, T]]]]]] = {}
        self.unindexed: list[tuple[int, T]] = []
        for n, item in enumerate(items):
            found = list(get(item))
            keyed = [(m, values) for m in found if (values := _literal_values(m))]
            many = next(((m, values) for m, values in keyed if m.name not in FEW_VALUES), None)
            prefixed = next(((m, prefix) for m in found if (prefix := _literal_prefix(m))), None)
            if many is None and prefixed is not None:
                matcher, prefix = prefixed
                _, by_length = self.by_prefix.setdefault(matcher.name, (matcher.read, {}))
                by_length.setdefault(len(prefix), {}).setdefault(prefix, []).append((n, item))
                continue
            indexed = many or (keyed[0] if keyed else None)
            if indexed is None:
                self.unindexed.append((n, item))
                continue
            matcher, values = indexed
            _, by_value = self.by_field.setdefault(matcher.name, (matcher.read, {}))
            for value in values:
                by_value.setdefault(value, []).append((n, item))

    def _candidates(self, alert: Alert) -> list[tuple[int, T]]:
        found = self.unindexed
        for read, by_value in self.by_field.values():
            if (more := by_value.get(read(alert))) is not None:
                found = found + more
        for read, by_length in self.by_prefix.values():
            value = read(alert)
            for length, by_start in by_length.items():
                if (more := by_start.get(value[:length])) is not None:
                    found = found + more
        return found

    def first(self, alert: Alert, accept: Callable[[T], bool]) -> T | None:
        """The earliest item (in the order given) that ``accept`` takes, however the index found it."""
        best: tuple[int, T] | None = None
        for n, item in self._candidates(alert):
            if (best is None or n < best[0]) and accept(item):
                best = (n, item)
        return best[1] if best else None

    def all(self, alert: Alert, accept: Callable[[T], bool]) -> list[T]:
        """Every item ``accept`` takes, in the order given."""
        found = self._candidates(alert)
        if found is not self.unindexed:  # those alone are in order already
            found = sorted(found, key=lambda pair: pair[0])
        return [item for _, item in found if accept(item)]


def window_of(row: Any) -> Window:
    """A window from its stored row (``duration_s`` in seconds, matchers as text)."""
    duration = row["duration_s"]
    window = Window(
        id=row["id"],
        name=row["name"],
        matchers=parse_matchers(row["matchers"]),
        starts_at=row["starts_at"],
        ends_at=row["ends_at"],
        rrule=row["rrule"],
        duration=timedelta(seconds=duration) if duration is not None else None,
        time_zone=row["time_zone"],
        created_by=row["created_by"],
        comment=row["comment"],
    )
    if window.rrule is not None:
        # Read now, so that a rule this version refuses (stored by an older one) leaves the window out
        # at loading, said why, and does not fail every batch that asks whether it is on.
        window.recurrence()
    return window


def silence_of_row(row: Any) -> Silence:
    return Silence(
        id=row["id"],
        matchers=parse_matchers(row["matchers"]),
        starts_at=row["starts_at"],
        ends_at=row["ends_at"],
        created_by=row["created_by"],
        comment=row["comment"],
    )
