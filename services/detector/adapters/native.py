"""Vigil's native alert JSON (``shared.alerts.Alert``), as `vigil alert send` and the demo publish it."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from services.detector.adapters.base import Parsed, Rejected
from shared.alerts import ALERT_ADAPTER
from shared.errors import validation_reason

REQUIRED = frozenset({"id", "source", "title", "severity", "time"})


class Native:
    name = "native"
    description = "Vigil's native alert JSON: id, source, title, severity, time (README)."

    def matches(self, payload: Any) -> bool:
        return isinstance(payload, dict) and payload.keys() >= REQUIRED

    def parse(self, payload: Any) -> Parsed:
        try:
            alert = ALERT_ADAPTER.validate_python(payload)
        except ValidationError as exc:
            raise Rejected(
                f"alert does not match the Vigil alert schema: {validation_reason(exc)}", code="invalid_fields"
            ) from exc
        return Parsed(format=self.name, alerts=[alert])
