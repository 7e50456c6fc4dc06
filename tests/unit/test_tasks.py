"""Incident tasks without I/O: the shipped templates, their selection, deadlines, progress and parse errors."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.coordinator import tasks
from shared.events import IncidentType, Severity
from shared.yamlfile import YamlFileError
from tests.factories import T0

SMALL = """
phases:
  triage:
    - id: confirm
      title: Confirm it
      owner: commander
      due: {SEV1: 15m, SEV2: 30m}
      required: true
    - id: status-page
      title: Post on the status page
      owner: communications
      types: [service_disruption]
      min_severity: SEV3
      due: 1h
  investigation:
    - id: root-cause
      title: Find the root cause
      owner: group:sre
      due: 2d
      due_from: phase
      required: true
  containment:
    - id: isolate
      title: Isolate hosts
      owner: person:dana
      types: [system_compromise]
      min_severity: SEV2
"""


@pytest.fixture(scope="module")
def shipped() -> list[tasks.TaskTemplate]:
    return tasks.load_templates()


@pytest.fixture
def small() -> list[tasks.TaskTemplate]:
    return tasks.parse_templates(SMALL)


def ids(templates: list[tasks.TaskTemplate]) -> list[str]:
    return [t.id for t in templates]


def task(**overrides: Any) -> tasks.Task:
    values: dict[str, Any] = {
        "id": 1,
        "incident_id": "inc-1",
        "phase": "triage",
        "template_id": "confirm",
        "position": 0,
        "title": "Confirm it",
        "description": "",
        "owner": "alice",
        "owner_role": "commander",
        "required": False,
        "state": "open",
        "due_after_s": None,
        "due_from": "created",
        "due_at": None,
        "done_at": None,
        "done_by": None,
        "note": "",
        "escalated_at": None,
        "created_at": T0,
        "updated_at": T0,
    }
    return tasks.Task.model_validate(values | overrides)


# ---- the shipped templates -------------------------------------------------------------------------


def test_every_incident_type_gets_required_tasks_in_every_early_phase(shipped: list[tasks.TaskTemplate]) -> None:
    for incident_type in IncidentType:
        chosen = tasks.tasks_for(shipped, incident_type=incident_type, severity=Severity.SEV1)
        phases = {t.phase for t in chosen}
        assert {"triage", "closure", "post_mortem"} <= phases, incident_type
        assert any(t.required and t.phase == "triage" for t in chosen), incident_type
    for incident_type in (IncidentType.SECURITY_BREACH, IncidentType.SYSTEM_COMPROMISE, IncidentType.DATA_LEAK):
        chosen = tasks.tasks_for(shipped, incident_type=incident_type, severity=Severity.SEV1)
        assert set(tasks.PHASES) == {t.phase for t in chosen}, incident_type
        assert any(t.required and t.phase == "recovery" for t in chosen), incident_type


def test_a_more_severe_incident_gets_at_least_the_tasks_of_a_less_severe_one(
    shipped: list[tasks.TaskTemplate],
) -> None:
    for incident_type in IncidentType:
        counts = [
            set(ids(tasks.tasks_for(shipped, incident_type=incident_type, severity=s)))
            for s in (Severity.SEV4, Severity.SEV3, Severity.SEV2, Severity.SEV1)
        ]
        assert all(less <= more for less, more in itertools.pairwise(counts)), incident_type
        assert counts[0] < counts[-1], incident_type


def test_shipped_templates_are_in_phase_order_and_type_specific_where_they_should_be(
    shipped: list[tasks.TaskTemplate],
) -> None:
    assert [t.position for t in shipped] == list(range(len(shipped)))
    order = [tasks.PHASES.index(t.phase) for t in shipped]
    assert order == sorted(order)
    leak = ids(tasks.tasks_for(shipped, incident_type=IncidentType.DATA_LEAK, severity=Severity.SEV3))
    outage = ids(tasks.tasks_for(shipped, incident_type=IncidentType.SERVICE_DISRUPTION, severity=Severity.SEV3))
    assert "notification-duties" in leak and "notification-duties" not in outage
    assert "status-page" in outage and "status-page" not in leak
    assert "classify" in ids(tasks.tasks_for(shipped, incident_type=IncidentType.UNKNOWN, severity=Severity.SEV4))


# ---- selection and deadlines ----------------------------------------------------------------------


def test_selection_by_type_and_minimum_severity(small: list[tasks.TaskTemplate]) -> None:
    def chosen(incident_type: IncidentType, severity: Severity) -> list[str]:
        return ids(tasks.tasks_for(small, incident_type=incident_type, severity=severity))

    # Phase order, whatever the file's order of phases.
    assert chosen(IncidentType.SYSTEM_COMPROMISE, Severity.SEV1) == ["confirm", "isolate", "root-cause"]
    assert chosen(IncidentType.SYSTEM_COMPROMISE, Severity.SEV3) == ["confirm", "root-cause"]
    assert chosen(IncidentType.SERVICE_DISRUPTION, Severity.SEV3) == ["confirm", "status-page", "root-cause"]
    assert chosen(IncidentType.SERVICE_DISRUPTION, Severity.SEV4) == ["confirm", "root-cause"]
    assert chosen(IncidentType.UNKNOWN, Severity.SEV2) == ["confirm", "root-cause"]


def test_deadlines_per_severity_and_from_creation_or_the_phase(small: list[tasks.TaskTemplate]) -> None:
    by_id = {t.id: t for t in small}
    confirm, status, root = by_id["confirm"], by_id["status-page"], by_id["root-cause"]
    assert tasks.due_after(confirm, Severity.SEV1) == timedelta(minutes=15)
    assert tasks.due_after(confirm, Severity.SEV2) == timedelta(minutes=30)
    assert tasks.due_after(confirm, Severity.SEV3) is None  # not listed: no deadline
    # One duration is the same at every severity that gets the task.
    assert status.due == {Severity.SEV1: "1h", Severity.SEV2: "1h", Severity.SEV3: "1h"}

    def plan(template: tasks.TaskTemplate, severity: Severity, phase: tasks.Phase = "triage") -> tasks.NewTask:
        return tasks.plan_task(
            template, incident_id="inc-1", severity=severity, commander="alice", now=T0, started=(phase,)
        )

    assert plan(confirm, Severity.SEV1).due_at == T0 + timedelta(minutes=15)
    assert plan(confirm, Severity.SEV4).due_at is None
    # From its phase: no deadline until the phase starts, unless the incident is in it already.
    waiting = plan(root, Severity.SEV2)
    assert waiting.due_at is None and waiting.due_after_s == 2 * 86400 and waiting.due_from == "phase"
    assert plan(root, Severity.SEV2, "investigation").due_at == T0 + timedelta(days=2)


def test_owners_resolve_the_commander_by_name_and_keep_roles_and_named_owners(
    small: list[tasks.TaskTemplate],
) -> None:
    by_id = {t.id: t for t in small}
    assert tasks.owner_of(by_id["confirm"], commander="alice") == ("alice", "commander")
    assert tasks.owner_of(by_id["status-page"], commander="alice") == ("communications", "communications")
    assert tasks.owner_of(by_id["root-cause"], commander="alice") == ("group:sre", None)
    assert tasks.owner_of(by_id["isolate"], commander="alice") == ("person:dana", None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("90s", timedelta(seconds=90)), ("15m", timedelta(minutes=15)), ("4h", timedelta(hours=4)), ("5d", timedelta(5))],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert tasks.duration(text) == expected


@pytest.mark.parametrize("text", ["0m", "15", "1w", "1h30m", "-5m", ""])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        tasks.duration(text)


# ---- progress and guards --------------------------------------------------------------------------


def test_progress_per_phase_counts_done_of_not_cancelled_and_overdue_at_now() -> None:
    now = T0 + timedelta(hours=1)
    listed = [
        task(id=1, state="done", done_at=T0, done_by="bob", required=True),
        task(id=2, due_at=T0 + timedelta(minutes=30), required=True),  # overdue
        task(id=3, due_at=T0 + timedelta(hours=2)),  # not yet
        task(id=4, state="cancelled", done_at=T0, done_by="bob", due_at=T0),  # cancelled: not counted
        task(id=5, phase="post_mortem", position=9, required=True),
        task(id=6, phase="containment", position=5, state="done", done_at=T0, done_by="bob", due_at=T0),
    ]
    result = tasks.progress(listed, now=now)
    assert [(p.phase, p.done, p.total, p.overdue, p.required_open) for p in result.phases] == [
        ("triage", 1, 3, 1, 1),
        ("containment", 1, 1, 0, 0),  # done late is not overdue
        ("post_mortem", 0, 1, 0, 1),
    ]
    assert (result.done, result.total, result.overdue) == (2, 5, 1)
    assert tasks.required_progress(listed) == {"triage": (1, 2), "post_mortem": (0, 1)}
    assert [t.id for t in tasks.unfinished_required(listed, phases={"triage", "recovery"})] == [2]
    assert tasks.progress([], now=now).phases == []


def test_overdue_reason_names_the_task_its_owner_and_deadline() -> None:
    due = datetime.fromisoformat("2026-11-24T09:15:00+00:00")
    assert tasks.overdue_reason(task(id=7, required=True, due_at=due)) == (
        "triage required task 7 'Confirm it' (owner alice) was due at 2026-11-24 09:15 UTC and is still open"
    )


# ---- parse errors ---------------------------------------------------------------------------------


def problems(document: str) -> list[str]:
    with pytest.raises(YamlFileError) as raised:
        tasks.parse_templates(document)
    return raised.value.problems


def test_errors_name_the_line_and_the_reason() -> None:
    found = problems(
        """phases:
  triage:
    - id: confirm
      title: Confirm it
      owner: the boss
      due: {SEV1: 15x}
    - id: confirm
      title: Again
      owner: scribe
  cleanup:
    - id: tidy
      title: Tidy up
      owner: responder
