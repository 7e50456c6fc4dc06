"""Suricata's EVE JSON (``eve.json``): an ``alert`` event becomes an alert; every other event is skipped.

Every EVE record has ``timestamp`` and ``event_type`` and, for most types, an object named after
its type (``"alert": {…}``, ``"flow": {…}``, ``"stats": {…}``); that is how it is recognised.
Records of other types (flow, netflow, dns, http, tls, fileinfo, anomaly, stats, drop, …) are
network metadata, not alerts: each is skipped with the reason ``suricata <type> event: not an
alert``.

Where each field of an alert comes from:

- ``id`` (deduplication): ``<flow_id>:<signature_id>``, so a signature firing again on the same
  flow (another transaction) is a repeat of one alert; an alert without a flow (a decoder event)
  takes a hash of its time, signature, addresses, ports, packet number and sensor.
- ``source``: ``suricata``; ``title`` and ``rule``: ``alert.signature``; ``category``:
  ``alert.category``.
- ``time``: ``timestamp``.
- ``src_ip`` / ``dst_ip``: ``src_ip`` / ``dest_ip``, as Suricata wrote them for the packet.
- ``host``: the sensor's name (``host``, set by ``sensor-name``) only for an alert without
  addresses. Suricata's ``host`` is the sensor that saw the traffic, not the machine the alert is
  about: an alert with addresses is about them (the entity that correlates it is ``dest_ip``,
  else ``src_ip``), and the sensor is kept as label ``sensor``, with ``in_iface``.
- ``techniques``: ATT&CK ids in ``alert.metadata`` (``mitre_technique_id``, ``mitre_tactic_id``),
  and tactics named in ``mitre_tactic_name``; ``tags``: ``alert.metadata.tag``.
- ``description``: the signature, category, the five-tuple and application protocol, and the
  HTTP host and URL, DNS query or TLS SNI when the record has them.
- ``labels``: ``signature_id`` (``gid:sid:rev``), ``action``, ``proto``, ``app_proto``, ports,
  ``flow_id``, ``community_id``, ``direction``, ``sensor``, ``in_iface``, the HTTP, DNS and TLS
  names above, then every ``alert.metadata`` key as ``metadata.<key>`` (values joined by commas).

Severity, from ``alert.severity`` (Suricata's priority: 1 is the most severe):

| alert.severity | severity |
|---|---|
| 1 | high |
| 2 | medium |
| 3 | low |
| 4 and above | info |
| missing or not a positive whole number | medium (the reason says so) |

The Emerging Threats rule sets say in a signature's name when it reports something, not an attack:
an ``ET INFO`` signature (a vulnerable Java version, a ``.biz`` lookup) is read as info and an ``ET
POLICY`` one (an outbound curl User-Agent, a P2P client), like ``CHAT``, ``GAMES`` and ``P2P``, as
low at most, whatever the priority of the classtype they borrow; the reason says so.

**Tests**: the signature the public IDS test sites exist to fire (sid 2100498, "GPL ATTACK_RESPONSE
id check returned root"), on traffic to one of them (``testmyids.com``, tmNIDS' ``testmynids.org``, by
HTTP host, DNS name or TLS SNI), is a test (kind ``test``): it checks the sensor, and never opens a
SEV1 or SEV2 incident. Any other signature on such traffic stays an alert: the names are the
sender's to choose, and an attack sent with ``Host: testmyids.com`` is still an attack.
"""

from __future__ import annotations

import functools
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
    strings,
    tactic_id,
    techniques_in,
    text,
)

SEVERITIES = {1: "high", 2: "medium", 3: "low"}
# Emerging Threats categories that report rather than detect, and the most severe each is read as.
RANK = ("info", "low", "medium", "high")
REPORTING = (("INFO", "info"), ("POLICY", "low"), ("CHAT", "low"), ("GAMES", "low"), ("P2P", "low"))
ET_PREFIXES = ("ET ", "ETPRO ", "GPL ")
# Public sites that exist to make IDS signatures fire (testmyids.com; tmNIDS, testmynids.org), and the
# signature they answer with ("uid=0(root)" in the page).
TEST_SITES = ("testmyids.com", "testmynids.org")
TEST_SIGNATURES = frozenset({"2100498"})
LOWEST = "info"  # 4 and above
DEFAULT_SEVERITY = "medium"
# A signature's metadata longer than this (characters) is read for each alert rather than remembered.
MAX_REMEMBERED_METADATA = 4096
# Application-layer names worth reading in the description, as (label, EVE path).
NAMES = (
    ("http.hostname", "http.hostname"),
    ("http.url", "http.url"),
    ("dns.rrname", "dns.rrname"),
    ("dns.query", "dns.queries"),
    ("tls.sni", "tls.sni"),
)


