"""Word back to the people who reported a problem: the coordinator's mails to them, through a real SMTP server.

A person's report (``vigil report-problem``) reaches an incident as a ``user_report`` alert. With
``reporters`` in the notifications file, its reporter hears that it is being handled, each status
update when asked for, and once that it was resolved; an incident merged away hands its reporters
to the survivor. Postgres and the SMTP server (aiosmtpd, STARTTLS and a login) are real.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import Message
from typing import Any

import asyncpg
import pytest

from services.coordinator.handlers import Coordinator
from services.coordinator.service import load_oncall
from shared.effects.domain import message_id
from shared.events import (
    AddNote,
    AlertSummary,
    ChangeState,
    CommandArgs,
    IncidentDetected,
    IncidentMerged,
    IncidentUpdated,
    MergeRecord,
    NoteArgs,
    ResolveIncident,
    StateCommand,
)
from shared.settings import VigilSettings
from shared.topics import TopicNames
from tests.factories import snapshot
from tests.helpers import eventually
from tests.integration.test_coordinator_lifecycle import feed
from tests.integration.test_notifications import Outcomes, configure, mail_config, running, smtp_server

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

INCIDENT = "9a1b2c3d-0000-4000-8000-00000000a001"
OTHER = "9a1b2c3d-0000-4000-8000-00000000a002"
REPORTERS = """
        reporters:
          domains: [example.org]
          when: [received, status_update, resolved]
        """


def user_report(reporter: str, *, minute: int, contact: str | None = None) -> AlertSummary:
    labels = {"reporter": reporter, "affected_service": "payroll"}
    if contact:
        labels["contact"] = contact
    return AlertSummary(
        key=f"user-report:{reporter}:{minute}",
        source="user-report",
        # Words anyone who may send alerts chooses: never quoted back in a mail.
        title="payroll: Reset your password at https://evil.example",
        severity="medium",
        time=datetime(2026, 11, 27, 9, minute, tzinfo=UTC),
        labels=labels,
        format="user_report",
        category="user report",
    )


def reporters_mailed(mailbox: Any, count: int) -> Any:
    async def check() -> bool:
        return sum("problem report" in r.message["Subject"] for r in mailbox.received) >= count

    return check


def mails_to(received: list[Any], address: str) -> list[Message]:
    return [r.message for r in received if r.recipients == [address]]


def body(message: Message) -> str:
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


async def test_a_reporter_hears_it_is_handled_each_status_update_and_once_that_it_was_resolved(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    outcomes = Outcomes()
    async with smtp_server() as (mailbox, port):
        config = configure(mail_config(port) + REPORTERS)
        coordinator = Coordinator(load_oncall(), notices=config)
        ana = user_report("ana.lima@example.org", minute=5)
        detected = snapshot(title="payroll shows another payslip", new_alerts=[ana])
        await feed(pool, names, coordinator, IncidentDetected(source="/t", subject=INCIDENT, data=detected))
        # The same report again, a report whose reporter is a name (its contact is the address), one from an
        # address outside the domains, and one that gives no address: two people more to write to at most.
        again = snapshot(
            new_alerts=[
                ana,
                user_report("Bruno Costa", minute=7, contact="bruno@Example.ORG"),
                user_report("mallory@elsewhere.test", minute=8),
                user_report("Carla", minute=9, contact="+351 21 000 0000"),
            ]
        )
        updated = IncidentUpdated(source="/t", subject=INCIDENT, data=again)
        await feed(pool, names, coordinator, updated)
        await feed(pool, names, coordinator, updated)  # redelivered
        note = AddNote(
            source="/t",
            subject=INCIDENT,
            data=NoteArgs(actor="dana", note="Payroll is read-only while we fix it.", status_update=True),
        )
        await feed(pool, names, coordinator, note)
        resolve = ResolveIncident(source="/t", subject=INCIDENT, data=CommandArgs(actor="dana", resolution="fixed"))
        await feed(pool, names, coordinator, resolve)
        await feed(pool, names, coordinator, resolve)  # delivered again: resolved once
        # Reopened and resolved again: they were told once that it was resolved, and are not told again.
        reopen = ChangeState(source="/t", subject=INCIDENT, data=StateCommand(actor="dana", to_state="acknowledged"))
        await feed(pool, names, coordinator, reopen)
        again_resolved = ResolveIncident(source="/t", subject=INCIDENT, data=CommandArgs(actor="dana"))
        await feed(pool, names, coordinator, again_resolved)
        assert await pool.fetchval("SELECT state FROM coordinator_incidents WHERE incident_id = $1", INCIDENT) == (
            "resolved"
        )
        # A report the detector added as the incident ended is nobody's to tell it is being handled.
        late = snapshot(new_alerts=[user_report("late@example.org", minute=30)])
        await feed(pool, names, coordinator, IncidentUpdated(source="/t", subject=INCIDENT, data=late))
        async with running(settings, pool, names, config, outcomes):
            await eventually(reporters_mailed(mailbox, 6), timeout=30)
            reporter_effects = await pool.fetchval("SELECT count(*) FROM effects WHERE key LIKE '%:reporter_%'")
            stored = await pool.fetch(
                "SELECT address FROM coordinator_reporters WHERE incident_id = $1 ORDER BY address", INCIDENT
            )

    assert reporter_effects == 6  # each reporter's three mails, each once
    # Only addresses Vigil may write to are kept: mallory's is outside the domains.
    assert [r["address"] for r in stored] == ["ana.lima@example.org", "bruno@example.org"]
    assert {tuple(r.recipients) for r in mailbox.received} == {("ana.lima@example.org",), ("bruno@example.org",)}
    # The runner sends each mail on its own: they may arrive in any order.
    ana_mails = {m["Subject"]: m for m in mails_to(mailbox.received, "ana.lima@example.org")}
    received, update, resolved = (
        ana_mails["Your problem report of 2026-11-27 09:05 UTC is being handled (incident 9a1b2c3d)"],
        ana_mails["Update on your problem report of 2026-11-27 09:05 UTC (incident 9a1b2c3d)"],
        ana_mails["Resolved: your problem report of 2026-11-27 09:05 UTC (incident 9a1b2c3d)"],
    )
    assert len(ana_mails) == 3
    assert "It is being handled as incident 9a1b2c3d." in body(received)
    assert "Payroll is read-only while we fix it." in body(update)
    assert "The problem you reported has been fixed." in body(resolved)
    # One conversation per reporter, started by the first mail; never the commander's thread.
    first = message_id(f"{INCIDENT}:reporter_received:received:email:ana.lima@example.org")
    assert received["Message-ID"] == first and received["In-Reply-To"] is None
    assert update["In-Reply-To"] == resolved["In-Reply-To"] == first
    assert "Your problem report of 2026-11-27 09:07 UTC is being handled (incident 9a1b2c3d)" in {
        m["Subject"] for m in mails_to(mailbox.received, "bruno@example.org")
    }
    # The report's own words never reach a mail: anyone who may send alerts could choose them.
    assert all("evil.example" not in body(r.message) + r.message["Subject"] for r in mailbox.received)
    assert all(r.encrypted and r.authenticated for r in mailbox.received)


async def test_without_reporters_in_the_file_nobody_who_reported_is_written_to_and_a_merge_hands_them_on(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with smtp_server() as (mailbox, port):
        silent = Coordinator(load_oncall(), notices=configure(mail_config(port)))
        ana = snapshot(new_alerts=[user_report("ana@example.org", minute=1)])
        await feed(pool, names, silent, IncidentDetected(source="/t", subject=INCIDENT, data=ana))
        assert await pool.fetchval("SELECT count(*) FROM coordinator_reporters") == 0
        assert (
            await pool.fetchval("SELECT count(*) FROM effects WHERE kind = 'notify.email' AND key LIKE '%reporter%'")
            == 0
        )

        config = configure(mail_config(port) + REPORTERS.replace("status_update, ", ""))
        coordinator = Coordinator(load_oncall(), notices=config)
        bruno = snapshot(new_alerts=[user_report("bruno@example.org", minute=2)])
        await feed(pool, names, coordinator, IncidentDetected(source="/t", subject=OTHER, data=bruno))
        note = NoteArgs(actor="dana", note="internal words", status_update=True)
        await feed(pool, names, coordinator, AddNote(source="/t", subject=OTHER, data=note))  # not asked for
        merge = MergeRecord(survivor=INCIDENT, merged=[OTHER], actor="dana", command_id="c-1", alerts=1)
        await feed(pool, names, coordinator, IncidentMerged(source="/t", subject=OTHER, data=merge))
        resolve = ResolveIncident(
            source="/t", subject=INCIDENT, data=CommandArgs(actor="dana", resolution="false_positive")
        )
        await feed(pool, names, coordinator, resolve)
        async with running(settings, pool, names, config, Outcomes()):
            await eventually(reporters_mailed(mailbox, 2), timeout=30)

    subjects = sorted(
        (r.recipients, r.message["Subject"]) for r in mailbox.received if "problem report" in r.message["Subject"]
    )
    # Bruno hears his report is handled, then, once, that the survivor was resolved; never of the merge's end.
    assert subjects == [
        (["bruno@example.org"], "Resolved: your problem report of 2026-11-27 09:02 UTC (incident 9a1b2c3d)"),
        (["bruno@example.org"], "Your problem report of 2026-11-27 09:02 UTC is being handled (incident 9a1b2c3d)"),
    ]
    (resolved,) = [r.message for r in mailbox.received if r.message["Subject"].startswith("Resolved: your problem")]
    assert "found no fault" in body(resolved)


async def test_reporters_of_an_incident_merged_into_a_resolved_one_hear_of_its_resolution_at_once(
    settings: VigilSettings, pool: asyncpg.Pool, names: TopicNames
) -> None:
    async with smtp_server() as (mailbox, port):
        config = configure(mail_config(port) + REPORTERS)
        coordinator = Coordinator(load_oncall(), notices=config)
        await feed(pool, names, coordinator, IncidentDetected(source="/t", subject=INCIDENT, data=snapshot()))
        resolve = ResolveIncident(source="/t", subject=INCIDENT, data=CommandArgs(actor="dana", resolution="duplicate"))
        await feed(pool, names, coordinator, resolve)
        carla = snapshot(new_alerts=[user_report("carla@example.org", minute=3)])
        await feed(pool, names, coordinator, IncidentDetected(source="/t", subject=OTHER, data=carla))
        merge = MergeRecord(survivor=INCIDENT, merged=[OTHER], actor="dana", command_id="c-2", alerts=1)
        await feed(pool, names, coordinator, IncidentMerged(source="/t", subject=OTHER, data=merge))
        await feed(pool, names, coordinator, IncidentMerged(source="/t", subject=OTHER, data=merge))  # redelivered
        async with running(settings, pool, names, config, Outcomes()):
            await eventually(reporters_mailed(mailbox, 2), timeout=30)
            keys = await pool.fetch("SELECT key FROM effects WHERE key LIKE '%:reporter_%' ORDER BY key")

    assert [k["key"] for k in keys] == [
        f"{INCIDENT}:reporter_resolved:resolved:email:carla@example.org",
        f"{OTHER}:reporter_received:received:email:carla@example.org",
    ]
    mails = {r.message["Subject"]: r.message for r in mailbox.received if "problem report" in r.message["Subject"]}
    received = mails["Your problem report of 2026-11-27 09:03 UTC is being handled (incident 9a1b2c3d)"]
    resolved = mails["Resolved: your problem report of 2026-11-27 09:03 UTC (incident 9a1b2c3d)"]
    assert "handled together with another report" in body(resolved)
    # Her conversation is the one the incident that took her report started, though another resolved it.
    assert resolved["In-Reply-To"] == received["Message-ID"]
