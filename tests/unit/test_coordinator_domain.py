"""The coordinator's pure decisions: routing to a schedule, escalation content and order, deadlines."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.coordinator import domain, escalation, schedules
from services.coordinator.schedules import OnCallConfig
from services.coordinator.service import load_oncall
from shared.events import AlertSummary, IncidentState, IncidentType, Severity
from tests.factories import T0, snapshot


@pytest.fixture
def oncall() -> OnCallConfig:
    return load_oncall()


def test_shipped_oncall_routes_every_incident_type(oncall: OnCallConfig) -> None:
    assert {t for r in oncall.routes for t in r.types} == {t.value for t in IncidentType}


def test_escalation_goes_down_the_schedule_from_whoever_is_on_call(oncall: OnCallConfig) -> None:
    security = schedules.route(oncall, incident_type="data_leak", severity="SEV1", services=())
    assert security.name == "security"
    start = datetime(2026, 1, 5, 9, tzinfo=UTC)
    assert schedules.escalation_order(security, start) == ["alice@example.com", "bob@example.com", "carol@example.com"]
    second_week = start + timedelta(weeks=1)
    assert schedules.escalation_order(security, second_week)[0] == "bob@example.com"


def test_escalation_carries_everything_gathered() -> None:
    snap = snapshot(alert_count=3, hosts=["web-01", "web-02"], users=["deploy"])
    escalation = domain.escalation(snap, commander="alice", channel="pager", reason="new", alerts=[])
    assert escalation.commander == "alice"
    assert escalation.severity is snap.severity
    assert escalation.classification_reason == snap.classification_reason
    assert escalation.severity_reason == snap.severity_reason
    assert escalation.hosts == ["web-01", "web-02"]
    assert escalation.alert_count == 3


def test_only_a_raised_severity_escalates_again() -> None:
    assert domain.escalates(Severity.SEV3, Severity.SEV1)
    assert not domain.escalates(Severity.SEV1, Severity.SEV2)
    assert not domain.escalates(Severity.SEV2, Severity.SEV2)


def test_a_state_this_version_does_not_know_refuses_every_command() -> None:
    assert domain.known_state("monitoring") is None
    assert domain.known_state("acknowledged") is IncidentState.ACKNOWLEDGED
    assert domain.known_severity("SEV0") is None
    assert domain.known_severity("SEV2") is Severity.SEV2


def test_exhaustion_names_everyone_paged_in_order() -> None:
    paged = ["bob@example.com", "carol@example.com", "alice@example.com"]
    exhaustion = domain.exhaustion("security", paged=paged, last_commander="alice@example.com", severity=Severity.SEV2)
    assert exhaustion.rotation == "security"
    assert exhaustion.paged == paged
    assert exhaustion.last_commander == "alice@example.com"
    assert exhaustion.severity is Severity.SEV2
    assert "SEV2 deadline" in exhaustion.reason


# ---- escalation policies -----------------------------------------------------------------------

POLICIES = escalation.load_escalation()


@pytest.mark.parametrize(
    ("severity", "policy", "first_wait"), [("SEV1", "sev1", 5), ("SEV2", "sev2", 15), ("SEV4", "default", 240)]
)
def test_each_severity_has_its_policy_and_waits(severity: str, policy: str, first_wait: int) -> None:
    chosen = escalation.policy_for(POLICIES, incident_type="data_leak", severity=severity, services=())
    assert chosen.name == policy
    chain = escalation.pages(chosen)
    assert [p.notify for p in chain] == ["on_call", "next_on_call", "next_on_call"]
    assert chain[1].after == timedelta(minutes=first_wait)
    assert escalation.fallback_after(chosen) == timedelta(minutes=first_wait)


def test_a_page_reaches_the_next_person_not_yet_paged_a_group_or_nobody() -> None:
    order = ["alice", "bob", "carol"]
    page = escalation.Page("next_on_call", timedelta(minutes=5), working_hours=False)
    assert escalation.resolve(page, order=order, paged=["alice"], on_call_elsewhere=None) == escalation.Target(
        "bob", True
    )
    assert escalation.resolve(page, order=order, paged=order, on_call_elsewhere=None) is None
    group = escalation.Page("group:security-leads", timedelta(0), working_hours=False)
    assert escalation.resolve(group, order=order, paged=[], on_call_elsewhere=None) == escalation.Target(
        "security-leads", False
    )
    other = escalation.Page("schedule:operations", timedelta(0), working_hours=False)
    assert escalation.resolve(other, order=order, paged=[], on_call_elsewhere="dave") == escalation.Target("dave", True)


def test_working_hours_are_local_and_weekdays_only() -> None:
    hours = escalation.WorkingHours.model_validate(
        {"time_zone": "Europe/Berlin", "days": ["mon", "tue", "wed", "thu", "fri"], "from": "09:00", "to": "17:00"}
    )
    monday_0830_utc = datetime(2026, 11, 23, 8, 30, tzinfo=UTC)  # 09:30 in Berlin
    assert escalation.in_working_hours(hours, monday_0830_utc)
    assert not escalation.in_working_hours(hours, monday_0830_utc.replace(hour=16, minute=30))  # 17:30 there
    assert not escalation.in_working_hours(hours, datetime(2026, 11, 28, 10, tzinfo=UTC))  # a Saturday


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ("policies: [{name: a, steps: [{notify: next_on_call}], fallback: {after: 5m, notify: [x]}}]", "commander"),
        (
            "policies: [{name: a, when: {severities: [SEV1]}, steps: [{notify: on_call}], "
            "fallback: {after: 5m, notify: [x]}}]",
            "the last policy must have no `when`",
        ),
        ("policies: [{name: a, steps: [{notify: pager}], fallback: {after: 5m, notify: [x]}}]", "is not on_call"),
        ("policies: [{name: a, steps: [{notify: on_call}], fallback: {after: soon, notify: [x]}}]", "not a duration"),
        ("working_hours: {time_zone: Mars/Olympus}\npolicies: []", "unknown time zone"),
    ],
)
def test_a_broken_escalation_file_is_refused_with_why(document: str, reason: str) -> None:
    with pytest.raises(escalation.EscalationError, match=reason):
        escalation.parse_escalation(document)


def report(reporter: str, *, contact: str | None = None, minutes: int = 0, fmt: str = "user_report") -> AlertSummary:
    labels = {"reporter": reporter, **({"contact": contact} if contact else {})}
    return AlertSummary(
        key=f"user-report:{reporter}:{minutes}",
        source="user-report",
        title="payroll: shows another employee's payslip",
        severity="medium",
        time=datetime(2026, 11, 27, 9, minutes, tzinfo=UTC),
        labels=labels,
        format=fmt,
    )


def test_the_people_to_write_back_to_are_the_reporters_by_address_each_once_first_report_first() -> None:
    found = domain.reporters(
        [
            report("ana.lima@Example.ORG", minutes=5),
            report("ana.lima@example.org", minutes=1),  # the same person, earlier
            report("Bruno", contact="bruno@mail.example.org"),  # a name: the contact is where to write
            report("Carla", contact="+351 21 000 0000"),  # no address at all: nobody to write to
            report("dave@example.org", fmt="falco"),  # a tool's alert labelled so is no report
            report("erin@elsewhere.test"),  # outside the domains
        ],
        domains=["example.org"],
    )
    assert [(r.address, r.reported_at.minute) for r in found] == [
        ("bruno@mail.example.org", 0),
        ("ana.lima@example.org", 1),
    ]
    assert domain.report_time(found[1].reported_at) == "2026-11-27 09:01 UTC"


@pytest.mark.parametrize(
    "said",
    [
        "a@evil.test(.example.org",  # a comment: a mail server sends to a@evil.test
        "a@evil.test(x.example.org",
        "victim%evil.test@example.org",  # %-routing
        "evil.test!victim@example.org",  # bang path
        "(reset at https://evil.example)ana@example.org",  # words into the To header
        '"ana lima"@example.org',  # a quoted local part
        "añ@example.org",  # not ASCII: no SMTPUTF8 is assumed
        "ana@example.org.",
        "ana@@example.org",
        "ana@example..org",
        "ana@badexample.org",  # a suffix is no subdomain
    ],
)
def test_an_address_a_mail_server_would_read_otherwise_is_nobody_to_write_to(said: str) -> None:
    assert domain.reporters([report(said)], domains=["example.org"]) == []


# ---- services -----------------------------------------------------------------------------------


def test_the_services_an_incident_concerns_are_its_alerts_service_labels_in_order() -> None:
    def summary(**labels: str) -> AlertSummary:
        return AlertSummary(
            key=f"k{len(labels)}", source="alertmanager", title="t", severity="high", time=T0, labels=labels
        )

    alerts = [summary(service="payments-api"), summary(job="node"), summary(service=" "), summary(service="checkout")]
    assert domain.services_of([*alerts, summary(service="payments-api")]) == ["payments-api", "checkout"]
    assert domain.with_services(["checkout"], ["payments-api", "checkout"]) == ["checkout", "payments-api"]
    assert len(domain.with_services([f"s{n}" for n in range(80)], ["last"])) == domain.MAX_SERVICES


def test_a_route_and_a_policy_on_services_match_any_service_by_pattern() -> None:
    oncall = load_oncall()
    payments = schedules.Route("operations", types=frozenset(), severities=frozenset(), services=("payments-*",))
    routed = replace(oncall, routes=(payments, *oncall.routes))
    cases: list[tuple[list[str], str]] = [(["checkout", "payments-api"], "operations"), (["checkout"], "security")]
    cases.append(([], "security"))
    for services, expected in cases:
        chosen = schedules.route(routed, incident_type="data_leak", severity="SEV1", services=services)
        assert chosen.name == expected, services
    policies = escalation.parse_escalation(
        "policies:\n"
        "  - {name: payments, when: {services: ['payments-*']}, acknowledgements: 2, steps: [{notify: on_call}],\n"
        "     fallback: {after: 5m, notify: [leads]}}\n"
        "  - {name: default, steps: [{notify: on_call}], fallback: {after: 5m, notify: [leads]}}\n"
    )

    def policy(services: list[str]) -> str:
        return escalation.policy_for(policies, incident_type="data_leak", severity="SEV1", services=services).name

    assert (policy(["web", "payments-db"]), policy(["web"]), policy([])) == ("payments", "default", "default")