class Suricata:
    name = "suricata"
    description = "Suricata EVE JSON: alert events become alerts; flow, dns, http, stats and others are skipped."

    def matches(self, payload: Any) -> bool:
        if not isinstance(payload, dict) or "timestamp" not in payload:
            return False
        event_type = payload.get("event_type")
        return isinstance(event_type, str) and (
            isinstance(payload.get(event_type), Mapping) or "flow_id" in payload or "src_ip" in payload
        )

    def parse(self, payload: Any) -> Parsed:
        if not isinstance(payload, dict):
            raise Rejected("a Suricata EVE record is a JSON object", code="invalid_fields")
        event_type = text(payload.get("event_type"))
        if event_type is None:
            raise Rejected("the EVE record has no event_type", code="missing_fields")
        if event_type != "alert":
            return Parsed(format=self.name, skipped=[f"suricata {event_type[:60]} event: not an alert"])
        alert = payload.get("alert")
        if not isinstance(alert, dict):
            raise Rejected("the EVE alert event has no 'alert' object", code="missing_fields")
        signature = text(alert.get("signature"))
        sid = text(alert.get("signature_id"))
        if signature is None and sid is None:
            raise Rejected("the EVE alert names no signature nor signature_id", code="missing_fields")
        metadata = mapping(alert.get("metadata"))
        metadata_labels, techniques = _metadata(metadata)
        src_ip, dst_ip = ip_or_none(payload.get("src_ip")), ip_or_none(payload.get("dest_ip"))
        sensor = text(payload.get("host"))
        severity, said, reason = _reporting(signature, *_severity(alert.get("severity")))
        flow_id = text(payload.get("flow_id"))
        names = {label: ", ".join(_names(payload, path)) for label, path in NAMES}
        tested = sid in TEST_SIGNATURES and _test_site(names)
        labels = {
            "signature_id": ":".join(t for t in (text(alert.get("gid")), sid, text(alert.get("rev"))) if t),
            "action": text(alert.get("action")),
            "proto": text(payload.get("proto")),
            "app_proto": text(payload.get("app_proto")),
            "src_port": text(payload.get("src_port")),
            "dest_port": text(payload.get("dest_port")),
            "flow_id": flow_id,
            "community_id": text(payload.get("community_id")),
            "direction": text(payload.get("direction")),
            "sensor": sensor,
            "in_iface": text(payload.get("in_iface")),
            **names,
            **metadata_labels,
        }
        built = build_alert(
            id=short_id(f"{flow_id}:{sid}") if flow_id and sid else _flowless_id(payload, alert),
            source="suricata",
            title=signature or f"Suricata signature {sid}",
            description=_description(payload, alert, names),
            severity=severity,
            source_severity=said,
            severity_reason=reason,
            time=parse_time(payload.get("timestamp"), field_name="timestamp"),
            kind="test" if tested else "alert",
            rule=signature,
            category=text(alert.get("category")),
            src_ip=src_ip,
            dst_ip=dst_ip,
            host=sensor if not (src_ip or dst_ip) else None,
            tags=strings(metadata.get("tag")),
            techniques=list(techniques),
            labels={k: v for k, v in labels.items() if v},
            raw=dict(payload),
            format=self.name,
        )
        return Parsed(format=self.name, alerts=[built])


def _severity(value: Any) -> tuple[str, str | None, str]:
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip().isdigit():
        shown = None if value is None else f"severity {value!r}"
        return DEFAULT_SEVERITY, shown, f"Suricata alert severity {value!r} is not a priority number -> medium"
    number = int(str(value).strip())
    if number < 1:
        return DEFAULT_SEVERITY, f"severity {number}", f"Suricata alert severity {number} is below 1 -> medium"
    mapped = SEVERITIES.get(number, LOWEST)
    return mapped, f"severity {number}", f"Suricata alert severity {number} (1 is the most severe) -> {mapped}"


