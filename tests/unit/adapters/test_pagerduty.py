"""PagerDuty Events API v2: triggers fire, resolves resolve, acknowledges are skipped; the routing key never leaks."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings

from services.detector.adapters import Parsed, Rejected, parse_payload, parse_record, storable
from services.detector.adapters.base import stable_id
from services.detector.adapters.pagerduty import PagerDuty, routing_digest
from services.detector.api import raw_key
from tests.unit.adapters.corpus import mutated, parses_or_refuses

NOW = datetime(2025, 11, 24, 9, 30, tzinfo=UTC)
ADAPTER = PagerDuty(clock=lambda: NOW)

# The examples of PagerDuty's Events API v2 documentation ("Send an Alert Event",
# developer.pagerduty.com/docs/events-api-v2/trigger-events/ and …/acknowledge-events/,
# …/resolve-events/). They reuse the routing key as the dedup_key.
DOCS_TRIGGER: dict[str, Any] = {
    "payload": {
        "summary": "DISK at 99% on machine prod-datapipe03.example.com",
        "timestamp": "2015-07-17T08:42:58.315+0000",
        "severity": "critical",
        "source": "prod-datapipe03.example.com",
        "component": "mysql",
        "group": "prod-datapipe",
        "class": "disk",
        "custom_details": {"free space": "1%", "ping time": "1500ms", "load avg": 0.75},
    },
    "routing_key": "samplekeyhere",
    "dedup_key": "samplekeyhere",
    "images": [
        {
            "src": "https://www.pagerduty.com/wp-content/uploads/2016/05/pagerduty-logo-green.png",
            "href": "https://example.com/",
            "alt": "Example text",
        }
    ],
    "links": [{"href": "https://example.com/", "text": "Link text"}],
    "event_action": "trigger",
    "client": "Sample Monitoring Service",
    "client_url": "https://monitoring.example.com",
}
DOCS_ACKNOWLEDGE = {"routing_key": "samplekeyhere", "dedup_key": "samplekeyhere", "event_action": "acknowledge"}
DOCS_RESOLVE = {"routing_key": "samplekeyhere", "dedup_key": "samplekeyhere", "event_action": "resolve"}

KEY = "e93facc04764012d7bfb002500d5d1a6"  # the shape of a real integration key: 32 hex characters
TRIGGER: dict[str, Any] = {
    "routing_key": KEY,
    "event_action": "trigger",
    "dedup_key": "disk-full/db-1",
    "payload": {
        "summary": "Disk / is 97% full on db-1",
        "source": "db-1.example.org",
        "severity": "error",
        "component": "postgres",
        "custom_details": {"free": "1.2 GiB"},
    },
}
# The documented examples: test_every_adapter.py checks every adapter's common promises on them.
EXAMPLES = [DOCS_TRIGGER, DOCS_ACKNOWLEDGE, DOCS_RESOLVE, TRIGGER]


def test_the_documented_trigger_is_a_firing_alert_without_the_routing_key() -> None:
    parsed = parse_payload(DOCS_TRIGGER, format_name="pagerduty")
    (alert,) = ADAPTER.parse(DOCS_TRIGGER).alerts
    assert parsed.alerts[0].key == alert.key
    # The dedup_key is the routing key here: its digest stands for it.
    assert alert.key == f"pagerduty/{routing_digest('samplekeyhere')}:{stable_id('samplekeyhere')}"
    assert (alert.title, alert.host, alert.severity, alert.status) == (
        "DISK at 99% on machine prod-datapipe03.example.com",
        "prod-datapipe03.example.com",
        "critical",
        "firing",
    )
    assert alert.time == datetime(2015, 7, 17, 8, 42, 58, 315000, tzinfo=UTC)
    assert (alert.resource, alert.category, alert.url) == ("mysql", "disk", "https://example.com/")
    assert alert.labels["group"] == "prod-datapipe"
    assert alert.labels["detail.free space"] == "1%"
    assert alert.labels["client"] == "Sample Monitoring Service"
    assert "load avg: 0.75" in alert.description
    assert "samplekeyhere" not in alert.model_dump_json()


def test_the_documented_acknowledge_is_skipped_and_resolve_resolves_the_trigger() -> None:
    acknowledged = parse_payload(DOCS_ACKNOWLEDGE)
    assert (acknowledged.format, acknowledged.alerts) == ("pagerduty", [])
    assert acknowledged.skipped == [f"pagerduty acknowledge of {stable_id('samplekeyhere')!r}: not an alert"]
    (resolved,) = ADAPTER.parse(DOCS_RESOLVE).alerts
    (fired,) = ADAPTER.parse(DOCS_TRIGGER).alerts
    assert (resolved.key, resolved.status, resolved.severity) == (fired.key, "resolved", "info")
    assert resolved.time == NOW  # no payload, no time: when Vigil read it
    assert resolved.labels["time_source"] == "received (no payload.timestamp)"
    assert "samplekeyhere" not in resolved.model_dump_json()


def test_a_trigger_and_its_resolve_share_the_dedup_key() -> None:
    (fired,) = ADAPTER.parse(TRIGGER).alerts
    (resolved,) = ADAPTER.parse({"routing_key": KEY, "event_action": "resolve", "dedup_key": "disk-full/db-1"}).alerts
    assert fired.key == resolved.key == f"pagerduty/{routing_digest(KEY)}:disk-full/db-1"
    assert (fired.severity, fired.source_severity, fired.severity_reason) == (
        "high",
        "severity error",
        "PagerDuty severity error -> high",
    )
    assert fired.time == NOW and fired.labels["time_source"] == "received (no payload.timestamp)"


def test_the_same_dedup_key_from_two_integrations_is_two_alerts_and_one_resolve_ends_only_its_own() -> None:
    other_key = "0123456789abcdef0123456789abcdef"
    (ours,) = ADAPTER.parse(TRIGGER).alerts
    (theirs,) = ADAPTER.parse({**TRIGGER, "routing_key": other_key}).alerts
    (resolved,) = ADAPTER.parse(
        {"routing_key": other_key, "event_action": "resolve", "dedup_key": "disk-full/db-1"}
    ).alerts
    assert ours.key != theirs.key == resolved.key
    # The event as the raw topic keeps it, without its routing key, reads as the same alert.
    stored = json.loads(storable(json.dumps(TRIGGER).encode(), Parsed(format="pagerduty", alerts=[ours])))
    assert KEY not in json.dumps(stored) and stored["routing_key_sha256"] == routing_digest(KEY)
    assert ADAPTER.parse(stored).alerts[0].key == ours.key


def test_the_ingest_keys_a_trigger_and_its_resolve_alike_so_they_are_read_in_order() -> None:
    # The resolve names no host: keyed by entity, it would go to another partition than its trigger,
    # could be read first, and its end be lost.
    fired = Parsed(format="pagerduty", alerts=ADAPTER.parse(TRIGGER).alerts)
    resolve = {"routing_key": KEY, "event_action": "resolve", "dedup_key": "disk-full/db-1"}
    resolved = Parsed(format="pagerduty", alerts=ADAPTER.parse(resolve).alerts)
    assert fired.alerts[0].host and not resolved.alerts[0].host
    assert raw_key(fired) == raw_key(resolved) == f"pagerduty/{routing_digest(KEY)}:disk-full/db-1".encode()


def test_the_routing_key_appears_nowhere_in_the_alert_wherever_it_was_sent() -> None:
    leaky = copy.deepcopy(TRIGGER)
    leaky["payload"]["summary"] = f"key {KEY} rotated"
    leaky["payload"]["custom_details"] = {KEY: f"value {KEY}", "nested": [{"k": KEY}]}
    leaky["links"] = [{"href": f"https://hooks.example.org/{KEY}", "text": KEY}]
    leaky["dedup_key"] = f"incident-{KEY}"
    (alert,) = ADAPTER.parse(leaky).alerts
    assert KEY not in alert.model_dump_json()
    assert alert.title == "key <routing_key> rotated"
    assert alert.id == stable_id(f"incident-{KEY}")
    acknowledged = ADAPTER.parse({**leaky, "event_action": "acknowledge"})
    assert KEY not in " ".join(acknowledged.skipped)


def test_a_trigger_without_dedup_key_is_identified_by_its_payload() -> None:
    anonymous = {k: v for k, v in TRIGGER.items() if k != "dedup_key"}
    (once,) = ADAPTER.parse(anonymous).alerts
    (again,) = ADAPTER.parse(copy.deepcopy(anonymous)).alerts
    other = copy.deepcopy(anonymous)
    other["payload"]["summary"] = "Disk / is 98% full on db-1"
    assert once.key == again.key != ADAPTER.parse(other).alerts[0].key


@pytest.mark.parametrize(
    ("severity", "expected"), [("critical", "critical"), ("error", "high"), ("warning", "medium"), ("info", "info")]
)
def test_pagerduty_severity_maps_onto_vigils_scale(severity: str, expected: str) -> None:
    event = copy.deepcopy(TRIGGER)
    event["payload"]["severity"] = severity
    assert ADAPTER.parse(event).alerts[0].severity == expected


@pytest.mark.parametrize(
    ("change", "code", "reason"),
    [
        ({"event_action": "escalate"}, "invalid_fields", "event_action 'escalate' is not one of"),
        ({"payload": None}, "missing_fields", "needs a payload object"),
        ({"payload": {"summary": "x", "severity": "info"}}, "missing_fields", "lacks source"),
        ({"payload": {"summary": "x", "source": "h", "severity": "high"}}, "invalid_fields", "'high' is not one of"),
        ({"event_action": "resolve", "dedup_key": None}, "missing_fields", "needs the dedup_key"),
        ({"payload": {**TRIGGER["payload"], "timestamp": "yesterday"}}, "bad_timestamp", "not a timestamp"),
    ],
)
def test_an_event_pagerduty_would_refuse_is_refused(change: dict[str, Any], code: str, reason: str) -> None:
    with pytest.raises(Rejected, match=reason) as refused:
        ADAPTER.parse({**TRIGGER, **change})
    assert refused.value.code == code


# ---- properties ---------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(mutated(EXAMPLES))
def test_a_mangled_event_is_read_or_refused_and_never_leaks_its_key(payload: Any) -> None:
    parsed = parses_or_refuses(ADAPTER, payload)
    key = payload.get("routing_key") if isinstance(payload, dict) else None
    if parsed is not None and key in (KEY, "samplekeyhere"):  # a real key, whatever else was mangled
        assert all(key not in alert.model_dump_json() for alert in parsed.alerts)
        assert all(key not in reason for reason in parsed.skipped)


def test_a_scrubbed_event_holds_no_routing_key_and_reads_as_the_same_alert() -> None:
    secret = "R0ut1ngK3yOfTh1sIntegrat10n"
    event = {
        "routing_key": secret,
        "event_action": "trigger",
        "dedup_key": f"{secret}-disk",  # PagerDuty's examples reuse the routing key in dedup keys
        "payload": {"summary": f"disk full (key {secret})", "source": "db-01", "severity": "error"},
    }
    scrubbed = storable(json.dumps(event).encode(), parse_record(json.dumps(event).encode()))
    assert secret.encode() not in scrubbed
    original = parse_record(json.dumps(event).encode()).alerts
    assert [a.key for a in parse_record(scrubbed).alerts] == [a.key for a in original]
