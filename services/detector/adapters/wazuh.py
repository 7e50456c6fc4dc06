"""Wazuh alerts, one ``alerts.json`` line each, as the manager writes them (and Filebeat or an integration ships them).

**Detected by** an object with a ``rule`` object holding ``level`` and ``description``, an ``agent``
object and a ``timestamp``.

**Identity**: the alert's ``id`` (``"<epoch>.<offset>"`` in the manager's alerts log), qualified by
``manager.name`` because each node of a Wazuh cluster numbers its own alerts: ``source`` is ``wazuh``,
``id`` is ``<manager>/<alert id>``. The same line shipped twice is a repeat. A line without ``id``
(some forwarders drop it) is identified by a digest of its timestamp, rule, agent and log.

**Severity**: ``rule.level``, read with Wazuh's rules classification
(documentation.wazuh.com, *Ruleset > Rules classification*; levels run 0-16, the table names 0-15):

| level | Wazuh's classification | Vigil |
|---|---|---|
| 0-3 | ignored, none, system low-priority notification, successful/authorised events | info |
| 4-6 | system low-priority error, user-generated error, low-relevance attack | low |
| 7-11 | "bad word", first time seen, invalid source, multiple user errors, integrity warning | medium |
| 12-14 | high-importance event, unusual error (high importance), high-importance security event | high |
| 15-16 | severe attack ("no chances of false positives") | critical |

"High importance" starts at 12 in Wazuh's own words: a burst of failed SSH logins (level 10) is
worth a look, not a page.

A level outside 0-16, or none, is refused (``invalid_fields`` / ``missing_fields``).

**Fields**: ``rule.description`` is the title, ``full_log`` the description, ``rule.id`` the rule,
``rule.groups`` the tags, ``rule.mitre.id`` and ``rule.mitre.tactic`` the ATT&CK ids; ``agent.name``
is the host; ``data.srcip``/``data.src_ip`` and ``data.dstip``/``data.dest_ip`` the addresses (the
agent's ``ip`` stands in for the destination when the log names none: it is the machine the alert is
about); ``data.dstuser``, else ``data.srcuser``, else the Windows target/subject user, the user. The
manager, decoder, location, agent id, rule level, fired-times count, compliance mappings and the
decoded ``data`` fields are kept as labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.detector.adapters.base import (
    Parsed,
    Rejected,
    attack_ids,
    band,
    build_alert,
    dig,
    first,
    identity,
    ip_or_none,
    json_object,
    mapping,
    number,
    stable_id,
    string_labels,
    strings,
    text,
    time_of,
)
from shared.alerts import AlertSeverity

SOURCE = "wazuh"
MAX_LEVEL = 16
# (highest level of the band, the band, Vigil severity), lowest band first.
LEVEL_BANDS = (
    (3, "0-3", AlertSeverity.INFO),
    (6, "4-6", AlertSeverity.LOW),
    (11, "7-11", AlertSeverity.MEDIUM),
    (14, "12-14", AlertSeverity.HIGH),
    (MAX_LEVEL, "15-16", AlertSeverity.CRITICAL),
)
COMPLIANCE = ("pci_dss", "gpg13", "gdpr", "hipaa", "nist_800_53", "tsc")


class Wazuh:
    name = "wazuh"
    description = "Wazuh alerts.json lines: rule.level 0-16, rule.description, agent, data, full_log."

    def matches(self, payload: Any) -> bool:
        if not isinstance(payload, dict):
            return False
        rule = payload.get("rule")
        return (
            isinstance(rule, dict)
            and "level" in rule
            and "description" in rule
            and isinstance(payload.get("agent"), Mapping)
            and "timestamp" in payload
        )

    def parse(self, payload: Any) -> Parsed:
        payload = json_object(payload, "a Wazuh alert")
        rule = payload.get("rule")
        if not isinstance(rule, dict):
            raise Rejected("a Wazuh alert has a rule object (rule.level, rule.description)", code="missing_fields")
        severity, source_severity, reason = level_severity(rule.get("level"))
        agent = mapping(payload.get("agent"))
        data = mapping(payload.get("data"))
        mitre = mapping(rule.get("mitre"))
        manager = dig(payload, "manager.name")
        tactics = strings(mitre.get("tactic"))
        native_id = text(payload.get("id"))
        alert_id = (
            identity(manager, native_id)
            if native_id
            else stable_id(payload.get("timestamp"), rule.get("id"), agent.get("id"), payload.get("full_log"))
        )
        alert = build_alert(
            id=alert_id,
            source=SOURCE,
            title=first(rule.get("description")) or f"Wazuh rule {text(rule.get('id')) or '(no id)'}",
            description=first(payload.get("full_log"), rule.get("description")) or "",
            severity=severity,
            time=time_of(payload, "timestamp", "@timestamp", what="the Wazuh alert"),
            host=first(agent.get("name"), dig(payload, "predecoder.hostname")),
            user=first(
                data.get("dstuser"),
                data.get("srcuser"),
                dig(data, "win.eventdata.targetUserName"),
                dig(data, "win.eventdata.subjectUserName"),
            ),
            src_ip=ip_or_none(first(data.get("srcip"), data.get("src_ip"))),
            dst_ip=ip_or_none(first(data.get("dstip"), data.get("dest_ip"), data.get("dst_ip")))
            or ip_or_none(agent.get("ip")),
            labels=_labels(payload, rule, agent, data, manager, tactics, mitre),
            raw=dict(payload),
            format=self.name,
            rule=text(rule.get("id")),
            tags=strings(rule.get("groups")),
            techniques=attack_ids([*strings(mitre.get("id")), *tactics]),
            source_severity=source_severity,
            severity_reason=reason,
        )
        return Parsed(format=self.name, alerts=[alert])


def level_severity(level: Any) -> tuple[AlertSeverity, str, str]:
    """Vigil's severity for a Wazuh rule level, with the level as Wazuh said it and the band applied."""
    if level is None:
        raise Rejected("the Wazuh alert has no rule.level", code="missing_fields")
    value = number(level)
    if value is None or not value.is_integer() or not 0 <= value <= MAX_LEVEL:
        raise Rejected(f"rule.level {level!r} is not a Wazuh level (0-{MAX_LEVEL})", code="invalid_fields")
    said = f"Wazuh level {int(value)}"
    name, severity = band(value, LEVEL_BANDS)
    return severity, said, f"{said} ({name}) -> {severity.value}"


def _labels(
    payload: Mapping[str, Any],
    rule: Mapping[str, Any],
    agent: Mapping[str, Any],
    data: Mapping[str, Any],
    manager: Any,
    tactics: list[str],
    mitre: Mapping[str, Any],
) -> dict[str, str]:
    labels = string_labels(
        {
            "manager": manager,
            "cluster_node": dig(payload, "cluster.node"),
            "decoder": first(dig(payload, "decoder.name"), dig(payload, "decoder.parent")),
            "location": payload.get("location"),
            "agent_id": agent.get("id"),
            "agent_ip": agent.get("ip"),
            "rule_level": rule.get("level"),
            "rule_firedtimes": rule.get("firedtimes"),
            "mitre_tactics": ", ".join(tactics) or None,
            "mitre_techniques": ", ".join(strings(mitre.get("technique"))) or None,
            **{name: rule.get(name) or None for name in COMPLIANCE},
        }
    )
    labels.update(string_labels(data, prefix="data."))
    return labels
