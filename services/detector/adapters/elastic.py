"""Elastic Security alerts (ECS): detection-engine alerts and Elastic Defend (Endpoint) alerts.

**Detected by** an alert document, bare or as a search hit (``_id`` with ``_source``, or ``fields``):
one with ``kibana.alert.*`` fields (Elastic Security 8.x), a legacy ``signal.rule`` (7.x signals),
or an ECS document whose ``event.kind`` is ``signal`` or ``alert`` with an ``@timestamp`` (Elastic
Defend writes ``alert``). Fields are read whether the document writes them flat
(``"kibana.alert.rule.name"``), nested (``{"kibana": {"alert": ...}}``) or mixed, and a list value
(the search API's ``fields``) counts as its first item.

**Identity**: ``kibana.alert.uuid``, else the document ``_id``; for an ECS alert from a tool (not
the detection engine), ``event.id``; failing all, a digest of rule, time, host and message.
``source`` is ``elastic`` for the detection engine's alerts and ``elastic/<event.module>`` for a
tool's ECS alert (``elastic/endpoint`` for Elastic Defend).

**Severity**: the rule's own ``kibana.alert.severity`` (``signal.rule.severity``) when it is one of
Elastic's four levels, which map one to one; else the risk score (``kibana.alert.risk_score``,
``signal.rule.risk_score``, ``event.risk_score``, and Elastic Defend's ``event.severity``, which is
on the same 0-100 scale) in Elastic's own banding of risk scores (Elastic Security docs, *Common rule
settings*: default risk score):

| risk score | Elastic severity | Vigil |
|---|---|---|
| 0-21 | low | low |
| 22-47 | medium | medium |
| 48-73 | high | high |
| 74-100 | critical | critical |

Another tool's ``event.severity`` is on that tool's own scale (Suricata's 1 is its highest), so it
is not read as a risk score: such an alert, or one with no severity at all, is ``medium``.

**Status**: ``kibana.alert.workflow_status`` (``signal.status``) ``closed``, or a
``kibana.alert.status`` of ``recovered``, is ``resolved``. A building-block alert
(``kibana.alert.building_block_type``), which Elastic itself keeps out of the alerts view, is
skipped with that reason.

**Fields**: the rule name (else ``rule.name``, else ``message``) is the title and the rule; the
alert's reason (else the rule description, else ``message``, with the file and process concerned)
the description; ``host.name`` (else ``host.hostname``) the host; ``user.name`` the user;
``source.ip`` / ``destination.ip`` the addresses; ATT&CK ids from the rule's ``threat`` (ECS
``threat.*`` for a tool's alert); the rule's tags (else ECS ``tags``) the tags; ``rule.category``
(else ``event.code``) the category; ``kibana.alert.url`` the URL; the orchestrator resource or cloud
instance the resource.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from services.detector.adapters.base import (
    Parsed,
    Rejected,
    attack_ids,
    band,
    build_alert,
    first,
    identity,
    ip_or_none,
    lines,
    nodes,
    number,
    parse_time,
    slug,
    stable_id,
    string_labels,
    strings,
    text,
)
from shared.alerts import AlertSeverity

SEVERITIES = {s.value: s for s in (AlertSeverity.LOW, AlertSeverity.MEDIUM, AlertSeverity.HIGH, AlertSeverity.CRITICAL)}
# (highest risk score of the band, band, Vigil severity), lowest first.
RISK_BANDS = (
    (21, "0-21", AlertSeverity.LOW),
    (47, "22-47", AlertSeverity.MEDIUM),
    (73, "48-73", AlertSeverity.HIGH),
    (100, "74-100", AlertSeverity.CRITICAL),
)
ALERT_KINDS = ("signal", "alert")


def field(doc: Any, path: str) -> Any:
    """An ECS field by dotted path, written flat ("a.b.c"), nested ({"a": {"b": ...}}) or mixed."""
    if not isinstance(doc, dict):
        return None
    if path in doc:
        return doc[path]
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:cut])
        if head in doc and (found := field(doc[head], ".".join(parts[cut:]))) is not None:
            return found
    return None


def one(doc: Any, *paths: str) -> Any:
    """The first of ``paths`` that holds a scalar (a list counts as its first scalar item)."""
    for path in paths:
        value = field(doc, path)
        for item in value if isinstance(value, list) else [value]:
            if item is not None and not isinstance(item, dict | list) and text(item) is not None:
                return item
    return None


def document(payload: Any) -> tuple[Mapping[str, Any] | None, str | None]:
    """The alert document and its search-hit ``_id``, unwrapping a hit's ``_source`` or ``fields``."""
    if not isinstance(payload, dict):
        return None, None
    hit_id = text(payload.get("_id")) if ("_index" in payload or "_id" in payload) else None
    for key in ("_source", "fields"):
        inner = payload.get(key)
        if isinstance(inner, dict) and (key == "_source" or hit_id is not None):
            return inner, hit_id
    return payload, None


