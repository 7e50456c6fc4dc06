"""Playbooks as code: the model, its matching, `for_each` expansion and safe parameter templating.

Templates come from the playbook file; the values they are rendered with come from alerts and are
data, never code. Rendering uses jinja2's sandbox with strict undefined names, against a plain dict
built from the incident and its analysis (no objects with methods), and a rendered value is only
accepted when it passes its parameter's declared type. Nothing here executes an action.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import lru_cache, partial
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from jinja2 import StrictUndefined, TemplateError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.addresses import is_external
from shared.events import Analysis, IncidentSnapshot, IncidentType, Indicator, PlannedAction, Severity
from shared.yamlfile import node_at

MAX_VALUE_LENGTH = 2048


class _Sandbox(SandboxedEnvironment):
    """jinja2's sandbox, which also bounds what `*` and `**` can build (a value times a huge number)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            raise SecurityError("the power operator is not allowed in playbook templates")
        sized = [x for x in (left, right) if isinstance(x, str | list | tuple)]
        times = [x for x in (left, right) if isinstance(x, int)]
        if sized and times and len(sized[0]) * times[0] > MAX_VALUE_LENGTH:
            raise SecurityError(f"a repetition longer than {MAX_VALUE_LENGTH}")
        return super().call_binop(context, operator, left, right)


# Autoescape off: values are typed and checked, not HTML; escaping would corrupt URLs and commands.
_ENV = _Sandbox(undefined=StrictUndefined, autoescape=False)

ParamType = Literal["ip", "cidr", "domain", "url", "hostname", "sha256", "string", "int", "duration"]
ResponseType = Literal["immediate", "tactical", "strategic", "recovery"]
Phase = Literal["containment", "eradication", "recovery", "communication", "investigation"]
# Built in: webhook, command, blocklist, notify, manual (a person does it); others are the names of
# installed connector plugins.
Connector = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]
Risk = Literal["low", "medium", "high", "critical"]
RecoveryKind = Literal["system", "data", "service", "business"]
IndicatorKind = Literal["ipv4", "ipv6", "domain", "url", "md5", "sha1", "sha256", "email"]
ForEach = Literal[
    "external_ips", "external_source_ips", "affected_hosts", "affected_users", "domains", "urls", "sha256s"
]
_DURATION = re.compile(r"^(\d{1,6})([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(text: str) -> int:
    """Return the seconds of a duration such as `90s`, `15m`, `24h` or `7d`."""
    found = _DURATION.match(text)
    if found is None:
        raise ValueError(f"not a duration (a number and one of s, m, h, d): {text!r}")
    return int(found[1]) * _UNIT_SECONDS[found[2]]


def _checked_duration(text: str) -> str:
    duration_seconds(text)
    return text


def _checked_template(text: str) -> str:
    try:
        _ENV.parse(text)
    except TemplateError as exc:
        raise ValueError(f"template does not parse: {exc}") from exc
    return text


def _checked_expression(text: str) -> str:
    try:
        _ENV.compile_expression(text)
    except TemplateError as exc:
        raise ValueError(f"condition does not parse: {exc}") from exc
    return text


Duration = Annotated[str, AfterValidator(_checked_duration), Field(description="A number and s, m, h or d: `24h`.")]
Template = Annotated[str, AfterValidator(_checked_template)]
Expression = Annotated[str, AfterValidator(_checked_expression)]
Id = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Param(Model):
    """One parameter of an action: a template and the type its rendered value must have."""

    value: Template = Field(description="A jinja2 template, e.g. `{{ item }}` or `{{ incident.id }}`.")
    type: ParamType = "string"


class Match(Model):
    """When a playbook applies; every non-empty list must share at least one value with the incident."""

    types: list[IncidentType] = Field(min_length=1)
    min_severity: Severity = Severity.SEV4
    techniques: list[str] = Field(
        default_factory=list, description="ATT&CK ids; `T1110` also matches its sub-techniques (`T1110.001`)."
    )
    indicator_kinds: list[IndicatorKind] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=list, description="The tools the alerts came from (`falco`, …).")
    formats: list[str] = Field(default_factory=list, description="The alerts' formats (`native`, `suricata`, …).")
    verdicts: list[str] = Field(
        default_factory=list, description="Indicator verdicts (`malicious`, …), when the analyzer provides them."
    )
    asset_tags: list[str] = Field(
        default_factory=list,
        description="Tags of the affected assets (`crown-jewel`, …), when the analyzer provides them.",
    )


