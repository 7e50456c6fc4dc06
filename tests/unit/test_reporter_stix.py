"""The STIX 2.1 export of an incident's indicators: patterns, what is never shared, verdicts, TLP markings,
deterministic ids, and what stix2's strict parser and Vigil's own STIX feed import make of it."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any

import pytest
import stix2

from services.analyzer.intel import FeedDefaults, indicator_key, parse_stix
from services.reporter.stix import (
    MIN_VERDICTS,
    TLP_LEVELS,
    TLP_MARKINGS,
    MinVerdict,
    TlpLevel,
    indicator_bundle,
    pattern,
)
from shared.events import Analysis, AttackTactic, AttackTechnique, IncidentType, Indicator, Severity
from tests.factories import T0

SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
SHA1 = "da39a3ee5e6b4b0d3255bfef95601890afd80709"
MD5 = "d41d8cd98f00b204e9800998ecf8427e"


def _indicator(kind: str, value: str, verdict: str | None = "malicious", **fields: Any) -> Indicator:
    return Indicator.model_validate(
        {
            "kind": kind,
            "value": value,
            "verdict": verdict,
            "first_seen": T0 + timedelta(minutes=1),
            "last_seen": T0 + timedelta(minutes=20),
            "count": 3,
            **fields,
        }
    )


PUBLIC = [
    _indicator("ipv4", "203.0.113.9", confidence=90, feeds=["abuse"], tags=["Cobalt Strike", "c2"]),
    _indicator("ipv6", "2001:db8:1::9", confidence=70),
    _indicator("domain", "evil.example.net", "suspicious", confidence=60, tags=["phishing"]),
    _indicator("url", "https://evil.example.net/drop/payload.exe", confidence=80),
    _indicator("md5", MD5),
    _indicator("sha1", SHA1),
    _indicator("sha256", SHA256, confidence=100, tags=["LockBit"]),
    _indicator("email", "billing@evil.example.net", "suspicious"),
]
NOT_SHARED = [
    _indicator("ipv4", "10.0.0.5"),  # private
    _indicator("ipv4", "127.0.0.1"),  # loopback
    _indicator("ipv4", "169.254.10.1"),  # link-local
    _indicator("ipv4", "100.64.3.2"),  # shared address space
    _indicator("ipv6", "fd00::5"),  # unique local
    _indicator("ipv6", "::1"),
    _indicator("ipv4", "198.51.100.77", internal=True),  # the analyzer said internal
    _indicator("domain", "fs01.corp"),
    _indicator("domain", "printer.local"),
    _indicator("url", "http://10.1.2.3/admin"),
    _indicator("url", "http://wiki.intranet/page"),
    _indicator("email", "it@mail.internal"),
]
UNLISTED = [
    _indicator("ipv4", "192.0.2.44", "benign-listed", confidence=95),
    _indicator("domain", "cdn.example.org", None),
]


def _analysis(indicators: list[Indicator], **overrides: Any) -> dict[str, Any]:
    analysis = Analysis(
        type=IncidentType.SYSTEM_COMPROMISE,
        severity=Severity.SEV1,
        title="Reverse shell on db-01",
        indicators=indicators,
        affected_hosts=["db-01"],
        affected_users=[],
        alert_count=5,
        summary="reverse shell to 203.0.113.9",
        techniques=[
            AttackTechnique(
                id="T1059.004",
                name="Command and Scripting Interpreter: Unix Shell",
                tactics=["TA0002"],
                alerts=2,
                first_seen=T0,
                first_alert="k1",
            ),
            AttackTechnique(
                id="T1071",
                name="Application Layer Protocol",
                tactics=["TA0011"],
                alerts=1,
                first_seen=T0,
                first_alert="k2",
            ),
        ],
        tactics=[
            AttackTactic(id="TA0002", name="Execution", stage=5, first_seen=T0, stated=False),
            AttackTactic(id="TA0011", name="Command and Control", stage=12, first_seen=T0, stated=False),
        ],
        **overrides,
    )
    return analysis.model_dump(mode="json")  # as the reporter stores it (services/reporter/handlers.py)


def _incident(indicators: list[Indicator] | None = None, **overrides: Any) -> dict[str, Any]:
    incident: dict[str, Any] = {
        "id": "inc-1",
        "title": "Reverse shell on db-01",
        "type": "system_compromise",
        "severity": "SEV1",
        "state": "contained",
        "created_at": T0 + timedelta(seconds=30),
        "first_alert_at": T0,
        "updated_at": T0 + timedelta(hours=2),
        "analysis": _analysis(PUBLIC + NOT_SHARED + UNLISTED if indicators is None else indicators),
    }
    incident.update(overrides)
    return incident


def _of_type(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [o for o in bundle["objects"] if o["type"] == kind]


def _patterns(bundle: dict[str, Any]) -> set[str]:
    return {o["pattern"] for o in _of_type(bundle, "indicator")}


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("ipv4", "203.0.113.9", "[ipv4-addr:value = '203.0.113.9']"),
        ("ipv6", "2001:DB8:1::9", "[ipv6-addr:value = '2001:db8:1::9']"),
        ("ipv6", "::ffff:203.0.113.9", "[ipv4-addr:value = '203.0.113.9']"),  # IPv4 written as IPv6
        ("domain", "Evil.Example.NET.", "[domain-name:value = 'evil.example.net']"),
        ("url", "https://evil.example.net/a?b=1", "[url:value = 'https://evil.example.net/a?b=1']"),
        ("url", "http://evil.example.net/it's\\here", "[url:value = 'http://evil.example.net/it\\'s\\\\here']"),
        ("url", "http://203.0.113.9/x", "[url:value = 'http://203.0.113.9/x']"),
        ("url", "http://8.8/x", "[url:value = 'http://8.8/x']"),  # 8.0.0.8, a public address written short
        ("md5", MD5.upper(), f"[file:hashes.MD5 = '{MD5}']"),
        ("sha1", SHA1, f"[file:hashes.'SHA-1' = '{SHA1}']"),
        ("sha256", SHA256, f"[file:hashes.'SHA-256' = '{SHA256}']"),
        ("email", "billing@evil.example.net", "[email-addr:value = 'billing@evil.example.net']"),
    ],
)
def test_each_kind_has_its_pattern(kind: str, value: str, expected: str) -> None:
    assert pattern(kind, value) == expected
    stix2.parse(  # stix2 checks the pattern's grammar
        {
            "type": "indicator",
            "spec_version": "2.1",
            "id": "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f",
            "created": "2026-11-24T09:00:00.000Z",
            "modified": "2026-11-24T09:00:00.000Z",
            "pattern": expected,
            "pattern_type": "stix",
            "valid_from": "2026-11-24T09:00:00Z",
        },
        allow_custom=False,
    )


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("md5", "not-a-hash"),
        ("sha256", SHA1),  # the wrong length for its kind
        ("ipv4", "203.0.113.0/24"),
        ("url", "not a url"),
        ("email", "nobody"),
        ("cve", "CVE-2024-3094"),
        ("domain", "fileserver"),  # one label: resolves only inside
        ("domain", "localhost"),
        # Loopback and private addresses written short, in octal or hex, as browsers and inet_aton read them.
        ("url", "http://127.1/"),
        ("url", "http://10.1/admin"),
        ("url", "http://0177.0.0.1/"),
        ("url", "http://0x7f.1:8080/"),
        ("url", "http://2130706433/"),
        ("url", "http://127.1./"),
        ("url", "http://999.1.1.1/"),  # numbers that are no address
        ("domain", "10.1"),
        ("email", "root@192.168.1"),
    ],
)
def test_what_is_not_of_its_kind_or_only_inside_has_no_pattern(kind: str, value: str) -> None:
    assert pattern(kind, value) is None


def test_internal_addresses_and_names_are_never_exported() -> None:
    bundle = indicator_bundle(_incident(), min_verdict="any")
    exported = json.dumps(bundle)
    for left_out in NOT_SHARED:
        assert left_out.value not in exported, left_out
    assert {o["name"] for o in _of_type(bundle, "indicator")} == {i.value for i in PUBLIC + UNLISTED}


@pytest.mark.parametrize(
    ("min_verdict", "shared"),
    [
        ("malicious", {i.value for i in PUBLIC if i.verdict == "malicious"}),
        ("suspicious", {i.value for i in PUBLIC}),
        ("any", {i.value for i in PUBLIC + UNLISTED}),
    ],
)
def test_min_verdict_picks_the_indicators(min_verdict: MinVerdict, shared: set[str]) -> None:
    bundle = indicator_bundle(_incident(), min_verdict=min_verdict)
    assert {o["name"] for o in _of_type(bundle, "indicator")} == shared


def test_the_default_shares_suspicious_and_worse() -> None:
    assert _patterns(indicator_bundle(_incident())) == _patterns(
        indicator_bundle(_incident(), min_verdict="suspicious")
    )


def test_an_indicator_says_what_the_analysis_knows() -> None:
    bundle = indicator_bundle(_incident(), min_verdict="any")
    by_name = {o["name"]: o for o in _of_type(bundle, "indicator")}
    address = by_name["203.0.113.9"]
    assert address["pattern"] == "[ipv4-addr:value = '203.0.113.9']"
    assert address["indicator_types"] == ["malicious-activity"]
    assert (address["valid_from"], address["created"]) == ("2026-11-24T09:01:00.000Z", "2026-11-24T09:01:00.000Z")
    assert address["modified"] == "2026-11-24T11:00:00.000Z"  # analysed after its last sighting, 09:20
    last_seen_later = _incident(updated_at=T0 + timedelta(minutes=10))  # the analysis before that sighting
    (later,) = [o for o in _of_type(indicator_bundle(last_seen_later), "indicator") if o["name"] == "203.0.113.9"]
    assert later["modified"] == "2026-11-24T09:20:00.000Z"
    assert (address["confidence"], address["labels"]) == (90, ["Cobalt Strike", "c2"])
    assert "abuse" not in json.dumps(bundle)  # which feeds list it is Vigil's business, not the reader's
    assert by_name["evil.example.net"]["indicator_types"] == ["anomalous-activity"]
    assert by_name["192.0.2.44"]["indicator_types"] == ["benign"]
    assert by_name["cdn.example.org"]["indicator_types"] == ["unknown"]
    assert "confidence" not in by_name["cdn.example.org"] and "labels" not in by_name["cdn.example.org"]
    producer = _of_type(bundle, "identity")
    assert [(p["name"], p["identity_class"]) for p in producer] == [("Vigil", "system")]
    made_by_vigil = [o for o in bundle["objects"] if o["type"] not in ("identity", "marking-definition")]
    assert all(o["created_by_ref"] == producer[0]["id"] for o in made_by_vigil)


def test_techniques_are_attack_patterns_the_indicators_indicate() -> None:
    bundle = indicator_bundle(_incident([PUBLIC[0], PUBLIC[6]]))
    patterns = {o["name"]: o for o in _of_type(bundle, "attack-pattern")}
    shell = patterns["Command and Scripting Interpreter: Unix Shell"]
    assert shell["external_references"] == [
        {
            "source_name": "mitre-attack",
            "external_id": "T1059.004",
            "url": "https://attack.mitre.org/techniques/T1059/004/",
        }
    ]
    assert shell["kill_chain_phases"] == [{"kill_chain_name": "mitre-attack", "phase_name": "execution"}]
    assert patterns["Application Layer Protocol"]["kill_chain_phases"][0]["phase_name"] == "command-and-control"
    relationships = _of_type(bundle, "relationship")
    indicators = {o["id"] for o in _of_type(bundle, "indicator")}
    assert {(r["relationship_type"], r["source_ref"], r["target_ref"]) for r in relationships} == {
        ("indicates", i, p["id"]) for i in indicators for p in patterns.values()
    }
    (report,) = _of_type(bundle, "report")
    assert set(report["object_refs"]) == indicators | {p["id"] for p in patterns.values()} | {
        r["id"] for r in relationships
    }
    assert report["name"] == "Reverse shell on db-01"
    assert report["external_references"] == [{"source_name": "vigil", "external_id": "inc-1"}]
    assert (report["created"], report["published"]) == ("2026-11-24T09:00:30.000Z", "2026-11-24T11:00:00.000Z")
    assert report["labels"] == ["severity:SEV1", "type:system_compromise"]


@pytest.mark.parametrize("tlp", TLP_LEVELS)
def test_the_chosen_tlp_2_marks_everything_about_the_incident(tlp: TlpLevel) -> None:
    bundle = indicator_bundle(_incident(), tlp=tlp)
    (marking,) = _of_type(bundle, "marking-definition")
    assert marking["id"] == TLP_MARKINGS[tlp]
    assert marking["name"] == f"TLP:{tlp.upper()}"
    assert marking["extensions"] == {
        "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d": {
            "extension_type": "property-extension",
            "tlp_2_0": tlp,
        }
    }
    for o in bundle["objects"]:
        if o["type"] in ("indicator", "relationship", "report"):
            assert o["object_marking_refs"] == [TLP_MARKINGS[tlp]], o["id"]
        else:  # Vigil itself, ATT&CK's public techniques and the marking say nothing of the incident
            assert "object_marking_refs" not in o, o["id"]


def test_the_default_marking_is_amber() -> None:
    (marking,) = _of_type(indicator_bundle(_incident()), "marking-definition")
    assert marking["id"] == "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421"


def test_the_same_export_twice_is_the_same_bundle() -> None:
    first = indicator_bundle(_incident(), min_verdict="any", tlp="green")
    again = indicator_bundle(_incident(), min_verdict="any", tlp="green")
    assert json.dumps(first) == json.dumps(again)
    assert first["id"].startswith("bundle--")
    ids = [o["id"] for o in first["objects"]]
    assert len(ids) == len(set(ids))
    # Another marking or incident is another object; the producer and ATT&CK's techniques are the same.
    other = indicator_bundle(_incident(id="inc-2"), min_verdict="any", tlp="green")
    red = indicator_bundle(_incident(), min_verdict="any", tlp="red")
    for changed in (other, red):
        assert not {o["id"] for o in _of_type(first, "indicator")} & {o["id"] for o in _of_type(changed, "indicator")}
        assert _of_type(changed, "identity") == _of_type(first, "identity")
        assert _of_type(changed, "attack-pattern") == _of_type(first, "attack-pattern")
        assert changed["id"] != first["id"]


def test_a_changed_incident_is_a_newer_version_of_the_same_objects() -> None:
    before = indicator_bundle(_incident())
    later = _indicator("ipv4", "203.0.113.9", last_seen=T0 + timedelta(hours=1), confidence=95)
    after = indicator_bundle(_incident([later, *PUBLIC[1:]], updated_at=T0 + timedelta(hours=3)))
    (old_report,), (new_report,) = _of_type(before, "report"), _of_type(after, "report")
    assert new_report["id"] == old_report["id"] and new_report["modified"] > old_report["modified"]
    old = {o["name"]: o for o in _of_type(before, "indicator")}["203.0.113.9"]
    new = {o["name"]: o for o in _of_type(after, "indicator")}["203.0.113.9"]
    assert new["id"] == old["id"] and new["modified"] > old["modified"] and new["confidence"] == 95


def test_an_indicator_judged_again_with_no_new_sighting_is_a_newer_version() -> None:
    """Feeds keep the first object of an id and ``modified`` they got: a verdict, confidence or tags that
    changed when the analysis ran again make a newer ``modified``, never earlier than ``created``."""
    seen = _indicator("ipv4", "203.0.113.9", verdict="suspicious", confidence=40, last_seen=T0 + timedelta(minutes=5))
    judged = _indicator("ipv4", "203.0.113.9", confidence=95, last_seen=T0 + timedelta(minutes=5))
    (before,) = _of_type(indicator_bundle(_incident([seen], updated_at=T0 + timedelta(minutes=10))), "indicator")
    (after,) = _of_type(indicator_bundle(_incident([judged], updated_at=T0 + timedelta(hours=1))), "indicator")
    assert after["id"] == before["id"] and after["indicator_types"] != before["indicator_types"]
    assert after["modified"] > before["modified"] >= before["created"]
    (early,) = _of_type(indicator_bundle(_incident([seen], updated_at=T0 - timedelta(days=1))), "indicator")
    assert (early["created"], early["modified"]) == ("2026-11-24T09:01:00.000Z", "2026-11-24T09:05:00.000Z")


def test_one_value_named_twice_is_shared_once() -> None:
    bundle = indicator_bundle(_incident([PUBLIC[0], _indicator("ipv6", "::ffff:203.0.113.9")]))
    assert [o["name"] for o in _of_type(bundle, "indicator")] == ["203.0.113.9"]


def test_times_keep_their_precision() -> None:
    precise = _indicator("ipv4", "203.0.113.9", first_seen=T0 + timedelta(microseconds=123456))
    (made,) = _of_type(indicator_bundle(_incident([precise])), "indicator")
    assert made["valid_from"] == "2026-11-24T09:00:00.123456Z"


def test_an_incident_with_nothing_to_share_is_still_a_valid_bundle() -> None:
    incident = _incident(NOT_SHARED)
    incident["analysis"]["techniques"] = []
    bundle = indicator_bundle(incident)
    (producer,), (report,) = _of_type(bundle, "identity"), _of_type(bundle, "report")
    assert report["object_refs"] == [producer["id"]]
    assert not _of_type(bundle, "indicator")
    stix2.parse(bundle, allow_custom=False)
    # Nor does an incident not analysed yet fail.
    stix2.parse(indicator_bundle(_incident(analysis=None)), allow_custom=False)


@pytest.mark.parametrize("tlp", TLP_LEVELS)
@pytest.mark.parametrize("min_verdict", MIN_VERDICTS)
def test_stix2_parses_the_bundle_strictly(min_verdict: MinVerdict, tlp: TlpLevel) -> None:
    bundle = indicator_bundle(_incident(), min_verdict=min_verdict, tlp=tlp)
    parsed = stix2.parse(json.dumps(bundle), allow_custom=False, version="2.1")
    assert [o.id for o in parsed.objects] == [o["id"] for o in bundle["objects"]]
    # stix2's own serialisation says the same as Vigil's: no property dropped or changed (times as times).
    assert _times(json.loads(parsed.serialize())) == _times(bundle)


def _times(value: Any) -> Any:
    """JSON with its STIX timestamps as datetimes: stix2 writes ``.000Z`` as ``Z`` outside created/modified."""
    if isinstance(value, dict):
        return {k: _times(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_times(v) for v in value]
    if isinstance(value, str) and re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", value):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value


def _seen(at: Any) -> datetime:
    return at if isinstance(at, datetime) else datetime.fromisoformat(str(at).replace("Z", "+00:00"))


def test_vigil_imports_back_what_it_exports() -> None:
    """Vigil's own STIX feed import reads the values, confidence, tags and times the analysis had."""
    malicious = [i for i in PUBLIC if i.verdict == "malicious"]
    exported = json.dumps(indicator_bundle(_incident(), min_verdict="malicious"))
    entries = parse_stix(exported)
    assert len(entries) == len(malicious)
    imported = {(e.kind, e.value): e for e in entries}
    for indicator in malicious:
        entry = imported[indicator_key(indicator.kind, indicator.value)]
        assert entry.verdict == "malicious"
        assert entry.confidence == (indicator.confidence if indicator.confidence is not None else 50)
        assert entry.tags == tuple(indicator.tags)
        assert _seen(entry.first_seen) == indicator.first_seen
        # Its version's time: the last sighting, or the analysis after it.
        assert _seen(entry.last_seen) == max(indicator.last_seen or T0, T0 + timedelta(hours=2))
        assert entry.expires_at is None


def test_vigil_imports_back_suspicious_and_benign_verdicts() -> None:
    """A STIX feed's verdict is its settings' (`verdict: suspicious`), except what it types benign."""
    exported = json.dumps(indicator_bundle(_incident(), min_verdict="any"))
    entries = parse_stix(exported, defaults=FeedDefaults(verdict="suspicious"))
    verdicts = {e.value: e.verdict for e in entries}
    assert verdicts["evil.example.net"] == verdicts["billing@evil.example.net"] == "suspicious"
    assert verdicts["192.0.2.44"] == "benign-listed"
    assert {e.value for e in entries} == {indicator_key(i.kind, i.value)[1] for i in PUBLIC + UNLISTED}