def is_detection_alert(doc: Mapping[str, Any]) -> bool:
    """Whether the document is an alert of Elastic Security's detection engine (8.x or a 7.x signal)."""
    if isinstance(field(doc, "kibana.alert"), dict) or any(
        isinstance(k, str) and k.startswith("kibana.alert.") for k in doc
    ):
        return True
    return isinstance(field(doc, "signal.rule"), dict)


class Elastic:
    name = "elastic"
    description = "Elastic Security alerts (ECS): kibana.alert.* detection alerts, 7.x signals, Elastic Defend alerts."

    def matches(self, payload: Any) -> bool:
        doc, _ = document(payload)
        if doc is None:
            return False
        if is_detection_alert(doc):
            return True
        return one(doc, "event.kind") in ALERT_KINDS and "@timestamp" in doc

    def parse(self, payload: Any) -> Parsed:
        doc, hit_id = document(payload)
        if doc is None:
            raise Rejected(f"an Elastic alert is a JSON object, not a {type(payload).__name__}", code="invalid_fields")
        detection = is_detection_alert(doc)
        if not detection and one(doc, "event.kind") not in ALERT_KINDS:
            raise Rejected(
                "not an Elastic alert: no kibana.alert fields, no signal.rule, and event.kind is neither "
                "signal nor alert",
                code="missing_fields",
            )
        rule_name = one(doc, "kibana.alert.rule.name", "signal.rule.name", "rule.name")
        if one(doc, "kibana.alert.building_block_type", "signal.rule.building_block_type") is not None:
            return Parsed(
                format=self.name,
                skipped=[
                    f"Elastic building-block alert of rule {rule_name!r}: Elastic keeps it out of the alerts view"
                ],
            )
        time = _time(doc)
        host = first(one(doc, "host.name"), one(doc, "host.hostname"))
        message = one(doc, "message")
        dataset = text(one(doc, "data_stream.dataset"))
        module = text(one(doc, "event.module")) or (dataset.split(".")[0] if dataset else None)
        source = "elastic" if detection else f"elastic/{slug(module, default='ecs')}"
        native_id = (
            identity(one(doc, "kibana.alert.uuid"))
            or identity(hit_id)
            or (None if detection else identity(one(doc, "event.id")))
        )
        severity, source_severity, reason = severity_of(doc, endpoint=module == "endpoint")
        workflow = text(one(doc, "kibana.alert.workflow_status", "signal.status"))
        alert = build_alert(
            id=native_id or stable_id(source, rule_name, time.isoformat(), host, message),
            source=source,
            title=first(rule_name, message, one(doc, "event.action")),
            description=_description(doc, message),
            severity=severity,
            time=time,
            host=host,
            user=one(doc, "user.name"),
            src_ip=ip_or_none(one(doc, "source.ip")),
            dst_ip=ip_or_none(one(doc, "destination.ip")),
            labels=string_labels(
                {
                    "rule_id": one(doc, "kibana.alert.rule.rule_id", "signal.rule.rule_id", "rule.id"),
                    "rule_uuid": one(doc, "kibana.alert.rule.uuid", "signal.rule.id"),
                    "rule_type": one(doc, "kibana.alert.rule.type", "signal.rule.type"),
                    "severity": one(doc, "kibana.alert.severity", "signal.rule.severity"),
                    "risk_score": one(doc, "kibana.alert.risk_score", "signal.rule.risk_score", "event.risk_score"),
                    "workflow_status": workflow,
                    "original_time": one(doc, "kibana.alert.original_time", "signal.original_time"),
                    "event_code": one(doc, "event.code"),
                    "event_action": one(doc, "event.action"),
                    "dataset": one(doc, "event.dataset", "data_stream.dataset"),
                    "agent_id": one(doc, "agent.id"),
                    "process": one(doc, "process.command_line", "process.executable"),
                    "file_path": one(doc, "file.path"),
                    "file_sha256": one(doc, "file.hash.sha256", "process.hash.sha256"),
                    "cloud_account": one(doc, "cloud.account.id"),
                    "cloud_region": one(doc, "cloud.region"),
                }
            ),
            raw=dict(payload),
            format=self.name,
            status="resolved" if workflow == "closed" or one(doc, "kibana.alert.status") == "recovered" else "firing",
            rule=rule_name,
            category=first(one(doc, "rule.category"), one(doc, "event.code")),
            tags=_tags(doc),
            techniques=_techniques(doc),
            resource=_resource(doc),
            url=text(one(doc, "kibana.alert.url")),
            source_severity=source_severity,
            severity_reason=reason,
        )
        return Parsed(format=self.name, alerts=[alert])


