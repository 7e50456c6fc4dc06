"""A person's problem report, in the shape documented in services/detector/adapters/user_report.py."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from services.detector.adapters import Rejected, parse_payload
from services.detector.adapters.user_report import UserReport

NOW = datetime(2025, 11, 24, 9, 30, tzinfo=UTC)
ADAPTER = UserReport(clock=lambda: NOW)

# The example of the module's docstring: the documented shape, every field given.
DOCUMENTED: dict[str, Any] = {
    "format": "user_report",
    "report": {
        "reporter": "ana.lima@example.org",
        "description": "Payroll shows another employee's payslip\nSince 09:00, after logging in.",
        "contact": "+351 21 000 0000",
        "affected_service": "payroll",
        "severity": "high",
        "time": "2025-11-24T09:05:00Z",
        "host": "payroll-web-1",
    },
}
# The least a report may be: who, and what they saw.
MINIMAL: dict[str, Any] = {"report": {"reporter": "Bob", "description": "The VPN drops every few minutes."}}
# The documented examples: test_every_adapter.py checks every adapter's common promises on them.
EXAMPLES = [DOCUMENTED, MINIMAL]


def report(**changes: Any) -> dict[str, Any]:
    payload = copy.deepcopy(DOCUMENTED)
    payload["report"].update(changes)
    return payload


def test_the_documented_report_becomes_an_alert_by_its_reporter() -> None:
    parsed = parse_payload(DOCUMENTED)
    assert parsed.format == "user_report"
    (alert,) = parsed.alerts
    assert alert.source == "user-report"
    assert alert.title == "payroll: Payroll shows another employee's payslip"
    assert alert.description == DOCUMENTED["report"]["description"]
    assert (alert.user, alert.host, alert.category) == ("ana.lima@example.org", "payroll-web-1", "user report")
    assert (alert.severity, alert.source_severity) == ("high", "reporter said high")
    assert alert.time == datetime(2025, 11, 24, 9, 5, tzinfo=UTC)
    assert alert.labels == {
        "reporter": "ana.lima@example.org",
        "contact": "+351 21 000 0000",
        "affected_service": "payroll",
    }
    assert alert.raw == DOCUMENTED


def test_a_minimal_report_is_medium_and_as_of_its_reading() -> None:
    before = datetime.now(UTC)
    (alert,) = parse_payload(MINIMAL).alerts  # the registered adapter reads the real clock
    assert before <= alert.time <= datetime.now(UTC)
    assert alert.title == "The VPN drops every few minutes."
    assert (alert.severity, alert.severity_reason) == ("medium", "reported by a person, no severity given -> medium")
    assert (alert.user, alert.host, alert.entity) == ("Bob", None, "user:bob")
    (clocked,) = ADAPTER.parse(MINIMAL).alerts
    assert clocked.time == NOW
    assert clocked.labels["time_source"] == "received (no time in the report)"


def test_the_same_report_sent_twice_is_one_alert_and_another_report_is_another() -> None:
    once = ADAPTER.parse(DOCUMENTED).alerts[0]
    assert ADAPTER.parse(copy.deepcopy(DOCUMENTED)).alerts[0].key == once.key
    assert ADAPTER.parse(report(description="Payroll is slow")).alerts[0].key != once.key
    assert ADAPTER.parse(report(reporter="joe@example.org")).alerts[0].key != once.key
    assert ADAPTER.parse(report(time="2025-11-24T10:00:00Z")).alerts[0].key != once.key
    # Without a time, the id does not depend on when the report was read.
    later = UserReport(clock=lambda: datetime(2025, 11, 24, 11, 0, tzinfo=UTC))
    assert later.parse(MINIMAL).alerts[0].key == ADAPTER.parse(MINIMAL).alerts[0].key


@pytest.mark.parametrize(("said", "severity"), [("critical", "critical"), ("LOW", "low"), ("Info", "info")])
def test_the_reporters_severity_is_taken_as_said(said: str, severity: str) -> None:
    assert ADAPTER.parse(report(severity=said)).alerts[0].severity == severity


def test_a_report_without_a_service_is_titled_by_its_first_line() -> None:
    (alert,) = ADAPTER.parse(
        report(affected_service=None, description="\n  Printer on floor 3 is on fire  \nreally")
    ).alerts
    assert alert.title == "Printer on floor 3 is on fire"


@pytest.mark.parametrize(
    ("payload", "code", "reason"),
    [
        ({"report": {"reporter": "Bob"}}, "missing_fields", "lacks description"),
        ({"report": {"description": "it broke", "reporter": "  "}}, "missing_fields", "lacks reporter"),
        (report(severty="high"), "invalid_fields", "unknown field\\(s\\) 'severty'"),
        (report(severity="urgent"), "invalid_fields", "'urgent' is not one of info, low, medium, high, critical"),
        (report(time="this morning"), "bad_timestamp", "not a timestamp"),
        ({"format": "other", "report": MINIMAL["report"]}, "invalid_fields", 'only "report" and "format"'),
        ({"report": "The VPN drops"}, "invalid_fields", 'a "report" object'),
    ],
)
def test_a_malformed_report_is_refused_with_what_is_wrong(payload: Any, code: str, reason: str) -> None:
    with pytest.raises(Rejected, match=reason) as refused:
        ADAPTER.parse(payload)
    assert refused.value.code == code


def test_only_the_documented_shape_is_recognised_as_a_report() -> None:
    assert not ADAPTER.matches({"report": MINIMAL["report"], "id": "x"})  # another key at the top
    assert not ADAPTER.matches({"format": "native", "report": MINIMAL["report"]})
    assert not ADAPTER.matches({"report": "text"})