def _reporting(signature: str | None, severity: str, said: str | None, reason: str) -> tuple[str, str | None, str]:
    """An Emerging Threats signature that reports (INFO, POLICY, ...) is read no more severe than it says."""
    if signature is None or not signature.startswith(ET_PREFIXES):
        return severity, said, reason
    category = signature.split(" ", 2)[1] if signature.count(" ") else ""
    for name, highest in REPORTING:
        if category == name and RANK.index(severity) > RANK.index(highest):
            return highest, said, f"{reason}; an ET {name} signature reports, it does not detect an attack -> {highest}"
    return severity, said, reason


def _test_site(names: Mapping[str, str]) -> bool:
    """Whether the alert is on traffic to a public IDS test site (by HTTP host, DNS name or TLS SNI)."""
    for label in ("http.hostname", "dns.rrname", "dns.query", "tls.sni"):
        for name in names[label].lower().split(", "):
            name = name.rstrip(".")
            if any(name == site or name.endswith(f".{site}") for site in TEST_SITES):
                return True
    return False


def _flowless_id(payload: Mapping[str, Any], alert: Mapping[str, Any]) -> str:
    return stable_id(
        payload.get("timestamp"),
        alert.get("gid"),
        alert.get("signature_id"),
        payload.get("src_ip"),
        payload.get("src_port"),
        payload.get("dest_ip"),
        payload.get("dest_port"),
        payload.get("pcap_cnt"),
        payload.get("host"),
        payload.get("in_iface"),
    )


def _names(payload: Mapping[str, Any], path: str) -> list[str]:
    value = dig(payload, path)
    if path == "dns.queries":  # Suricata 8: a list of {"rrname": …}
        return [t for q in value if (t := text(dig(q, "rrname")))] if isinstance(value, list) else []
    return strings(value)


def _metadata(metadata: Mapping[str, Any]) -> tuple[dict[str, str], tuple[str, ...]]:
    """The labels and ATT&CK ids of an alert's metadata: a signature's, the same in each of its alerts."""
    # Suricata's metadata is lists of text by key: such a one is remembered (keyed by its content,
    # in order: the labels keep it); anything else is read each time.
    key: list[tuple[str, tuple[str, ...]]] = []
    texts: list[Any] = []
    for name, values in metadata.items():
        if type(values) is not list:
            return _read_metadata(metadata)
        key.append((name, tuple(values)))
        texts.append(name)
        texts.extend(values)
    if set(map(type, texts)) - {str} or sum(map(len, texts)) > MAX_REMEMBERED_METADATA:
        return _read_metadata(metadata)
    labels, techniques = _remembered_metadata(tuple(key))
    return dict(labels), techniques


def _read_metadata(metadata: Mapping[str, Any]) -> tuple[dict[str, str], tuple[str, ...]]:
    labels = {f"metadata.{k}": ",".join(strings(v)) for k, v in metadata.items()}
    return labels, tuple(_techniques(metadata))


@functools.lru_cache(maxsize=1024)
def _remembered_metadata(
    key: tuple[tuple[str, tuple[str, ...]], ...],
) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    labels, techniques = _read_metadata({name: list(values) for name, values in key})
    return tuple(labels.items()), techniques


def _techniques(metadata: Mapping[str, Any]) -> list[str]:
    ids = techniques_in(v for k, values in metadata.items() if "mitre" in str(k).lower() for v in strings(values))
    tactics = (tactic_id(name) for name in strings(metadata.get("mitre_tactic_name")))
    return [*ids, *(t for t in tactics if t)]


def _description(payload: Mapping[str, Any], alert: Mapping[str, Any], names: dict[str, str]) -> str:
    src = first(payload.get("src_ip"))
    dst = first(payload.get("dest_ip"))
    lines = [
        text(alert.get("signature")),
        f"Category: {text(alert.get('category'))}" if alert.get("category") else None,
    ]
    if src or dst:
        ports = (text(payload.get("src_port")), text(payload.get("dest_port")))
        ends = [f"{ip}:{port}" if port else ip for ip, port in zip((src or "?", dst or "?"), ports, strict=True)]
        lines.append(f"{text(payload.get('proto')) or 'IP'} {ends[0]} -> {ends[1]}")
    if app_proto := text(payload.get("app_proto")):
        lines.append(f"Application protocol: {app_proto}")
    if names["http.hostname"] or names["http.url"]:
        lines.append(f"HTTP: {names['http.hostname']}{names['http.url']}")
    for label, shown in (("dns.rrname", "DNS name"), ("dns.query", "DNS query"), ("tls.sni", "TLS SNI")):
        if names[label]:
            lines.append(f"{shown}: {names[label]}")
    return "\n".join(line for line in lines if line)
