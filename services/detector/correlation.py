"""Correlation rules as data: which alerts belong together, and when they are worth an incident.

The rules live in YAML (``correlation.yaml`` next to this module, or the file named by
``VIGIL_CORRELATION_RULES``), in the shape of Sigma correlation rules (SigmaHQ specification
v2.1): base ``rules`` select alerts (a Sigma detection's selection: ``field|modifier: value``),
and ``correlations`` group the alerts those rules select by ``group-by`` fields within a
``timespan``, of type ``event_count``, ``value_count``, ``temporal`` or ``temporal_ordered``,
opening an incident once their ``condition`` holds. This module parses, validates, indexes and
matches; it does no I/O except reading a file when asked.

Decisions that keep the grouping the same however alerts arrive:

- An alert belongs to the FIRST correlation, in file order, that selects it and for which it has
  every group-by field; an alert no correlation takes falls back to the entity rule (host, else
  address, else user, within the correlation window of the incident's last alert).
- A correlation's windows are aligned to multiples of its timespan since the epoch, as Sigma
  backends bin time: which window an alert falls in depends on its own time only.
- A condition is judged on the window's alerts as a set, and once it held it holds: an incident
  opens when it first holds, with every alert of the window so far; later alerts of the window join it.

Matching is indexed: each base rule is filed under one of its equality conditions (field and
value), so an alert is tested only against the rules filed under its own values and the few
rules without an equality condition.
"""

from __future__ import annotations

import functools
import ipaddress
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from shared.alerts import Alert
from shared.events import Severity
from shared.yamlfile import YamlFileError, validate_yaml

SHIPPED_CORRELATIONS = Path(__file__).with_name("correlation.yaml")
ENTITY_RULE = "entity"  # the fallback's name in every attachment's reason

# The normalised alert fields a rule may test or group by; ``label:NAME`` names a label.
SCALAR_FIELDS = (
    "host",
    "user",
    "src_ip",
    "dst_ip",
    "source",
    "format",
    "rule",
    "category",
    "title",
    "severity",
    "kind",
    "resource",
    "entity",
)
LIST_FIELDS = ("tags", "techniques")
LABEL_PREFIX = "label:"
MODIFIERS = ("", "contains", "startswith", "endswith", "re", "cidr")
# An equality on one of these narrows the candidates most: the index prefers them, in this order.
INDEX_PREFERENCE = ("rule", "category", "title", "source", "format", "techniques", "tags", "host", "user")
_NAME = r"^[a-z0-9][a-z0-9._-]*$"
_TIMESPAN = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# A rule's window at most: a window's end must stay a date, and no group is judged over more than a year.
MAX_TIMESPAN = timedelta(days=366)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

CorrelationType = Literal["event_count", "value_count", "temporal", "temporal_ordered"]
Operator = Literal["gt", "gte", "lt", "lte", "eq"]
_OPERATORS: dict[str, Callable[[int, int], bool]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
    "eq": operator.eq,
}
_SYMBOLS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "eq": "="}


def known_field(name: str) -> bool:
    return name in SCALAR_FIELDS or name in LIST_FIELDS or (name.startswith(LABEL_PREFIX) and len(name) > 6)


def field_values(alert: Alert, name: str) -> tuple[str, ...]:
    """Return an alert's values of a field, lower-cased (several for tags and techniques, none when absent)."""
    if name in LIST_FIELDS:
        return tuple(v.lower() for v in getattr(alert, name))
    if name.startswith(LABEL_PREFIX):
        value: object = alert.labels.get(name[len(LABEL_PREFIX) :])
    else:
        value = getattr(alert, name)
    if value is None or value == "":
        return ()
    return (str(value).lower(),)


