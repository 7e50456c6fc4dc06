"""The benchmark's alerts as each tool writes them, so that the detector pays for reading many formats.

``--formats native`` publishes every generated alert as Vigil's native JSON; ``--formats mixed``
renders each in the format of the tool its template names, as that tool (or its usual shipper)
delivers one alert:

| template source | rendered as | the alert's identity (part of its key) |
|---|---|---|
| alertmanager | Alertmanager webhook message, version 4, one alert in it | ``fingerprint`` |
| wazuh | a Wazuh ``alerts.json`` line | ``manager.name`` / ``id`` |
| falco | Falco's JSON output | digest of hostname, rule, time, output |
| suricata | a Suricata EVE ``alert`` event | ``flow_id`` : ``signature_id`` |
| guardduty | a GuardDuty finding in its EventBridge event | the finding ``id`` |
| crowdstrike | a Falcon streaming API ``DetectionSummaryEvent`` | ``DetectId`` |
| okta, cloudflare | native (Vigil has no adapter for them) | ``id`` |
| osquery | native: an osquery result is not an alert in Vigil (it would be skipped, not stored) | ``id`` |

Every rendered record is exactly one firing alert about the same host as the native one, so the
backlog correlates into the same incidents and the alert count the benchmark waits for is the
same. Two departures from the tools' usual records serve that: a Suricata alert normally names
its addresses, and the adapter then takes them (not the sensor) as what the alert is about, so
the rendered alert carries the host as the sensor's name and no addresses; a GuardDuty finding
names an EC2 instance id, here the host's name. Severities are written on each tool's own scale
and read back the same, except where that scale cannot say it (``READS_AS``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.detector.adapters import Rejected, parse_record
from services.detector.adapters.base import stable_id

MODES = ("native", "mixed")

# (alert key as the detector stores it, the record as the tool sends it)
Rendered = tuple[str, dict[str, Any]]


class RenderError(Exception):
    """A rendered record does not read back as the alert it was made from."""


@dataclass(frozen=True)
class Format:
    name: str  # the adapter that must read it
    render: Callable[[dict[str, Any], datetime], Rendered]
    # Vigil severities the tool's scale cannot say, and the severity they read back as.
    reads_as: dict[str, str] = field(default_factory=dict)


def _digest(alert: dict[str, Any]) -> str:
    return hashlib.sha256(alert["id"].encode()).hexdigest()


def _seq(alert: dict[str, Any]) -> int:
    """The generator's sequence number, the last part of ``<prefix>-<run>-<seq>``."""
    return int(alert["id"].rsplit("-", 1)[1])


def _internal_ip(digest: str) -> str:
    return f"10.{int(digest[0:2], 16)}.{int(digest[2:4], 16)}.{int(digest[4:6], 16) % 254 + 1}"


def native(alert: dict[str, Any], at: datetime) -> Rendered:
    return f"{alert['source']}:{alert['id']}", {**alert, "time": at.isoformat()}


# ---- Alertmanager: webhook_config message, version 4 ----------------------------------------------

ALERTMANAGER_SEVERITY = {"critical": "critical", "high": "error", "medium": "warning", "low": "low", "info": "info"}
RECEIVER = "vigil"


def alertmanager(alert: dict[str, Any], at: datetime) -> Rendered:
    alertname = alert["labels"]["alertname"]
    fingerprint = _digest(alert)[:16]
    labels = {
        "alertname": alertname,
        "env": alert["labels"].get("env", "prod"),
        "instance": f"{alert['host']}:9100",
        "job": "node",
        "severity": ALERTMANAGER_SEVERITY[alert["severity"]],
    }
    annotations = {
        "summary": alert["title"],
        "description": alert["description"],
        "runbook_url": f"https://runbooks.example.com/{alertname.lower()}",
    }
    starts_at = at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    message = {
        "version": "4",
        "groupKey": f'{{}}/{{severity=~"^(?:critical|error|warning|low|info)$"}}:{{alertname="{alertname}"}}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": RECEIVER,
        "groupLabels": {"alertname": alertname},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "http://alertmanager.example.com:9093",
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": annotations,
                "startsAt": starts_at,
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": f"http://prometheus.example.com:9090/graph?g0.expr=ALERTS%7Balertname%3D%22{alertname}%22%7D",
                "fingerprint": fingerprint,
            }
        ],
    }
    return f"alertmanager/{RECEIVER}:{fingerprint}", message


# ---- Wazuh: alerts.json ---------------------------------------------------------------------------

WAZUH_LEVEL = {"info": 3, "low": 5, "medium": 8, "high": 12, "critical": 15}
WAZUH_MANAGER = "wazuh-manager"


