"""Addresses as models read them, and which are inside, whichever way they are written."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime

import orjson
import pytest
from pydantic import ValidationError

from services.analyzer import forensic, intel
from shared import addresses
from shared.addresses import is_external, is_internal
from shared.alerts import Alert, AlertSeverity
from shared.events import AlertSummary


@pytest.mark.parametrize(
    ("value", "external", "internal"),
    [
        ("10.0.0.5", False, True),
        ("::ffff:10.0.0.5", False, True),  # an IPv4 address as a dual-stack listener logs it
        ("::ffff:192.168.1.20", False, True),
        ("203.0.113.7", True, False),
        ("::ffff:203.0.113.7", True, False),
        ("2001:db8::1", True, False),
        ("fd00::1", False, True),
        ("224.0.0.1", False, False),
        ("::", False, False),
        ("web-1", False, False),
    ],
)
def test_an_address_is_inside_or_outside_whichever_way_it_is_written(
    value: str, external: bool, internal: bool
) -> None:
    assert (is_external(value), is_internal(value)) == (external, internal)


def test_an_ipv4_address_written_as_ipv6_is_sighted_and_looked_up_as_the_ipv4_one() -> None:
    alert = AlertSummary(
        key="falco:1",
        source="falco",
        title="ssh brute force",
        severity=AlertSeverity.HIGH,
        time=datetime(2026, 11, 24, 9, tzinfo=UTC),
        src_ip="::ffff:10.0.0.5",  # type: ignore[arg-type]  # validated into an address
        dst_ip="::ffff:203.0.113.7",  # type: ignore[arg-type]
    )
    found = {(s.field, s.kind, s.value, s.internal) for s in forensic.sightings(alert, forensic.Noise())}
    assert found >= {("src_ip", "ipv4", "10.0.0.5", True), ("dst_ip", "ipv4", "203.0.113.7", False)}
    # As feeds name it, so that a listed address is found whichever way an alert wrote it.
    assert intel.indicator_key("ipv6", "::ffff:203.0.113.7") == ("ip", "203.0.113.7")


def test_answers_are_kept_for_a_bounded_number_of_addresses_and_stay_the_same() -> None:
    kept = addresses._place
    kept.cache_clear()
    for n in range(addresses.CACHED_ADDRESSES + 1000):  # more addresses than are kept
        assert is_external(f"198.51.{n // 256 % 256}.{n % 256}") and is_internal(f"10.1.{n // 256}.{n % 256}")
    assert kept.cache_info().currsize <= addresses.CACHED_ADDRESSES
    # Asked again, once kept and once not: the same answers, whatever was written (an address or a name).
    for _ in range(2):
        assert (is_external("203.0.113.9"), is_internal("203.0.113.9")) == (True, False)
        assert (is_external("172.16.4.2"), is_internal("172.16.4.2")) == (False, True)
        assert (is_external("evil.example"), is_internal("evil.example")) == (False, False)
        assert (is_external("224.0.0.1"), is_internal("224.0.0.1")) == (False, False)


ALERT = {"id": "1", "source": "suricata", "title": "scan", "severity": "high", "time": "2026-11-24T09:00:00Z"}


@pytest.mark.parametrize(
    "value",
    ["10.0.0.5", "203.0.113.7", "0.0.0.0", "2001:db8::1", "::ffff:10.0.0.5", "fe80::1%eth0", 167772165],
)
def test_a_model_reads_an_address_as_ipaddress_reads_it(value: str | int) -> None:
    expected = ipaddress.ip_address(value)
    assert Alert.model_validate({**ALERT, "src_ip": value}).src_ip == expected
    # Read twice (the second from what was kept), from JSON too, and in an event's summary: the same address.
    assert Alert.model_validate_json(orjson.dumps({**ALERT, "src_ip": value})).src_ip == expected
    fields = {name: v for name, v in ALERT.items() if name != "id"}
    summary = AlertSummary.model_validate({**fields, "key": "suricata:1", "dst_ip": value})
    assert summary.dst_ip == expected and type(summary.dst_ip) is type(expected)
    assert orjson.loads(summary.model_dump_json())["dst_ip"] == str(expected)


@pytest.mark.parametrize("value", ["300.1.1.1", "10.0.0.05", "10.0.0", " 10.0.0.5", "web-1", "", True, 1.5, [1]])
def test_what_is_not_an_address_is_refused_with_the_reason(value: object) -> None:
    with pytest.raises(ValidationError) as refused:
        Alert.model_validate({**ALERT, "src_ip": value})
    assert refused.value.errors()[0]["msg"] == "value is not a valid IPv4 or IPv6 address"
    assert refused.value.error_count() == 1


def test_models_publish_the_schema_of_pydantics_address_types() -> None:
    either = [{"format": "ipv4", "type": "string"}, {"format": "ipv6", "type": "string"}]
    assert Alert.model_json_schema()["properties"]["src_ip"]["anyOf"] == [*either, {"type": "null"}]
    any_address = [{"format": "ipvanyaddress", "type": "string"}, {"type": "null"}]
    assert AlertSummary.model_json_schema()["properties"]["dst_ip"]["anyOf"] == any_address
