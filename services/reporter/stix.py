"""An incident's indicators as a STIX 2.1 bundle, for the threat intelligence feeds and blocklists others rely on.

Pure: from what the reporter stores of an incident (its row and the analysis on it) to plain JSON-ready
dicts; the ``stix2`` library validates them in the tests, so the reporter need not load it.

The bundle holds Vigil's ``identity``, the TLP 2.0 ``marking-definition`` the caller chose, one
``indicator`` per indicator worth sharing, an ``attack-pattern`` per ATT&CK technique with ``indicates``
relationships from each indicator, and a ``report`` that ties them to the incident. Internal addresses
and names are never exported. Ids are uuid5 over a fixed namespace and what identifies each object, and
every time comes from the incident, so the same export twice is the same bundle; a later export of a
changed incident is a newer version (``modified``) of the same objects.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from shared.addresses import is_external, unmapped

MinVerdict = Literal["malicious", "suspicious", "any"]
TlpLevel = Literal["clear", "green", "amber", "amber+strict", "red"]
MIN_VERDICTS: tuple[MinVerdict, ...] = get_args(MinVerdict)
TLP_LEVELS: tuple[TlpLevel, ...] = get_args(TlpLevel)
MEDIA_TYPE = "application/stix+json;version=2.1"

# Never change it: every exported id is derived from it, and consumers match versions by id.
NAMESPACE = uuid.UUID("90364ac2-7783-4eb1-905e-93695aabb839")
# Vigil's identity and ATT&CK's techniques say the same in every export: one fixed time keeps them one version.
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
PRODUCER = "Vigil"

# TLP 2.0 as OASIS publishes it (cti-stix-common-objects, extension-definition-specifications/tlp-2.0):
# fixed ids every consumer knows, so the definitions are copied, never made up.
TLP_EXTENSION = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d"
TLP_MARKINGS: dict[TlpLevel, str] = {
    "clear": "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
    "green": "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    "amber": "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    "amber+strict": "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
    "red": "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
}
TLP_CREATED = "2022-10-01T00:00:00.000Z"

# The verdicts each ``min_verdict`` shares; None: no feed lists the value.
SHARED_VERDICTS: dict[MinVerdict, frozenset[str | None]] = {
    "malicious": frozenset({"malicious"}),
    "suspicious": frozenset({"malicious", "suspicious"}),
    "any": frozenset({"malicious", "suspicious", "benign-listed", None}),
}
# Verdict -> STIX indicator-type-ov; Vigil's own import reads ``benign`` back as benign-listed.
INDICATOR_TYPES: dict[str | None, str] = {
    "malicious": "malicious-activity",
    "suspicious": "anomalous-activity",
    "benign-listed": "benign",
    None: "unknown",
}
# Hash kind -> the pattern's path (a hash name with a hyphen is quoted, as STIX patterning requires).
HASH_PATHS = {"md5": "file:hashes.MD5", "sha1": "file:hashes.'SHA-1'", "sha256": "file:hashes.'SHA-256'"}
HASH_LENGTHS = {"md5": 32, "sha1": 40, "sha256": 64}
# Names that only resolve inside an organisation, as the analyzer's forensics lists them (its ``internal``
# flag also covers the configured internal domains); kept here so the reporter does not load the analyzer.
INTERNAL_SUFFIXES = frozenset({"internal", "local", "localdomain", "home.arpa", "lan", "corp", "intranet", "localhost"})


def indicator_bundle(
    incident: Mapping[str, Any], *, min_verdict: MinVerdict = "suspicious", tlp: TlpLevel = "amber"
) -> dict[str, Any]:
    """The STIX 2.1 bundle of one incident's shareable indicators and ATT&CK techniques, marked ``tlp``.

    ``incident`` is the reporter's row (``id``, ``title``, ``type``, ``severity``, times) with its
    ``analysis`` as stored; ``min_verdict`` picks the indicators: ``malicious`` only, ``suspicious``
    and worse, or ``any`` (benign-listed and unlisted ones too, typed ``benign`` and ``unknown``).
    """
    incident_id = str(incident["id"])
    analysis: Mapping[str, Any] = incident.get("analysis") or {}
    created = _time(incident.get("created_at")) or _time(incident.get("first_alert_at")) or EPOCH
    changed = max(created, _time(incident.get("updated_at")) or created)
    # An indicator the analysis gives no sighting time is dated from the incident's first alert.
    began = _time(incident.get("first_alert_at")) or created
    marking = TLP_MARKINGS[tlp]
    producer = _identity()
    attack_patterns = _attack_patterns(analysis, producer=producer["id"])
    indicators: dict[str, dict[str, Any]] = {}
    for raw in analysis.get("indicators") or ():
        made = _indicator(
            raw,
            incident_id=incident_id,
            min_verdict=min_verdict,
            tlp=tlp,
            producer=producer["id"],
            default=began,
            analysed=_time(incident.get("updated_at")),
        )
        if made is not None:
            indicators.setdefault(made["id"], made)  # one value named twice is shared once
    # Every technique the incident shows, from every indicator it holds: what the analysis can say.
    relationships = [
        {
            "type": "relationship",
            "spec_version": "2.1",
            "id": _id("relationship", "indicates", i["id"], a["id"]),
            "created_by_ref": producer["id"],
            "created": i["created"],
            "modified": i["modified"],
            "relationship_type": "indicates",
            "source_ref": i["id"],
            "target_ref": a["id"],
            "description": f"Both seen in incident {incident_id}.",
            "object_marking_refs": [marking],
        }
        for i in indicators.values()
        for a in attack_patterns
    ]
    shared = [*indicators.values(), *attack_patterns, *relationships]
    report = {
        "type": "report",
        "spec_version": "2.1",
        "id": _id("report", incident_id, min_verdict, tlp),
        "created_by_ref": producer["id"],
        "created": _ts(created),
        "modified": _ts(changed),
        "name": str(incident.get("title") or f"Incident {incident_id}"),
        "description": _report_description(incident, incident_id, min_verdict, len(indicators)),
        "report_types": ["threat-report"],
        "published": _ts(changed),
        "labels": [f"{key}:{incident[key]}" for key in ("severity", "type") if incident.get(key)],
        # A report must refer to something: with nothing to share it names its producer.
        "object_refs": [o["id"] for o in shared] or [producer["id"]],
        "external_references": [{"source_name": "vigil", "external_id": incident_id}],
        "object_marking_refs": [marking],
    }
    if not report["labels"]:
        del report["labels"]
    objects = [producer, _marking(tlp), *shared, report]
    return {"type": "bundle", "id": _id("bundle", json.dumps(objects, sort_keys=True)), "objects": objects}


def pattern(kind: str, value: str) -> str | None:
    """The STIX pattern that matches one indicator; None for one never shared (internal) or not of its kind."""
    observed = _observation(kind, value)
    if observed is None:
        return None
    path, literal = observed
    escaped = literal.replace("\\", "\\\\").replace("'", "\\'")
    return f"[{path} = '{escaped}']"


def is_shareable(indicator: Mapping[str, Any], *, min_verdict: MinVerdict = "suspicious") -> bool:
    """Whether an analysis' indicator goes into the bundle: its verdict is bad enough and it is not internal."""
    if indicator.get("internal") or indicator.get("verdict") not in SHARED_VERDICTS[min_verdict]:
        return False
    return pattern(str(indicator.get("kind")), str(indicator.get("value"))) is not None


