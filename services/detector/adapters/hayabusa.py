"""Hayabusa detections: Sigma (and Hayabusa) rule matches on Windows event logs, one JSON Lines record each.

**Detected by** an object with ``RuleTitle``, ``Timestamp`` and ``Level``, and ``Computer`` or
``Channel`` (every Hayabusa output profile has them: ``hayabusa json-timeline -L``).

**Identity**: ``Computer/Channel/RecordID/RuleTitle``, the event record a rule matched on one
machine's channel (a digest when longer than an id may be); ``source`` is ``hayabusa``. Running
Hayabusa again over the same logs repeats the same alerts instead of doubling them. Profiles without
``RecordID`` (``minimal``) use ``EventID`` and ``Timestamp`` in its place.

**Severity**: ``Level``, Sigma's rule level, which Hayabusa writes abbreviated:

| Level | Sigma | Vigil |
|---|---|---|
| ``info``, ``informational`` | informational | skipped: not an alert |
| ``low`` | low | low |
| ``med``, ``medium`` | medium | medium |
| ``high`` | high | high |
| ``crit``, ``critical`` | critical | critical |
| ``emer``, ``emergency`` | above critical | critical |

An informational detection is accounted as skipped, not raised: the Sigma specification defines the
level as "intended for enrichment of events ... No case or alerting should be triggered by such
rules because it is expected that a huge amount of events will match these rules" (Hayabusa's
"Proc Exec", "Logon" ... timeline entries). Any other level is refused (``invalid_fields``).

**Fields**: ``RuleTitle`` is the title and the rule; ``Details`` (an object, or Hayabusa's
``key: value ¦ ...`` text) the description; ``Computer`` the host; the details' ``SrcIP`` and
``TgtIP`` the addresses and their ``TgtUser``, ``User`` or ``SrcUser`` the user; ``MitreTags`` the
ATT&CK technique ids and ``MitreTactics`` (Hayabusa's abbreviations, e.g. ``Exec``, ``CredAccess``)
the tactic ids; ``OtherTags`` and the tactics the tags. Channel, event and record ids, rule file and
id, and the evtx file are labels. Timestamps are read in Hayabusa's default format
(``2016-08-19 08:06:57.658 +09:00``), ``--ISO-8601``, ``--RFC-3339``, ``--UTC`` and ``--RFC-2822``;
the US and European orders (``--US-time``, ``--European-time``) are ambiguous and refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from services.detector.adapters.base import (
    TACTICS,
    Parsed,
    Rejected,
    build_alert,
    first,
    identity,
    ip_or_none,
    json_object,
    string_labels,
    text,
    time_of,
)
from shared.alerts import AlertSeverity

SOURCE = "hayabusa"
LEVELS = {
    "low": AlertSeverity.LOW,
    "med": AlertSeverity.MEDIUM,
    "medium": AlertSeverity.MEDIUM,
    "high": AlertSeverity.HIGH,
    "crit": AlertSeverity.CRITICAL,
    "critical": AlertSeverity.CRITICAL,
    "emer": AlertSeverity.CRITICAL,
    "emergency": AlertSeverity.CRITICAL,
}
INFORMATIONAL = {"info", "informational"}
# Hayabusa's abbreviations of the ATT&CK tactics (its config/mitre_tactics.txt).
TACTIC_ABBREVIATIONS = {
    "recon": "reconnaissance",
    "resdev": "resourcedevelopment",
    "initaccess": "initialaccess",
    "exec": "execution",
    "persis": "persistence",
    "privesc": "privilegeescalation",
    "evas": "defenseevasion",
    "credaccess": "credentialaccess",
    "disc": "discovery",
    "latmov": "lateralmovement",
    "collect": "collection",
    "c2": "commandandcontrol",
    "exfil": "exfiltration",
    "impact": "impact",
}
USER_KEYS = ("TgtUser", "User", "SrcUser", "TargetUser", "SubjectUserName", "TargetUserName")
# Hayabusa separates a text field's items with a broken bar (and older versions with commas).
SEPARATORS = re.compile(r"\s*[¦,]\s*")


class Hayabusa:
    name = "hayabusa"
    description = "Hayabusa JSON/JSONL timelines: Sigma rule matches on Windows event logs."

    def matches(self, payload: Any) -> bool:
        return (
            isinstance(payload, dict)
            and isinstance(payload.get("RuleTitle"), str)
            and "Timestamp" in payload
            and "Level" in payload
            and ("Computer" in payload or "Channel" in payload)
        )

    def parse(self, payload: Any) -> Parsed:
        payload = json_object(payload, "a Hayabusa detection")
        title = text(payload.get("RuleTitle"))
        level = text(payload.get("Level"))
        if level is None:
            raise Rejected("the Hayabusa detection has no Level", code="missing_fields")
        if level.lower() in INFORMATIONAL:
            return Parsed(
                format=self.name,
                skipped=[
                    f"Hayabusa {title!r} on {text(payload.get('Computer')) or 'an unnamed computer'}: informational "
                    "(Sigma: enrichment, no alerting)"
                ],
            )
        severity = LEVELS.get(level.lower())
        if severity is None:
            raise Rejected(f"Level {level!r} is not a Sigma or Hayabusa level", code="invalid_fields")
        details = _details(payload.get("Details"))
        computer, channel, record = (text(payload.get(k)) for k in ("Computer", "Channel", "RecordID"))
        where = record if record is not None else f"{text(payload.get('EventID'))}@{text(payload.get('Timestamp'))}"
        tactics = _items(payload.get("MitreTactics"))
        alert = build_alert(
            id=identity(computer, channel, where, title),
            source=SOURCE,
            title=title,
            description=_describe(payload.get("Details"), details),
            severity=severity,
            time=time_of(payload, "Timestamp", what="the Hayabusa detection"),
            host=computer,
            user=first(*(details.get(k) for k in USER_KEYS)),
            src_ip=ip_or_none(details.get("SrcIP")),
            dst_ip=ip_or_none(first(details.get("TgtIP"), details.get("DstIP"))),
            labels=string_labels(
                {
                    "channel": channel,
                    "event_id": payload.get("EventID"),
                    "record_id": record,
                    "rule_file": payload.get("RuleFile"),
                    "rule_id": payload.get("RuleID"),
                    "rule_author": payload.get("RuleAuthor"),
                    "rule_status": payload.get("Status"),
                    "provider": payload.get("Provider"),
                    "evtx_file": payload.get("EvtxFile"),
                }
            ),
            raw=dict(payload),
            format=self.name,
            rule=title,
            tags=[*tactics, *_items(payload.get("OtherTags"))],
            techniques=_techniques(payload.get("MitreTags"), tactics),
            source_severity=f"Hayabusa level {level}",
            severity_reason=f"Hayabusa level {level} -> {severity.value}",
        )
        return Parsed(format=self.name, alerts=[alert])


def _items(value: Any) -> list[str]:
    """A list field's items: a JSON list, or Hayabusa's "a ¦ b" text."""
    values = value if isinstance(value, list) else [value]
    found: list[str] = []
    for item in values:
        if (t := text(item)) is not None:
            found += [part for part in SEPARATORS.split(t) if part]
    return found


def _techniques(tags: Any, tactics: list[str]) -> list[str]:
    found = {m.upper() for t in _items(tags) for m in re.findall(r"\b[Tt]\d{4}(?:\.\d{3})?\b", t)}
    for tactic in tactics:
        key = re.sub(r"[^a-z0-9]", "", tactic.lower())
        name = TACTIC_ABBREVIATIONS.get(key, key)
        if name in TACTICS:
            found.add(TACTICS[name])
    return sorted(found)


def _details(value: Any) -> dict[str, Any]:
    """The Details as a mapping: Hayabusa writes an object in JSON, "Key: value ¦ Key: value" in text."""
    if isinstance(value, dict):
        return dict(value)
    found: dict[str, Any] = {}
    for part in re.split(r"\s*¦\s*", text(value) or ""):
        key, colon, rest = part.partition(":")
        if colon and key.strip():
            found[key.strip()] = rest.strip()
    return found


def _describe(raw: Any, details: Mapping[str, Any]) -> str:
    if isinstance(raw, dict):
        return "\n".join(f"{key}: {t}" for key, value in details.items() if (t := text(value)) is not None)
    return text(raw) or ""
