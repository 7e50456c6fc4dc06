"""A person's report of a problem ("the payroll site shows someone else's data"), as an alert.

The shape, under one top-level ``report`` key (``"format": "user_report"`` may stand beside it;
nothing else may), so that no tool's record is ever taken for a report::

    {
      "format": "user_report",
      "report": {
        "reporter": "ana.lima@example.org",
        "description": "Payroll shows another employee's payslip\\nSince 09:00, after logging in.",
        "contact": "+351 21 000 0000",
        "affected_service": "payroll",
        "severity": "high",
        "time": "2026-11-24T09:05:00Z",
        "host": "payroll-web-1"
      }
    }

``reporter`` (who reports: a name or an e-mail address) and ``description`` (what they saw, in
their words) are required; the rest is optional:

- ``contact``: how to reach the reporter (phone, chat handle), when not the reporter itself.
- ``affected_service``: the service as the reporter names it.
- ``severity``: ``info``, ``low``, ``medium``, ``high`` or ``critical`` (any case); without it,
  ``medium``: a person took the time to report it.
- ``time``: when it happened or was noticed (RFC 3339, or Unix seconds); without it, when Vigil
  reads the report (label ``time_source`` says so).
- ``host``: the machine concerned, when the reporter knows it.

Any other key in ``report`` is refused, naming it, rather than ignored (a misspelt ``severty``
would otherwise pass unnoticed).

The alert: ``source`` ``user-report``; ``title`` the affected service and the description's
first line (``payroll: Payroll shows another employee's payslip``); ``description`` the whole
text; ``user`` the reporter; ``host`` the host; ``category`` ``user report``; labels
``reporter``, ``contact`` and ``affected_service``. Its ``id`` (deduplication) is a hash of the
reporter, the time as given and the description, so the same report sent twice (a double
click, a retried request) is one alert seen twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from services.detector.adapters.base import Parsed, Rejected, build_alert, parse_time, stable_id, text, utc_now
from shared.alerts import AlertSeverity

FORMAT = "user_report"
WRAPPER = "report"
REQUIRED = ("reporter", "description")
OPTIONAL = ("contact", "affected_service", "severity", "time", "host")
DEFAULT_SEVERITY = "medium"
TITLE_LINE = 200


class UserReport:
    name = FORMAT
    description = 'A person\'s problem report: {"report": {"reporter", "description", …}} (module docstring).'

    def __init__(self, *, clock: Callable[[], datetime] = utc_now) -> None:
        # Only for a report that says no time: it is then as of its reading.
        self.clock = clock

    def matches(self, payload: Any) -> bool:
        return (
            isinstance(payload, dict)
            and isinstance(payload.get(WRAPPER), Mapping)
            and payload.keys() <= {WRAPPER, "format"}
            and payload.get("format", FORMAT) == FORMAT
        )

    def parse(self, payload: Any) -> Parsed:
        if not isinstance(payload, dict) or not isinstance(payload.get(WRAPPER), Mapping):
            raise Rejected('a user report is a JSON object with a "report" object', code="invalid_fields")
        if payload.get("format", FORMAT) != FORMAT or not payload.keys() <= {WRAPPER, "format"}:
            raise Rejected(
                f'a user report has only "report" and "format": "{FORMAT}" at the top, not {_names(payload)}',
                code="invalid_fields",
            )
        report = payload[WRAPPER]
        unknown = [k for k in report if k not in (*REQUIRED, *OPTIONAL)]
        if unknown:
            raise Rejected(
                f"the report has unknown field(s) {_names(unknown)}; it may hold {', '.join((*REQUIRED, *OPTIONAL))}",
                code="invalid_fields",
            )
        fields = {k: text(report.get(k)) for k in (*REQUIRED, *OPTIONAL)}
        missing = [k for k in REQUIRED if fields[k] is None]
        if missing:
            raise Rejected(f"the report lacks {', '.join(missing)}", code="missing_fields")
        reporter, description = str(fields["reporter"]), str(fields["description"])
        service = fields["affected_service"]
        severity, said, reason = _severity(fields["severity"])
        given_time = report.get("time")
        has_time = given_time not in (None, "")
        first_line = next((line.strip() for line in description.splitlines() if line.strip()), "")[:TITLE_LINE]
        labels = {
            "reporter": reporter,
            "contact": fields["contact"],
            "affected_service": service,
            "time_source": None if has_time else "received (no time in the report)",
        }
        alert = build_alert(
            id=stable_id(reporter, given_time if has_time else "", description),
            source="user-report",
            title=": ".join(part for part in (service, first_line) if part),
            description=description,
            severity=severity,
            source_severity=said,
            severity_reason=reason,
            time=parse_time(given_time, field_name="report.time") if has_time else self.clock(),
            user=reporter,
            host=fields["host"],
            category="user report",
            labels={k: v for k, v in labels.items() if v},
            raw=dict(payload),
            format=self.name,
        )
        return Parsed(format=self.name, alerts=[alert])


def _severity(said: str | None) -> tuple[str, str | None, str]:
    if said is None:
        return DEFAULT_SEVERITY, None, "reported by a person, no severity given -> medium"
    try:
        severity = AlertSeverity(said.lower())
    except ValueError:
        raise Rejected(
            f"severity {said[:40]!r} is not one of {', '.join(s.value for s in AlertSeverity)}",
            code="invalid_fields",
        ) from None
    return severity.value, f"reporter said {said}", f"the reporter's own severity {said} -> {severity.value}"


def _names(keys: Any) -> str:
    return ", ".join(repr(str(k)[:40]) for k in list(keys)[:10])