def _indicator(
    raw: Mapping[str, Any],
    *,
    incident_id: str,
    min_verdict: MinVerdict,
    tlp: TlpLevel,
    producer: str,
    default: datetime,
    analysed: datetime | None,
) -> dict[str, Any] | None:
    kind, value = str(raw.get("kind")), str(raw.get("value"))
    matcher = pattern(kind, value)
    if matcher is None or not is_shareable(raw, min_verdict=min_verdict):
        return None
    first = _time(raw.get("first_seen")) or default
    # ``modified`` is when it was last seen, or the analysis after it (the incident's row changed then; the
    # stored analysis carries no time of its own): a verdict, confidence or tags changed with no new sighting
    # is a newer version of the same id, which feeds take (STIX 2.1, 3.6). Vigil's own import reads it back as
    # the last sighting, then at most as late as that analysis.
    last = max(first, _time(raw.get("last_seen")) or first, analysed or first)
    verdict = raw.get("verdict")
    count = raw.get("count")
    seen = f"{count} alert(s)" if isinstance(count, int) else "the alerts"
    made: dict[str, Any] = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": _id("indicator", incident_id, matcher, tlp),
        "created_by_ref": producer,
        "created": _ts(first),
        "modified": _ts(last),
        "name": value,
        "description": f"Named by {seen} of incident {incident_id}.",
        "indicator_types": [INDICATOR_TYPES.get(verdict, "unknown")],
        "pattern": matcher,
        "pattern_type": "stix",
        "pattern_version": "2.1",
        "valid_from": _ts(first),
        "object_marking_refs": [TLP_MARKINGS[tlp]],
    }
    confidence = raw.get("confidence")
    if isinstance(confidence, int) and 0 <= confidence <= 100:
        made["confidence"] = confidence
    labels = list(dict.fromkeys(str(t).strip() for t in raw.get("tags") or () if str(t).strip()))
    if labels:
        made["labels"] = labels
    return made


