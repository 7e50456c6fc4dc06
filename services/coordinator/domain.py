"""Pure decisions of the coordinator: what the escalation says, when it is due, and when it is over."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from shared.events import (
    AlertSummary,
    Analysis,
    AnalysisBrief,
    Escalation,
    EscalationExhaustion,
    IncidentSnapshot,
    IncidentState,
    Severity,
)


def exhaustion(schedule: str, *, paged: list[str], last_commander: str, severity: Severity) -> EscalationExhaustion:
    """Say that everyone in the escalation order was paged, in order, and nobody acknowledged."""
    return EscalationExhaustion(
        rotation=schedule,
        paged=paged,
        last_commander=last_commander,
        severity=severity,
        reason=f"none of the {len(paged)} people of schedule {schedule!r} acknowledged "
        f"within the {severity.value} deadline",
    )


def escalation(
    snapshot: IncidentSnapshot,
    *,
    commander: str,
    channel: str,
    reason: str,
    alerts: list[AlertSummary],
    analysis: AnalysisBrief | None = None,
) -> Escalation:
    """Everything gathered so far, for the commander (runbook: escalate immediately, with all you have)."""
    return Escalation(
        commander=commander,
        channel=channel,
        reason=reason,
        title=snapshot.title,
        type=snapshot.type,
        severity=snapshot.severity,
        classification_reason=snapshot.classification_reason,
        severity_reason=snapshot.severity_reason,
        alert_count=snapshot.alert_count,
        hosts=snapshot.hosts,
        users=snapshot.users,
        first_seen=snapshot.first_seen,
        last_seen=snapshot.last_seen,
        # The tools' raw records stay with the analyzer's evidence (`vigil incidents evidence`), not in messages.
        alerts=[a.model_copy(update={"raw": None, "raw_cut": False}) if a.raw is not None else a for a in alerts],
        analysis=analysis,
    )


def analysis_brief(analysis: Analysis) -> AnalysisBrief:
    """What the commander's page carries of an analysis: the risk and why, root cause, threat, alike incidents."""
    return AnalysisBrief(
        summary=analysis.summary,
        risk=analysis.risk,
        root_cause=analysis.root_cause,
        threat=analysis.threat,
        techniques=[f"{t.id} {t.name}" for t in analysis.techniques],
        similar=analysis.similar,
    )


def analysis_digest(brief: AnalysisBrief) -> str:
    """What an analysis says, in 12 characters: an analysis saying nothing new is not sent again.

    Alike incidents are left out: another incident coming along is no news about this one.
    """
    return hashlib.sha256(brief.model_dump_json(exclude={"similar"}).encode()).hexdigest()[:12]


def known_state(value: str) -> IncidentState | None:
    """Return the state a stored value names, or None for one this version does not know.

    During a rolling deploy a newer coordinator may write a state added after this version.
    """
    try:
        return IncidentState(value)
    except ValueError:
        return None


def known_severity(value: str) -> Severity | None:
    """Return the severity a stored value names, or None for one this version does not know."""
    try:
        return Severity(value)
    except ValueError:
        return None


def escalates(old: Severity, new: Severity) -> bool:
    """A severity raised on an open incident calls for escalating again."""
    return new.urgency > old.urgency


# A mail address as a report gives it (the reporter, or the contact when the reporter is a name).
_MAIL_ADDRESS = re.compile(r"[^@\s<>,;:\"]+@[^@\s<>,;:\".]+(?:\.[^@\s<>,;:\".]+)+")
USER_REPORT = "user_report"


@dataclass(frozen=True)
class Reporter:
    """Someone who reported a problem an incident holds, and their (first) report in it."""

    address: str
    alert_key: str
    reported_at: datetime


def reporters(alerts: Sequence[AlertSummary]) -> list[Reporter]:
    """The people who reported these problems (user reports), by mail address, each once, first report first.

    Their address is the report's ``reporter`` when it is one, else its ``contact``; a report that
    names no address (a name and a phone number) gives nobody to write to.
    """
    found: dict[str, Reporter] = {}
    for alert in sorted((a for a in alerts if a.format == USER_REPORT), key=lambda a: a.time):
        for said in (alert.labels.get("reporter"), alert.labels.get("contact")):
            if said and _MAIL_ADDRESS.fullmatch(address := said.strip().lower()):
                found.setdefault(address, Reporter(address, alert.key, alert.time))
                break
    return list(found.values())


def report_time(at: datetime) -> str:
    """When a report was made, as its reporter is reminded of it: ``2026-11-27 09:05 UTC``."""
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
