"""Falco's JSON output (``json_output: true``), as Falco writes it or falcosidekick forwards it.

Falco writes one JSON object per alert: ``rule``, ``priority``, ``output`` (the rule's output line),
``output_fields`` (the fields that line was made of), ``time``, and since 0.31 ``source`` (syscall,
k8s_audit, a plugin's source), ``tags`` and ``hostname``. falcosidekick forwards the same object
with a ``uuid`` (its webhook output: ``uuid``, ``output``, ``priority``, ``rule``, ``time``,
``output_fields``, ``source``, ``tags``, ``hostname``). Recognised by ``rule`` and ``priority``
being text alongside ``output`` and ``time``.

Where each field comes from:

- ``id`` (deduplication): a hash of ``hostname``, ``rule``, ``time`` and ``output``, the same
  whether the event came straight from Falco or through falcosidekick (whose ``uuid`` is kept as
  label ``falco.uuid``); a redelivered event is a repeat, two events are two alerts.
- ``source``: ``falco``; ``title`` and ``rule``: ``rule``; ``description``: ``output``;
  ``category``: Falco's event ``source`` (``syscall``, ``k8s_audit``, …).
- ``time``: ``time``; when it is missing or unreadable, ``output_fields["evt.time"]`` (the same
  instant in nanoseconds; label ``time_source`` says so).
- ``host``: ``hostname``, else ``output_fields["evt.hostname"]``, else the Kubernetes pod
  (``k8s.pod.name``) the event happened in.
- ``user``: ``user.name``, else the Kubernetes audit user ``ka.user.name``, else ``user.loginname``.
- ``src_ip`` / ``dst_ip``: ``fd.cip`` / ``fd.sip``, else the two ends of an IPv4 connection in
  ``fd.name`` (``10.0.0.5:43812->10.96.0.1:443``).
- ``resource``: ``<namespace>/<pod>`` (``k8s.ns.name``, ``k8s.pod.name``), else the Kubernetes
  audit target ``<namespace>/<resource>/<name>`` (``ka.target.*``), else ``container/<name or id>``.
- ``tags``: ``tags``; ``techniques``: ATT&CK ids among them (``T1059``) and the tactics of the
  ``mitre_<tactic>`` tags (``mitre_execution`` -> ``TA0002``).
- ``labels``: ``falco.uuid``, ``falco.source``, then every output field by its Falco name.

Severity, from ``priority`` (case-insensitive):

| Falco priority | severity |
|---|---|
| Emergency, Alert, Critical | critical |
| Error | high |
| Warning | medium |
| Notice | low |
| Informational (Info), Debug | info |
| any other value | medium (the reason says so) |

Falco's own metrics snapshots (rule ``Falco internal: metrics snapshot``) are not alerts: they are
skipped with that reason. Other internal events (``Falco internal: syscall event drop``) are
alerts at their priority. falcosidekick's test event (rule ``Test rule``, output ``This is a test
from falcosidekick``) is ``kind: test``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from services.detector.adapters.base import (
    Parsed,
    Rejected,
    build_alert,
    first,
    ip_or_none,
    listed,
    mapping,
    parse_time,
    stable_id,
    string_labels,
    tactic_id,
    techniques_in,
    text,
)

PRIORITIES: dict[str, str] = {
    **dict.fromkeys(("emergency", "alert", "critical"), "critical"),
    "error": "high",
    "warning": "medium",
    "notice": "low",
    **dict.fromkeys(("informational", "info", "debug"), "info"),
}
DEFAULT_SEVERITY = "medium"
METRICS_RULE = "falco internal: metrics snapshot"
TEST_RULE = "test rule"
TEST_OUTPUT = "this is a test from falcosidekick"
# "172.17.0.9:43812->10.96.0.1:443": a connection's client and server, as Falco prints fd.name.
CONNECTION = re.compile(r"^(\d{1,3}(?:\.\d{1,3}){3}):\d+->(\d{1,3}(?:\.\d{1,3}){3}):\d+$")


class Falco:
    name = "falco"
    description = "Falco JSON output or falcosidekick's forward of it: rule, priority, output, time, output_fields."

    def matches(self, payload: Any) -> bool:
        return (
            isinstance(payload, dict)
            and isinstance(payload.get("rule"), str)
            and isinstance(payload.get("priority"), str)
            and "output" in payload
            and "time" in payload
        )

    def parse(self, payload: Any) -> Parsed:
        if not isinstance(payload, dict):
            raise Rejected("a Falco event is a JSON object", code="invalid_fields")
        rule = text(payload.get("rule"))
        if rule is None:
            raise Rejected("the Falco event has no rule", code="missing_fields")
        if rule.lower() == METRICS_RULE:
            return Parsed(format=self.name, skipped=["falco internal metrics snapshot: not an alert"])
        fields = mapping(payload.get("output_fields"))
        output = text(payload.get("output")) or ""
        hostname = first(payload.get("hostname"), fields.get("evt.hostname"))
        severity, said, reason = _severity(payload.get("priority"))
        time, time_source = _time(payload.get("time"), fields.get("evt.time"))
        tags = [t for t in (text(tag) for tag in listed(payload.get("tags"))) if t]
        namespace, pod = text(fields.get("k8s.ns.name")), text(fields.get("k8s.pod.name"))
        src_ip, dst_ip = _addresses(fields)
        falco_source = text(payload.get("source"))
        is_test = rule.lower() == TEST_RULE and output.lower().startswith(TEST_OUTPUT)
        alert = build_alert(
            id=stable_id(hostname, rule, payload.get("time"), output),
            source="falco",
            title=rule,
            description=output,
            severity=severity,
            source_severity=said,
            severity_reason=reason,
            time=time,
            kind="test" if is_test else "alert",
            rule=rule,
            category=falco_source,
            host=hostname or pod,
            user=first(fields.get("user.name"), fields.get("ka.user.name"), fields.get("user.loginname")),
            src_ip=src_ip,
            dst_ip=dst_ip,
            resource=_resource(fields, namespace, pod),
            tags=tags,
            techniques=[*techniques_in(tags), *(tactic_id(t[6:]) for t in tags if t.lower().startswith("mitre_"))],
            labels={
                **{
                    k: v
                    for k, v in {"falco.uuid": text(payload.get("uuid")), "falco.source": falco_source}.items()
                    if v
                },
                **({"time_source": time_source} if time_source else {}),
                **string_labels(fields),
            },
            raw=dict(payload),
            format=self.name,
        )
        return Parsed(format=self.name, alerts=[alert])


def _severity(priority: Any) -> tuple[str, str | None, str]:
    said = text(priority)
    if said is None:
        return DEFAULT_SEVERITY, None, "Falco event without a priority -> medium"
    mapped = PRIORITIES.get(said.lower())
    if mapped is None:
        return DEFAULT_SEVERITY, f"priority {said}", f"Falco priority {said!r} is not mapped -> medium"
    return mapped, f"priority {said}", f"Falco priority {said} -> {mapped}"


def _time(value: Any, event_time: Any) -> tuple[datetime, str | None]:
    """The event's time, and a note when it came from ``evt.time`` rather than ``time``."""
    try:
        return parse_time(value, field_name="time"), None
    except Rejected as unreadable:
        if event_time is None or isinstance(event_time, bool):
            raise
        try:
            fallback = parse_time(event_time, field_name="output_fields.evt.time")
        except Rejected:
            raise unreadable from None
        return fallback, "output_fields.evt.time (time missing or unreadable)"


def _addresses(fields: Mapping[str, Any]) -> tuple[str | None, str | None]:
    src, dst = ip_or_none(fields.get("fd.cip")), ip_or_none(fields.get("fd.sip"))
    if src or dst:
        return src, dst
    connection = CONNECTION.match(text(fields.get("fd.name")) or "")
    if connection is None:
        return None, None
    return ip_or_none(connection.group(1)), ip_or_none(connection.group(2))


def _resource(fields: Mapping[str, Any], namespace: str | None, pod: str | None) -> str | None:
    if pod:
        return f"{namespace}/{pod}" if namespace else pod
    target = [text(fields.get(f"ka.target.{part}")) for part in ("namespace", "resource", "name")]
    if any(target):
        return "/".join(part for part in target if part)
    container = first(fields.get("container.name"), fields.get("container.id"))
    return f"container/{container}" if container and container != "host" else None