def _attack_patterns(analysis: Mapping[str, Any], *, producer: str) -> list[dict[str, Any]]:
    """ATT&CK's techniques as attack patterns, with the kill-chain phases (tactics) they served here."""
    tactic_names = {t.get("id"): t.get("name") for t in analysis.get("tactics") or () if t.get("id")}
    made: dict[str, dict[str, Any]] = {}
    for technique in analysis.get("techniques") or ():
        technique_id = str(technique.get("id") or "")
        if not technique_id.startswith("T"):
            continue
        name = str(technique.get("name") or "")
        name = technique_id if name in ("", "unknown") else name
        phases = sorted(
            {
                str(tactic_names[t]).lower().replace(" ", "-")
                for t in technique.get("tactics") or ()
                if tactic_names.get(t)
            }
        )
        url = "https://attack.mitre.org/techniques/" + technique_id.replace(".", "/") + "/"
        pattern_object: dict[str, Any] = {
            "type": "attack-pattern",
            "spec_version": "2.1",
            "id": _id("attack-pattern", technique_id, name, *phases),
            "created_by_ref": producer,
            "created": _ts(EPOCH),
            "modified": _ts(EPOCH),
            "name": name,
            "external_references": [{"source_name": "mitre-attack", "external_id": technique_id, "url": url}],
        }
        if phases:
            pattern_object["kill_chain_phases"] = [{"kill_chain_name": "mitre-attack", "phase_name": p} for p in phases]
        made.setdefault(technique_id, pattern_object)
    return list(made.values())


