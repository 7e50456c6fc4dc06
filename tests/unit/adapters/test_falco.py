"""Falco's JSON output, straight from Falco or forwarded by falcosidekick, becomes one alert."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from services.detector.adapters import Rejected, parse_payload
from services.detector.adapters.falco import Falco
from tests.unit.adapters.corpus import (
    records,
)

ADAPTER = Falco()
CORPUS_DIR = "falco"

# Falco's documented JSON output (falco.org/docs/concepts/outputs/formatting/, "json_output: true").
DOCUMENTED: dict[str, Any] = {
    "output": "16:31:56.746609046: Error File below a known binary directory opened for writing "
    "(user=root command=touch /bin/hack file=/bin/hack)",
    "priority": "Error",
    "rule": "Write below binary dir",
    "time": "2017-10-09T23:31:56.746609046Z",
    "output_fields": {
        "evt.time": 1507591916746609046,
        "fd.name": "/bin/hack",
        "proc.cmdline": "touch /bin/hack",
        "user.name": "root",
    },
}

# falcosidekick's forwarded payload (types.FalcoPayload in github.com/falcosecurity/falcosidekick:
# uuid, output, priority, rule, time, output_fields, source, tags, hostname), as its webhook output posts it.
SIDEKICK: dict[str, Any] = {
    "uuid": "3f0c1b8e-7a49-4d1e-9f65-2b7d3c1a9e04",
    "output": "09:03:00.000000000: Critical Outbound connection to C2 server (command=nc 203.0.113.45 4444 "
    "connection=10.0.0.5:51234->203.0.113.45:4444 user=deploy)",
    "priority": "Critical",
    "rule": "Outbound Connection to C2 Servers",
    "time": "2025-11-24T09:03:00.000000000Z",
    "output_fields": {
        "evt.time": 1763974980000000000,
        "fd.cip": "10.0.0.5",
        "fd.sip": "203.0.113.45",
        "proc.cmdline": "nc 203.0.113.45 4444",
        "user.name": "deploy",
        "container.id": "host",
    },
    "source": "syscall",
    "tags": ["T1071", "host", "network", "mitre_command_and_control"],
    "hostname": "bastion-01",
}

# falcosidekick's test event, sent by its /test endpoint (outputs tests' falcoTestInput).
SIDEKICK_TEST: dict[str, Any] = {
    "output": "This is a test from falcosidekick",
    "priority": "Debug",
    "hostname": "test-host",
    "rule": "Test rule",
    "time": "2001-01-01T01:10:00Z",
    "output_fields": {"proc.name": "falcosidekick", "proc.tty": 1234},
    "source": "syscalls",
    "tags": ["test", "example"],
}
# The documented examples: test_every_adapter.py checks every adapter's common promises on them.
EXAMPLES = [DOCUMENTED, SIDEKICK, SIDEKICK_TEST]


# ---- the corpus ------------------------------------------------------------------------------


def corpus(line: int) -> Any:
    return ADAPTER.parse(records(CORPUS_DIR)[line - 1])


def test_a_shell_in_a_container_is_a_critical_alert_on_its_node_with_its_tactic() -> None:
    (alert,) = corpus(1).alerts
    assert (alert.title, alert.rule, alert.category) == (
        "Terminal shell in container",
        "Terminal shell in container",
        "syscall",
    )
    assert (alert.severity, alert.source_severity) == ("critical", "priority Critical")
    assert (alert.host, alert.user, alert.resource) == ("falco-xczjd", "root", "default/kubecon")
    assert alert.time == datetime(2023, 5, 25, 13, 44, 5, 478445, tzinfo=UTC)
    assert alert.tags == ["container", "mitre_execution", "shell"]
    assert alert.techniques == ["TA0002"]
    assert alert.description.startswith("13:44:05.478445995: Critical A shell was spawned")
    assert alert.labels["proc.cmdline"] == "sh -c clear; (bash || ash || sh)"
    assert alert.labels["falco.source"] == "syscall"
    assert alert.source == "falco" and alert.kind == "alert"


def test_kubernetes_audit_alerts_name_the_api_user_and_the_target() -> None:
    (disallowed,) = corpus(2).alerts
    (attach,) = corpus(3).alerts
    (created,) = corpus(4).alerts
    assert (disallowed.severity, disallowed.user, disallowed.category) == (
        "medium",
        "csi-cinder-controller",
        "k8s_audit",
    )
    assert (
        disallowed.resource == "volumeattachments/csi-6afb06dce281b86b7bab718b5d966dc261b2b1554941ae449519a128cb2e3fb3"
    )
    assert (attach.severity, attach.user, attach.resource) == (
        "low",
        "kubernetes-admin",
        "hello-app/pods/nginx-676b6c5bbc-4xc6t",
    )
    assert (created.severity, created.host) == ("info", "falco-k8saudit-eks-96d7f6f99-vwjgc")


def test_without_a_hostname_the_pod_is_the_host_and_a_connection_gives_the_addresses() -> None:
    (shell,) = corpus(5).alerts
    (api,) = corpus(6).alerts
    assert (shell.host, shell.resource, shell.severity) == ("alpine", "default/alpine", "low")
    assert (api.host, str(api.src_ip), str(api.dst_ip)) == (
        "falco-pod-delete-7dc9f5fbb8-gbfk7",
        "172.17.0.9",
        "10.96.0.1",
    )
    assert api.user is None


def test_an_unreadable_time_falls_back_to_the_event_time_and_says_so() -> None:
    (alert,) = corpus(8).alerts  # "2021-04-13T20:58:00.746609046Z+2", a hand-made event
    assert alert.time == datetime(2021, 4, 13, 20, 58, 39, tzinfo=UTC)  # evt.time, in microseconds there
    assert alert.labels["time_source"] == "output_fields.evt.time (time missing or unreadable)"
    assert alert.severity == "high"


def test_a_metrics_snapshot_is_skipped_and_a_syscall_drop_is_an_info_alert() -> None:
    snapshot = corpus(9)
    assert (snapshot.alerts, snapshot.skipped) == ([], ["falco internal metrics snapshot: not an alert"])
    (drop,) = corpus(11).alerts
    assert (drop.rule, drop.severity, drop.host) == ("Falco internal: syscall event drop", "info", "host")
    assert drop.labels["n_drops"] == "815508"


def test_the_same_event_is_the_same_alert_and_two_events_are_two() -> None:
    samples = records(CORPUS_DIR)
    assert ADAPTER.parse(copy.deepcopy(samples[0])).alerts[0].key == corpus(1).alerts[0].key
    keys = {a.key for s in samples for a in ADAPTER.parse(s).alerts}
    assert len(keys) == len(samples) - 1  # all but the metrics snapshot


# ---- documented shapes ----------------------------------------------------------------------


def test_the_documented_output_is_read() -> None:
    (alert,) = parse_payload(DOCUMENTED).alerts
    assert (alert.title, alert.severity, alert.user, alert.host) == ("Write below binary dir", "high", "root", None)
    assert alert.time == datetime(2017, 10, 9, 23, 31, 56, 746609, tzinfo=UTC)
    assert alert.severity_reason == "Falco priority Error -> high"
    assert alert.labels["fd.name"] == "/bin/hack"


def test_falcosidekicks_forward_keeps_its_uuid_and_gives_the_connection_and_techniques() -> None:
    (alert,) = parse_payload(SIDEKICK).alerts
    assert (alert.host, alert.user, alert.severity) == ("bastion-01", "deploy", "critical")
    assert (str(alert.src_ip), str(alert.dst_ip)) == ("10.0.0.5", "203.0.113.45")
    assert alert.techniques == ["T1071", "TA0011"]
    assert alert.labels["falco.uuid"] == SIDEKICK["uuid"]
    assert alert.resource is None  # a host process: container.id "host"


def test_the_same_event_straight_from_falco_or_through_falcosidekick_is_one_alert() -> None:
    direct = {k: v for k, v in SIDEKICK.items() if k != "uuid"}
    assert ADAPTER.parse(direct).alerts[0].key == ADAPTER.parse(SIDEKICK).alerts[0].key


def test_falcosidekicks_test_event_is_a_test() -> None:
    (alert,) = ADAPTER.parse(SIDEKICK_TEST).alerts
    assert (alert.kind, alert.severity) == ("test", "info")


@pytest.mark.parametrize(
    ("priority", "severity"),
    [
        ("Emergency", "critical"),
        ("Alert", "critical"),
        ("CRITICAL", "critical"),
        ("Error", "high"),
        ("Warning", "medium"),
        ("Notice", "low"),
        ("Informational", "info"),
        ("Info", "info"),
        ("Debug", "info"),
        ("Loud", "medium"),
    ],
)
def test_the_priority_maps_onto_vigils_scale(priority: str, severity: str) -> None:
    (alert,) = ADAPTER.parse({**DOCUMENTED, "priority": priority}).alerts
    assert alert.severity == severity
    assert alert.source_severity == f"priority {priority}"


def test_an_event_without_a_readable_time_anywhere_is_refused() -> None:
    event = {**DOCUMENTED, "time": "soon", "output_fields": {"user.name": "root"}}
    with pytest.raises(Rejected, match="time 'soon' is not a timestamp") as refused:
        ADAPTER.parse(event)
    assert refused.value.code == "bad_timestamp"