"""
    )
    assert "tasks:5:14: phases.triage.0.owner: Value error, an owner is a role" in found[0]
    assert "tasks:6:19: phases.triage.0.due.SEV1: Value error, not a duration" in found[1]
    assert found[2].startswith("tasks:10:3: phases.cleanup: Input should be 'triage', 'containment'")
    assert len(found) == 3


def test_a_missing_field_points_at_its_task_and_repeated_ids_at_the_file() -> None:
    assert problems("phases:\n  triage:\n    - id: a\n      owner: scribe\n") == [
        "tasks:3:7: phases.triage.0.title: Field required"
    ]
    repeated = (
        "phases:\n  triage:\n    - {id: a, title: A, owner: scribe}\n"
        "  closure:\n    - {id: a, title: B, owner: scribe}\n"
    )
    assert problems(repeated) == ["tasks:1:1: (file): Value error, template ids repeat: a"]


def test_incoherent_deadlines_are_refused() -> None:
    never = (
        "phases:\n  triage:\n    - {id: a, title: A, owner: scribe, min_severity: SEV2,\n"
        "       due: {SEV1: 1h, SEV3: 2h}}\n"
    )
    assert problems(never) == [
        "tasks:3:7: phases.triage.0: Value error, due for SEV3, which never get the task (min_severity SEV2)"
    ]
    without = "phases:\n  triage:\n    - {id: a, title: A, owner: scribe, due_from: phase}\n"
    assert problems(without) == [
        "tasks:3:7: phases.triage.0: Value error, due_from without due: say how long after it the task is due"
    ]
    empty = "phases:\n  triage:\n    - {id: a, title: A, owner: scribe, due: {}}\n"
    assert "due lists no severity" in problems(empty)[0]


def test_not_yaml_and_not_a_mapping() -> None:
    assert problems("phases: [unclosed\n")[0].startswith("tasks:2:1: not YAML:")
    assert problems("- a list\n") == ["tasks:1:1: (file): Input should be a valid dictionary or instance of TaskBook"]


def test_an_added_task_is_due_after_a_duration_from_now_or_at_a_time_with_its_offset() -> None:
    now = T0
    assert tasks.due_time("14d", now=now) == now + timedelta(days=14)
    assert tasks.due_time("2099-03-01T09:00:00+01:00", now=now) == datetime(2099, 3, 1, 8, tzinfo=UTC)
    for wrong, reason in [
        ("fortnight", "due is a duration from now"),
        ("0h", "due is a duration from now"),
        ("2099-03-01T09:00:00", "give the due time a time zone offset"),
        ("2000-01-01T00:00:00Z", "has passed already"),
        ("9999-12-31T23:59:59-01:00", "is out of range"),
    ]:
        with pytest.raises(ValueError, match=reason):
            tasks.due_time(wrong, now=now)


def test_an_added_task_is_placed_after_its_phases_templates_and_owned_as_asked() -> None:
    templates = tasks.parse_templates(SMALL)
    last = {phase: max(t.position for t in templates if t.phase == phase) for phase in {t.phase for t in templates}}
    assert tasks.adhoc_position(templates, "triage") == last["triage"]
    # A phase without templates follows the last template of the phases before it; before all of them, -1.
    assert tasks.adhoc_position(templates, "post_mortem") == max(t.position for t in templates)
    assert tasks.adhoc_position([t for t in templates if t.phase != "triage"], "triage") == -1

    def planned(owner: str | None) -> tasks.NewTask:
        return tasks.plan_adhoc(
            templates,
            incident_id="inc-1",
            phase="post_mortem",
            title="Rotate the keys",
            description="",
            owner=owner,
            required=True,
            due_at=None,
            commander="alice",
            roles={"scribe": "sam"},
            now=T0,
        )

    task = planned(None)
    assert task.template_id.startswith("adhoc-") and task.template_id != planned(None).template_id
    assert (task.owner, task.owner_role, task.due_from, task.due_after_s) == ("alice", "commander", "created", None)
    assert (planned("scribe").owner, planned("scribe").owner_role) == ("sam", "scribe")
    assert (planned("bob@example.com").owner, planned("bob@example.com").owner_role) == ("bob@example.com", None)


def test_a_template_may_not_take_an_added_tasks_id() -> None:
    taken = "phases:\n  triage:\n    - {id: adhoc-1, title: A, owner: scribe}\n"
    assert "kept for the tasks operators add" in problems(taken)[0]