class Undo(Model):
    """The action that reverses a step when its lease ends or it is rolled back."""

    connector: Connector
    action: str = Field(min_length=1)
    params: dict[str, Param] = Field(default_factory=dict)


# What an action's idempotency key ends with for its undo and its check (``<step id>:undo``): no step's own.
RESERVED_STEP_IDS = frozenset({"undo", "validate"})


class Step(Model):
    id: Id
    name: str = Field(min_length=1)
    description: str = ""
    phase: Phase
    response: ResponseType
    connector: Connector
    action: str = Field(min_length=1, description="What the connector is asked to do (`block`, `isolate_host`, …).")
    params: dict[str, Param] = Field(default_factory=dict)
    for_each: ForEach | None = Field(None, description="Expand the step once per item, named `item` in templates.")
    condition: Expression | None = Field(None, description="A jinja2 expression; the step is skipped when false.")
    timeout: Duration = "60s"
    retries: int = Field(0, ge=0, le=10)
    on_failure: Literal["continue", "stop", "escalate"] = "stop"
    approval: Literal["none", "required"] = "none"
    risk: Risk = "low"
    lease: Duration | None = Field(None, description="How long a reversible action holds before its undo runs.")
    undo: Undo | None = None
    dry_run: bool = Field(False, description="Never send: the step is marked simulated with what it would send.")
    owner: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Who does it: a person or a role (`dba-oncall`); with the `manual` connector the step waits "
        "for them to say it is done (`vigil recovery done`).",
    )
    due: Duration | None = Field(None, description="How long after it is planned it should be done: `4h`.")
    recovery: RecoveryKind | None = Field(None, description="For recovery steps: system, data, service or business.")
    required: bool = Field(
        True, description="Whether the incident may be recovered only once it has ended well (recovery steps)."
    )

    @field_validator("id")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_STEP_IDS:
            raise ValueError(f"step id {value!r} is reserved (an action's undo and check are named by it)")
        return value

    @model_validator(mode="after")
    def _lease_and_undo_together(self) -> Step:
        if (self.lease is None) != (self.undo is None):
            raise ValueError("a reversible step has both a lease and an undo step, a one-way step neither")
        if self.connector == "manual" and self.owner is None:
            raise ValueError("a manual step names its owner: the person or role who does it")
        return self


class Playbook(Model):
    id: Id
    title: str = Field(min_length=1)
    match: Match
    dry_run: bool = Field(False, description="Simulate every step of this playbook; nothing is sent.")
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_step_ids(self) -> Playbook:
        ids = [s.id for s in self.steps]
        if repeated := sorted({i for i in ids if ids.count(i) > 1}):
            raise ValueError(f"step ids repeat: {', '.join(repeated)}")
        return self

    @property
    def specificity(self) -> int:
        """Count the match conditions beyond type and severity: a narrower playbook wins a tie."""
        m = self.match
        return sum(bool(x) for x in (m.techniques, m.indicator_kinds, m.sources, m.formats, m.verdicts, m.asset_tags))


class PlaybookBook(Model):
    playbooks: list[Playbook] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> PlaybookBook:
        ids = [p.id for p in self.playbooks]
        if repeated := sorted({i for i in ids if ids.count(i) > 1}):
            raise ValueError(f"playbook ids repeat: {', '.join(repeated)}")
        return self


def json_schema() -> dict[str, Any]:
    """Return the JSON Schema of a playbook file."""
    schema = PlaybookBook.model_json_schema()
    schema["title"] = "Vigil playbooks"
    return schema


# ---- loading, with the line of each error ---------------------------------------------------


