"""What the detector accepts from the raw alerts topic, and the reason it gives when it does not."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from services.detector.handlers import decode
from shared.alerts import Alert
from shared.errors import InvalidMessage
from tests.factories import alert_dict


def raw(value: bytes) -> SimpleNamespace:
    return SimpleNamespace(topic="vigil.alerts.raw", value=value, headers=[])


def test_a_valid_alert_is_keyed_by_source_and_id() -> None:
    event_id, alert = decode(raw(json.dumps(alert_dict(id="a-1", source="falco")).encode()))
    assert event_id == "alert:falco:a-1"
    assert isinstance(alert, Alert)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "empty alert"),
        (b"not json", "does not match the Vigil alert schema"),
        (json.dumps(alert_dict(severity="loud")).encode(), "severity"),
        (json.dumps(alert_dict(time="2026-11-24T09:00:00")).encode(), "time"),  # no offset: ambiguous
        (json.dumps(alert_dict(extra_field=1)).encode(), "extra_field"),
        (json.dumps(alert_dict(title="bad\u0000byte")).encode(), "NUL character"),
    ],
)
def test_invalid_alerts_are_refused_with_a_reason(value: bytes, reason: str) -> None:
    with pytest.raises(InvalidMessage, match=reason):
        decode(raw(value))