def wazuh(alert: dict[str, Any], at: datetime) -> Rendered:
    digest, seq = _digest(alert), _seq(alert)
    alert_id = f"{int(at.timestamp())}.{seq}"
    data: dict[str, Any] = {}
    if src_ip := alert.get("src_ip"):
        data.update(srcip=src_ip, srcport=str(1024 + int(digest[6:10], 16) % 60000))
    if user := alert.get("user"):
        data["dstuser"] = user
    record = {
        "timestamp": at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}+0000",
        "rule": {
            "level": WAZUH_LEVEL[alert["severity"]],
            "description": alert["title"],
            "id": alert["labels"].get("rule_id", "5712"),
            "firedtimes": seq % 50 + 1,
            "mail": False,
            "groups": ["syslog", "sshd", "authentication_failures"],
            "mitre": {"id": ["T1110"], "tactic": ["Credential Access"], "technique": ["Brute Force"]},
            "pci_dss": ["10.2.4", "10.2.5", "11.4"],
            "gdpr": ["IV_35.7.d", "IV_32.2"],
        },
        "agent": {"id": f"{seq % 1000:03d}", "name": alert["host"], "ip": _internal_ip(digest)},
        "manager": {"name": WAZUH_MANAGER},
        "id": alert_id,
        "cluster": {"name": "wazuh", "node": "master"},
        "full_log": alert["description"],
        "predecoder": {"program_name": "sshd", "timestamp": at.strftime("%b %d %H:%M:%S"), "hostname": alert["host"]},
        "decoder": {"parent": "sshd", "name": "sshd"},
        "data": data,
        "location": "/var/log/auth.log",
    }
    return f"wazuh:{WAZUH_MANAGER}/{alert_id}", record


# ---- Falco: json_output -----------------------------------------------------------------------------

FALCO_PRIORITY = {
    "critical": "Critical",
    "high": "Error",
    "medium": "Warning",
    "low": "Notice",
    "info": "Informational",
}


def falco(alert: dict[str, Any], at: datetime) -> Rendered:
    digest, seq = _digest(alert), _seq(alert)
    priority = FALCO_PRIORITY[alert["severity"]]
    user = alert.get("user") or "root"
    container = digest[:12]
    fields: dict[str, Any] = {
        "container.id": container,
        "container.image.repository": "docker.io/library/alpine",
        "evt.time": int(at.timestamp()) * 10**9 + at.microsecond * 1000,
        "proc.cmdline": alert["description"],
        "proc.name": "bash",
        "proc.pid": seq,
        "proc.pname": "runc",
        "user.name": user,
    }
    if dst_ip := alert.get("dst_ip"):
        fields["fd.sip"] = dst_ip
    time = at.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"
    output = (
        f"{at.strftime('%H:%M:%S.%f')}000: {priority} {alert['description']} "
        f"(user={user} container_id={container} proc.pid={seq} image=docker.io/library/alpine)"
    )
    record = {
        "hostname": alert["host"],
        "output": output,
        "priority": priority,
        "rule": alert["title"],
        "source": "syscall",
        "tags": ["container", "mitre_execution", "shell"],
        "time": time,
        "output_fields": fields,
    }
    return f"falco:{stable_id(alert['host'], alert['title'], time, output)}", record


# ---- Suricata: EVE alert event ----------------------------------------------------------------------

SURICATA_SEVERITY = {"critical": 1, "high": 1, "medium": 2, "low": 3, "info": 4}


def suricata(alert: dict[str, Any], at: datetime) -> Rendered:
    digest = _digest(alert)
    flow_id = int(digest[:13], 16)  # 52 bits, exact in every JSON reader
    sid = int(alert["labels"].get("signature_id", "2027082"))
    record = {
        "timestamp": at.strftime("%Y-%m-%dT%H:%M:%S.%f+0000"),
        "flow_id": flow_id,
        "in_iface": "eth0",
        "event_type": "alert",
        # The sensor is the host itself (no addresses: see the module's docstring).
        "host": alert["host"],
        "src_port": 1024 + int(digest[13:17], 16) % 60000,
        "dest_port": 443,
        "proto": "TCP",
        "pkt_src": "wire/pcap",
        "alert": {
            "action": "allowed",
            "gid": 1,
            "signature_id": sid,
            "rev": 3,
            "signature": alert["title"],
            "category": "A Network Trojan was detected",
            "severity": SURICATA_SEVERITY[alert["severity"]],
            "metadata": {
                "attack_target": ["Client_Endpoint"],
                "deployment": ["Perimeter"],
                "mitre_tactic_id": ["TA0011"],
                "mitre_technique_id": ["T1071"],
                "signature_severity": ["Major"],
                "updated_at": ["2024_05_02"],
            },
        },
        "tls": {"subject": "CN=example.net", "sni": "example.net", "version": "TLS 1.2", "ja3": {"hash": digest[:32]}},
        "app_proto": "tls",
        "direction": "to_server",
        "flow": {"pkts_toserver": 6, "pkts_toclient": 5, "bytes_toserver": 1021, "bytes_toclient": 4380},
    }
    return f"suricata:{flow_id}:{sid}", record


