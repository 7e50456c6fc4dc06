"""The detector's pure decisions: classification, prioritisation, correlation."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.detector import domain
from services.detector.classification import SeverityPolicy, parse_rules
from services.detector.suppression import Suppression
from shared.alerts import Alert, AlertKind, AlertSeverity
from shared.events import (
    AlertCorrelation,
    AlertRepeat,
    AlertResolution,
    AlertsChange,
    AlertsSuppressed,
    AlertSummary,
    IncidentAlertsChanged,
    IncidentSnapshot,
    IncidentType,
    IncidentUpdated,
    ResolutionSuggested,
    ResolutionSuggestion,
    Severity,
    SuppressedAlerts,
    SuppressedAlertSummary,
    SuppressedBy,
)
from shared.timeline import TimelineEntry, timeline_entry
from tests.factories import T0, alert, snapshot

WINDOW = timedelta(minutes=30)


def ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"inc-{next(counter)}"


@pytest.mark.parametrize(
    ("title", "expected", "rule"),
    [
        ("Data exfiltration: unusual volume of S3 GetObject", IncidentType.DATA_LEAK, "keywords-data-leak"),
        ("Reverse shell spawned in a container", IncidentType.SYSTEM_COMPROMISE, "keywords-system-compromise"),
        ("ET MALWARE Cobalt Strike Beacon Observed", IncidentType.SYSTEM_COMPROMISE, "keywords-system-compromise"),
        (
            "sshd: brute force trying to get access to the system",
            IncidentType.SECURITY_BREACH,
            "keywords-security-breach",
        ),
        ("HighErrorRate: api-gateway 5xx above 5%", IncidentType.SERVICE_DISRUPTION, "keywords-service-disruption"),
        ("Service checkout is down", IncidentType.SERVICE_DISRUPTION, "keywords-service-disruption"),
    ],
)
def test_native_alerts_are_classified_by_keywords(title: str, expected: IncidentType, rule: str) -> None:
    decision = domain.classify_alert(alert(title=title, description=""))
    assert (decision.type, decision.rule) == (expected, rule)
    assert title in decision.reason
    assert decision.reason.endswith(f"(rule {rule})")


def test_an_unmatched_alert_is_unknown_until_triaged() -> None:
    decision = domain.classify_alert(alert(title="Odd thing", description="", source="person"))
    assert decision.type is IncidentType.UNKNOWN
    assert decision.rule == "unclassified"
    assert "no classification rule matched" in decision.reason


def test_an_incident_of_unplaced_alerts_is_unknown_and_one_placed_alert_decides() -> None:
    odd = [alert(minutes=i, title="Odd thing", description="", severity="high") for i in range(5)]
    [change] = domain.correlate(odd, {}, window=WINDOW, new_id=ids())
    assert change.incident.type is IncidentType.UNKNOWN
    assert set(change.type_rules.values()) == {"unclassified"}
    placed = domain.correlate(
        [alert(minutes=6, title="Port scan detected", severity="low")],
        {change.incident.correlation_key: change.incident},
        window=WINDOW,
        new_id=ids(),
    )[0].incident
    # Five alerts nothing could place do not outvote the one that was placed.
    assert placed.type is IncidentType.SECURITY_BREACH
    assert "(rule keywords-security-breach)" in placed.classification_reason


def test_every_summary_names_the_rule_that_typed_its_alert() -> None:
    alerts = [alert(minutes=0, title="Port scan detected"), alert(minutes=1, title="Reverse shell spawned")]
    [snapshot] = domain.snapshots(_change(alerts))
    assert [a.type_rule for a in snapshot.new_alerts] == ["keywords-security-breach", "keywords-system-compromise"]


def inputs(
    severity: str = "medium",
    incident_type: IncidentType = IncidentType.SECURITY_BREACH,
    *,
    hosts: int = 1,
    users: int = 0,
    kind: AlertKind = "alert",
    reason: str | None = None,
    critical: str | None = None,
) -> domain.SeverityInputs:
    return domain.SeverityInputs(
        alert_severity=AlertSeverity(severity),
        alert_reason=reason,
        alert_kind=kind,
        incident_type=incident_type,
        hosts=hosts,
        users=users,
        critical_asset=critical,
    )


@pytest.mark.parametrize(
    ("given", "expected", "why"),
    [
        (inputs("critical", IncidentType.SERVICE_DISRUPTION), Severity.SEV1, "highest alert severity critical -> SEV1"),
        (inputs("high", IncidentType.SERVICE_DISRUPTION), Severity.SEV2, "highest alert severity high -> SEV2"),
        # A data leak raises SEV2 and SEV3 one step, a compromise SEV3 only (one host's malware is not
        # widespread), never SEV4.
        (inputs("high", IncidentType.DATA_LEAK), Severity.SEV1, "data_leak -> SEV1"),
        (inputs("medium", IncidentType.DATA_LEAK), Severity.SEV2, "data_leak -> SEV2"),
        (inputs("medium", IncidentType.SYSTEM_COMPROMISE), Severity.SEV2, "system_compromise -> SEV2"),
        (inputs("high", IncidentType.SYSTEM_COMPROMISE), Severity.SEV2, "highest alert severity high -> SEV2"),
        (
            inputs("high", IncidentType.SYSTEM_COMPROMISE, hosts=5),
            Severity.SEV1,
            "high -> SEV2; 5 hosts affected (widespread) -> SEV1",
        ),
        (
            inputs("high", IncidentType.SYSTEM_COMPROMISE, critical="db-01 (critical hosts list)"),
            Severity.SEV1,
            "high -> SEV2; critical asset db-01 (critical hosts list) -> SEV1",
        ),
        (inputs("low", IncidentType.SYSTEM_COMPROMISE), Severity.SEV4, "highest alert severity low -> SEV4"),
        (inputs("medium", IncidentType.SECURITY_BREACH), Severity.SEV3, "highest alert severity medium -> SEV3"),
        (inputs("medium", IncidentType.UNKNOWN), Severity.SEV3, "highest alert severity medium -> SEV3"),
        # Breadth: five hosts, or ten distinct users.
        (inputs("medium", hosts=5), Severity.SEV2, "5 hosts affected (widespread) -> SEV2"),
        (inputs("medium", hosts=4, users=9), Severity.SEV3, "highest alert severity medium -> SEV3"),
        (inputs("medium", users=10), Severity.SEV2, "10 users affected (widespread) -> SEV2"),
        (inputs("low", hosts=6, users=12), Severity.SEV3, "6 hosts and 12 users affected (widespread) -> SEV3"),
        # A critical asset raises one step more.
        (
            inputs("medium", critical="db-01 (asset_criticality=critical)"),
            Severity.SEV2,
            "critical asset db-01 (asset_criticality=critical) -> SEV2",
        ),
        (
            inputs("medium", IncidentType.SYSTEM_COMPROMISE, hosts=5, critical="db-01 (critical hosts list)"),
            Severity.SEV1,
            "system_compromise -> SEV2; 5 hosts affected (widespread) -> SEV1",
        ),
        # Heartbeats, tests and informational records are capped at SEV3, saying so.
        (
            inputs("critical", kind="heartbeat"),
            Severity.SEV3,
            "highest alert severity critical -> SEV1; "
            "only heartbeat alerts, which never open SEV1/SEV2: capped at SEV3",
        ),
        (inputs("high", IncidentType.SYSTEM_COMPROMISE, kind="test"), Severity.SEV3, "only test alerts"),
        (inputs("info", users=50, critical="db-01 (criticality=high)"), Severity.SEV3, "only informational alerts"),
        (inputs("low", kind="test"), Severity.SEV4, "highest alert severity low -> SEV4"),
    ],
)
def test_severity_table(given: domain.SeverityInputs, expected: Severity, why: str) -> None:
    severity, reason = domain.prioritise(given)
    assert severity is expected
    assert why in reason


def test_severity_explanation_starts_from_the_tools_own_scale() -> None:
    severity, reason = domain.prioritise(
        inputs("medium", IncidentType.SYSTEM_COMPROMISE, reason="Wazuh level 10 (7-11) -> medium")
    )
    assert severity is Severity.SEV2
    assert reason == "Wazuh level 10 (7-11) -> medium -> SEV3; system_compromise -> SEV2"
    _, reason = domain.prioritise(inputs("medium", reason="no severity or risk score"))
    assert reason == "no severity or risk score -> medium -> SEV3"


def test_severity_thresholds_come_from_the_policy() -> None:
    policy = SeverityPolicy(widespread_hosts=2, widespread_users=3)
    assert domain.prioritise(inputs("medium", hosts=2), policy)[0] is Severity.SEV2
    assert domain.prioritise(inputs("medium", users=3), policy)[0] is Severity.SEV2


def test_an_incident_of_many_users_is_raised() -> None:
    alerts = [alert(minutes=i / 10, title="Port scan detected", user=f"user-{i}") for i in range(10)]
    incident = _change(alerts).incident
    assert incident.severity is Severity.SEV2
    assert "10 users affected (widespread) -> SEV2" in incident.severity_reason


def test_a_critical_asset_raises_the_incident() -> None:
    labelled = alert(title="Port scan detected", labels={"asset_criticality": "Critical"})
    incident = _change([labelled]).incident
    assert incident.severity is Severity.SEV2
    assert incident.critical_asset == "web-01 (asset_criticality=Critical)"
    rules = parse_rules(
        "rules: [{id: r, type: security_breach, keywords: [scan*]}]\nseverity: {critical_hosts: [db-*]}"
    )
    listed = domain.correlate([alert(host="DB-07")], {}, window=WINDOW, new_id=ids(), classifier=rules)[0].incident
    assert listed.severity is Severity.SEV2
    assert "critical asset DB-07 (critical hosts list) -> SEV2" in listed.severity_reason


def test_heartbeats_and_tests_never_open_sev1_or_sev2() -> None:
    heartbeat = alert(title="Watchdog", severity="critical", kind="heartbeat", host="prometheus-0")
    incident = _change([heartbeat]).incident
    assert incident.severity is Severity.SEV3
    assert "capped at SEV3" in incident.severity_reason
    # A real alert leads the incident once it comes, however mild: the title follows it.
    later = domain.correlate(
        [alert(minutes=1, title="Service checkout is down", severity="high", host="prometheus-0")],
        {incident.correlation_key: incident},
        window=WINDOW,
        new_id=ids(),
    )[0].incident
    assert (later.severity, later.title, later.lead_kind) == (Severity.SEV2, "Service checkout is down", "alert")


def test_a_test_finding_does_not_raise_a_real_incident() -> None:
    real = alert(minutes=0, title="Port scan detected", severity="low")
    sample = alert(minutes=1, title="Reverse shell spawned", severity="critical", kind="test")
    incident = _change([real, sample]).incident
    assert incident.severity is Severity.SEV4
    assert incident.title == "Port scan detected"


def test_alerts_on_one_host_within_window_make_one_incident() -> None:
    alerts = [alert(minutes=0), alert(minutes=10), alert(minutes=25)]
    changes = domain.correlate(alerts, {}, window=WINDOW, new_id=ids())
    assert len(changes) == 1
    assert changes[0].created
    assert changes[0].incident.alert_count == 3
    assert len(changes[0].alerts) == 3


def test_alert_after_window_opens_a_new_incident() -> None:
    changes = domain.correlate([alert(minutes=0), alert(minutes=31)], {}, window=WINDOW, new_id=ids())
    assert [c.incident.id for c in changes] == ["inc-1", "inc-2"]


def test_order_within_batch_does_not_matter() -> None:
    late, early = alert(minutes=20), alert(minutes=0)
    changes = domain.correlate([late, early], {}, window=WINDOW, new_id=ids())
    assert len(changes) == 1
    assert changes[0].incident.first_seen == early.time
    assert changes[0].incident.last_seen == late.time


def test_alerts_join_an_open_incident_from_earlier_batches() -> None:
    first = domain.correlate([alert(minutes=0)], {}, window=WINDOW, new_id=ids())[0].incident
    changes = domain.correlate([alert(minutes=5)], {first.correlation_key: first}, window=WINDOW, new_id=ids())
    assert len(changes) == 1
    assert not changes[0].created
    assert changes[0].incident.id == first.id
    assert changes[0].incident.alert_count == 2


def test_different_hosts_are_different_incidents() -> None:
    changes = domain.correlate([alert(host="a"), alert(host="b")], {}, window=WINDOW, new_id=ids())
    assert len(changes) == 2


def test_compromise_signal_outranks_louder_breach_signals() -> None:
    alerts = [
        alert(minutes=0, title="sshd: brute force", severity="medium"),
        alert(minutes=1, title="sshd: authentication success after brute force", severity="high"),
        alert(minutes=2, title="Reverse shell spawned", severity="critical"),
    ]
    incident = domain.correlate(alerts, {}, window=WINDOW, new_id=ids())[0].incident
    assert incident.type is IncidentType.SYSTEM_COMPROMISE
    assert incident.severity is Severity.SEV1
    assert incident.title == "Reverse shell spawned"


def test_one_stray_keyword_does_not_change_the_type() -> None:
    alerts = [alert(minutes=i, title="Port scan detected", severity="high") for i in range(4)]
    alerts.append(alert(minutes=5, title="possible leak of banner", severity="low"))
    incident = domain.correlate(alerts, {}, window=WINDOW, new_id=ids())[0].incident
    assert incident.type is IncidentType.SECURITY_BREACH


def test_open_incident_is_never_downgraded() -> None:
    first = domain.correlate([alert(severity="critical", title="Service down")], {}, window=WINDOW, new_id=ids())
    incident = first[0].incident
    later = domain.correlate(
        [alert(minutes=1, severity="low", title="Service down")],
        {incident.correlation_key: incident},
        window=WINDOW,
        new_id=ids(),
    )
    assert later[0].incident.severity is Severity.SEV1


def test_alerts_without_host_correlate_on_address_then_user() -> None:
    by_ip = alert(host=None, src_ip="198.51.100.7", dst_ip=None)
    by_user = alert(host=None, src_ip=None, user="Svc-Backup")
    assert domain.correlation_key(by_ip) == "ip:198.51.100.7"
    assert domain.correlation_key(by_user) == "user:svc-backup"


def _change(alerts: list[Alert]) -> domain.IncidentChange:
    changes = domain.correlate(alerts, {}, window=WINDOW, new_id=ids())
    assert len(changes) == 1
    return changes[0]


def _assert_split(parts: list[IncidentSnapshot], alerts: list[Alert], *, max_alerts: int, max_bytes: int) -> None:
    """Every alert exactly once and in order, parts numbered 1..n, each within both bounds."""
    assert [p.part for p in parts] == list(range(1, len(parts) + 1))
    assert {p.parts for p in parts} == {len(parts)}
    assert [a.key for p in parts for a in p.new_alerts] == [a.key for a in sorted(alerts, key=lambda a: a.time)]
    for part in parts:
        assert 1 <= len(part.new_alerts) <= max_alerts
        assert len(part.model_dump_json().encode()) <= max_bytes


def test_one_small_change_is_one_event() -> None:
    alerts = [alert(minutes=i) for i in range(3)]
    [snapshot] = domain.snapshots(_change(alerts))
    assert (snapshot.part, snapshot.parts) == (1, 1)
    assert snapshot.alert_count == 3
    assert [a.key for a in snapshot.new_alerts] == [a.key for a in alerts]


def test_many_alerts_are_split_by_count() -> None:
    alerts = [alert(minutes=i / 100) for i in range(450)]
    parts = domain.snapshots(_change(alerts))
    assert [len(p.new_alerts) for p in parts] == [200, 200, 50]
    assert {p.alert_count for p in parts} == {450}  # each part says the whole incident's count
    _assert_split(parts, alerts, max_alerts=domain.MAX_ALERTS_PER_EVENT, max_bytes=domain.MAX_EVENT_BYTES)


def test_large_alerts_are_split_by_bytes() -> None:
    alerts = [alert(minutes=i / 100, description="x" * 20_000, src_ip=f"10.0.{i // 250}.{i % 250}") for i in range(250)]
    parts = domain.snapshots(_change(alerts))
    # 250 alerts of ~2.5 kB (with why each joined): not two events of 200 but three of about 85, each under 256 KiB.
    assert len(parts) == 3
    assert all(len(p.new_alerts) < 150 for p in parts)
    _assert_split(parts, alerts, max_alerts=domain.MAX_ALERTS_PER_EVENT, max_bytes=domain.MAX_EVENT_BYTES)


@pytest.mark.parametrize("max_bytes", [3_000, 10_000, 50_000])
@pytest.mark.parametrize("max_alerts", [1, 7, 200])
def test_split_keeps_both_bounds_whatever_they_are(max_alerts: int, max_bytes: int) -> None:
    # Escaped control characters and multi-byte characters: JSON longer than the text.
    texts = ["plain", "\x01\x02\x1f" * 40, "é€𝄞" * 50, '"\\' * 60]
    alerts = [
        alert(minutes=i / 100, title=texts[i % 4][:400] or "t", description=texts[(i + 1) % 4], user=f"user-{i % 9}")
        for i in range(120)
    ]
    parts = domain.snapshots(_change(alerts), max_alerts=max_alerts, max_bytes=max_bytes)
    _assert_split(parts, alerts, max_alerts=max_alerts, max_bytes=max_bytes)


ESCAPED = "\x01"  # one character, six bytes of JSON (\u0001)


def worst_alert(**overrides: Any) -> Alert:
    """An alert with every text and list field at its longest, in characters JSON escapes to six bytes.

    Text fields the schema does not limit get 10,000 characters, so that a new field carried in
    summaries without a bound fails the tests below.
    """
    values: dict[str, Any] = {}
    for name, info in Alert.model_fields.items():
        limit = next((m.max_length for m in info.metadata if getattr(m, "max_length", None)), None)
        if info.annotation in (str, str | None):
            values[name] = ESCAPED * (limit or 10_000)
        elif info.annotation == list[str]:
            values[name] = [f"{n:03d}" + ESCAPED * 1_000 for n in range(limit or 1_000)]
    values.update(
        severity="critical",
        time=T0.isoformat(),
        src_ip="2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
        dst_ip="2001:db8:ffff:ffff:ffff:ffff:ffff:fffe",
        labels={f"{n:03d}" + ESCAPED * 1_000: ESCAPED * 1_000 for n in range(100)},
        raw={"huge": ESCAPED * 10_000},
    )
    values.update(overrides)
    return Alert.model_validate(values)


def test_the_largest_possible_alert_summary_fits_one_event() -> None:
    huge = worst_alert()
    summary = domain.summarise(huge)
    assert len(summary.labels) == domain.MAX_LABELS
    assert len(summary.description) == domain.MAX_DESCRIPTION
    assert len(summary.tags) == domain.MAX_TAGS
    assert len(summary.model_dump_json().encode()) <= domain.MAX_SUMMARY_BYTES
    assert domain.MAX_HEADER_BYTES + domain.MAX_SUMMARY_BYTES + 64 <= domain.MAX_EVENT_BYTES
    # Also beside a header full of users, with other such alerts after it.
    others = [worst_alert(id=f"{i:03d}", user=f"{i:05d}" + ESCAPED * 250) for i in range(1, 6)]
    alerts = [huge, *others]
    parts = domain.snapshots(_change(alerts))
    assert len(parts) == len(alerts)  # one such alert an event
    assert parts[0].new_alerts[0].key == huge.key
    _assert_split(parts, alerts, max_alerts=domain.MAX_ALERTS_PER_EVENT, max_bytes=domain.MAX_EVENT_BYTES)


def test_a_header_too_large_keeps_the_users_that_fit() -> None:
    alerts = [alert(minutes=i / 100, user=f"{i:05d}-" + "u" * 200) for i in range(600)]
    change = _change(alerts)
    parts = domain.snapshots(change)
    assert len(change.incident.users) == 600
    listed = parts[0].users
    assert 0 < len(listed) < 600
    assert listed == list(change.incident.users[: len(listed)])
    header = parts[0].model_copy(update={"new_alerts": []})
    assert len(header.model_dump_json().encode()) <= domain.MAX_HEADER_BYTES
    # Every user still travels on its alerts.
    assert {a.user for p in parts for a in p.new_alerts} == set(change.incident.users)
    _assert_split(parts, alerts, max_alerts=domain.MAX_ALERTS_PER_EVENT, max_bytes=domain.MAX_EVENT_BYTES)


def test_summary_labels_are_bounded_but_short_ones_kept_as_they_are() -> None:
    labels = {"alertname": "HighErrorRate", "severity": "page"}
    assert domain.summarise(alert(labels=labels)).labels == labels
    long = domain.summarise(alert(labels={"k" * 500: "v" * 5_000}))
    assert long.labels == {"k" * domain.MAX_LABEL_KEY: "v" * domain.MAX_LABEL_VALUE}


@pytest.mark.parametrize("users", [20, 300])
@pytest.mark.parametrize("text", ["plain", "\x01\x1f\x7f", 'quotes " and \\ backslashes', "é€𝄞", "\n\t\r\b\f"])
def test_one_alert_beside_a_header_of_any_text_fits_unmeasured(text: str, users: int) -> None:
    # One alert per incident is the common case, and its snapshot is not serialised to be measured.
    host = (text * 20)[:255]
    alerts = [worst_alert(id="a", host=host, title=(text * 10)[:500], user=text)]
    alerts += [alert(minutes=i, host=host, user=f"{i}{text * 30}"[:255]) for i in range(1, users)]
    incident = domain.correlate(alerts, {}, window=WINDOW, new_id=ids())[0].incident
    header = domain._snapshot(incident, [])
    assert domain._header_bound(incident) >= len(header.model_dump_json().encode())
    last = alert(minutes=users, host=host, user=text)
    change = domain.correlate([last], {incident.correlation_key: incident}, window=WINDOW, new_id=ids())[0]
    [snapshot] = domain.snapshots(change)
    assert len(snapshot.model_dump_json().encode()) <= domain.MAX_EVENT_BYTES


def _sizes(alerts: list[Alert]) -> dict[str, int]:
    """What the detector knows of each new alert when it makes the snapshots: the bytes of its stored JSON."""
    return {a.key: len(a.model_dump_json().encode()) for a in alerts}


@pytest.mark.parametrize("text", ["plain", "\x01\x1f\x7f", 'quotes " and \\ backslashes', "é€𝄞", "\n\t\r\b\f"])
def test_a_summary_is_never_larger_than_its_bound(text: str) -> None:
    reason = AlertCorrelation(
        rule=text * 40,
        type="event_count",
        key={text * 10: text * 30} | {f"k{n}{text}": text * 50 for n in range(12)},
        window_start=T0,
        window_end=T0,
        reason=text * 300,
        triggered_by=[f"{n}{text * 60}" for n in range(40)],
    )
    for subject in (worst_alert(), worst_alert(raw={"small": text}), alert(title=text[:500], raw={text: [text] * 9})):
        sizes = _sizes([subject])
        fits = sizes[subject.key] <= domain.MAX_RAW_BYTES
        summary = domain.summarise(subject, type_rule=text * 30, reason=reason, raw_fits=fits)
        assert summary == domain.summarise(subject, type_rule=text * 30, reason=reason)  # measured or not, the same
        assert domain._summary_bound(summary, sizes[subject.key]) >= len(summary.model_dump_json().encode())


@pytest.mark.parametrize("max_bytes", [10_000, 50_000, domain.MAX_EVENT_BYTES])
def test_snapshots_are_the_same_whether_the_alerts_sizes_are_known(max_bytes: int) -> None:
    texts = ["plain", "\x01\x02\x1f" * 40, "é€𝄞" * 50, '"\\' * 60]
    alerts = [
        alert(minutes=i / 100, title=texts[i % 4][:400] or "t", raw={"record": texts[(i + 1) % 4] * (i % 7)})
        for i in range(120)
    ]
    change = _change(alerts)
    known = domain.snapshots(change, max_bytes=max_bytes, alert_bytes=_sizes(alerts))
    assert known == domain.snapshots(change, max_bytes=max_bytes)
    _assert_split(known, alerts, max_alerts=domain.MAX_ALERTS_PER_EVENT, max_bytes=max_bytes)


# ---- repeats and resolutions -------------------------------------------------------------------


def test_alert_changes_are_split_into_bounded_parts_with_every_entry_once() -> None:
    # The longest key an alert can have (100 + 1 + 200 characters), each escaped to six bytes of JSON.
    def key(n: int) -> str:
        return f"{n:04d}" + ESCAPED * 297

    repeated = [AlertRepeat(key=key(n), repeats=n + 1, last_seen=T0) for n in range(250)]
    resolved = [AlertResolution(key=key(1000 + n), resolved_at=T0) for n in range(60)]
    parts = domain.alerts_changes(repeated, resolved, firing=0, alert_count=310, all_resolved=True)
    assert [(p.part, p.parts) for p in parts] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert [r.key for p in parts for r in p.repeated] == [r.key for r in repeated]
    assert [r.key for p in parts for r in p.resolved] == [r.key for r in resolved]
    assert [p.all_resolved for p in parts] == [False, False, False, True]  # once everything was told
    for part in parts:
        event = IncidentAlertsChanged(source="/vigil/detector", subject="inc-1", data=part)
        assert len(event.model_dump_json().encode()) <= domain.MAX_EVENT_BYTES


def test_a_small_change_is_one_event() -> None:
    [part] = domain.alerts_changes(
        [AlertRepeat(key="a:1", repeats=2, last_seen=T0)], [], firing=1, alert_count=1, all_resolved=False
    )
    assert (part.part, part.parts, len(part.repeated), part.resolved) == (1, 1, 1, [])


@pytest.mark.parametrize(
    ("incident_type", "closed", "firing", "expected"),
    [
        (IncidentType.SERVICE_DISRUPTION, False, 0, True),
        (IncidentType.SERVICE_DISRUPTION, False, 1, False),
        (IncidentType.SERVICE_DISRUPTION, True, 0, False),  # resolved already
        (IncidentType.SYSTEM_COMPROMISE, False, 0, False),  # an intruder is not gone when alerts stop
        (IncidentType.UNKNOWN, False, 0, False),
    ],
)
def test_only_an_open_service_disruption_whose_alerts_all_ended_suggests_resolving(
    incident_type: IncidentType, closed: bool, firing: int, expected: bool
) -> None:
    assert domain.suggests_resolving(incident_type, closed=closed, firing=firing) is expected


def test_a_resolution_ends_when_its_tool_says() -> None:
    ended = alert(status="resolved", labels={"ends_at": "2026-11-24T09:40:00.123456789Z"})
    assert domain.resolution_time(ended) == datetime(2026, 11, 24, 9, 40, 0, 123456, tzinfo=UTC)
    assert domain.resolution_time(alert(minutes=7, status="resolved")) == T0 + timedelta(minutes=7)
    garbled = alert(minutes=7, status="resolved", labels={"ends_at": "soon"})
    assert domain.resolution_time(garbled) == T0 + timedelta(minutes=7)


def test_the_timeline_says_what_was_repeated_and_resolved() -> None:
    repeated = [AlertRepeat(key=f"am:{n}", repeats=n, last_seen=T0) for n in range(1, 6)]
    change = AlertsChange(
        repeated=repeated,
        resolved=[AlertResolution(key="am:9", resolved_at=T0)],
        firing=0,
        alert_count=6,
        all_resolved=True,
    )
    entry = timeline_entry(IncidentAlertsChanged(source="/vigil/detector", subject="inc-1", data=change))
    assert entry.actor == "detector"
    assert entry.summary == (
        "5 alert(s) sent again (am:1 seen 2 times, am:2 seen 3 times, am:3 seen 4 times and 2 more); "
        "1 resolved (am:9); 0 of 6 still firing; every alert has resolved: the incident may be resolved"
    )
    suggested = ResolutionSuggested(
        source="/vigil/coordinator",
        subject="inc-1",
        data=ResolutionSuggestion(commander="dave@example.com", reason="all 6 alert(s) have resolved"),
    )
    assert timeline_entry(suggested).summary == (
        "suggests dave@example.com resolves the incident: all 6 alert(s) have resolved"
    )


# ---- suppressed alerts -------------------------------------------------------------------------

SILENCE = Suppression(kind="silence", by="s-1", reason="silenced by ana until 11:00 UTC: CHG-1", name="CHG-1")
WINDOW_HOLD = Suppression(kind="maintenance", by="w-1", reason="maintenance window 'db patching'", name="db patching")


def test_suppressed_alerts_make_one_event_per_thing_that_held_them_back() -> None:
    held = [
        domain.Held(alert(id="a"), SILENCE, occurrence=11, repeats=0),
        domain.Held(alert(id="b"), WINDOW_HOLD, occurrence=12, repeats=0),
        domain.Held(alert(id="c", host=None), SILENCE, occurrence=13, repeats=4),
    ]
    [(silenced, [first]), (maintained, [second])] = domain.suppressed_events(held)
    assert (silenced, maintained) == ("silence:s-1", "maintenance:w-1")
    assert first.suppressed_by == SuppressedBy(kind="silence", id="s-1", name="CHG-1", reason=SILENCE.reason)
    assert [(a.key, a.occurrence, a.repeats, a.host) for a in first.alerts] == [
        ("suricata:a", "11", 0, "web-01"),
        ("suricata:c", "13", 4, None),
    ]
    assert (first.part, first.parts, second.suppressed_by.name) == (1, 1, "db patching")
    assert [a.key for a in second.alerts] == ["suricata:b"]


def test_suppressed_alerts_are_split_into_bounded_parts_with_every_alert_once() -> None:
    hold = Suppression(kind="inhibition", by="am:down", reason=ESCAPED * 5_000, rule="host-down", name="host-down")
    # Every text field at its longest, in characters JSON escapes to six bytes: split by bytes, not by count.
    worst = [worst_alert(id=f"{n:03d}" + ESCAPED * 197) for n in range(60)]
    plain = [alert(id=f"p{n}") for n in range(450)]
    for alerts in (worst, plain):
        held = [domain.Held(a, hold, occurrence=n, repeats=0) for n, a in enumerate(alerts)]
        [(subject, parts)] = domain.suppressed_events(held)
        assert subject == "inhibition:am:down"
        assert [(p.part, p.parts) for p in parts] == [(n, len(parts)) for n in range(1, len(parts) + 1)]
        assert [a.key for p in parts for a in p.alerts] == [a.key for a in alerts]
        for part in parts:
            assert len(part.suppressed_by.reason) == domain.MAX_REASON
            event = AlertsSuppressed(source="/vigil/detector", subject=subject, data=part)
            assert len(event.model_dump_json().encode()) <= domain.MAX_EVENT_BYTES
        sizes = [len(p.alerts) for p in parts]
        if alerts is plain:
            assert sizes == [200, 200, 50]  # by count
        else:
            assert len(sizes) > 1 and max(sizes) < 60  # by bytes


# ---- on the timeline ---------------------------------------------------------------------------


def _joined(key: str, rule: str, **values: str) -> AlertSummary:
    reason = AlertCorrelation(rule=rule, type="entity" if rule == "entity" else "temporal_ordered", key=values)
    return domain.summarise(alert(id=key), reason=reason)


def _updated(*alerts: AlertSummary) -> str:
    data = snapshot(new_alerts=list(alerts), alert_count=7, severity=Severity.SEV2)
    return timeline_entry(IncidentUpdated(source="/vigil/detector", subject="inc-1", data=data)).summary


def test_more_alerts_say_why_they_joined() -> None:
    same = [_joined(f"a{n}", "brute-force-then-login", user="alice") for n in range(3)]
    assert _updated(*same) == "3 more alert(s) (rule brute-force-then-login: user=alice), 7 in all; now SEV2"
    mixed = [*same, _joined("e", "entity", host="web-01")]
    assert _updated(*mixed) == (
        "4 more alert(s) (rule brute-force-then-login: user=alice; entity host=web-01), 7 in all; now SEV2"
    )
    # Without a reason (from an older detector): as before.
    assert _updated(domain.summarise(alert(id="x"))) == "1 more alert(s), 7 in all; now SEV2"


def test_many_reasons_are_named_a_few_then_counted() -> None:
    many = [_joined(f"a{n}", f"rule-{n}", user="u" * 500) for n in range(10)]
    line = _updated(*many)
    assert line.startswith("10 more alert(s) (rule rule-0: user=uuu")
    assert line.endswith(" and 7 more), 7 in all; now SEV2")
    assert line.count("rule rule-") == 3
    assert len(line) < 500


def test_suppressed_alerts_say_what_held_them_back() -> None:
    silenced = SuppressedAlerts(
        suppressed_by=SuppressedBy(kind="silence", id="s-1", name="CHG-1", reason="silenced by ana until 11:00: CHG-1"),
        alerts=[
            SuppressedAlertSummary(
                key=f"am:{n}", source="am", title="Disk full", severity="high", time=T0, occurrence="1"
            )
            for n in range(5)
        ],
        part=2,
        parts=3,
    )
    entry = timeline_entry(AlertsSuppressed(source="/vigil/detector", subject="silence:s-1", data=silenced))
    assert entry == TimelineEntry(
        "detector",
        "5 alert(s) held back from incidents (am:0, am:1, am:2 and 2 more): silenced by ana until 11:00: CHG-1 "
        "(silence s-1) (part 2 of 3)",
    )


def test_held_back_alerts_that_ended_are_told_under_what_held_them_back_in_bounded_parts() -> None:
    at = T0 + timedelta(minutes=5)
    ended = [
        ("silence", "s-1", "am:0", "11", at),
        ("maintenance", "w-1", "am:1", "12", at),
        ("silence", "s-1", "am:2", "13", at),
        ("silence", "s-1", "am:3", "14", at),
    ]
    events = domain.suppressed_endings(ended, max_alerts=2)
    assert [(subject, [(p.part, p.parts, [e.key for e in p.alerts]) for p in parts]) for subject, parts in events] == [
        ("silence:s-1", [(1, 2, ["am:0", "am:2"]), (2, 2, ["am:3"])]),
        ("maintenance:w-1", [(1, 1, ["am:1"])]),
    ]
    [first, _] = events[0][1]
    assert (first.kind, first.id, first.alerts[0].occurrence, first.alerts[0].resolved_at) == (
        "silence",
        "s-1",
        "11",
        at,
    )


def _published(since_s: float | None, incident: domain.IncidentState, *, held: bool = False) -> domain.Publication:
    since = timedelta(seconds=since_s) if since_s is not None else None
    return domain.Publication(since, incident.type.value, incident.severity.value, held)


def test_an_incidents_new_alerts_wait_for_its_update_interval_unless_its_type_or_severity_changed() -> None:
    incident = _change([alert(host="web-01")]).incident
    interval = timedelta(seconds=2)
    assert not domain.publish_now(incident, _published(0.5, incident), interval=interval)
    assert domain.publish_now(incident, _published(2.0, incident), interval=interval)  # the interval ended
    assert domain.publish_now(incident, _published(None, incident), interval=interval)  # never published
    assert domain.publish_now(incident, _published(0.5, incident), interval=timedelta(0))  # nothing waits
    raised = domain.Publication(timedelta(seconds=0.5), incident.type.value, Severity.SEV4.value, False)
    assert incident.severity != Severity.SEV4 and domain.publish_now(incident, raised, interval=interval)
    retyped = domain.Publication(timedelta(seconds=0.5), IncidentType.UNKNOWN.value, incident.severity.value, False)
    assert incident.type != IncidentType.UNKNOWN and domain.publish_now(incident, retyped, interval=interval)


def test_a_batch_decides_once_an_incident_opened_and_touched_ones_at_once() -> None:
    interval = timedelta(seconds=2)
    opened = _change([alert(host="web-01")])
    old = _change([alert(host="db-01")])
    old.created = False
    touched = _change([alert(host="mail-01")])
    touched.created = False
    publications = {c.incident.id: _published(0.1, c.incident) for c in (opened, old, touched)}
    # An incident opened now and changed again later in the batch still goes out now, whole.
    again = domain.IncidentChange(incident=opened.incident, created=False, alerts=[alert(host="web-01", minutes=1)])
    decided = domain.publishing_now(
        [opened, old, touched, again], publications, touched={touched.incident.id}, interval=interval
    )
    assert decided == {opened.incident.id: True, old.incident.id: False, touched.incident.id: True}
    assert domain.publishing_now([old], {}, touched=set(), interval=interval) == {old.incident.id: True}


@pytest.mark.parametrize("max_bytes", [16 * 1024, 256 * 1024])
def test_held_alerts_go_out_in_order_within_both_bounds(max_bytes: int) -> None:
    alerts = [alert(minutes=i / 10, host="web-01", description="x" * 300) for i in range(450)]
    change = _change(alerts)
    summaries = domain.change_summaries(change)
    parts = domain.held_snapshots(change.incident, summaries, max_bytes=max_bytes)
    _assert_split(parts, alerts, max_alerts=domain.MAX_ALERTS_PER_EVENT, max_bytes=max_bytes)
    assert {(p.alert_count, p.severity) for p in parts} == {(450, change.incident.severity)}
    [whole] = domain.held_snapshots(change.incident, summaries[:3])
    assert [a.key for a in whole.new_alerts] == [a.key for a in sorted(alerts, key=lambda a: a.time)[:3]]
