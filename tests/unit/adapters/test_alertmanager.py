"""Prometheus Alertmanager webhook messages (version "4") become one alert per alert of the group."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings

from services.detector.adapters import Rejected, parse_payload
from services.detector.adapters.alertmanager import Alertmanager
from services.detector.adapters.base import stable_id
from tests.unit.adapters.corpus import (
    mutated,
    records,
)

ADAPTER = Alertmanager()
CORPUS_DIR = "alertmanager_webhook"

# The message documented at https://prometheus.io/docs/alerting/latest/configuration/#webhook_config
# ("The Alertmanager will send HTTP POST requests in the following JSON format"), filled in.
DOCUMENTED: dict[str, Any] = {
    "version": "4",
    "groupKey": '{}:{alertname="DiskFull"}',
    "truncatedAlerts": 0,
    "status": "firing",
    "receiver": "vigil",
    "groupLabels": {"alertname": "DiskFull"},
    "commonLabels": {"alertname": "DiskFull", "job": "node", "severity": "critical"},
    "commonAnnotations": {"runbook_url": "https://runbooks.example.org/DiskFull"},
    "externalURL": "http://alertmanager.example.org:9093",
    "alerts": [
        {
            "status": "firing",
            "labels": {
                "alertname": "DiskFull",
                "instance": "db-1.example.org:9100",
                "job": "node",
                "severity": "critical",
            },
            "annotations": {"summary": "Disk / is 97% full on db-1", "description": "Only 1.2 GiB left on /"},
            "startsAt": "2025-11-24T09:00:00.123456789Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.example.org:9090/graph?g0.expr=disk_used_ratio+%3E+0.95",
            "fingerprint": "5c8f0e2b1d3a4f67",
        }
    ],
}

# kube-prometheus's Watchdog rule (runbooks.prometheus-operator.dev/runbooks/general/watchdog), as
# Alertmanager delivers it to a heartbeat receiver.
WATCHDOG: dict[str, Any] = {
    "version": "4",
    "groupKey": '{}:{alertname="Watchdog"}',
    "status": "firing",
    "receiver": "deadmansswitch",
    "groupLabels": {"alertname": "Watchdog"},
    "commonLabels": {"alertname": "Watchdog", "prometheus": "monitoring/k8s", "severity": "none"},
    "commonAnnotations": {},
    "externalURL": "http://alertmanager-main.monitoring:9093",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "Watchdog", "prometheus": "monitoring/k8s", "severity": "none"},
            "annotations": {
                "description": "This is an alert meant to ensure that the entire alerting pipeline is functional.\n"
                "This alert is always firing, therefore it should always be firing in Alertmanager\n"
                "and always fire against a receiver.",
                "summary": "An alert that should always be firing to certify that Alertmanager is working properly.",
            },
            "startsAt": "2025-11-24T08:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus-k8s-0:9090/graph?g0.expr=vector%281%29",
            "fingerprint": "e3b0c44298fc1c14",
        }
    ],
}
# The documented examples: test_every_adapter.py checks every adapter's common promises on them.
EXAMPLES = [DOCUMENTED, WATCHDOG]


def message(**alert_overrides: Any) -> dict[str, Any]:
    """The documented message, its one alert changed."""
    payload = copy.deepcopy(DOCUMENTED)
    payload["alerts"][0].update(alert_overrides)
    return payload


def labelled(**labels: str) -> dict[str, Any]:
    payload = message(labels={"alertname": "DiskFull", **labels})
    payload["commonLabels"] = {}
    return payload


# ---- the corpus ------------------------------------------------------------------------------


def test_a_firing_group_of_two_becomes_two_alerts_keyed_by_fingerprint() -> None:
    parsed = ADAPTER.parse(records(CORPUS_DIR)[0])
    assert [a.key for a in parsed.alerts] == [
        "alertmanager/ops-zulip:a1bc48475b20e73d",
        "alertmanager/ops-zulip:c2ea85182f28cbd9",
    ]
    alert = parsed.alerts[0]
    assert (alert.title, alert.rule, alert.host) == ("High CPU core temperature", "High CPU Temperature", "andromeda")
    assert (alert.severity, alert.status, alert.kind) == ("critical", "firing", "alert")
    assert alert.time == datetime(2020, 2, 6, 0, 17, 58, 432911, tzinfo=UTC)
    assert alert.description == "CPU core temperature is 34.75C"
    assert alert.url is not None and alert.url.startswith("http://cobalt:9090/graph?g0.expr=")
    assert alert.labels["annotation.topic"] == "andromeda"
    assert alert.labels["alertmanager.group_key"] == "{}/{}:{}"
    assert "ends_at" not in alert.labels  # Go's zero time is "not set"
    assert alert.severity_reason == "Alertmanager severity 'critical' -> critical"
    assert alert.raw is not None and alert.raw["alert"]["fingerprint"] == "a1bc48475b20e73d"
    assert alert.raw["receiver"] == "ops-zulip" and "alerts" not in alert.raw
    assert parsed.alerts[1].description == "CPU core temperature is 17.625C"


def test_a_resolved_message_resolves_the_alert_it_fired_under_the_same_key() -> None:
    fired, resolved = (ADAPTER.parse(r) for r in records(CORPUS_DIR)[:2])
    assert [a.status for a in resolved.alerts] == ["resolved"]
    assert resolved.alerts[0].key == fired.alerts[0].key


def test_pod_alerts_without_a_host_name_the_namespace_as_their_resource() -> None:
    parsed = ADAPTER.parse(records(CORPUS_DIR)[2])
    assert len(parsed.alerts) == 3
    alert = parsed.alerts[0]
    assert alert.source == "alertmanager/whatever_promstack_with_resolve"
    assert (alert.title, alert.rule) == (
        "Ratio(Max(Working Set, RSS) / Reservation) [5m Avg] < 40 %",
        "JustATestAlert_1",
    )
    assert (alert.host, alert.resource, alert.severity) == (None, "whatever/promstack", "info")
    assert alert.labels["annotation.investigate_link"] == "https://domain.com/grafana/d/fdwTIxFMz/container-intra"
    assert alert.id == "ff6a7a0f5f1c1309"


def test_an_alert_without_fingerprint_or_status_takes_its_labels_hash_and_the_message_status() -> None:
    payload = records(CORPUS_DIR)[3]
    (alert,) = ADAPTER.parse(payload).alerts
    labels = payload["alerts"][0]["labels"]
    assert alert.id == stable_id(*sorted(labels.items()))
    assert (alert.status, alert.severity, alert.host) == ("firing", "medium", "instance-with-hyphen_and_underscore")
    assert alert.time == datetime(2018, 3, 7, 11, 33, 21, 873077, tzinfo=UTC)
    assert alert.url == "http://docker.for.mac.host.internal:9093"  # no generatorURL: the Alertmanager


def test_a_kubernetes_alert_names_its_pod_as_host_and_namespace_and_pod_as_resource() -> None:
    (alert,) = ADAPTER.parse(records(CORPUS_DIR)[4]).alerts
    pod = "alertmanager-ot-mon-prometheus-operator-alertmanager-0"
    assert (alert.host, alert.resource) == (pod, f"monitoring/{pod}")
    assert alert.status == "resolved"
    assert alert.description.startswith("27% throttling of CPU in namespace monitoring")
    assert alert.labels["annotation.runbook_url"].endswith("#alert-name-cputhrottlinghigh")
    assert alert.labels["ends_at"] == "2019-01-28T20:27:23.868893Z"


def test_a_group_sharing_one_fingerprint_is_one_alert_seen_twice() -> None:
    parsed = ADAPTER.parse(records(CORPUS_DIR)[5])
    assert [(a.id, a.host, a.severity) for a in parsed.alerts] == [
        ("dd19ae3d4e06ac55", "cs30.evilcorp", "high"),  # severity "severe"
        ("dd19ae3d4e06ac55", "cs31.evilcorp", "critical"),
    ]


def test_a_message_without_any_status_is_refused() -> None:
    with pytest.raises(Rejected, match="no status") as refused:
        ADAPTER.parse(records(CORPUS_DIR)[6])
    assert refused.value.code == "missing_fields"


# ---- the documented message ----------------------------------------------------------------------


def test_the_documented_message_is_recognised_and_read() -> None:
    parsed = parse_payload(DOCUMENTED)
    assert parsed.format == "alertmanager" and parsed.skipped == []
    (alert,) = parsed.alerts
    assert alert.key == "alertmanager/vigil:5c8f0e2b1d3a4f67"
    assert (alert.title, alert.host, alert.severity, alert.source_severity) == (
        "Disk / is 97% full on db-1",
        "db-1.example.org",
        "critical",
        "severity=critical",
    )
    assert alert.labels["annotation.runbook_url"] == "https://runbooks.example.org/DiskFull"  # common annotation
    assert alert.labels["instance"] == "db-1.example.org:9100"
    assert alert.labels["alertmanager.external_url"] == "http://alertmanager.example.org:9093"


@pytest.mark.parametrize("version", ["3", "5", 4, None])
def test_a_message_of_another_version_is_refused_as_unsupported(version: Any) -> None:
    payload = copy.deepcopy(DOCUMENTED)
    payload["version"] = version
    if version is None:
        del payload["version"]
    with pytest.raises(Rejected, match='Vigil reads version "4"') as refused:
        parse_payload(payload)
    assert refused.value.code == "unsupported_version"


def test_grafanas_alertmanager_like_webhook_is_refused_for_its_version() -> None:
    # Grafana's webhook contact point (grafana.com/docs/grafana/latest/alerting/configure-notifications/
    # manage-contact-points/integrations/webhook-notifier/) sends version "1" with an orgId.
    grafana = {**copy.deepcopy(DOCUMENTED), "version": "1", "orgId": 1, "title": "[FIRING:1] DiskFull"}
    with pytest.raises(Rejected, match="version '1' is not supported") as refused:
        parse_payload(grafana)
    assert refused.value.code == "unsupported_version"


def test_the_watchdog_is_a_heartbeat() -> None:
    (alert,) = parse_payload(WATCHDOG).alerts
    assert (alert.kind, alert.severity, alert.rule) == ("heartbeat", "info", "Watchdog")


def test_a_renamed_heartbeat_is_known_by_severity_none_and_its_purpose() -> None:
    payload = copy.deepcopy(WATCHDOG)
    payload["commonLabels"] = {}
    payload["alerts"][0]["labels"]["alertname"] = "PipelineAlive"
    assert [a.kind for a in ADAPTER.parse(payload).alerts] == ["heartbeat"]
    payload["alerts"][0]["annotations"] = {"summary": "Nightly backup finished"}
    assert [a.kind for a in ADAPTER.parse(payload).alerts] == ["alert"]  # severity none alone is not enough


@pytest.mark.parametrize(
    ("label", "severity"),
    [
        ("critical", "critical"),
        ("page", "critical"),
        ("P1", "critical"),
        ("error", "high"),
        ("High", "high"),
        ("major", "high"),
        ("warning", "medium"),
        ("warn", "medium"),
        ("low", "low"),
        ("minor", "low"),
        ("info", "info"),
        ("none", "info"),
        ("sometimes", "medium"),
    ],
)
def test_the_severity_label_maps_onto_vigils_scale(label: str, severity: str) -> None:
    (alert,) = ADAPTER.parse(labelled(severity=label)).alerts
    assert alert.severity == severity
    assert alert.source_severity == f"severity={label}"
    assert alert.severity_reason is not None and f"{label!r}" in alert.severity_reason


def test_without_a_severity_label_the_priority_label_or_medium_decides() -> None:
    (by_priority,) = ADAPTER.parse(labelled(priority="P2")).alerts
    (unlabelled,) = ADAPTER.parse(labelled()).alerts
    assert by_priority.severity == "high"
    assert (unlabelled.severity, unlabelled.source_severity) == ("medium", None)
    assert unlabelled.severity_reason == "Alertmanager alert without a severity label -> medium"


@pytest.mark.parametrize(
    ("labels", "host"),
    [
        ({"instance": "node-1:9100"}, "node-1"),
        ({"instance": "10.0.0.5:9100"}, "10.0.0.5"),
        ({"instance": "[2001:db8::1]:9100"}, "2001:db8::1"),
        ({"instance": "2001:db8::1"}, "2001:db8::1"),
        ({"instance": "https://shop.example.org/health"}, "shop.example.org"),
        ({"instance": "node-1:9100", "host": "db-1"}, "db-1"),
        ({"job": "node"}, None),  # a scrape job groups many hosts: not one of them
        ({"pod": "api-7d9f", "namespace": "shop"}, "api-7d9f"),
    ],
)
def test_the_host_is_the_label_naming_one_without_its_port(labels: dict[str, str], host: str | None) -> None:
    (alert,) = ADAPTER.parse(labelled(**labels)).alerts
    assert alert.host == host


def test_an_unreadable_alert_is_skipped_with_its_reason_and_the_rest_read() -> None:
    payload = copy.deepcopy(DOCUMENTED)
    payload["alerts"].append({**payload["alerts"][0], "startsAt": "yesterday", "fingerprint": "0000"})
    parsed = ADAPTER.parse(payload)
    assert [a.id for a in parsed.alerts] == ["5c8f0e2b1d3a4f67"]
    assert parsed.skipped == ["alertmanager alert 2 of 2 not read: startsAt 'yesterday' is not a timestamp"]


def test_an_empty_group_and_truncated_alerts_are_accounted_for() -> None:
    payload = {**copy.deepcopy(DOCUMENTED), "alerts": [], "truncatedAlerts": 3}
    parsed = ADAPTER.parse(payload)
    assert parsed.alerts == []
    assert parsed.skipped == [
        "alertmanager message with no alerts",
        "alertmanager left out 3 alert(s) of the group (max_alerts)",
    ]


def test_an_alert_status_other_than_firing_or_resolved_is_refused() -> None:
    with pytest.raises(Rejected, match="'pending' is neither firing nor resolved") as refused:
        ADAPTER.parse(message(status="pending"))
    assert refused.value.code == "invalid_fields"


# ---- properties ---------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(mutated([DOCUMENTED]))
def test_reading_is_a_function_of_the_message(payload: Any) -> None:
    try:
        once = ADAPTER.parse(payload)
    except Rejected:
        return
    assert ADAPTER.parse(copy.deepcopy(payload)) == once


def test_a_record_of_another_tool_on_the_alertmanager_route_is_refused_for_its_shape() -> None:
    falco = {
        "output": "Shell in container",
        "priority": "Critical",
        "rule": "Terminal shell",
        "time": "2026-11-24T09:00:00Z",
    }
    with pytest.raises(Rejected, match="not an Alertmanager webhook message") as refused:
        ADAPTER.parse(falco)
    assert refused.value.code == "invalid_fields"
    assert "output, priority, rule, time" in refused.value.reason
