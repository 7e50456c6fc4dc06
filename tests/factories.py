"""Builders of realistic alerts and events for tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.alerts import Alert
from shared.events import Analysis, IncidentSnapshot, IncidentType, Severity

T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


def alert_dict(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "source": "suricata",
        "title": "ET SCAN Potential SSH Scan",
        "description": "Inbound SSH scan from 203.0.113.9",
        "severity": "medium",
        "time": T0.isoformat(),
        "host": "web-01",
        "src_ip": "203.0.113.9",
    }
    base.update(overrides)
    return base


def alert(*, minutes: float = 0, **overrides: Any) -> Alert:
    overrides.setdefault("time", (T0 + timedelta(minutes=minutes)).isoformat())
    return Alert.model_validate(alert_dict(**overrides))


def snapshot(**overrides: Any) -> IncidentSnapshot:
    base: dict[str, Any] = {
        "title": "Reverse shell spawned",
        "type": IncidentType.SYSTEM_COMPROMISE,
        "severity": Severity.SEV1,
        "classification_reason": "falco alert mentions 'reverse shell'",
        "severity_reason": "highest alert severity critical -> SEV1",
        "correlation_key": "host:web-01",
        "alert_count": 1,
        "first_seen": T0,
        "last_seen": T0,
        "hosts": ["web-01"],
        "users": ["deploy"],
    }
    base.update(overrides)
    return IncidentSnapshot.model_validate(base)


def analysis(**overrides: Any) -> Analysis:
    """An incident's analysis: a SEV1 system compromise of web-01, or what ``overrides`` say instead."""
    base: dict[str, Any] = {
        "type": IncidentType.SYSTEM_COMPROMISE,
        "severity": Severity.SEV1,
        "title": "t",
        "indicators": [],
        "affected_hosts": ["web-01"],
        "affected_users": [],
        "alert_count": 1,
        "summary": "web-01 touched",
    }
    base.update(overrides)
    return Analysis.model_validate(base)