class PlaybookError(ValueError):
    """A playbook file that cannot be used; `problems` are `line:column: where: why`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def parse_playbooks(document: str) -> list[Playbook]:
    """Validate a playbook file's text; every problem names its line and its reason."""
    try:
        data = yaml.safe_load(document)
        root = yaml.compose(document, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{mark.line + 1}:{mark.column + 1}" if mark else "?"
        raise PlaybookError([f"{where}: not YAML: {exc.problem}"]) from exc
    try:
        return PlaybookBook.model_validate(data).playbooks
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = [p for p in error["loc"] if isinstance(p, int | str)]
            mark = node_at(root, loc).start_mark if root is not None else None
            where = f"{mark.line + 1}:{mark.column + 1}" if mark else "1:1"
            path = ".".join(str(p) for p in loc) or "(file)"
            problems.append(f"{where}: {path}: {error['msg']}")
        raise PlaybookError(problems) from exc


# ---- what a playbook is matched and rendered against -----------------------------------------


class IncidentFacts(Model):
    """An incident as the planner sees it: its analysis and, when known, its detector snapshot."""

    incident_id: str = ""
    analysis: Analysis
    incident: IncidentSnapshot | None = None
    verdicts: list[str] = Field(default_factory=list, description="When the analyzer provides them.")
    asset_tags: list[str] = Field(default_factory=list, description="When the analyzer provides them.")

    @classmethod
    def bare(cls, incident_type: IncidentType, severity: Severity) -> IncidentFacts:
        """Return facts that know only the type and severity."""
        analysis = Analysis(
            type=incident_type,
            severity=severity,
            title="",
            indicators=[],
            affected_hosts=[],
            affected_users=[],
            alert_count=0,
            summary="",
        )
        return cls(analysis=analysis)

    @property
    def techniques(self) -> set[str]:
        alerts = self.incident.new_alerts if self.incident else []
        return {t for a in alerts for t in a.techniques}

    @property
    def sources(self) -> set[str]:
        return {a.source for a in self.incident.new_alerts} if self.incident else set()

    @property
    def formats(self) -> set[str]:
        return {a.format for a in self.incident.new_alerts} if self.incident else set()


def matches(playbook: Playbook, facts: IncidentFacts) -> bool:
    """Tell whether the incident meets every condition of the playbook."""
    m, a = playbook.match, facts.analysis
    techniques = facts.techniques
    # Every kind the incident's indicators have, though the analysis carries only the worst of them.
    kinds = {*a.indicators_by_kind, *(i.kind for i in a.indicators)}
    return (
        a.type in m.types
        and a.severity.urgency >= m.min_severity.urgency
        and (not m.techniques or any(t == w or t.startswith(f"{w}.") for w in m.techniques for t in techniques))
        and (not m.indicator_kinds or bool(set(m.indicator_kinds) & kinds))
        and (not m.sources or bool(set(m.sources) & facts.sources))
        and (not m.formats or bool(set(m.formats) & facts.formats))
        and (not m.verdicts or bool(set(m.verdicts) & set(facts.verdicts)))
        and (not m.asset_tags or bool(set(m.asset_tags) & set(facts.asset_tags)))
    )


def _ips(indicators: Sequence[Indicator]) -> list[str]:
    return [i.value for i in indicators if i.kind in ("ipv4", "ipv6")]


def _unique(values: Iterator[str] | Sequence[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _items(facts: IncidentFacts) -> dict[str, list[str]]:
    a = facts.analysis
    sources = [str(al.src_ip) for al in facts.incident.new_alerts if al.src_ip] if facts.incident else []
    return {
        "external_ips": _unique(v for v in _ips(a.indicators) if is_external(v)),
        "external_source_ips": _unique(v for v in sources if is_external(v)),
        "affected_hosts": _unique(a.affected_hosts),
        "affected_users": _unique(a.affected_users),
        "domains": _unique(i.value for i in a.indicators if i.kind == "domain"),
        "urls": _unique(i.value for i in a.indicators if i.kind == "url"),
        "sha256s": _unique(i.value for i in a.indicators if i.kind == "sha256"),
    }


def context(facts: IncidentFacts) -> dict[str, Any]:
    """Return the plain data templates see: only dicts, lists, strings and numbers."""
    a = facts.analysis
    incident = facts.incident.model_dump(mode="json", exclude={"new_alerts"}) if facts.incident else {}
    alerts = [a.model_dump(mode="json") for a in facts.incident.new_alerts] if facts.incident else []
    by_kind: dict[str, list[str]] = {}
    for indicator in a.indicators:
        by_kind.setdefault(indicator.kind, []).append(indicator.value)
    return {
        "incident": {
            **incident,
            "id": facts.incident_id,
            "sources": sorted(facts.sources),
            "formats": sorted(facts.formats),
            "techniques": sorted(facts.techniques),
            "alerts": alerts,
        },
        "analysis": a.model_dump(mode="json"),
        "indicators": by_kind,
        "items": _items(facts),
        "verdicts": list(facts.verdicts),
        "asset_tags": list(facts.asset_tags),
    }


# ---- typed values -----------------------------------------------------------------------------

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$")
_DOMAIN = re.compile(rf"^(?:{_LABEL}\.)+[A-Za-z]{{2,63}}\.?$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_INT = re.compile(r"^-?\d{1,18}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _ip(text: str) -> str:
    return str(ipaddress.ip_address(text))


def _cidr(text: str) -> str:
    return str(ipaddress.ip_network(text, strict=False))


def _pattern(pattern: re.Pattern[str], what: str) -> Callable[[str], str]:
    def check(text: str) -> str:
        if len(text) > 253 or not pattern.match(text):
            raise ValueError(f"not a {what}")
        return text.rstrip(".").lower()

    return check


def _url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or re.search(r"[\s\x00-\x1f\x7f]", text):
        raise ValueError("not an http(s) URL")
    return text


def _sha256(text: str) -> str:
    if not _SHA256.match(text):
        raise ValueError("not a SHA-256 (64 hex digits)")
    return text.lower()


def _string(text: str) -> str:
    if _CONTROL.search(text.replace("\n", "").replace("\t", "")):
        raise ValueError("control characters in a string")
    return text


def _int(text: str) -> int:
    if not _INT.match(text.strip()):
        raise ValueError("not an integer")
    return int(text)


_TYPES: dict[str, Callable[[str], str | int]] = {
    "ip": _ip,
    "cidr": _cidr,
    "domain": _pattern(_DOMAIN, "domain name"),
    "hostname": _pattern(_HOSTNAME, "host name"),
    "url": _url,
    "sha256": _sha256,
    "string": _string,
    "int": _int,
    "duration": duration_seconds,
}


def typed(value: str, kind: ParamType) -> str | int:
    """Return the value in its type's canonical form, or raise ValueError saying why it is not one."""
    if len(value) > MAX_VALUE_LENGTH:
        raise ValueError(f"longer than {MAX_VALUE_LENGTH} characters")
    return _TYPES[kind](value)


# ---- planning ---------------------------------------------------------------------------------


class RefusedStep(ValueError):
    pass


@lru_cache(maxsize=1024)
def _template(source: str) -> Any:
    return _ENV.from_string(source)


@lru_cache(maxsize=256)
def _expression(source: str) -> Any:
    return _ENV.compile_expression(source, undefined_to_none=False)


def render(params: Mapping[str, Param], scope: Mapping[str, Any], *, connector: Connector) -> dict[str, str | int]:
    """Render each parameter against plain data and check its type; raise RefusedStep saying why not."""
    rendered: dict[str, str | int] = {}
    for name, param in params.items():
        try:
            text = _template(param.value).render(scope)
        except TemplateError as exc:  # includes the sandbox's SecurityError and undefined names
            raise RefusedStep(f"parameter {name}: template failed: {exc}") from exc
        try:
            value = typed(text, param.type)
        except ValueError as exc:
            raise RefusedStep(f"parameter {name}: {text[:80]!r} is refused: {exc}") from exc
        # An argument list never goes through a shell, but a value could still pass for an option.
        if connector == "command" and isinstance(value, str) and value.startswith("-"):
            raise RefusedStep(f"parameter {name}: {text[:80]!r} is refused: it would read as an option")
        rendered[name] = value
    return rendered


class PlannedUndo(Model):
    connector: Connector
    action: str
    params: dict[str, str | int]


class PlannedStep(Model):
    """One step of a plan, with its parameters rendered; nothing has run."""

    id: str = Field(description="The step's id, with `#n` when `for_each` expanded it.")
    step: str
    name: str
    description: str
    phase: Phase
    response: ResponseType
    connector: Connector
    action: str
    params: dict[str, str | int]
    item: str | None
    timeout_s: int
    retries: int
    on_failure: Literal["continue", "stop", "escalate"]
    approval: Literal["none", "required"]
    risk: Risk
    lease_s: int | None
    undo: PlannedUndo | None
    dry_run: bool = False
    owner: str | None = None
    due_s: int | None = None
    recovery: RecoveryKind | None = None
    required: bool = True
    position: int = Field(0, description="The playbook step's place: later steps wait for earlier ones.")
    for_each: str | None = None
    status: Literal["planned", "awaiting_approval", "skipped", "refused"]
    reason: str = ""

    def as_action(self) -> PlannedAction:
        """Return the step as the ResponsePlanned event carries it."""
        waits = self.approval == "required"
        return PlannedAction(
            id=self.id,
            name=self.name if self.item is None else f"{self.name}: {self.item}",
            phase=self.phase,
            description=self.description,
            destructive=waits,
            requires_approval=waits,
            status="awaiting_approval" if waits else "planned",
        )


def _plan_one(
    step: Step,
    scope: dict[str, Any],
    *,
    step_id: str,
    item: str | None,
    position: int,
    dry_run: bool,
    skip: str = "",
    condition: bool = True,
) -> PlannedStep:
    """``condition``: whether the step's condition decides (a step a person asks for runs whatever it says)."""
    status: Literal["planned", "awaiting_approval", "skipped", "refused"]
    status = "awaiting_approval" if step.approval == "required" else "planned"
    reason, params, undo = "", {}, None
    if skip:
        status, reason = "skipped", skip
    try:
        if status != "skipped" and condition and step.condition is not None:
            try:
                met = bool(_expression(step.condition)(**scope))
            except TemplateError as exc:
                raise RefusedStep(f"condition failed: {exc}") from exc
            if not met:
                status, reason = "skipped", f"condition is false: {step.condition}"
        if status != "skipped":
            params = render(step.params, scope, connector=step.connector)
            if step.undo is not None:
                undo = PlannedUndo(
                    connector=step.undo.connector,
                    action=step.undo.action,
                    params=render(step.undo.params, scope, connector=step.undo.connector),
                )
    except RefusedStep as exc:
        status, reason, params, undo = "refused", str(exc), {}, None
    return PlannedStep(
        id=step_id,
        step=step.id,
        name=step.name,
        description=step.description,
        phase=step.phase,
        response=step.response,
        connector=step.connector,
        action=step.action,
        params=params,
        item=item,
        timeout_s=duration_seconds(step.timeout),
        retries=step.retries,
        on_failure=step.on_failure,
        approval=step.approval,
        risk=step.risk,
        lease_s=duration_seconds(step.lease) if step.lease else None,
        undo=undo,
        dry_run=dry_run or step.dry_run,
        owner=step.owner,
        due_s=duration_seconds(step.due) if step.due else None,
        recovery=step.recovery,
        required=step.required,
        position=position,
        for_each=step.for_each,
        status=status,
        reason=reason,
    )


def plan_steps(playbook: Playbook, facts: IncidentFacts) -> list[PlannedStep]:
    """Expand and render every step in order; a step with nothing to iterate over is skipped, not dropped."""
    base = context(facts)
    planned: list[PlannedStep] = []
    for position, step in enumerate(playbook.steps):
        one = partial(_plan_one, step, position=position, dry_run=playbook.dry_run)
        if step.for_each is None:
            planned.append(one(base, step_id=step.id, item=None))
            continue
        items = base["items"][step.for_each]
        if not items:
            planned.append(one(base, step_id=step.id, item=None, skip=f"no {step.for_each}"))
        for n, item in enumerate(items):
            planned.append(one({**base, "item": item}, step_id=f"{step.id}#{n}", item=item))
    return planned


# What a person may name as the item of a `for_each` step asked for on demand, by where the plan takes them.
ITEM_TYPES: dict[str, ParamType] = {
    "external_ips": "ip",
    "external_source_ips": "ip",
    "affected_hosts": "hostname",
    "affected_users": "string",
    "domains": "domain",
    "urls": "url",
    "sha256s": "sha256",
}


def plan_on_demand(
    playbook: Playbook, step: Step, facts: IncidentFacts, *, step_id: str, item: str | None
) -> PlannedStep:
    """One step of a playbook, rendered for the incident and the item a person names; its condition is not asked.

    Raises RefusedStep when the item is missing, not needed, or not of the kind the step acts on.
    """
    if step.for_each is None:
        if item is not None:
            raise RefusedStep(f"step {step.id} acts on no item; run it without one")
        return _plan_one(
            step, context(facts), step_id=step_id, item=None, position=0, dry_run=playbook.dry_run, condition=False
        )
    if item is None:
        raise RefusedStep(f"step {step.id} acts on each of the incident's {step.for_each}: name one (--item)")
    try:
        value = str(typed(item.strip(), ITEM_TYPES[step.for_each]))
    except ValueError as exc:
        raise RefusedStep(f"item {item[:80]!r} is refused: {exc}") from exc
    if step.for_each.startswith("external") and not is_external(value):
        raise RefusedStep(f"{value} is not an external address; step {step.id} acts on external addresses")
    scope = {**context(facts), "item": value}
    return _plan_one(step, scope, step_id=step_id, item=value, position=0, dry_run=playbook.dry_run, condition=False)
