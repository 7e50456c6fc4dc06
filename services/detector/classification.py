"""Classification rules as data: which incident type an alert points to, by which rule, and why.

The rules live in YAML (``classification.yaml`` next to this module, or the file named by
``VIGIL_CLASSIFICATION_RULES``) and are validated when the detector starts: a broken file stops it,
naming the rule and the reason. This module parses and matches; it reads no file except the
shipped one, on first use, for callers that pass no rules of their own.

A rule decides a type when every condition it states holds (a list condition holds when any of
its items does); the first rule that holds, in file order, decides. No rule holding means
``unknown``. Conditions, on the normalised alert (``shared.alerts.Alert``):

- ``format``: the adapter that read it (``suricata``, ``wazuh`` ...), one name or a list.
- ``category``, ``rule``: regular expressions searched case-insensitively in the tool's category
  (finding type) or rule (signature, rule name or id); plain text is a substring match.
- ``tags``: any of these tags (Wazuh groups, Falco tags ...), case-insensitively.
- ``techniques``: any of these ATT&CK ids; ``T1048`` covers its sub-techniques (``T1048.003``),
  tactic ids (``TA0010``) match as they are.
- ``labels``: label name -> regular expression the whole value must match (case-insensitive); all
  the named labels must match.
- ``keywords``: whole words in the alert's title, description or label values; a trailing ``*``
  matches any ending (``exfiltrat*``).
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.alerts import Alert
from shared.events import IncidentType

SHIPPED_RULES = Path(__file__).with_name("classification.yaml")
FALLBACK_RULE = "unclassified"
# Format names and alert shapes the classifier remembers its candidate rules for: far more than any
# estate has, and bounded, since a native alert may name any format.
CACHED_FORMATS = 256
CACHED_SHAPES = 4096

_TECHNIQUE = re.compile(r"^(TA\d{4}|T\d{4}(\.\d{3})?)$")
# ATT&CK Enterprise tactics, to name them in reasons (https://attack.mitre.org/tactics/enterprise/).
TACTICS = {
    "TA0043": "Reconnaissance",
    "TA0042": "Resource Development",
    "TA0001": "Initial Access",
    "TA0002": "Execution",
    "TA0003": "Persistence",
    "TA0004": "Privilege Escalation",
    "TA0005": "Defense Evasion",
    "TA0006": "Credential Access",
    "TA0007": "Discovery",
    "TA0008": "Lateral Movement",
    "TA0009": "Collection",
    "TA0011": "Command and Control",
    "TA0010": "Exfiltration",
    "TA0040": "Impact",
}
# How each format calls its own category, rule and tags, for reasons a person reads.
_FIELD_NAMES: dict[str, dict[str, str]] = {
    "suricata": {"rule": "signature"},
    "guardduty": {"category": "finding type"},
    "ocsf": {"category": "finding type"},
    "wazuh": {"tags": "group"},
    "falco": {"category": "source"},
    "zeek": {"category": "notice family", "rule": "notice"},
}


class ClassificationError(ValueError):
    """The rules file cannot be used; the message names the rule and the reason."""


def _listed(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


Listed = Annotated[list[str], BeforeValidator(_listed), Field(min_length=1)]


class Rule(BaseModel):
    """One rule of the file, as written."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=80)
    type: IncidentType
    format: Listed | None = None
    category: Listed | None = None
    rule: Listed | None = None
    tags: Listed | None = None
    techniques: Listed | None = None
    labels: dict[str, str] | None = Field(None, min_length=1)
    keywords: Listed | None = None

    @field_validator("category", "rule")
    @classmethod
    def _regexes(cls, patterns: list[str] | None) -> list[str] | None:
        for pattern in patterns or ():
            _compile(pattern)
        if patterns:
            _compile(_alternation(patterns))  # as matched: all of them in one expression
        return patterns

    @field_validator("labels")
    @classmethod
    def _label_regexes(cls, labels: dict[str, str] | None) -> dict[str, str] | None:
        for pattern in (labels or {}).values():
            _compile(pattern)
        return labels

    @field_validator("techniques")
    @classmethod
    def _attack_ids(cls, ids: list[str] | None) -> list[str] | None:
        bad = [i for i in ids or () if not _TECHNIQUE.match(i)]
        if bad:
            raise ValueError(f"not ATT&CK technique or tactic ids (T1234, T1234.001, TA0001): {bad}")
        return ids

    @field_validator("keywords")
    @classmethod
    def _keywords(cls, keywords: list[str] | None) -> list[str] | None:
        bad = [k for k in keywords or () if not k.strip(" *")]
        if bad:
            raise ValueError(f"empty keywords: {bad}")
        return keywords

    @model_validator(mode="after")
    def _has_a_condition(self) -> Rule:
        if not any((self.format, self.category, self.rule, self.tags, self.techniques, self.labels, self.keywords)):
            raise ValueError("a rule needs at least one condition (format, category, rule, tags, ...)")
        return self