def _observation(kind: str, value: str) -> tuple[str, str] | None:
    """The pattern's object path and value for an indicator; None when internal or not a valid one."""
    text = value.strip()
    if kind in ("ipv4", "ipv6"):
        address = _address(text)
        if address is None or not is_external(str(address)):
            return None
        return ("ipv4-addr:value" if address.version == 4 else "ipv6-addr:value"), str(address)
    if kind == "domain":
        name = text.lower().rstrip(".")
        return None if _internal_host(name) else ("domain-name:value", name)
    if kind == "url":
        try:
            host = urlsplit(text).hostname
        except ValueError:
            return None
        if not host or _internal_host(host):
            return None
        return "url:value", text
    if kind in HASH_PATHS:
        digest = text.lower()
        if len(digest) != HASH_LENGTHS[kind] or any(c not in "0123456789abcdef" for c in digest):
            return None
        return HASH_PATHS[kind], digest
    if kind == "email":
        local, at, domain = text.rpartition("@")
        if not at or not local or _internal_host(domain.lower().rstrip(".")):
            return None
        return "email-addr:value", text
    return None


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return unmapped(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        return None


def _internal_host(host: str) -> bool:
    """A private or reserved address, or a name that only resolves inside (one label, an internal suffix).

    A host whose last label is a number is an IPv4 address, as browsers, curl and ``inet_aton`` read it:
    ``127.1``, ``10.1``, ``0177.0.0.1`` and ``0x7f.1`` are loopback and private addresses, not names; one
    that is no address at all is refused too."""
    address = _address(host)
    if address is None:
        labels = host.lower().removesuffix(".").split(".")
        if _NUMBER.fullmatch(labels[-1]):
            address = _ipv4(labels)
            if address is None:
                return True
    if address is not None:
        return not is_external(str(address))
    if "." not in host:
        return True
    return any(host == s or host.endswith("." + s) for s in INTERNAL_SUFFIXES)


# A label of an IPv4 address in any form ``inet_aton`` takes: decimal, octal (a leading 0) or hexadecimal.
_NUMBER = re.compile(r"[0-9]+|0x[0-9a-f]*")


def _ipv4(labels: list[str]) -> ipaddress.IPv4Address | None:
    """The address of a host written in numbers (``127.1``), as ``inet_aton`` reads it; None if none."""
    # Only numbers reach it: glibc's inet_aton takes "1.2.3.4 anything" for 1.2.3.4.
    if len(labels) > 4 or not all(_NUMBER.fullmatch(label) for label in labels):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(".".join(labels)))
    except OSError:
        return None


def _identity() -> dict[str, Any]:
    return {
        "type": "identity",
        "spec_version": "2.1",
        "id": _id("identity", PRODUCER),
        "created": _ts(EPOCH),
        "modified": _ts(EPOCH),
        "name": PRODUCER,
        "description": "Vigil incident response: the indicators and techniques of the incidents it handled.",
        "identity_class": "system",
    }


def _marking(tlp: TlpLevel) -> dict[str, Any]:
    return {
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": TLP_MARKINGS[tlp],
        "created": TLP_CREATED,
        "name": f"TLP:{tlp.upper()}",
        "extensions": {TLP_EXTENSION: {"extension_type": "property-extension", "tlp_2_0": tlp}},
    }


def _report_description(incident: Mapping[str, Any], incident_id: str, min_verdict: MinVerdict, shared: int) -> str:
    what = ", ".join(str(incident[key]) for key in ("severity", "type") if incident.get(key))
    verdicts = {"malicious": "malicious", "suspicious": "malicious or suspicious", "any": "all external"}[min_verdict]
    return (
        f"Vigil incident {incident_id}" + (f" ({what})" if what else "") + f": {shared} {verdicts} indicator(s) "
        "and the ATT&CK techniques its alerts show. Internal addresses and names are left out."
    )


def _id(kind: str, *parts: str) -> str:
    return f"{kind}--{uuid.uuid5(NAMESPACE, '|'.join((kind, *parts)))}"


def _time(value: Any) -> datetime | None:
    """A stored time: a datetime from a column, or ISO 8601 text from the analysis' JSON."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        try:
            return _time(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


def _ts(at: datetime) -> str:
    """STIX's timestamp: UTC, ``Z``, milliseconds at least (``created``/``modified`` need them), no precision lost."""
    utc = at.astimezone(UTC)
    fraction = f"{utc.microsecond // 1000:03d}" if utc.microsecond % 1000 == 0 else f"{utc.microsecond:06d}"
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{fraction}Z"
