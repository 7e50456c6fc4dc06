"""Zeek's (formerly Bro's) ``notice.log`` in JSON (``LogAscii::use_json=T``), one notice a record.

A notice has ``ts``, ``note`` (``Family::Name``, e.g. ``Scan::Port_Scan``), ``msg``, ``sub``,
``src``, ``dst``, ``p``, ``uid`` and the connection's ``id.orig_h`` / ``id.resp_h`` …, ``actions``,
``peer_descr`` (the Zeek node), ``suppress_for``. Recognised by a text ``note`` beside ``ts``;
the ``{"notice": {…}}`` wrapper that Kafka exporters (metron-bro-plugin-kafka) put around a log
line is read too.

Where each field comes from:

- ``id`` (deduplication): ``<uid>:<note>`` (the same notice on the same connection), else
  ``<fuid>:<note>`` for a file's notice, else a hash of ``ts``, ``note``, ``src``, ``dst``, ``p``,
  ``msg`` and ``sub``. Zeek suppresses a repeated notice itself (``suppress_for``): each one it
  logs is an occurrence of its own.
- ``source``: ``zeek``; ``rule``: ``note``; ``category``: the note's family (``Scan``);
  ``title``: ``msg``, else ``note``; ``description``: ``msg`` and ``sub``.
- ``time``: ``ts`` (Unix seconds, or ISO 8601 with ``LogAscii::json_timestamps``).
- ``src_ip`` / ``dst_ip``: ``src`` / ``dst``, else ``id.orig_h`` / ``id.resp_h``. Zeek names no
  host of its own (``peer_descr`` is the Zeek node, kept as label ``sensor``): the addresses are
  the entity.
- ``tags``: ``actions``; ``labels``: ``note``, ``sub``, ``p``, ``proto``, ``uid``, ``fuid``,
  ``n``, ``sensor``, ``dropped``, ``suppress_for``, ``email_dest``, the connection's ports, the
  file's MIME type and description, ``remote_location.*``.

Severity, by the note (first match wins), then raised by the notice's actions:

| note | severity |
|---|---|
| ``Heartbleed::SSL_Heartbeat_Attack_Success``, ``SSH::Login_By_Password_Guesser`` | critical |
| ``SSH::Password_Guessing``, ``FTP::Bruteforcing``, ``FTP::Site_Exec_Success`` | high |
| ``HTTP::SQL_Injection_Attacker``, ``HTTP::SQL_Injection_Victim`` | high |
| ``Signatures::Sensitive_Signature``, ``Heartbleed::SSL_Heartbeat_Attack`` | high |
| ``Software::Software_Version_Change``, ``ProtocolDetector::*_Found`` | info |
| any other of family ``Intel``, ``TeamCymruMalwareHashRegistry`` (intelligence, malware hashes) | high |
| … ``Scan``, ``Signatures``, ``Heartbleed``, ``SMTP``, ``Software``, ``SSH``, ``FTP``, ``HTTP`` | medium |
| … ``SSL`` (certificate and protocol weaknesses), ``DNS``, ``Traceroute`` | low |
| … ``Weird``, ``Conn``, ``CaptureLoss``, ``PacketFilter``, ``Notice``, ``ProtocolDetector``, ``Known`` | info |
| any other note | medium (a site's own policy raised it) |

``Notice::ACTION_PAGE`` among the actions raises the severity to at least high (the site asked
to be paged for it); ``Notice::ACTION_ALARM`` and ``Notice::ACTION_EMAIL`` to at least medium.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.detector.adapters.base import (
    Parsed,
    Rejected,
    build_alert,
    dig,
    first,
    ip_or_none,
    mapping,
    parse_time,
    short_id,
    stable_id,
    string_labels,
    strings,
    text,
)
from shared.alerts import AlertSeverity

NOTES = {
    **dict.fromkeys(("Heartbleed::SSL_Heartbeat_Attack_Success", "SSH::Login_By_Password_Guesser"), "critical"),
    **dict.fromkeys(
        (
            "SSH::Password_Guessing",
            "FTP::Bruteforcing",
            "FTP::Site_Exec_Success",
            "HTTP::SQL_Injection_Attacker",
            "HTTP::SQL_Injection_Victim",
            "Signatures::Sensitive_Signature",
            "Heartbleed::SSL_Heartbeat_Attack",
        ),
        "high",
    ),
    **dict.fromkeys(
        ("Software::Software_Version_Change", "ProtocolDetector::Protocol_Found", "ProtocolDetector::Server_Found"),
        "info",
    ),
}
FAMILIES = {
    **dict.fromkeys(("Intel", "TeamCymruMalwareHashRegistry"), "high"),
    **dict.fromkeys(("Scan", "Signatures", "Heartbleed", "SMTP", "Software", "SSH", "FTP", "HTTP"), "medium"),
    **dict.fromkeys(("SSL", "DNS", "Traceroute"), "low"),
    **dict.fromkeys(("Weird", "Conn", "CaptureLoss", "PacketFilter", "Notice", "ProtocolDetector", "Known"), "info"),
}
DEFAULT_SEVERITY = "medium"
# Actions a site attaches to notices it cares about: the least severity each implies.
ACTION_FLOORS = {"Notice::ACTION_PAGE": "high", "Notice::ACTION_ALARM": "medium", "Notice::ACTION_EMAIL": "medium"}
WRAPPER = "notice"
LABELS = (
    ("note", "note"),
    ("sub", "sub"),
    ("p", "p"),
    ("proto", "proto"),
    ("uid", "uid"),
    ("fuid", "fuid"),
    ("n", "n"),
    ("sensor", "peer_descr"),
    ("dropped", "dropped"),
    ("suppress_for", "suppress_for"),
    ("email_dest", "email_dest"),
    ("id.orig_p", "id.orig_p"),
    ("id.resp_p", "id.resp_p"),
    ("file_mime_type", "file_mime_type"),
    ("file_desc", "file_desc"),
)


class Zeek:
    name = "zeek"
    description = 'Zeek notice.log JSON: note, msg, src, dst, ts (also inside a {"notice": …} wrapper).'

    def matches(self, payload: Any) -> bool:
        notice = _unwrap(payload)
        return isinstance(notice, dict) and isinstance(notice.get("note"), str) and "ts" in notice

    def parse(self, payload: Any) -> Parsed:
        notice = _unwrap(payload)
        if not isinstance(notice, dict):
            raise Rejected("a Zeek notice is a JSON object", code="invalid_fields")
        note = text(notice.get("note"))
        if note is None:
            raise Rejected("the Zeek notice has no note", code="missing_fields")
        msg = text(notice.get("msg"))
        actions = strings(notice.get("actions"))
        severity, reason = _severity(note, actions)
        labels = {label: text(dig(notice, path)) for label, path in LABELS}
        labels["actions"] = ",".join(actions) or None
        alert = build_alert(
            id=_id(notice, note),
            source="zeek",
            title=msg or note,
            description="\n".join(t for t in (msg, text(notice.get("sub"))) if t),
            severity=severity,
            source_severity=f"note {note}",
            severity_reason=reason,
            time=parse_time(notice.get("ts"), field_name="ts"),
            rule=note,
            category=note.split("::", 1)[0] if "::" in note else None,
            src_ip=ip_or_none(first(notice.get("src"), dig(notice, "id.orig_h"))),
            dst_ip=ip_or_none(first(notice.get("dst"), dig(notice, "id.resp_h"))),
            tags=actions,
            labels={
                **{k: v for k, v in labels.items() if v},
                **string_labels(mapping(notice.get("remote_location")), prefix="remote_location."),
            },
            raw=dict(payload),
            format=self.name,
        )
        return Parsed(format=self.name, alerts=[alert])


def _unwrap(payload: Any) -> Any:
    if isinstance(payload, dict) and len(payload) == 1 and isinstance(payload.get(WRAPPER), Mapping):
        return payload[WRAPPER]
    return payload


def _id(notice: Mapping[str, Any], note: str) -> str:
    for key in ("uid", "fuid"):
        if (found := text(notice.get(key))) is not None:
            return short_id(f"{found}:{note}")
    parts = ("ts", "note", "src", "dst", "p", "msg", "sub")
    return stable_id(*(text(notice.get(k)) for k in parts))


def _severity(note: str, actions: list[str]) -> tuple[str, str]:
    family = note.split("::", 1)[0]
    if note in NOTES:
        severity, why = NOTES[note], f"Zeek note {note}"
    elif family in FAMILIES:
        severity, why = FAMILIES[family], f"Zeek note family {family}"
    else:
        severity, why = DEFAULT_SEVERITY, f"Zeek note {note} is not in the mapping"
    for action in actions:
        floor = ACTION_FLOORS.get(action)
        if floor is not None and AlertSeverity(floor).rank > AlertSeverity(severity).rank:
            severity, why = floor, f"{why}, raised by {action}"
    return severity, f"{why} -> {severity}"