class SeverityPolicy(BaseModel):
    """What raises an incident's severity besides its alerts' own severity and its type."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    widespread_hosts: int = Field(5, ge=2, description="This many hosts affected raise the severity one step.")
    widespread_users: int = Field(10, ge=2, description="This many distinct users affected raise it one step.")
    critical_hosts: list[str] = Field(
        default_factory=list, description="Host names or shell patterns (`db-*`) of critical assets."
    )


class RulesFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    rules: list[Rule] = Field(min_length=1)
    severity: SeverityPolicy = Field(default_factory=SeverityPolicy)

    @model_validator(mode="after")
    def _unique_ids(self) -> RulesFile:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.id in seen:
                raise ValueError(f"rule id {rule.id!r} is used twice")
            seen.add(rule.id)
        return self


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc


def _alternation(patterns: Sequence[str]) -> str:
    return "|".join(f"(?:{p})" for p in patterns)


def _keyword(keyword: str) -> str:
    """A keyword's pattern after the word boundary it starts at: the word, or any ending after ``*``."""
    return re.escape(keyword[:-1]) + r"\w*" if keyword.endswith("*") else re.escape(keyword) + r"\b"


def keyword_pattern(keywords: Iterable[str]) -> re.Pattern[str]:
    """One alternation for a rule's keywords: whole words, or any ending after a trailing ``*``."""
    return re.compile(r"\b(?:" + "|".join(map(_keyword, keywords)) + ")")


class _KeywordRun:
    """Rules in a row that test keywords alone, searched together rather than one pattern each.

    The first of them that holds is the first whose keyword occurs anywhere, with its leftmost
    occurrence as the words that met it: the same answer as searching each rule's own pattern in
    turn. One pattern of all the run's keywords, in rule order, finds the leftmost word boundary where
    any starts, and the first rule whose keyword starts there; no earlier rule occurs up to there, so
    only they are searched for further on, until none is left or none occurs. Keywords are grouped
    by their first character, which the regex engine checks before trying a group.
    """

    __slots__ = ("_patterns", "_rules", "rules")

    def __init__(self, rules: Sequence[_Compiled]) -> None:
        self.rules = tuple(rules)
        self._rules: dict[str, int] = {}  # a keyword's group name -> its rule's place in the run
        # The pattern of the run's first n rules, for each n.
        self._patterns: dict[int, re.Pattern[str]] = {}
        for n, rule in enumerate(self.rules):
            for k in range(len(rule.keyword_list)):
                self._rules[f"r{n}k{k}"] = n

    def _pattern(self, count: int) -> re.Pattern[str]:
        if (pattern := self._patterns.get(count)) is None:
            by_start: dict[str, list[str]] = {}
            for n, rule in enumerate(self.rules[:count]):
                for k, keyword in enumerate(rule.keyword_list):
                    by_start.setdefault(keyword[0], []).append(f"(?P<r{n}k{k}>{_keyword(keyword[1:])})")
            groups = [re.escape(first) + "(?:" + "|".join(parts) + ")" for first, parts in by_start.items()]
            # Zero-width, so that the next search can start one character on, inside this keyword.
            pattern = self._patterns[count] = re.compile(r"\b(?=" + "|".join(groups) + ")")
        return pattern

    def first(self, text: str) -> tuple[_Compiled, str] | None:
        """The first rule of the run that a keyword of the text meets, and the words that met it."""
        best = None
        count, at = len(self.rules), 0
        while count and (found := self._pattern(count).search(text, at)) is not None:
            name = found.lastgroup
            assert name is not None  # every alternative is a named group
            count, at = self._rules[name], found.start() + 1
            best = (count, text[found.start() : found.end(name)])
        return None if best is None else (self.rules[best[0]], best[1])


class Decision(NamedTuple):
    """The type an alert points to, the rule that decided it, and why."""

    type: IncidentType
    rule: str
    reason: str