def severity_of(doc: Mapping[str, Any], *, endpoint: bool) -> tuple[AlertSeverity, str | None, str]:
    """Vigil's severity for an Elastic alert, with what Elastic said and the mapping applied."""
    label = text(one(doc, "kibana.alert.severity", "signal.rule.severity"))
    if label is not None and label.lower() in SEVERITIES:
        severity = SEVERITIES[label.lower()]
        return severity, f"Elastic severity {label}", f"Elastic severity {label} -> {severity.value}"
    paths = ["kibana.alert.risk_score", "signal.rule.risk_score", "event.risk_score"]
    if endpoint:
        paths.append("event.severity")  # Elastic Defend writes its 0-100 score there too
    for path in paths:
        score = number(one(doc, path))
        if score is not None and 0 <= score <= 100:
            name, severity = band(score, RISK_BANDS)
            said = f"Elastic risk score {score:g}"
            return severity, said, f"{said} ({name}) -> {severity.value}"
    other = one(doc, "event.severity")
    if other is not None:
        return (
            AlertSeverity.MEDIUM,
            f"event.severity {other}",
            f"event.severity {other} is on its tool's own scale -> medium",
        )
    return AlertSeverity.MEDIUM, None, "no severity or risk score -> medium"


def _time(doc: Mapping[str, Any]) -> datetime:
    for path in ("@timestamp", "kibana.alert.original_time", "signal.original_time", "event.created"):
        value = one(doc, path)
        if value is not None:
            return parse_time(value, field_name=path)
    raise Rejected("the Elastic alert has no @timestamp", code="missing_fields")


def _description(doc: Mapping[str, Any], message: Any) -> str:
    reason = first(
        one(doc, "kibana.alert.reason", "signal.reason"),
        one(doc, "kibana.alert.rule.description", "signal.rule.description"),
        message,
        one(doc, "rule.description"),
    )
    return lines(
        (None, reason),
        ("file", one(doc, "file.path")),
        ("process", one(doc, "process.command_line", "process.executable")),
    )


def _techniques(doc: Mapping[str, Any]) -> list[str]:
    """ATT&CK ids in the rule's threat (or ECS threat), nested or flattened into dotted keys."""
    found: list[Any] = []
    for prefix in ("kibana.alert.rule.threat", "signal.rule.threat", "threat"):
        found.append(field(doc, prefix))
        found += [v for k, v in doc.items() if k.startswith(f"{prefix}.") and k.endswith((".id", ".name"))]
    # Ids, and names (a tactic by name); the items of a list have no key of their own.
    return attack_ids(v for key, v in nodes(found) if key in (None, "id", "name"))


def _tags(doc: Mapping[str, Any]) -> list[str]:
    for path in ("kibana.alert.rule.tags", "signal.rule.tags", "tags"):
        if found := strings(field(doc, path)):
            return found
    return []


def _resource(doc: Mapping[str, Any]) -> str | None:
    name = text(one(doc, "orchestrator.resource.name"))
    if name is not None:
        kind = text(one(doc, "orchestrator.resource.type")) or "resource"
        namespace = text(one(doc, "orchestrator.namespace"))
        return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"
    instance = first(one(doc, "cloud.instance.id"), one(doc, "cloud.instance.name"))
    return f"cloud instance {instance}" if instance else None