def parse_timespan(text: str, *, longest: timedelta = MAX_TIMESPAN) -> timedelta:
    """``30s``, ``10m``, ``1h``, ``2d``: Sigma's timespans, at most ``longest``."""
    found = _TIMESPAN.match(text.strip())
    if not found or int(found.group(1)) == 0:
        raise ValueError(f"timespan {text!r} is not a positive number followed by s, m, h or d (e.g. 30m)")
    # Measured before a timedelta is made: a very large one cannot be made at all.
    if int(found.group(1)) * _UNIT_SECONDS[found.group(2)] > longest.total_seconds():
        raise ValueError(f"timespan {text!r} is longer than {span_text(longest)}")
    return timedelta(**{_UNITS[found.group(2)]: int(found.group(1))})


def _listed(value: Any) -> Any:
    return [value] if isinstance(value, str | int) else value


Values = Annotated[list[str], BeforeValidator(_listed), Field(min_length=1)]


class BaseRule(BaseModel):
    """A rule that selects alerts: every field of its detection holds (a list holds when any item does)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=_NAME, max_length=80)
    title: str | None = None
    detection: dict[str, Values] = Field(min_length=1)

    @field_validator("detection")
    @classmethod
    def _detection(cls, detection: dict[str, list[str]]) -> dict[str, list[str]]:
        for key, values in detection.items():
            name, _, modifier = key.partition("|")
            if not known_field(name):
                raise ValueError(
                    f"{name!r} is not a field Vigil normalises ({', '.join(SCALAR_FIELDS + LIST_FIELDS)}, label:NAME)"
                )
            if modifier not in MODIFIERS:
                raise ValueError(f"{key!r}: modifier {modifier!r} is not one of {', '.join(m for m in MODIFIERS if m)}")
            for value in values:
                if modifier == "re":
                    _regex(value)
                elif modifier == "cidr":
                    _network(value)
        return detection


class Condition(BaseModel):
    """One comparison (``gte: 10``), and for value_count the field whose distinct values count."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gt: int | None = Field(None, ge=0)
    gte: int | None = Field(None, ge=0)
    lt: int | None = Field(None, ge=1)
    lte: int | None = Field(None, ge=0)
    eq: int | None = Field(None, ge=1)
    field: str | None = None

    @model_validator(mode="after")
    def _one_comparison(self) -> Condition:
        said = [name for name in _OPERATORS if getattr(self, name) is not None]
        if len(said) != 1:
            raise ValueError(f"a condition states exactly one of gt, gte, lt, lte, eq (found {said or 'none'})")
        op, threshold = self.comparison
        if not any(_OPERATORS[op](n, threshold) for n in (1, max(threshold, 1), threshold + 1)):
            # A window's count is 1 from its first alert and only grows: its alerts would wait for ever.
            raise ValueError(f"{op}: {threshold} never holds (a window counts 1 from its first alert)")
        return self

    @property
    def comparison(self) -> tuple[Operator, int]:
        name: Operator = next(n for n in ("gt", "gte", "lt", "lte", "eq") if getattr(self, n) is not None)  # type: ignore[assignment]
        return name, int(getattr(self, name))