@dataclass(frozen=True)
class _Compiled:
    """A rule ready to match: each condition a compiled pattern or a set."""

    id: str
    type: IncidentType
    formats: frozenset[str] | None
    category: re.Pattern[str] | None
    rule: re.Pattern[str] | None
    tags: frozenset[str] | None
    techniques: frozenset[str] | None
    labels: tuple[tuple[str, re.Pattern[str]], ...]
    keywords: re.Pattern[str] | None
    keyword_list: tuple[str, ...]  # lower-cased, in the rule's order

    @property
    def keywords_only(self) -> bool:
        """Whether keywords are all the rule tests (its format aside, which picked it as a candidate)."""
        return self.keywords is not None and not (
            self.category or self.rule or self.tags or self.techniques or self.labels
        )

    def explain(self, alert: Alert, text: _Text) -> str | None:
        """Return why the rule holds for the alert, or None when it does not."""
        # Every alert meets most rules and fails them: decide first, and word the reason only
        # for the rule that holds.
        if self.category is not None and (not alert.category or not self.category.search(alert.category)):
            return None
        if self.rule is not None and (not alert.rule or not self.rule.search(alert.rule)):
            return None
        tag = technique = None
        if self.tags is not None:
            tag = next((t for t in alert.tags if t.lower() in self.tags), None)
            if tag is None:
                return None
        if self.techniques is not None:
            technique = next((t for t in alert.techniques if _covers(self.techniques, t)), None)
            if technique is None:
                return None
        for name, pattern in self.labels:
            value = alert.labels.get(name)
            if value is None or not pattern.fullmatch(value):
                return None
        mentioned = None
        if self.keywords is not None:
            match = self.keywords.search(text.get(alert))
            if match is None:
                return None
            mentioned = match.group(0)
        return self.why(alert, tag, technique, mentioned)

    def why(self, alert: Alert, tag: str | None, technique: str | None, mentioned: str | None) -> str:
        """The reason the rule holds, from what met each of its conditions."""
        why: list[str] = []
        fmt = alert.format if alert.format != "native" else alert.source
        names = _FIELD_NAMES.get(alert.format, {})
        if self.category is not None:
            why.append(f"{fmt} {names.get('category', 'category')} {alert.category!r}")
        if self.rule is not None:
            why.append(f"{fmt} {names.get('rule', 'rule')} {alert.rule!r}")
        if tag is not None:
            why.append(f"{fmt} {names.get('tags', 'tag')} {tag!r}")
        if technique is not None:
            why.append(_attack(technique))
        for name, _pattern in self.labels:
            why.append(f"label {name}={alert.labels[name]!r}")
        if mentioned is not None:
            why.append(f"{fmt} alert {alert.title!r} mentions {mentioned!r}")
        if not why:  # a rule on the format alone
            why.append(f"{fmt} alert")
        return " and ".join(why)


def _covers(techniques: frozenset[str], technique: str) -> bool:
    """``T1048`` covers ``T1048.003``; tactic ids match as they are."""
    return technique in techniques or technique.split(".", 1)[0] in techniques


def _attack(technique: str) -> str:
    if technique in TACTICS:
        return f"ATT&CK tactic {technique} {TACTICS[technique]}"
    return f"ATT&CK technique {technique}"


class _Text:
    """The lower-cased text keywords are searched in, built once per alert and only if needed."""

    __slots__ = ("_value",)

    def __init__(self) -> None:
        self._value: str | None = None

    def get(self, alert: Alert) -> str:
        if self._value is None:
            self._value = " ".join([alert.title, alert.description, *alert.labels.values()]).lower()
        return self._value


class Classifier:
    """Compiled rules and the severity policy; ``classify`` is pure and safe to share."""

    def __init__(self, document: RulesFile) -> None:
        self.rules = document.rules
        self.severity = document.severity
        self._compiled = tuple(_compile_rule(rule) for rule in document.rules)
        self._critical = tuple(p.lower() for p in document.severity.critical_hosts)
        # Only the label names some rule reads make an alert's shape: few shapes, so few cache entries.
        self._label_names = frozenset(name for rule in self._compiled for name, _pattern in rule.labels)
        # Runs of keyword rules, shared by the shapes and formats that meet the same run.
        self._runs: dict[tuple[str, ...], _KeywordRun] = {}

    def _run(self, rules: tuple[_Compiled, ...]) -> _KeywordRun:
        key = tuple(rule.id for rule in rules)
        if (run := self._runs.get(key)) is None:
            run = self._runs[key] = _KeywordRun(rules)
        return run

    # Bounded: a native alert may say any format, and each new one would be an entry for good.
    @functools.lru_cache(maxsize=CACHED_FORMATS)  # noqa: B019 - the classifier lives as long as the service
    def _for_format(self, format_name: str) -> tuple[_Compiled, ...]:
        return tuple(r for r in self._compiled if r.formats is None or format_name in r.formats)

    @functools.lru_cache(maxsize=CACHED_SHAPES)  # noqa: B019 - the classifier lives as long as the service
    def _candidates(
        self, format_name: str, shape: tuple[bool, bool, bool, bool, frozenset[str]]
    ) -> tuple[_Compiled | _KeywordRun, ...]:
        """The format's rules an alert of this shape can meet (a rule on a field the alert lacks cannot),
        in order, those in a row that test keywords alone as one run."""
        has_category, has_rule, has_tags, has_techniques, labels = shape
        rules = [
            r
            for r in self._for_format(format_name)
            if (r.category is None or has_category)
            and (r.rule is None or has_rule)
            and (r.tags is None or has_tags)
            and (r.techniques is None or has_techniques)
            and all(name in labels for name, _pattern in r.labels)
        ]
        steps: list[_Compiled | _KeywordRun] = []
        run: list[_Compiled] = []
        for rule in [*rules, None]:
            if rule is not None and rule.keywords_only:
                run.append(rule)
                continue
            steps.extend([self._run(tuple(run))] if len(run) > 1 else run)
            run = []
            if rule is not None:
                steps.append(rule)
        return tuple(steps)

    def classify(self, alert: Alert) -> Decision:
        """Return the type the first holding rule gives the alert, or ``unknown``."""
        text = _Text()
        shape = (
            bool(alert.category),
            bool(alert.rule),
            bool(alert.tags),
            bool(alert.techniques),
            self._label_names.intersection(alert.labels),
        )
        for step in self._candidates(alert.format.lower(), shape):
            why: str | None
            if isinstance(step, _KeywordRun):
                found = step.first(text.get(alert))
                rule, why = (found[0], found[0].why(alert, None, None, found[1])) if found else (step.rules[0], None)
            else:
                rule, why = step, step.explain(alert, text)
            if why is not None:
                return Decision(rule.type, rule.id, f"{why} (rule {rule.id})")
        return Decision(IncidentType.UNKNOWN, FALLBACK_RULE, _unmatched(alert))

    def critical_host(self, host: str) -> bool:
        """Return whether the host is on the critical hosts list (names or shell patterns)."""
        name = host.lower()
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self._critical)


