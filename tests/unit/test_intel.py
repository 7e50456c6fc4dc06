"""Threat-intelligence feeds without a database: values, each feed format, bad lines, verdicts, configuration."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.analyzer.intel import (
    DEFAULT_CONFIG,
    MAX_VALUE_BYTES,
    CsvColumns,
    Entry,
    FeedDefaults,
    IntelError,
    Kind,
    Match,
    TooLong,
    classify,
    infer_kind,
    normalise,
    parse_config,
    parse_csv,
    parse_list,
    parse_misp,
    parse_stix,
    read_misp_feed,
    refang,
    verdict_of,
)
from shared.events import MAX_ENVELOPE_TEXT, EffectCompleted, EffectOutcome
from shared.yamlfile import YamlFileError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hxxp://evil[.]example/a", "http://evil.example/a"),
        ("hxxps[://]evil(.)example", "https://evil.example"),
        ("evil[dot]example", "evil.example"),
        ("bad[@]evil[.]example", "bad@evil.example"),
        ("10[.]0[.]0[.]1", "10.0.0.1"),
    ],
)
def test_defanged_values_are_refanged(text: str, expected: str) -> None:
    assert refang(text) == expected


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("192.0.2.1", "ip"),
        ("192.0.2.1:443", "ip"),
        ("2001:db8::1", "ip"),
        ("198.51.100.0/24", "cidr"),
        ("evil.example", "domain"),
        ("http://evil.example/x", "url"),
        ("d41d8cd98f00b204e9800998ecf8427e", "md5"),
        ("da39a3ee5e6b4b0d3255bfef95601890afd80709", "sha1"),
        ("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "sha256"),
        ("bad@evil.example", "email"),
    ],
)
def test_kinds_are_inferred(value: str, kind: str) -> None:
    assert infer_kind(value) == kind


def test_values_are_normalised_one_way() -> None:
    assert normalise("ip", "2001:DB8:0:0::1") == ("ip", "2001:db8::1")
    assert normalise("ip", "[2001:db8::1]:443") == ("ip", "2001:db8::1")
    assert normalise("cidr", "10.1.2.3/8") == ("cidr", "10.0.0.0/8")
    assert normalise("cidr", "10.1.2.3/32") == ("ip", "10.1.2.3")  # a network of one address is that address
    assert normalise("domain", "Evil.Example.") == ("domain", "evil.example")
    assert normalise("domain", "bücher.example") == ("domain", "xn--bcher-kva.example")
    assert normalise("url", "HTTP://Evil.Example/Path?Q=1") == ("url", "http://evil.example/Path?Q=1")
    assert normalise("sha256", "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855")[1].islower()
    assert normalise("email", "Bad@Evil.Example") == ("email", "bad@evil.example")
    for kind, value in [("md5", "abc"), ("ip", "300.1.1.1"), ("domain", "no spaces.example"), ("url", "evil")]:
        with pytest.raises(ValueError):
            normalise(kind, value)  # type: ignore[arg-type]


def test_a_list_skips_comments_and_infers_kinds() -> None:
    text = "# a feed\n\nhxxp://evil[.]example/a\n192.0.2.1  # the C2\nEVIL.example\n10.0.0.0/8\n"
    entries = parse_list(text, defaults=FeedDefaults("suspicious", 40, ("x",)))
    assert [(e.kind, e.value) for e in entries] == [
        ("url", "http://evil.example/a"),
        ("ip", "192.0.2.1"),
        ("domain", "evil.example"),
        ("cidr", "10.0.0.0/8"),
    ]
    assert {(e.verdict, e.confidence, e.tags) for e in entries} == {("suspicious", 40, ("x",))}


def test_a_list_names_its_bad_line() -> None:
    with pytest.raises(IntelError, match=r"^line 3: .*not-an-indicator") as caught:
        parse_list("192.0.2.1\n# fine\nnot-an-indicator\n192.0.2.2\n")
    assert caught.value.line == 3


def test_a_list_of_a_given_kind_refuses_another() -> None:
    assert parse_list("evil.example\n", kind="domain")[0].value == "evil.example"
    with pytest.raises(IntelError, match="line 2"):
        parse_list("10.0.0.0/8\n192.0.2.1/33\n", kind="cidr")


THREATFOX = (Path(__file__).parents[1] / "data" / "intel" / "threatfox.csv").read_text()


def test_a_threatfox_csv_with_its_commented_header() -> None:
    entries = parse_csv(THREATFOX)
    assert [(e.kind, e.value, e.confidence) for e in entries] == [
        ("ip", "192.0.2.7", 100),
        ("domain", "evil.example", 75),
        ("url", "http://evil.example/x.exe", 50),
        ("sha256", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", 25),
    ]
    first = entries[0]
    assert first.tags == ("Cobalt Strike", "botnet_cc", "c2", "CobaltStrike")
    assert first.first_seen == datetime(2024, 3, 1, 10, tzinfo=UTC)
    assert first.last_seen is None
    assert entries[1].last_seen == datetime(2024, 3, 2, tzinfo=UTC)


def test_a_threatfox_row_of_a_type_vigil_keeps_no_kind_for_is_passed_over_not_the_whole_feed() -> None:
    sha256_row = next(line for line in THREATFOX.splitlines() if '"sha256_hash"' in line)
    sha3_row = sha256_row.replace('"sha256_hash"', '"sha3_384_hash"').replace(
        "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855", "AB" * 48
    )
    assert parse_csv(f"{THREATFOX}\n{sha3_row}\n") == parse_csv(THREATFOX)
    with pytest.raises(IntelError, match="unknown indicator type 'carrier_pigeon'"):
        parse_csv(f"{THREATFOX}\n{sha3_row.replace('sha3_384_hash', 'carrier_pigeon')}\n")


def test_a_csv_with_its_own_columns_and_a_plain_header() -> None:
    text = (
        "first_seen_utc,dst_ip,dst_port,c2_status,last_online,malware\n"
        "2024-01-01 00:00:00,192.0.2.9,443,online,2024-01-05,Emotet\n"
    )
    columns = CsvColumns(
        value="dst_ip",
        kind=None,
        first_seen="first_seen_utc",
        last_seen="last_online",
        confidence=None,
        tags=("malware",),
    )
    [entry] = parse_csv(text, columns=columns, defaults=FeedDefaults(confidence=90))
    assert (entry.kind, entry.value, entry.confidence, entry.tags) == ("ip", "192.0.2.9", 90, ("Emotet",))
    assert entry.last_seen == datetime(2024, 1, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("row", "why"),
    [
        ('"2024-03-01 10:00:00", "5", "192.0.2.1", "ja3_fingerprint", "x", "", "", "X", "", "50"', "unknown indicator"),
        ('"2024-03-01 10:00:00", "5", "192.0.2.1", "ip:port", "x", "", "", "X", "", "150"', "0-100"),
        ('"yesterday", "5", "192.0.2.1", "ip:port", "x", "", "", "X", "", "50"', "isoformat"),
        ('"2024-03-01 10:00:00", "5", "evil", "domain", "x", "", "", "X", "", "50"', "domain"),
    ],
)
def test_a_csv_names_its_bad_line(row: str, why: str) -> None:
    lines = THREATFOX.splitlines()
    text = "\n".join([*lines[:7], row, *lines[7:]])
    with pytest.raises(IntelError, match=f"line 8: .*{why}"):
        parse_csv(text)


def test_a_csv_without_a_header_says_so() -> None:
    with pytest.raises(IntelError, match="line 1: no header"):
        parse_csv("192.0.2.1,ip\n")


def stix_bundle(*objects: dict[str, object]) -> str:
    bundle = {"type": "bundle", "id": "bundle--6b616d0a-4a66-4b33-8c5a-2f1e29a5b001", "objects": list(objects)}
    return json.dumps(bundle, indent=1)


def indicator(number: int, pattern: str, **more: object) -> dict[str, object]:
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--00000000-0000-4000-8000-{number:012d}",
        "created": "2024-01-01T00:00:00.000Z",
        "modified": "2024-01-02T00:00:00.000Z",
        "pattern": pattern,
        "pattern_type": "stix",
        "valid_from": "2024-01-01T00:00:00Z",
        **more,
    }


MALWARE = {
    "type": "malware",
    "spec_version": "2.1",
    "id": "malware--00000000-0000-4000-8000-00000000000a",
    "created": "2024-01-01T00:00:00.000Z",
    "modified": "2024-01-01T00:00:00.000Z",
    "name": "QakBot",
    "is_family": True,
}


def test_stix_indicators_become_entries_with_what_they_indicate() -> None:
    text = stix_bundle(
        indicator(1, "[ipv4-addr:value = '198.51.100.0/24'] OR [domain-name:value = 'Evil.Example']", confidence=80),
        indicator(2, "[file:hashes.'SHA-256' = 'E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855']"),
        indicator(3, "[url:value = 'http://evil.example/x']", valid_until="2025-01-01T00:00:00Z", labels=["phishing"]),
        indicator(4, "[windows-registry-key:key = 'HKEY_LOCAL_MACHINE\\\\Run']"),
        indicator(5, "[ipv4-addr:value = '192.0.2.1']", indicator_types=["benign"]),
        indicator(6, "[ipv4-addr:value = '203.0.113.6']", indicator_types=["anomalous-activity"]),
        indicator(7, "[ipv4-addr:value = '203.0.113.7']", indicator_types=["anomalous-activity", "compromised"]),
        MALWARE,
        {
            "type": "relationship",
            "spec_version": "2.1",
            "id": "relationship--00000000-0000-4000-8000-00000000000b",
            "created": "2024-01-01T00:00:00.000Z",
            "modified": "2024-01-01T00:00:00.000Z",
            "relationship_type": "indicates",
            "source_ref": "indicator--00000000-0000-4000-8000-000000000001",
            "target_ref": MALWARE["id"],
        },
    )
    entries = parse_stix(text, defaults=FeedDefaults(confidence=60))
    got = {(e.kind, e.value): e for e in entries}
    assert set(got) == {
        ("cidr", "198.51.100.0/24"),
        ("domain", "evil.example"),
        ("sha256", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        ("url", "http://evil.example/x"),
        ("ip", "192.0.2.1"),
        ("ip", "203.0.113.6"),
        ("ip", "203.0.113.7"),
    }
    assert got["cidr", "198.51.100.0/24"].confidence == 80
    assert got["cidr", "198.51.100.0/24"].tags == ("QakBot",)
    assert got["domain", "evil.example"].first_seen == datetime(2024, 1, 1, tzinfo=UTC)
    assert got["url", "http://evil.example/x"].expires_at == datetime(2025, 1, 1, tzinfo=UTC)
    assert got["url", "http://evil.example/x"].tags == ("phishing",)
    assert got["ip", "192.0.2.1"].verdict == "benign-listed"
    # Only anomalous, as Vigil's own export writes a suspicious indicator; anything worse keeps the feed's verdict.
    assert (got["ip", "203.0.113.6"].verdict, got["ip", "203.0.113.7"].verdict) == ("suspicious", "malicious")
    assert got["sha256", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"].confidence == 60


def test_stix_names_the_line_of_a_bad_indicator() -> None:
    text = stix_bundle(indicator(1, "[ipv4-addr:value = '192.0.2.1']"), indicator(2, "[ipv4-addr:value = '300.0.0.1']"))
    expected = text[: text.index("000000000002")].count("\n") + 1
    with pytest.raises(IntelError, match=f"line {expected}: indicator indicator--.*000000000002"):
        parse_stix(text)


def test_stix_that_is_not_json_or_not_stix_is_refused() -> None:
    with pytest.raises(IntelError, match="line 2: not JSON"):
        parse_stix('{"type": "bundle",\n "objects": [}')
    with pytest.raises(IntelError, match=r"not a STIX 2\.1 bundle"):
        parse_stix(stix_bundle(indicator(1, "[ipv4-addr:value = ")))


MISP_EVENT = {
    "Event": {
        "uuid": "5e5d1d8a-0000-4000-8000-000000000001",
        "info": "QakBot campaign",
        "date": "2024-02-01",
        "Tag": [{"name": "tlp:white"}, {"name": 'misp-galaxy:malpedia="QakBot"'}],
        "Attribute": [
            {"uuid": "a-1", "type": "ip-dst|port", "value": "192.0.2.5|443", "to_ids": True, "timestamp": "1706745600"},
            {"uuid": "a-2", "type": "domain", "value": "Evil.Example", "to_ids": True},
            {"uuid": "a-3", "type": "filename|md5", "value": "x.exe|D41D8CD98F00B204E9800998ECF8427E", "to_ids": True},
            {"uuid": "a-4", "type": "regkey", "value": "HKLM\\Run", "to_ids": False},
            {"uuid": "a-5", "type": "url", "value": "http://evil.example/c", "to_ids": False, "Tag": [{"name": "c2"}]},
        ],
        "Object": [{"Attribute": [{"uuid": "a-6", "type": "email-src", "value": "Bad@Evil.Example", "to_ids": True}]}],
    }
}


def test_a_misp_event_with_its_objects_and_tags() -> None:
    entries = parse_misp(json.dumps(MISP_EVENT, indent=1))
    got = {(e.kind, e.value): e for e in entries}
    assert list(got) == [
        ("ip", "192.0.2.5"),
        ("domain", "evil.example"),
        ("md5", "d41d8cd98f00b204e9800998ecf8427e"),
        ("url", "http://evil.example/c"),
        ("email", "bad@evil.example"),
    ]
    assert got["ip", "192.0.2.5"].tags == ("QakBot",)
    assert got["ip", "192.0.2.5"].last_seen == datetime(2024, 2, 1, tzinfo=UTC)
    assert got["url", "http://evil.example/c"].verdict == "suspicious"  # to_ids false: context
    assert got["url", "http://evil.example/c"].tags == ("QakBot", "c2")


def test_a_misp_attribute_list_and_a_bad_attribute() -> None:
    sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    attributes = [{"uuid": "b-1", "type": "sha256", "value": sha256}]
    assert [e.kind for e in parse_misp(json.dumps(attributes))] == ["sha256"]
    bad = [*attributes, {"uuid": "b-2", "type": "ip-src", "value": "not-an-ip"}]
    text = json.dumps(bad, indent=1)
    with pytest.raises(IntelError, match=f"line {text[: text.index('b-2')].count(chr(10)) + 1}: attribute 'b-2'"):
        parse_misp(text)


def test_a_misp_feed_folder_reads_every_event_of_its_manifest(tmp_path: Path) -> None:
    uuid = MISP_EVENT["Event"]["uuid"]
    (tmp_path / "manifest.json").write_text(json.dumps({uuid: {"info": "QakBot campaign"}}))
    (tmp_path / f"{uuid}.json").write_text(json.dumps(MISP_EVENT))
    assert len(read_misp_feed(tmp_path)) == 5
    (tmp_path / f"{uuid}.json").write_text("{")
    with pytest.raises(IntelError, match=f"{uuid}.json: line 1: not JSON"):
        read_misp_feed(tmp_path)


def match(source: str, verdict: str, confidence: int, *tags: str) -> Match:
    return Match(source, "ip", "192.0.2.1", verdict, confidence, tags, None, None, None)  # type: ignore[arg-type]


def test_verdict_of_takes_the_worst_verdict_at_its_highest_confidence() -> None:
    matches = [
        match("allow", "benign-listed", 100),
        match("feodo", "malicious", 60, "Emotet"),
        match("threatfox", "malicious", 80, "c2"),
        match("osint", "suspicious", 95, "scanner"),
    ]
    feeds = ("allow", "feodo", "osint", "threatfox")
    assert verdict_of(matches) == ("malicious", 80, ("Emotet", "c2", "scanner"), feeds)
    assert verdict_of([match("allow", "benign-listed", 100)]).verdict == "benign-listed"
    assert verdict_of([]) == (None, 0, (), ())


def test_the_shipped_configuration_lists_no_feed_and_a_bad_one_names_its_line() -> None:
    assert parse_config(DEFAULT_CONFIG.read_text()).feeds == []
    good = parse_config("feeds:\n  - name: tf\n    format: csv\n    url: https://example.invalid/x.csv\n")
    assert good.feeds[0].defaults == FeedDefaults("malicious", 50, ())
    with pytest.raises(YamlFileError, match=r"intel.yaml:3:17: feeds.0.confidence"):
        parse_config("feeds:\n  - name: tf\n    confidence: 101\n    format: list\n    path: /x\n")
    with pytest.raises(YamlFileError, match="either path or url"):
        parse_config("feeds:\n  - name: tf\n    format: list\n")


def test_a_feed_name_too_long_for_the_subject_of_its_refreshes_is_refused_where_it_is_configured() -> None:
    # Each refresh of a feed is an effect whose completion is an event about `intel-feed:<name>`.
    feed = "feeds:\n  - name: {}\n    format: list\n    path: /x\n"
    longest = "f" * (MAX_ENVELOPE_TEXT - len("intel-feed:"))
    assert parse_config(feed.format(longest)).feeds[0].name == longest
    outcome = EffectOutcome(
        effect_id=1, service="analyzer", kind="intel.feed", key="k", target=longest, status="succeeded", attempts=1
    )
    EffectCompleted(source="/vigil/analyzer", subject=f"intel-feed:{longest}", data=outcome)  # a valid event
    with pytest.raises(YamlFileError, match=rf"intel.yaml:2:11: feeds.0.name: .* at most {len(longest)} characters"):
        parse_config(feed.format(longest + "f"))


def test_entries_are_plain_values() -> None:
    entry = Entry("ip", "192.0.2.1", "malicious", 50)
    assert entry.tags == () and entry.expires_at is None


def _slow_way(value: str, kind: Kind | None = None) -> tuple[str, str]:
    refanged = refang(value)
    return normalise(kind or infer_kind(refanged), refanged)


@pytest.mark.parametrize(
    "value",
    [
        "192.0.2.1",
        "0.0.0.0",
        "255.255.255.255",
        "10.1.2.3/8",
        "10.1.2.3/32",
        "198.51.100.0/24",
        "Evil.Example",
        "xn--bcher-kva.example",
        "host_1.evil.example",
        "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
        "da39a3ee5e6b4b0d3255bfef95601890afd80709",
        "d41d8cd98f00b204e9800998ecf8427e",
        "hxxp.example",
        "evil[.]example",
        "192.0.2.1:443",
        "2001:DB8::1",
        "http://Evil.Example/x",
        "bad@evil.example",
    ],
)
def test_the_quick_way_of_plain_values_agrees_with_the_full_way(value: str) -> None:
    assert classify(value) == _slow_way(value)


@pytest.mark.parametrize(
    ("value", "kind"), [("192.0.2.1", "domain"), ("evil.example", "ip"), ("01.2.3.4", None), ("256.1.1.1", None)]
)
def test_the_quick_way_refuses_what_the_full_way_refuses(value: str, kind: Kind | None) -> None:
    with pytest.raises(ValueError):
        _slow_way(value, kind)
    with pytest.raises(ValueError):
        classify(value, kind)


LONG_URL = "http://evil.example/x?" + "é" * 1000  # 2,022 bytes: no index holds it


def test_a_value_too_long_to_keep_is_passed_over_with_its_line_not_the_feed() -> None:
    listed = parse_list(f"192.0.2.1\n{LONG_URL}\n# fine\n{LONG_URL}2\nevil.example\n")
    assert [e.value for e in listed] == ["192.0.2.1", "evil.example"]
    assert listed.passed_over == ["line 2", "line 4"]
    assert listed.summary() == f"2 value(s) longer than {MAX_VALUE_BYTES} bytes passed over: line 2, line 4"
    assert parse_list("192.0.2.1\n").summary() is None
    with pytest.raises(TooLong):
        normalise("url", LONG_URL)
    just = "http://evil.example/x?" + "é" * 989  # 2,000 bytes
    assert normalise("url", just) == ("url", just)

    long_row = next(line for line in THREATFOX.splitlines() if "hxxp://evil.example/x.exe" in line)
    csv = parse_csv(f"{THREATFOX.rstrip()}\n{long_row.replace('hxxp://evil.example/x.exe', LONG_URL)}\n")
    assert csv == parse_csv(THREATFOX) and csv.passed_over == [f"line {len(THREATFOX.rstrip().splitlines()) + 1}"]

    long = indicator(2, f"[url:value = '{LONG_URL}']")
    text = stix_bundle(indicator(1, "[url:value = 'http://evil.example/a']"), long)
    stix = parse_stix(text)
    assert [e.value for e in stix] == ["http://evil.example/a"]
    assert stix.passed_over == [f"line {text[: text.index('000000000002')].count(chr(10)) + 1}"]

    attributes = [
        {"uuid": "b-1", "type": "url", "value": LONG_URL},
        {"uuid": "b-2", "type": "domain", "value": "a.example"},
    ]
    misp = parse_misp(json.dumps(attributes, indent=1))
    assert [e.value for e in misp] == ["a.example"] and misp.passed_over == ["line 3"]
