"""osquery result and status logs: every one accounted for as skipped, never raised as an alert."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.detector.adapters import Rejected, parse_payload
from services.detector.adapters.osquery import Osquery
from tests.unit.adapters.corpus import json_values, mutated, parses_or_refuses, records, samples_if_present

ADAPTER = Osquery()
DIRECTORY = "osquery_results"
ROUTE = "a query result, not an alert; route alerting queries through a tool that raises alerts"

# A status log line (osquery docs, "Logging": status logs carry hostIdentifier, calendarTime,
# unixTime, severity, filename, line, message, version and the configured decorations).
STATUS: dict[str, Any] = {
    "hostIdentifier": "hostname.local",
    "calendarTime": "Mon Sep 30 17:37:30 2019 UTC",
    "unixTime": "1569865050",
    "severity": "0",
    "filename": "scheduler.cpp",
    "line": "83",
    "message": "Executing scheduled query pack_incident-response_crontab: SELECT * FROM crontab;",
    "version": "4.0.2",
    "decorations": {"host_uuid": "4740D59F-699E-5B29-960B-979AAF9BBEEB"},
}

# A differential result with decorations and an "alert-looking" pack name (osquery docs, "Logging":
# name, hostIdentifier, calendarTime, unixTime, epoch, counter, decorations, columns, action).
DECORATED: dict[str, Any] = {
    "name": "pack_ossec-rootkit_pwned",
    "hostIdentifier": "web-01",
    "calendarTime": "Tue Sep 11 16:14:21 2018 UTC",
    "unixTime": "1536682461",
    "epoch": "0",
    "counter": "255",
    "decorations": {"host_uuid": "1111", "environment": "corp", "alert": "true", "severity": "critical"},
    "columns": {"path": "/usr/lib/libkeyutils.so.1.9"},
    "action": "added",
}

# The documented examples: test_every_adapter.py checks every adapter's common promises on them.
EXAMPLES = [STATUS, DECORATED]


EXPECTED = [
    f"osquery processes result (action added) on hostname.local: {ROUTE}",
    f"osquery processes result (action removed) on hostname.local: {ROUTE}",
    f"osquery process_snapshot result (action snapshot, 4 rows) on hostname.local: {ROUTE}",
    f"osquery processes result (batched diffResults: 1 added, 1 removed) on hostname.local: {ROUTE}",
    f"osquery pack_incident-response_listening_ports result (action added) on test.lan: {ROUTE}",
    f"osquery pack_incident-response_crontab result (action added) on test-host: {ROUTE}",
    f"osquery pack_ossec-rootkit_pwned result (action added) on test.lan: {ROUTE}",
]


def test_every_public_result_is_accounted_as_a_result_not_an_alert() -> None:
    samples = records(DIRECTORY)
    assert len(samples) == len(EXPECTED)
    for record, reason in zip(samples, EXPECTED, strict=True):
        parsed = ADAPTER.parse(record)
        assert (parsed.format, parsed.alerts, parsed.skipped) == ("osquery", [], [reason])
        assert parse_payload(record).skipped == [reason]  # found by its shape among every adapter


def test_decorations_and_pack_names_do_not_make_an_alert() -> None:
    parsed = ADAPTER.parse(DECORATED)
    assert parsed.alerts == []
    assert parsed.skipped == [f"osquery pack_ossec-rootkit_pwned result (action added) on web-01: {ROUTE}"]


def test_a_status_log_is_the_daemons_own_log() -> None:
    assert ADAPTER.parse(STATUS).skipped == [
        "osquery status log (severity 0) on hostname.local: the daemon's own log, not an alert"
    ]


@pytest.mark.parametrize("record", [[DECORATED], {"name": "processes"}, {"columns": {}, "action": "added"}])
def test_records_that_are_no_osquery_log_are_refused_with_a_reason(record: Any) -> None:
    with pytest.raises(Rejected, match="osquery") as refused:
        ADAPTER.parse(record)
    assert refused.value.code in ("invalid_fields", "missing_fields")


@given(json_values)
def test_any_json_value_is_read_or_refused_and_never_an_alert(payload: Any) -> None:
    parsed = parses_or_refuses(ADAPTER, payload)
    assert parsed is None or parsed.alerts == []


@given(st.data())
def test_damaged_samples_are_read_or_refused_and_never_alerts(data: st.DataObject) -> None:
    parsed = parses_or_refuses(ADAPTER, data.draw(mutated([*EXAMPLES, *samples_if_present("osquery")])))
    assert parsed is None or parsed.alerts == []