def _unmatched(alert: Alert) -> str:
    fmt = alert.format if alert.format != "native" else alert.source
    said = [f"{name} {value!r}" for name, value in (("category", alert.category), ("rule", alert.rule)) if value]
    return (
        f"no classification rule matched the {fmt} alert {alert.title!r}"
        + (f" ({', '.join(said)})" if said else "")
        + f"; unknown until triaged (rule {FALLBACK_RULE})"
    )


def _compile_rule(rule: Rule) -> _Compiled:
    def alternation(patterns: Sequence[str] | None) -> re.Pattern[str] | None:
        return re.compile(_alternation(patterns), re.IGNORECASE) if patterns else None

    return _Compiled(
        id=rule.id,
        type=rule.type,
        formats=frozenset(f.lower() for f in rule.format) if rule.format else None,
        category=alternation(rule.category),
        rule=alternation(rule.rule),
        tags=frozenset(t.lower() for t in rule.tags) if rule.tags else None,
        techniques=frozenset(t.upper() for t in rule.techniques) if rule.techniques else None,
        labels=tuple((name, re.compile(value, re.IGNORECASE)) for name, value in (rule.labels or {}).items()),
        keywords=keyword_pattern(k.lower() for k in rule.keywords) if rule.keywords else None,
        keyword_list=tuple(k.lower() for k in rule.keywords or ()),
    )


def parse_rules(document: str, *, origin: str = "classification rules") -> Classifier:
    """Validate a rules file's text; the error names the file, the rule and the reason."""
    try:
        loaded = yaml.safe_load(document)
    except yaml.YAMLError as exc:
        raise ClassificationError(f"{origin}: not YAML: {exc}") from exc
    try:
        return Classifier(RulesFile.model_validate(loaded))
    except ValidationError as exc:
        raise ClassificationError(f"{origin}: {_describe(exc, loaded)}") from exc


def _describe(exc: ValidationError, loaded: Any) -> str:
    """Name each error by its rule's id (and position) rather than by a bare index."""
    lines = []
    for error in exc.errors():
        loc = list(error["loc"])
        where = ".".join(str(part) for part in loc) or "the file"
        if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
            rules = loaded.get("rules") if isinstance(loaded, dict) else None
            rule = rules[loc[1]] if isinstance(rules, list) and loc[1] < len(rules) else None
            rule_id = rule.get("id") if isinstance(rule, dict) else None
            field = ".".join(str(part) for part in loc[2:])
            where = f"rule {rule_id!r} (#{loc[1] + 1})" if rule_id else f"rule #{loc[1] + 1}"
            where += f" {field}" if field else ""
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return "; ".join(lines)


def load_rules(path: Path | None = None) -> Classifier:
    """Read and validate a rules file (the shipped one by default)."""
    path = path or SHIPPED_RULES
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ClassificationError(f"classification rules {path}: cannot be read: {exc}") from exc
    return parse_rules(text, origin=f"classification rules {path}")


@functools.cache
def shipped() -> Classifier:
    """The rules Vigil ships, read once, for callers that are given none."""
    return load_rules(SHIPPED_RULES)