class CorrelationSpec(BaseModel):
    """Sigma's ``correlation`` section."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    type: CorrelationType
    rules: list[str] | None = Field(None, min_length=1, description="Base rules by name; none: every alert.")
    group_by: Annotated[list[str], BeforeValidator(_listed)] = Field(alias="group-by", min_length=1)
    timespan: timedelta
    condition: Condition | None = None
    # alias -> {base rule: field} (Sigma's form), or a list of fields of which the first present counts.
    aliases: dict[str, dict[str, str] | list[str]] = Field(default_factory=dict)
    generate: bool = False  # Sigma's flag; base rules never raise incidents of their own here

    @field_validator("timespan", mode="before")
    @classmethod
    def _timespan(cls, value: Any) -> Any:
        return parse_timespan(value) if isinstance(value, str) else value

    @field_validator("condition")
    @classmethod
    def _reachable(cls, condition: Condition | None, info: ValidationInfo) -> Condition | None:
        """temporal counts the rules seen in a window: a condition above their number would wait for ever."""
        rules = info.data.get("rules") or ()
        if condition is not None and info.data.get("type") == "temporal" and rules:
            op, threshold = condition.comparison
            if not any(_OPERATORS[op](n, threshold) for n in range(1, len(rules) + 1)):
                raise ValueError(f"{op}: {threshold} never holds: temporal counts the rules seen, at most {len(rules)}")
        return condition

    @field_validator("timespan")
    @classmethod
    def _timespan_bounds(cls, value: timedelta) -> timedelta:
        if not timedelta(0) < value <= MAX_TIMESPAN:
            raise ValueError(f"timespan {span_text(value)} is not above 0 and at most {span_text(MAX_TIMESPAN)}")
        return value


class CorrelationRule(BaseModel):
    """One correlation rule, as written."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=_NAME, max_length=80)
    title: str | None = Field(None, max_length=300)
    severity: Severity | None = Field(None, description="The incident's severity, whatever its alerts say.")
    correlation: CorrelationSpec

    @model_validator(mode="after")
    def _consistent(self) -> CorrelationRule:
        spec = self.correlation
        for alias, target in spec.aliases.items():
            fields = target.values() if isinstance(target, dict) else target
            unknown = [f for f in fields if not known_field(f)]
            if unknown or not fields:
                raise ValueError(f"alias {alias!r} maps onto no field or unknown fields {unknown}")
        for name in spec.group_by:
            if name not in spec.aliases and not known_field(name):
                raise ValueError(f"group-by {name!r} is neither a normalised field nor an alias")
        condition = spec.condition
        if spec.type in ("event_count", "value_count") and condition is None:
            raise ValueError(f"{spec.type} needs a condition (e.g. gte: 10)")
        if spec.type == "value_count" and (condition is None or condition.field is None):
            raise ValueError("value_count needs condition.field: the field whose distinct values count")
        if condition is not None and condition.field is not None:
            if spec.type != "value_count":
                raise ValueError("condition.field is for value_count only")
            if condition.field not in spec.aliases and not known_field(condition.field):
                raise ValueError(f"condition.field {condition.field!r} is neither a normalised field nor an alias")
        if spec.type in ("temporal", "temporal_ordered") and len(spec.rules or ()) < 2:
            raise ValueError(f"{spec.type} needs at least two rules")
        if spec.type == "temporal_ordered" and condition is not None:
            raise ValueError("temporal_ordered takes no condition: all its rules, in order")
        return self


class CorrelationFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    rules: list[BaseRule] = Field(default_factory=list)
    correlations: list[CorrelationRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> CorrelationFile:
        names = [rule.name for rule in self.rules]
        for twice in {n for n in names if names.count(n) > 1}:
            raise ValueError(f"rule name {twice!r} is used twice")
        correlations = [c.name for c in self.correlations]
        for twice in {n for n in correlations if correlations.count(n) > 1}:
            raise ValueError(f"correlation name {twice!r} is used twice")
        if ENTITY_RULE in correlations:
            raise ValueError(f"the name {ENTITY_RULE!r} is the fallback's")
        known = set(names)
        for correlation in self.correlations:
            spec = correlation.correlation
            missing = [r for r in spec.rules or () if r not in known]
            for target in spec.aliases.values():
                if isinstance(target, dict):
                    missing += [r for r in target if r not in (spec.rules or ())]
            if missing:
                raise ValueError(
                    f"correlation {correlation.name!r} names rules it does not list or that do not exist: {missing}"
                )
        return self


class CorrelationError(YamlFileError):
    """A correlation rules file that cannot be used; every problem names its line."""


def _regex(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a network (CIDR)") from exc


# ---- compiled ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Test:
    """One ``field|modifier: values`` of a detection, ready to match lower-cased values."""

    field: str
    modifier: str
    values: frozenset[str]
    pattern: re.Pattern[str] | None = None
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def holds(self, alert: Alert) -> bool:
        found = field_values(alert, self.field)
        if not found:
            return False
        if self.modifier == "":
            return any(v in self.values for v in found)
        if self.modifier == "contains":
            return any(part in v for v in found for part in self.values)
        if self.modifier == "startswith":
            return any(v.startswith(tuple(self.values)) for v in found)
        if self.modifier == "endswith":
            return any(v.endswith(tuple(self.values)) for v in found)
        if self.modifier == "re":
            assert self.pattern is not None
            return any(self.pattern.search(v) for v in found)
        return any(_in_networks(v, self.networks) for v in found)  # cidr


def _in_networks(value: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return False
    return any(address in network for network in networks if network.version == address.version)


def _compile_test(key: str, values: list[str]) -> _Test:
    name, _, modifier = key.partition("|")
    lowered = frozenset(v.lower() for v in values)
    if modifier == "re":
        return _Test(name, modifier, lowered, pattern=re.compile("|".join(f"(?:{v})" for v in values), re.IGNORECASE))
    if modifier == "cidr":
        return _Test(name, modifier, lowered, networks=tuple(_network(v) for v in values))
    return _Test(name, modifier, lowered)


@dataclass(frozen=True)
class _Base:
    name: str
    tests: tuple[_Test, ...]

    def holds(self, alert: Alert) -> bool:
        return all(test.holds(alert) for test in self.tests)

    def index_test(self) -> _Test | None:
        """The equality the rule is filed under in the index, the most selective field first."""
        equalities = [t for t in self.tests if t.modifier == ""]
        rank = {name: i for i, name in enumerate(INDEX_PREFERENCE)}
        return min(equalities, key=lambda t: rank.get(t.field, len(rank)), default=None)


@dataclass(frozen=True)
class Correlation:
    """A correlation rule ready to match and judge."""

    name: str
    order: int  # its place in the file: the first that takes an alert owns it
    title: str | None
    type: CorrelationType
    rules: tuple[str, ...]  # base rules by name; empty: every alert
    group_by: tuple[str, ...]
    # per group-by name: the fields it reads, for each base rule ("" for any)
    sources: dict[str, dict[str, tuple[str, ...]]]
    timespan: timedelta
    operator: Operator
    threshold: int
    count_field: str | None  # value_count's field (or alias)
    severity: Severity | None

    def _read(self, alert: Alert, name: str, rule: str | None) -> str | None:
        where = self.sources[name]
        fields = where.get(rule or "", where.get("", ()))
        for name_ in fields:
            found = field_values(alert, name_)
            if found:
                return found[0]
        return None

    def group_values(self, alert: Alert, rule: str | None) -> tuple[tuple[str, str], ...] | None:
        """Return the alert's group-by values, or None when it lacks one of them."""
        values = []
        for name in self.group_by:
            value = self._read(alert, name, rule)
            if value is None:
                return None
            values.append((name, value))
        return tuple(values)

    def window(self, moment: datetime) -> datetime:
        """The start of the window an alert of this time falls in (windows aligned on the epoch)."""
        return EPOCH + ((moment - EPOCH) // self.timespan) * self.timespan

    def holds(self, count: int) -> bool:
        return _OPERATORS[self.operator](count, self.threshold)

    def condition_text(self) -> str:
        if self.type == "temporal_ordered":
            return f"{' then '.join(self.rules)} within {span_text(self.timespan)}"
        what = {
            "event_count": "alerts",
            "value_count": f"distinct {self.count_field}",
            "temporal": f"of the rules {', '.join(self.rules)}",
        }[self.type]
        return f"{what} {_SYMBOLS[self.operator]} {self.threshold} within {span_text(self.timespan)}"

    def trigger(self, members: Iterable[Member]) -> tuple[list[str], int] | None:
        """Return the alerts that first make the condition hold, in time order, and the count they reach; or None.

        Judged on the window's alerts ordered by time (then key): the same whatever order they came in.
        """
        ordered = sorted(members, key=lambda m: (m.time, m.key))
        if self.type == "event_count":
            for n in range(1, len(ordered) + 1):
                if self.holds(n):
                    return [m.key for m in ordered[:n]], n
            return None
        if self.type == "temporal_ordered":
            chain: list[str] = []
            for member in ordered:
                if member.rule == self.rules[len(chain)]:
                    chain.append(member.key)
                    if len(chain) == len(self.rules):
                        return chain, len(chain)
            return None
        firsts: dict[str, str] = {}  # value (or rule) -> the first alert that had it
        for member in ordered:
            seen = member.value if self.type == "value_count" else member.rule
            if seen is None or seen in firsts:
                continue
            firsts[seen] = member.key
            if self.holds(len(firsts)):
                return list(firsts.values()), len(firsts)
        return None


def span_text(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class Member:
    """What a window's condition reads of one alert."""

    key: str
    time: datetime
    rule: str | None  # the base rule that selected it
    value: str | None  # value_count's field


@dataclass(frozen=True)
class Route:
    """Where correlation rules put an alert: a correlation's group (its key values in one window)."""

    correlation: Correlation
    rule: str | None
    values: tuple[tuple[str, str], ...]
    window_start: datetime

    @functools.cached_property  # read many times per alert; a frozen dataclass keeps it in __dict__
    def key(self) -> str:
        """The group's correlation key: one incident at most per key."""
        return group_key(self.correlation.name, self.values, self.window_start)

    @property
    def window_end(self) -> datetime:
        return self.window_start + self.correlation.timespan

    def member(self, alert: Alert) -> Member:
        c = self.correlation
        value = c._read(alert, c.count_field, self.rule) if c.count_field else None
        return Member(alert.key, alert.time, self.rule, value)


# What separates a key's parts, and the escape itself: a value holding one is written %XX, so that
# user="cn=alice,host=dc1", host="ws-7" and user="cn=alice", host="dc1,host=ws-7" are two groups.
# Any other value is written as it is, as keys were before.
_KEY_SEPARATORS = re.compile(r"[%,=|]")


def _escaped(text: str) -> str:
    return _KEY_SEPARATORS.sub(lambda m: f"%{ord(m.group()):02X}", text) if _KEY_SEPARATORS.search(text) else text


def group_key(name: str, values: Iterable[tuple[str, str]], window_start: datetime) -> str:
    """A correlation's group key: its name, its group-by values in order, and its window's start."""
    said = ",".join(f"{_escaped(field)}={_escaped(value)}" for field, value in values)
    return f"{name}|{said}|{window_start.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"


def unordered(key: str) -> str:
    """A correlation key with a group's values in one order: a group read back from what was stored with
    an alert (jsonb, which keeps no order) compares equal to its key. Other keys are returned as they are."""
    name, bar, rest = key.partition("|")
    said, bar, window = rest.rpartition("|")
    if not bar or not re.fullmatch(_NAME, name):
        return key
    return f"{name}|{','.join(sorted(said.split(',')))}|{window}"


class CorrelationRules:
    """Compiled correlation rules with their index; ``route`` is pure and safe to share."""

    def __init__(self, document: CorrelationFile, *, origin: str = "correlation rules") -> None:
        self.document = document
        self.origin = origin
        bases = {
            rule.name: _Base(rule.name, tuple(_compile_test(k, v) for k, v in rule.detection.items()))
            for rule in document.rules
        }
        self.correlations = tuple(_compile_correlation(c, order) for order, c in enumerate(document.correlations))
        self._named = {c.name: c for c in self.correlations}
        # base rule -> the correlations listing it, in file order; correlations over every alert.
        self._by_base: dict[str, list[Correlation]] = {}
        self._every: list[Correlation] = []
        for correlation in self.correlations:
            if not correlation.rules:
                self._every.append(correlation)
            for name in correlation.rules:
                self._by_base.setdefault(name, []).append(correlation)
        used = [bases[name] for name in bases if name in self._by_base]
        # The index: (field, value) -> base rules filed under it; rules with no equality are tried on every alert.
        self._index: dict[tuple[str, str], list[_Base]] = {}
        self._unindexed: list[_Base] = []
        for base in used:
            test = base.index_test()
            if test is None:
                self._unindexed.append(base)
                continue
            for value in test.values:
                self._index.setdefault((test.field, value), []).append(base)
        self._index_fields = tuple(dict.fromkeys(field for field, _value in self._index))

    def __len__(self) -> int:
        return len(self.correlations)

    def owner(self, key: str) -> Correlation | None:
        """The correlation whose group a correlation key is, or None (an entity, or a rule no longer in force)."""
        name, bar, _rest = key.partition("|")
        return self._named.get(name) if bar else None

    def matching(self, alert: Alert) -> list[str]:
        """Return the names of the base rules that select the alert (testing only the candidates the index gives)."""
        candidates: dict[str, _Base] = {}
        for name in self._index_fields:
            for value in field_values(alert, name):
                for base in self._index.get((name, value), ()):
                    candidates[base.name] = base
        for base in self._unindexed:
            candidates[base.name] = base
        return [name for name, base in candidates.items() if base.holds(alert)]

    def route(self, alert: Alert) -> Route | None:
        """Return the group of the first correlation that takes the alert, or None (the entity fallback)."""
        if not self.correlations:
            return None
        matched = self.matching(alert)
        if not matched and not self._every:
            return None  # most alerts: no rule selects them
        offers: list[tuple[Correlation, str | None]] = [(c, None) for c in self._every]
        for name in matched:
            offers += [(c, name) for c in self._by_base[name]]
        # The file's order decides; within one correlation, the order it lists its rules in.
        offers.sort(key=lambda offer: (offer[0].order, offer[0].rules.index(offer[1]) if offer[1] else -1))
        for correlation, rule in offers:
            values = correlation.group_values(alert, rule)
            if values is not None:
                return Route(correlation, rule, values, correlation.window(alert.time))
        return None


def _compile_correlation(rule: CorrelationRule, order: int) -> Correlation:
    spec = rule.correlation
    sources: dict[str, dict[str, tuple[str, ...]]] = {}
    names = [*spec.group_by, *([spec.condition.field] if spec.condition and spec.condition.field else [])]
    for name in names:
        target = spec.aliases.get(name)
        if target is None:
            sources[name] = {"": (name,)}
        elif isinstance(target, dict):
            sources[name] = {base: (field,) for base, field in target.items()}
        else:
            sources[name] = {"": tuple(target)}
    if spec.condition is not None:
        op, threshold = spec.condition.comparison
    else:  # temporal: all its rules; temporal_ordered: all of them, in order
        op, threshold = "gte", len(spec.rules or ())
    return Correlation(
        name=rule.name,
        order=order,
        title=rule.title,
        type=spec.type,
        rules=tuple(spec.rules or ()),
        group_by=tuple(spec.group_by),
        sources=sources,
        timespan=spec.timespan,
        operator=op,
        threshold=threshold,
        count_field=spec.condition.field if spec.condition else None,
        severity=rule.severity,
    )


def parse_rules(document: str, *, source: str = "correlation rules") -> CorrelationRules:
    """Validate a correlation rules file's text; the error names each problem's line and reason."""
    return CorrelationRules(
        validate_yaml(document, CorrelationFile, source=source, raises=CorrelationError), origin=source
    )


def load_rules(path: Path | None = None) -> CorrelationRules:
    """Read and validate a correlation rules file (the shipped one by default)."""
    path = path or SHIPPED_CORRELATIONS
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise CorrelationError([f"{path}:1:1: cannot be read: {exc}"]) from exc
    return parse_rules(text, source=str(path))


@functools.cache
def shipped() -> CorrelationRules:
    """The correlation rules Vigil ships, read once."""
    return load_rules(SHIPPED_CORRELATIONS)


NONE = CorrelationRules(CorrelationFile())  # no rules: every alert takes the entity fallback
