"""Forensic extraction: every field and the raw record, defanged forms, noise dropped, internal marked."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.analyzer import forensic, intel
from services.analyzer.forensic import Kind, Noise, Sighting
from services.detector import domain as detector
from services.detector.adapters import parse_record
from shared.events import AlertSummary, Indicator, Observable
from tests.factories import T0, alert

CORPUS = Path(__file__).parents[3] / "shared" / "corpus"
SHIPPED = forensic.shipped_noise()


def _summary(**overrides: Any) -> AlertSummary:
    return detector.summarise(alert(**overrides))


def _found(summary: AlertSummary, noise: Noise = SHIPPED) -> set[tuple[str, str]]:
    return {(s.kind, s.value) for s in forensic.evidence_of(summary, noise).sightings}


def _where(summary: AlertSummary, kind: str, value: str, noise: Noise = SHIPPED) -> dict[str, Sighting]:
    return {s.field: s for s in forensic.evidence_of(summary, noise).sightings if (s.kind, s.value) == (kind, value)}


def test_defanged_forms_are_refanged() -> None:
    summary = _summary(
        description="beacon to hxxps://evil[.]bad-domain[.]net/gate.php, then evil(dot)org; "
        "mail from bob[@]phish[.]co; 45.77.12[.]9",
        src_ip=None,
    )
    found = _found(summary)
    assert ("url", "https://evil.bad-domain.net/gate.php") in found
    assert ("domain", "evil.bad-domain.net") in found
    assert ("domain", "evil.org") in found
    assert ("email", "bob@phish.co") in found
    assert ("ipv4", "45.77.12.9") in found


def test_every_kind_from_the_raw_record_with_its_field() -> None:
    vm = "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/prod/providers/Microsoft.Compute/vm/web-1"
    bucket = "//storage.googleapis.com/projects/acme-prod/buckets/backups"
    raw = {
        "process": {
            "name": "powershell.exe",
            "command_line": "powershell -enc SQBFAFgA",
            "parent": {"name": "winword.exe"},
        },
        "user": {"name": "CORP\\alice"},
        "file": {"hash": {"sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}},
        "vulnerability": {"id": "cve-2021-44228"},
        "cloud": {
            "role": "arn:aws:iam::123456789012:role/Admin",
            "vm": vm,
            "bucket": bucket,
        },
        "sensor_id": "0123456789abcdef0123456789abcdef",  # a bare hex id, not an MD5
        "dst": {"ip": "45.77.12.9"},
    }
    summary = _summary(raw=raw, src_ip=None, description="")
    assert _where(summary, "process", "powershell.exe").keys() == {"raw.process.name"}
    assert _where(summary, "process", "winword.exe").keys() == {"raw.process.parent.name"}
    assert _where(summary, "command_line", "powershell -enc SQBFAFgA").keys() == {"raw.process.command_line"}
    assert _where(summary, "user", "CORP\\alice").keys() == {"raw.user.name"}
    assert _where(summary, "cve", "CVE-2021-44228").keys() == {"raw.vulnerability.id"}
    assert "raw.file.hash.sha256" in _where(
        summary, "sha256", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    )
    clouds = {v for k, v in _found(summary) if k == "cloud_resource"}
    assert clouds == {
        "arn:aws:iam::123456789012:role/Admin",
        vm,
        bucket,
    }
    assert ("md5", "0123456789abcdef0123456789abcdef") not in _found(summary)
    assert _where(summary, "ipv4", "45.77.12.9").keys() == {"raw.dst.ip"}


def test_normalised_fields_are_read_too() -> None:
    summary = _summary(
        title="Connection to 45.77.12.9",
        src_ip="10.1.2.3",
        user="mallory",
        labels={"rule.cve": "CVE-2023-4966"},
        resource="arn:aws:s3:::payroll-exports",
    )
    assert _where(summary, "ipv4", "45.77.12.9").keys() == {"title"}
    assert _where(summary, "ipv4", "10.1.2.3").keys() == {"src_ip"}
    assert _where(summary, "user", "mallory").keys() == {"user"}
    assert _where(summary, "cve", "CVE-2023-4966").keys() == {"labels.rule.cve"}
    assert _where(summary, "cloud_resource", "arn:aws:s3:::payroll-exports").keys() == {"resource"}


def test_private_and_reserved_addresses_are_kept_and_marked_internal() -> None:
    summary = _summary(
        description="from 10.0.0.5, 192.168.1.7, 100.64.3.2, 127.0.0.1, 169.254.169.254, fe80::1 to 45.77.12.9",
        src_ip="172.16.9.9",
    )
    evidence = forensic.evidence_of(summary, SHIPPED)
    internal = {s.value for s in evidence.sightings if s.internal}
    assert {
        "10.0.0.5",
        "192.168.1.7",
        "100.64.3.2",
        "127.0.0.1",
        "169.254.169.254",
        "fe80::1",
        "172.16.9.9",
    } <= internal
    assert "45.77.12.9" not in internal
    assert ("ipv4", "45.77.12.9") in _found(summary)


def test_documentation_ranges_and_example_names_are_noise() -> None:
    summary = _summary(
        description="see https://docs.example.com/x, mail admin@example.org, from 192.0.2.1, 198.51.100.7, "
        "2001:db8::1 and 203.0.113.9; real one 45.77.12.9 at c2.evil-host.net; svc.test, a.invalid",
        src_ip="203.0.113.9",
    )
    found = _found(summary)
    assert found == {("ipv4", "45.77.12.9"), ("domain", "c2.evil-host.net")}
    # With documentation kept (the demo's attackers use those ranges), they are ordinary indicators.
    kept = _found(summary, Noise(documentation=False))
    assert {("ipv4", "203.0.113.9"), ("ipv6", "2001:db8::1"), ("domain", "docs.example.com")} <= kept


def test_the_tools_own_addresses_are_noise() -> None:
    noise = forensic.parse_noise(
        "tools:\n  addresses: [10.9.0.0/24, 45.77.12.9]\n  domains: [siem.acme.net]\ninternal_domains: [acme.net]\n"
    )
    summary = _summary(
        description="from 10.9.0.4 via siem.acme.net to 45.77.12.9, db.acme.net and 46.1.2.3",
        url="https://console.monitor-vendor.io/alerts/1",
        raw={"link": "https://console.monitor-vendor.io/alerts/1", "note": "see console.monitor-vendor.io"},
        src_ip=None,
    )
    found = _found(summary, noise)
    assert ("ipv4", "46.1.2.3") in found
    assert not {v for _, v in found} & {"10.9.0.4", "45.77.12.9", "siem.acme.net", "console.monitor-vendor.io"}
    assert _where(summary, "domain", "db.acme.net", noise)["description"].internal  # the organisation's own name


def test_a_bad_noise_file_is_refused_with_its_line() -> None:
    with pytest.raises(forensic.NoiseFileError, match=r"noise\.yaml:2"):
        forensic.parse_noise("tools:\n  adresses: []\n")
    with pytest.raises(forensic.NoiseFileError, match="not an address"):
        forensic.parse_noise("tools:\n  addresses: [ten.0.0.1]\n")


def test_placeholder_hashes_and_paths_are_not_indicators() -> None:
    summary = _summary(
        description="sha1 0000000000000000000000000000000000000000 ran /Applications/app.app/Contents/MacOS/pup",
        raw={"image": "docker.io/library/alpine"},
        src_ip=None,
    )
    found = _found(summary)
    assert not {k for k, _ in found} & {"sha1", "url"}
    assert ("domain", "app.app") not in found


def test_provenance_folds_alerts_in_time_order() -> None:
    later = _summary(minutes=5, description="45.77.12.9 again", src_ip=None, id="b")
    first = _summary(minutes=0, description="45.77.12.9", src_ip="45.77.12.9", id="a")
    [tally] = [
        t for t in forensic.tally([forensic.evidence_of(a, SHIPPED) for a in (later, first)]) if t.kind == "ipv4"
    ]
    assert (tally.first_seen, tally.last_seen) == (T0, T0 + timedelta(minutes=5))
    assert tally.count == 2 and tally.alert_keys == [first.key, later.key]
    assert tally.fields == ["description", "src_ip"]
    indicator = forensic.indicator_of(tally)
    assert isinstance(indicator, Indicator) and indicator.count == 2 and not indicator.internal
    [account] = forensic.tally([forensic.evidence_of(_summary(user="mallory", src_ip=None), SHIPPED)])
    user = forensic.indicator_of(account)
    assert isinstance(user, Observable) and (user.kind, user.value, user.fields) == ("user", "mallory", ["user"])


def test_an_alert_counts_once_however_many_fields_name_it_past_the_alert_keys_kept() -> None:
    # More alerts than alert_keys holds (MAX_ALERT_KEYS), each naming the address in three fields.
    alerts = [
        _summary(id=f"a{n:02d}", minutes=n, src_ip="45.77.12.9", description="45.77.12.9 again", title="45.77.12.9")
        for n in range(forensic.MAX_ALERT_KEYS + 5)
    ]
    [address] = [t for t in forensic.tally([forensic.evidence_of(a, SHIPPED) for a in alerts]) if t.kind == "ipv4"]
    assert address.fields == ["description", "src_ip", "title"]
    assert address.count == len(alerts) == 25
    assert address.alert_keys == [a.key for a in alerts[: forensic.MAX_ALERT_KEYS]]


def test_threat_intelligence_is_asked_of_each_indicator_the_alerts_name_once() -> None:
    alerts = [
        forensic.evidence_of(
            _summary(id="a", src_ip="45.77.12.9", user="mallory", description="cdn-update-check.net"), SHIPPED
        ),
        forensic.evidence_of(_summary(id="b", src_ip="45.77.12.9", description="45.77.12.9 again"), SHIPPED),
    ]
    # Accounts, processes and the like are no feed's: not asked.
    assert forensic.indicator_keys(alerts) == [("domain", "cdn-update-check.net"), ("ipv4", "45.77.12.9")]


def test_a_large_raw_record_travels_cut_and_is_still_read() -> None:
    raw = {"events": [{"n": n, "padding": "x" * 900} for n in range(40)], "attacker": "45.77.12.9"}
    summary = _summary(raw=raw, src_ip=None, description="")
    assert summary.raw_cut and summary.raw is not None
    assert len(json.dumps(summary.raw, separators=(",", ":"))) <= detector.MAX_RAW_BYTES
    assert _where(summary, "ipv4", "45.77.12.9").keys() == {"raw.attacker"}
    small = _summary(raw={"srcip": "45.77.12.9"})
    assert small.raw == {"srcip": "45.77.12.9"} and not small.raw_cut


def _corpus(name: str) -> list[AlertSummary]:
    files = sorted((CORPUS / name).glob("*.jsonl")) if CORPUS.is_dir() else []
    if not files:
        pytest.skip(f"the sample corpus ({CORPUS / name}) is not here")
    return [detector.summarise(a) for line in files[0].read_bytes().splitlines() for a in parse_record(line).alerts]


def test_wazuh_corpus_attackers_accounts_and_agents() -> None:
    first = _corpus("wazuh_alerts")[0]
    sightings = _where(first, "ipv4", "123.20.109.89")
    assert {"src_ip", "raw.data.srcip", "raw.full_log"} <= sightings.keys()
    assert not sightings["src_ip"].internal
    assert _where(first, "ipv4", "10.0.1.85")["raw.agent.ip"].internal
    assert "raw.data.srcuser" in _where(first, "user", "admin")


def test_falco_corpus_processes_and_command_lines() -> None:
    shell = _corpus("falco")[0]
    assert "raw.output_fields.proc.cmdline" in _where(shell, "command_line", "sh -c clear; (bash || ash || sh)")
    assert "raw.output_fields.proc.name" in _where(shell, "process", "sh")
    assert "raw.output_fields.proc.pname" in _where(shell, "process", "runc")


def test_guardduty_corpus_cloud_resources_and_no_ids_taken_for_hashes() -> None:
    findings = _corpus("aws_guardduty")
    found = set().union(*(_found(f) for f in findings))
    assert ("cloud_resource", "arn:aws:iam::123456789012:role/IAMRole") in found
    assert ("cloud_resource", "i-99999999") in found
    assert not {k for k, _ in found} & {"md5", "sha1", "sha256"}  # finding and detector ids are not hashes


def test_a_value_is_sighted_only_where_it_stands_whole() -> None:
    summary = _summary(
        description="from 10.0.0.10 to notevil.com",
        raw={"peer": "10.0.0.1", "site": "evil.com", "file": "C:\\q\\" + "ab" * 16 + "cd" * 16 + ".bin"},
        src_ip=None,
    )
    assert _where(summary, "ipv4", "10.0.0.1").keys() == {"raw.peer"}
    assert _where(summary, "domain", "evil.com").keys() == {"raw.site"}
    hashes = {(k, v) for k, v in _found(summary) if k in ("md5", "sha1", "sha256")}
    assert hashes == {("sha256", "ab" * 16 + "cd" * 16)}  # not also an MD5 made of half of it


# ---- a value standing alone ---------------------------------------------------------------------

# What may stand just before or after a value: each character that decides whether it stands alone
# (a word character of any script, a hex digit, the dot, @ and -), some that do not, and nothing.
_EDGES = ["", " ", "/", ":", ".", "@", "-", "_", "a", "f", "x", "0", "é", "٣", ".a", ".é", ". ", "..", "-a"]
_VALUES = ["10.0.0.1", "evil.com", "a@evil.com", "d41d8cd98f00b204e9800998ecf8427e", "a", "0"]


def _pattern(kind: str, value: str) -> re.Pattern[str]:
    """What ``stands_whole`` is meant to say, as a pattern."""
    if kind in ("md5", "sha1", "sha256"):
        return re.compile(rf"(?<![0-9a-f]){re.escape(value)}(?![0-9a-f])")
    return re.compile(rf"(?<![\w.@-]){re.escape(value)}(?![\w@-]|\.\w)")


@settings(max_examples=500)
@given(
    kind=st.sampled_from(["md5", "domain", "ipv4", "email"]),
    value=st.sampled_from(_VALUES),
    edges=st.lists(st.sampled_from(_EDGES), min_size=2, max_size=4),
)
def test_a_value_stands_whole_where_the_pattern_finds_it(kind: Kind, value: str, edges: list[str]) -> None:
    # The value between each two edges: a first sighting inside a longer value must not hide a later one.
    text = value.join(edges)
    assert forensic.stands_whole(kind, value, text) == bool(_pattern(kind, value).search(text))


@pytest.mark.parametrize(
    ("kind", "value", "text", "whole"),
    [
        ("ipv4", "10.0.0.1", "from 10.0.0.10 to 10.0.0.1.", True),
        ("ipv4", "10.0.0.1", "from 10.0.0.10", False),
        ("domain", "evil.com", "notevil.com and evil.com/x", True),
        ("domain", "evil.com", "notevil.com, evil.com.au", False),
        ("email", "a@evil.com", "x-a@evil.com", False),
        ("md5", "d41d8cd98f00b204e9800998ecf8427e", "0d41d8cd98f00b204e9800998ecf8427e", False),
        ("md5", "d41d8cd98f00b204e9800998ecf8427e", "md5=d41d8cd98f00b204e9800998ecf8427e;", True),
    ],
)
def test_a_value_stands_whole_only_apart_from_a_longer_one(kind: Kind, value: str, text: str, whole: bool) -> None:
    assert forensic.stands_whole(kind, value, text) is whole


def test_a_url_keeps_the_case_of_its_path_as_feeds_list_it() -> None:
    summary = detector.summarise(
        alert(
            title="ET MALWARE download",
            description="GET HTTPS://Evil-CDN.net/Invoice_Q3.exe then hxxp://103.45.67[.]89/bins/Mozi.m",
            host=None,
            src_ip=None,
            dst_ip=None,
        )
    )
    urls = sorted(s.value for s in forensic.sightings(summary, Noise()) if s.kind == "url")
    assert urls == ["http://103.45.67.89/bins/Mozi.m", "https://evil-cdn.net/Invoice_Q3.exe"]


def test_a_value_longer_than_an_index_holds_is_left_out_and_the_rest_kept() -> None:
    """Values are keys of btree indexes; a URL with a long token, a long resource id or a long account name
    in a non-Latin script (1,000 CJK characters are 3,000 bytes) is left out, never cut."""
    token = "aB3" * 1000
    long_url = f"http://evil-cdn.net/login?token={token}"
    near = "http://evil-cdn.net/gate?t=" + "x" * (intel.MAX_VALUE_BYTES - 27)  # at the bound: kept
    arn = "arn:aws:s3:::" + "b" * 2500
    cjk = "".join(chr(0x4E00 + n) for n in range(1000))
    raw = {
        "http": {"url": long_url, "referrer": near},
        "user": {"name": cjk},
        "process": {"command_line": "powershell -enc " + "A" * 3000, "name": "powershell.exe"},
        "resource": arn,
    }
    summary = _summary(raw=raw, src_ip=None, description="")
    found = _found(summary, Noise())
    assert len(near.encode()) == intel.MAX_VALUE_BYTES and ("url", near) in found
    assert ("domain", "evil-cdn.net") in found and ("process", "powershell.exe") in found
    assert all(len(value.encode()) <= intel.MAX_VALUE_BYTES for _, value in found)
    assert {kind for kind, value in found if value != near} == {"domain", "process"}
    short = "".join(chr(0x4E00 + n) for n in range(600))  # 1,800 bytes
    assert ("user", short) in _found(_summary(raw={"user": {"name": short}}, src_ip=None, description=""), Noise())
