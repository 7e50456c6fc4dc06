"""The detector's pure decisions: classification, prioritisation, correlation."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import timedelta

import pytest

from services.detector import domain
from shared.alerts import AlertSeverity
from shared.events import IncidentType, Severity
from tests.factories import alert

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


def test_snapshot_carries_new_alerts_capped() -> None:
    alerts = [alert(minutes=i / 100) for i in range(150)]
    change = domain.correlate(alerts, {}, window=WINDOW, new_id=ids())[0]
    snapshot = change.snapshot()
    assert snapshot.alert_count == 150
    assert len(snapshot.new_alerts) == domain.MAX_ALERTS_PER_EVENT
    assert snapshot.new_alerts[0].key == alerts[0].key
