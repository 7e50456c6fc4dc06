"""The detector's pure decisions: classification, prioritisation, correlation."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from services.detector import domain
from shared.alerts import Alert, AlertSeverity
from shared.events import IncidentSnapshot, IncidentType, Severity
from tests.factories import T0, alert

WINDOW = timedelta(minutes=30)


def ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"inc-{next(counter)}"


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("Data exfiltration: unusual volume of S3 GetObject", IncidentType.DATA_LEAK),
        ("Reverse shell spawned in a container", IncidentType.SYSTEM_COMPROMISE),
        ("ET MALWARE Cobalt Strike Beacon Observed", IncidentType.SYSTEM_COMPROMISE),
        ("sshd: brute force trying to get access to the system", IncidentType.SECURITY_BREACH),
        ("HighErrorRate: api-gateway 5xx above 5%", IncidentType.SERVICE_DISRUPTION),
        ("Service checkout is down", IncidentType.SERVICE_DISRUPTION),
    ],
)
def test_classify_alert_by_keywords(title: str, expected: IncidentType) -> None:
    incident_type, reason = domain.classify_alert(alert(title=title, description=""))
    assert incident_type is expected
    assert title in reason


def test_whole_words_only_unless_stem() -> None:
    # "download" must not read as "down" (service disruption)
    incident_type, _ = domain.classify_alert(alert(title="Large download of installer", description=""))
    assert incident_type is not IncidentType.SERVICE_DISRUPTION


def test_label_declares_type() -> None:
    incident_type, reason = domain.classify_alert(
        alert(title="anything", description="", labels={"incident_type": "data_leak"})
    )
    assert incident_type is IncidentType.DATA_LEAK
    assert reason == "label incident_type=data_leak"


def test_unmatched_alert_is_a_security_breach_until_analysed() -> None:
    incident_type, reason = domain.classify_alert(alert(title="Odd thing", description="", source="person"))
    assert incident_type is IncidentType.SECURITY_BREACH
    assert "no rule matched" in reason


@pytest.mark.parametrize(
    ("severity", "incident_type", "hosts", "expected"),
    [
        (AlertSeverity.CRITICAL, IncidentType.SERVICE_DISRUPTION, 1, Severity.SEV1),
        (AlertSeverity.HIGH, IncidentType.SERVICE_DISRUPTION, 1, Severity.SEV2),
        (AlertSeverity.HIGH, IncidentType.DATA_LEAK, 1, Severity.SEV1),
        (AlertSeverity.MEDIUM, IncidentType.SYSTEM_COMPROMISE, 1, Severity.SEV2),
        (AlertSeverity.MEDIUM, IncidentType.SECURITY_BREACH, 1, Severity.SEV3),
        (AlertSeverity.MEDIUM, IncidentType.SECURITY_BREACH, 5, Severity.SEV2),
        (AlertSeverity.LOW, IncidentType.SECURITY_BREACH, 1, Severity.SEV4),
        (AlertSeverity.INFO, IncidentType.DATA_LEAK, 1, Severity.SEV4),
    ],
)
def test_prioritise(severity: AlertSeverity, incident_type: IncidentType, hosts: int, expected: Severity) -> None:
    result, reason = domain.prioritise(severity, incident_type, hosts)
    assert result is expected
    assert f"highest alert severity {severity.value}" in reason


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
    alerts = [alert(minutes=i / 100, description="x" * 20_000, src_ip=f"10.0.{i // 250}.{i % 250}") for i in range(300)]
    parts = domain.snapshots(_change(alerts))
    # 300 alerts of ~2.3 kB: not two events of 200 but three of about 110, each under 256 KiB.
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
        **overrides,
    )
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
