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

# The label Prometheus and Alertmanager users name a service by, on the alerts of an incident.
SERVICE_LABEL = "service"
# Services an incident keeps for routing, at most: more say nothing a route could use.
MAX_SERVICES = 50


def services_of(alerts: Sequence[AlertSummary]) -> list[str]:
    """The services the alerts name (their ``service`` label), in order of first mention."""
    named = dict.fromkeys(value for a in alerts if (value := a.labels.get(SERVICE_LABEL, "").strip()))
    return list(named)[:MAX_SERVICES]


def with_services(known: Sequence[str], more: Sequence[str]) -> list[str]:
    """The services known, then the new ones, at most MAX_SERVICES."""
    return list(dict.fromkeys([*known, *more]))[:MAX_SERVICES]


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


# A mail address Vigil writes to on the word of a report: plain ASCII, a local part of the commonest
# characters and a domain of DNS labels. Comments ("a@evil.test(.example.org"), %- and !-routing and
# quoted local parts are refused: a mail server reads them otherwise than the domain check does.
_LOCAL_PART = re.compile(r"[A-Za-z0-9_+'-]+(?:\.[A-Za-z0-9_+'-]+)*")
_MAIL_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]")
USER_REPORT = "user_report"


@dataclass(frozen=True)
class Reporter:
    """Someone who reported a problem an incident holds, and their (first) report in it."""

    address: str
    alert_key: str
    reported_at: datetime


def mail_address(text: str) -> str | None:
    """The text as a plain mail address (its domain in lower case), or None when it is not one."""
    local, at, domain = text.strip().rpartition("@")
    domain = domain.lower()
    if not at or len(local) > 64 or len(domain) > 253 or not local.isascii() or not domain.isascii():
        return None
    if not _LOCAL_PART.fullmatch(local) or not _MAIL_DOMAIN.fullmatch(domain):
        return None
    return f"{local}@{domain}"


def in_domains(address: str, domains: Sequence[str]) -> bool:
    """Whether a plain mail address (``mail_address``) is in one of the domains, or below one."""
    domain = address.rpartition("@")[2]
    return any(domain == allowed or domain.endswith("." + allowed) for allowed in domains)


def reporters(alerts: Sequence[AlertSummary], *, domains: Sequence[str]) -> list[Reporter]:
    """The people who reported these problems (user reports), by mail address, each once, first report first.

    Their address is the report's ``reporter`` when it is one, else its ``contact``; only an address in
    one of ``domains`` (or below one) counts. A report that names none (a name and a phone number, an
    address elsewhere) gives nobody to write to.
    """
    found: dict[str, Reporter] = {}
    for alert in sorted((a for a in alerts if a.format == USER_REPORT), key=lambda a: a.time):
        for said in (alert.labels.get("reporter"), alert.labels.get("contact")):
            address = mail_address(said) if said else None
            if address is not None and in_domains(address, domains):
                found.setdefault(address, Reporter(address, alert.key, alert.time))
                break
    return list(found.values())


def report_time(at: datetime) -> str:
    """When a report was made, as its reporter is reminded of it: ``2026-11-27 09:05 UTC``."""
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