# ---- GuardDuty: finding in its EventBridge event ----------------------------------------------------

GUARDDUTY_SEVERITY = {"critical": 9.0, "high": 8.0, "medium": 5.0, "low": 2.0, "info": 1.0}
ACCOUNT = "123456789012"
REGION = "us-east-1"
DETECTOR = "3caf4e0aaa46ce4ccbcef949a8785353"


def guardduty(alert: dict[str, Any], at: datetime) -> Rendered:
    digest = _digest(alert)
    finding_id = digest[:32]
    when = at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"
    resource: dict[str, Any] = {
        "resourceType": "Instance",
        "instanceDetails": {
            "instanceId": alert["host"],
            "instanceType": "m5.large",
            "instanceState": "running",
            "availabilityZone": f"{REGION}b",
            "imageId": "ami-0abcdef1234567890",
            "tags": [{"key": "Name", "value": alert["host"]}],
            "networkInterfaces": [{"privateIpAddress": _internal_ip(digest), "subnetId": "subnet-99999999"}],
        },
    }
    if user := alert.get("user"):
        resource["accessKeyDetails"] = {"accessKeyId": f"ASIA{digest[:16].upper()}", "userName": user}
    action: dict[str, Any] = {"actionType": "NETWORK_CONNECTION"}
    if src_ip := alert.get("src_ip"):
        action["networkConnectionAction"] = {
            "connectionDirection": "INBOUND",
            "remoteIpDetails": {"ipAddressV4": src_ip, "organization": {"asn": "64500", "org": "ExampleNet"}},
            "localPortDetails": {"port": 443, "portName": "HTTPS"},
            "protocol": "TCP",
            "blocked": False,
        }
    finding = {
        "schemaVersion": "2.0",
        "accountId": ACCOUNT,
        "region": REGION,
        "partition": "aws",
        "id": finding_id,
        "arn": f"arn:aws:guardduty:{REGION}:{ACCOUNT}:detector/{DETECTOR}/finding/{finding_id}",
        "type": alert["labels"].get("finding_type", "Exfiltration:S3/AnomalousBehavior"),
        "resource": resource,
        "service": {
            "serviceName": "guardduty",
            "detectorId": DETECTOR,
            "action": action,
            "resourceRole": "TARGET",
            "additionalInfo": {"value": "{}", "type": "default"},
            "eventFirstSeen": when,
            "eventLastSeen": when,
            "archived": False,
            "count": 1,
        },
        "severity": GUARDDUTY_SEVERITY[alert["severity"]],
        "createdAt": when,
        "updatedAt": when,
        "title": alert["title"],
        "description": alert["description"],
    }
    event = {
        "version": "0",
        "id": f"{digest[32:40]}-{digest[40:44]}-{digest[44:48]}-{digest[48:52]}-{digest[52:64]}",
        "detail-type": "GuardDuty Finding",
        "source": "aws.guardduty",
        "account": ACCOUNT,
        "time": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": REGION,
        "resources": [],
        "detail": finding,
    }
    return f"guardduty:{finding_id}", event


# ---- CrowdStrike: Falcon streaming API DetectionSummaryEvent ----------------------------------------

CROWDSTRIKE_SEVERITY = {"info": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}
CROWDSTRIKE_NAMES = {1: "Informational", 2: "Low", 3: "Medium", 4: "High", 5: "Critical"}
CUSTOMER = "0123456789abcdef0123456789abcdef"


def crowdstrike(alert: dict[str, Any], at: datetime) -> Rendered:
    digest, seq = _digest(alert), _seq(alert)
    sensor = digest[:32]
    detect_id = f"ldt:{sensor}:{seq}"
    severity = CROWDSTRIKE_SEVERITY[alert["severity"]]
    event = {
        "ProcessStartTime": int(at.timestamp()) - 5,
        "ProcessEndTime": 0,
        "ProcessId": 100000 + seq,
        "ParentProcessId": 90000 + seq,
        "ComputerName": alert["host"],
        "UserName": alert.get("user") or "SYSTEM",
        "DetectName": alert["title"],
        "DetectDescription": alert["description"],
        "Severity": severity,
        "SeverityName": CROWDSTRIKE_NAMES[severity],
        "FileName": "mimikatz.exe",
        "FilePath": "\\Device\\HarddiskVolume2\\Users\\Public\\",
        "CommandLine": "mimikatz.exe privilege::debug sekurlsa::logonpasswords exit",
        "SHA256String": digest,
        "MD5String": digest[:32],
        "MachineDomain": "corp.example.com",
        "DetectId": detect_id,
        "LocalIP": _internal_ip(digest),
        "MACAddress": "00-50-56-aa-bb-cc",
        "Tactic": alert["labels"].get("tactic", "Credential Access"),
        "Technique": "OS Credential Dumping",
        "Objective": "Gain Access",
        "PatternDispositionDescription": "Detection, standard detection.",
        "PatternDispositionValue": 0,
        "SensorId": sensor,
        "IOCType": "hash_sha256",
        "IOCValue": digest,
        "FalconHostLink": f"https://falcon.crowdstrike.com/activity/detections/detail/{sensor}/{seq}",
    }
    record = {
        "metadata": {
            "customerIDString": CUSTOMER,
            "offset": seq,
            "eventType": "DetectionSummaryEvent",
            "eventCreationTime": int(at.timestamp() * 1000),
            "version": "1.0",
        },
        "event": event,
    }
    return f"crowdstrike:{detect_id}", record


NATIVE = Format("native", native)
# By the template's source; any other source is published as a native alert.
RENDERED: dict[str, Format] = {
    "alertmanager": Format("alertmanager", alertmanager),
    "wazuh": Format("wazuh", wazuh),
    "falco": Format("falco", falco),
    "suricata": Format("suricata", suricata, reads_as={"critical": "high"}),  # Suricata's priority 1 is high
    "guardduty": Format("guardduty", guardduty, reads_as={"info": "low"}),  # GuardDuty's lowest band is Low
    "crowdstrike": Format("crowdstrike", crowdstrike),
}


def format_for(alert: dict[str, Any], mode: str) -> Format:
    """The format the alert is published in under ``--formats mode`` (native or mixed)."""
    return RENDERED.get(alert["source"], NATIVE) if mode == "mixed" else NATIVE


def encode(alert: dict[str, Any], at: datetime, mode: str) -> tuple[str, bytes]:
    """Return (the alert's key as the detector will store it, the record to publish)."""
    key, record = format_for(alert, mode).render(alert, at)
    return key, json.dumps(record, separators=(",", ":")).encode()


def check(alerts: Iterable[dict[str, Any]], at: datetime, mode: str) -> Counter[str]:
    """Read each rendered alert back with the detector's adapters; return how many of each format.

    Each record must be read by its format's adapter as exactly one firing alert (kind ``alert``)
    with the key ``encode`` said, about the same host (the entity that correlates it), at the
    severity the generator chose (or what the tool's scale reads it as).
    """
    formats: Counter[str] = Counter()
    for alert in alerts:
        expected = format_for(alert, mode)
        key, value = encode(alert, at, mode)
        where = f"{alert['source']} alert {alert['id']} rendered as {expected.name}"
        try:
            parsed = parse_record(value)
        except Rejected as exc:
            raise RenderError(f"{where} is refused ({exc.code}): {exc.reason}") from exc
        if parsed.format != expected.name or len(parsed.alerts) != 1 or parsed.skipped:
            raise RenderError(
                f"{where} reads as {parsed.format} with {len(parsed.alerts)} alert(s), skipped {parsed.skipped}"
            )
        read = parsed.alerts[0]
        severity = expected.reads_as.get(alert["severity"], alert["severity"])
        found = (read.key, read.entity, read.severity.value, read.status, read.kind)
        wanted = (key, f"host:{alert['host']}", severity, "firing", "alert")
        if found != wanted:
            raise RenderError(f"{where} reads back as (key, entity, severity, status, kind) {found}, not {wanted}")
        formats[expected.name] += 1
    return formats


def reading_cost(alerts: Iterable[dict[str, Any]], at: datetime, mode: str, *, rounds: int = 3) -> dict[str, Any]:
    """CPU the adapters take to read the records (``parse_record`` alone, no I/O), in µs a record: by format,
    and the mean over the mix. Part of what the mix costs the detector; the rest is carrying richer alerts
    (the tool's record kept as evidence, more labels) through storage and events. Best of ``rounds``."""
    records: defaultdict[str, list[bytes]] = defaultdict(list)
    for alert in alerts:
        records[format_for(alert, mode).name].append(encode(alert, at, mode)[1])
    by_format: dict[str, float] = {}
    for name, values in records.items():
        best = float("inf")
        for _ in range(rounds):
            started = time.perf_counter()
            for value in values:
                parse_record(value)
            best = min(best, time.perf_counter() - started)
        by_format[name] = best / len(values) * 1e6
    total = sum(map(len, records.values()))
    mean = sum(by_format[name] * len(values) for name, values in records.items()) / total
    return {
        "us_per_record": round(mean, 2),
        "by_format": {name: round(us, 2) for name, us in sorted(by_format.items(), key=lambda f: -f[1])},
    }
