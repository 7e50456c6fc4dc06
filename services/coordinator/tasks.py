"""Incident tasks: each runbook phase's checklist, made per incident from templates and tracked to done.

Templates are data (`tasks.yaml`): what to do in each phase, for which incident types and from which
severity, who owns it, by when, and whether the incident's lifecycle waits for it. An incident's
tasks are made in the transaction that takes the incident in, once: a template makes at most one
task per incident. A task with a deadline has a durable timer; when it fires on a task still open,
`on_task_due` says what to escalate. Completing a task cancels its timer.

Operators add tasks of their own to an incident too (`add_task`), the post-mortem's follow-up actions
above all: stored like the others, with a template id of `adhoc-<uuid>` that no template may take.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import asyncpg
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shared import timers
from shared.consumer import HandlerContext
from shared.db import Conn
from shared.errors import VigilError
from shared.events import IncidentState, IncidentType, Severity
from shared.yamlfile import validate_yaml

log = logging.getLogger(__name__)

SERVICE = "coordinator"  # the timers' service: the coordinator fires them
TASK_DUE = "task_due"  # the timers' kind
DEFAULT_TEMPLATES = Path(__file__).with_name("tasks.yaml")

Phase = Literal["triage", "containment", "investigation", "remediation", "recovery", "closure", "post_mortem"]
PHASES: tuple[Phase, ...] = get_args(Phase)
Role = Literal["commander", "scribe", "communications", "responder"]
ROLES: tuple[Role, ...] = get_args(Role)
TaskState = Literal["open", "done", "cancelled"]

_DURATION = re.compile(r"^(\d{1,6})([smhd])$")
_UNIT = {"s": timedelta(seconds=1), "m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}
_NAMED_OWNER = re.compile(r"^(person|group):[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}$")
# A person as the coordinator names them elsewhere (the commander, a role's holder): `alice`, `zoe@example.com`.
_PERSON = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,199}$")
# The template id of a task an operator added: `adhoc-<uuid>`; refused as a template's own id.
ADHOC_PREFIX = "adhoc-"


def duration(text: str) -> timedelta:
    """Return the time a duration such as `90s`, `15m`, `4h` or `5d` names."""
    found = _DURATION.match(text)
    if found is None or int(found[1]) == 0:
        raise ValueError(f"not a duration (a positive number and one of s, m, h, d): {text!r}")
    return int(found[1]) * _UNIT[found[2]]


def _checked_duration(text: str) -> str:
    duration(text)
    return text


def _checked_owner(text: str) -> str:
    if text in ROLES or _NAMED_OWNER.match(text):
        return text
    raise ValueError(f"an owner is a role ({', '.join(ROLES)}), person:<name> or group:<name>; not {text!r}")


def _checked_adhoc_owner(text: str) -> str:
    if text in ROLES or _NAMED_OWNER.match(text) or _PERSON.match(text):
        return text
    raise ValueError(
        f"an owner is a person (alice, zoe@example.com), a role ({', '.join(ROLES)}), person:<name> or "
        f"group:<name>; not {text!r}"
    )


def _checked_template_id(text: str) -> str:
    if text.startswith(ADHOC_PREFIX):
        raise ValueError(f"template ids starting {ADHOC_PREFIX!r} are kept for the tasks operators add")
    return text


def due_time(text: str, *, now: datetime) -> datetime:
    """When a task given ``due`` is due: a duration (`14d`, `4h`) from now, or an ISO 8601 time with its offset.

    Raise ValueError for anything else, and for a time not after ``now``: a deadline passed already would
    page at once.
    """
    try:
        return now + duration(text)
    except ValueError:
        pass
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"due is a duration from now (a positive number and one of s, m, h, d: 14d, 4h) or an ISO 8601 time "
            f"with its offset (2026-03-29T09:00:00Z); not {text!r}"
        ) from None
    if at.tzinfo is None:
        raise ValueError(f"give the due time a time zone offset or Z, such as 2026-03-29T09:00:00Z; not {text!r}")
    try:
        at = at.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-01:00: beyond the last time Python holds
        raise ValueError(f"due {text} is out of range") from None
    if at <= now:
        raise ValueError(f"due {text} has passed already")
    return at


def _checked_due(text: str) -> str:
    # Its form only, here: whether it has passed is known when the task is made (``due_time``).
    due_time(text, now=datetime.min.replace(tzinfo=UTC))
    return text


Duration = Annotated[str, AfterValidator(_checked_duration)]
Owner = Annotated[str, AfterValidator(_checked_owner)]
AdhocOwner = Annotated[str, AfterValidator(_checked_adhoc_owner)]
Due = Annotated[str, Field(max_length=64), AfterValidator(_checked_due)]
TemplateId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$"), AfterValidator(_checked_template_id)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ---- templates -----------------------------------------------------------------------------------


class TemplateSpec(_Model):
    """One task as the file states it, under its phase."""

    id: TemplateId = Field(description="Unique in the file; an incident has at most one task per template.")
    title: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=4000)
    owner: Owner = Field(
        description="commander (the incident's), scribe, communications, responder, person:<name> or group:<name>."
    )
    types: list[IncidentType] | None = Field(None, min_length=1, description="Omitted: every incident type.")
    min_severity: Severity = Field(Severity.SEV4, description="The least severe incident that gets the task.")
    due: dict[Severity, Duration] | None = Field(
        None,
        description="How long after `due_from` it is due: one duration, or one per severity "
        "(a severity not listed has no deadline). Omitted: no deadline.",
    )
    due_from: Literal["created", "phase"] = Field(
        "created", description="created: from the incident's detection; phase: from the start of the task's phase."
    )
    required: bool = Field(False, description="The incident's lifecycle waits for it (a guard of the next state).")

    @field_validator("due", mode="before")
    @classmethod
    def _one_for_all(cls, value: Any, info: ValidationInfo) -> Any:
        """A single duration is the same deadline at every severity that gets the task."""
        if not isinstance(value, str):
            return value
        least = info.data.get("min_severity", Severity.SEV4)
        return {s: value for s in Severity if s.urgency >= least.urgency}

    @model_validator(mode="after")
    def _coherent_deadline(self) -> TemplateSpec:
        if self.due is not None:
            if not self.due:
                raise ValueError("due lists no severity: omit it for a task without a deadline")
            if never := sorted(s.value for s in self.due if s.urgency < self.min_severity.urgency):
                raise ValueError(
                    f"due for {', '.join(never)}, which never get the task (min_severity {self.min_severity.value})"
                )
        elif "due_from" in self.model_fields_set:
            raise ValueError("due_from without due: say how long after it the task is due")
        return self


class TaskTemplate(TemplateSpec):
    """A template with its phase and its place in the file, which orders an incident's tasks."""

    phase: Phase
    position: int = Field(ge=0)


class TaskBook(_Model):
    phases: dict[Phase, list[TemplateSpec]] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> TaskBook:
        ids = [t.id for specs in self.phases.values() for t in specs]
        if repeated := sorted({i for i in ids if ids.count(i) > 1}):
            raise ValueError(f"template ids repeat: {', '.join(repeated)}")
        return self

    def templates(self) -> list[TaskTemplate]:
        """Every template in phase order, then in the file's order."""
        ordered = [(phase, spec) for phase in PHASES for spec in self.phases.get(phase, [])]
        return [
            TaskTemplate.model_validate({**spec.model_dump(exclude_unset=True), "phase": phase, "position": i})
            for i, (phase, spec) in enumerate(ordered)
        ]


def parse_templates(document: str, *, source: str = "tasks") -> list[TaskTemplate]:
    """Validate a task templates file's text; raise YamlFileError, each problem with its line and reason."""
    return validate_yaml(document, TaskBook, source=source).templates()


def load_templates(path: Path = DEFAULT_TEMPLATES) -> list[TaskTemplate]:
    """Read and validate a task templates file; a broken file stops the coordinator at start-up."""
    return parse_templates(path.read_text(), source=str(path))


# ---- pure decisions ------------------------------------------------------------------------------


def applies(template: TaskTemplate, *, incident_type: IncidentType, severity: Severity) -> bool:
    return (template.types is None or incident_type in template.types) and (
        severity.urgency >= template.min_severity.urgency
    )


def tasks_for(
    templates: Iterable[TaskTemplate], *, incident_type: IncidentType, severity: Severity
) -> list[TaskTemplate]:
    """The templates an incident of this type and severity gets, in phase order."""
    chosen = [t for t in templates if applies(t, incident_type=incident_type, severity=severity)]
    return sorted(chosen, key=lambda t: t.position)


def due_after(template: TaskTemplate, severity: Severity) -> timedelta | None:
    """How long after its anchor the task is due at this severity; None: no deadline."""
    if template.due is None or severity not in template.due:
        return None
    return duration(template.due[severity])


def owner_of(
    template: TaskTemplate, *, commander: str, roles: Mapping[str, str] | None = None
) -> tuple[str, str | None]:
    """Return (owner, role): the commander by name; another role by the name of who holds it (``roles``),
    else by its own name until someone takes it."""
    return resolve_owner(template.owner, commander=commander, roles=roles)


def resolve_owner(owner: str, *, commander: str, roles: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """``owner_of`` for an owner as written: a role is whoever holds it, and stays the role's (its task moves
    with the role); a person or group is theirs."""
    if owner == "commander":
        return commander, "commander"
    if owner in ROLES:
        return (roles or {}).get(owner) or owner, owner
    return owner, None


class NewTask(_Model):
    """A task about to be made for an incident: its template's text, owner and deadline resolved."""

    incident_id: str
    phase: Phase
    template_id: str
    position: int
    title: str
    description: str
    owner: str
    owner_role: str | None
    required: bool
    due_after_s: int | None
    due_from: Literal["created", "phase"]
    due_at: AwareDatetime | None
    created_at: AwareDatetime


def plan_task(
    template: TaskTemplate,
    *,
    incident_id: str,
    severity: Severity,
    commander: str,
    now: datetime,
    started: Collection[Phase],
    roles: Mapping[str, str] | None = None,
) -> NewTask:
    """Resolve a template for one incident. A deadline from a phase not yet started waits for `start_phase`;
    one from a phase started already (``started``) runs from now."""
    after = due_after(template, severity)
    anchored = template.due_from == "created" or template.phase in started
    owner, role = owner_of(template, commander=commander, roles=roles)
    return NewTask(
        incident_id=incident_id,
        phase=template.phase,
        template_id=template.id,
        position=template.position,
        title=template.title,
        description=template.description,
        owner=owner,
        owner_role=role,
        required=template.required,
        due_after_s=None if after is None else int(after.total_seconds()),
        due_from=template.due_from,
        due_at=now + after if after is not None and anchored else None,
        created_at=now,
    )


def adhoc_position(templates: Iterable[TaskTemplate], phase: Phase) -> int:
    """Where an added task of this phase is listed: after the phase's templates, before the next phase's.

    Positions are the templates' places in the file, with no room between two; the list orders by position,
    then id, so an added task takes the position of the last template at or before its phase and, newer,
    comes after it (-1 before every template when there is none).
    """
    last = PHASES.index(phase)
    return max((t.position for t in templates if PHASES.index(t.phase) <= last), default=-1)


def plan_adhoc(
    templates: Iterable[TaskTemplate],
    *,
    incident_id: str,
    phase: Phase,
    title: str,
    description: str,
    owner: str | None,
    required: bool,
    due_at: datetime | None,
    commander: str,
    roles: Mapping[str, str] | None,
    now: datetime,
) -> NewTask:
    """A task an operator adds, owned by the commander unless ``owner`` says otherwise.

    Its deadline is a time already (``due_time``), not a duration waiting for its phase: due_from is
    `created` (of the task) and due_after_s is None, so starting its phase leaves it as it is.
    """
    who, role = resolve_owner(owner or "commander", commander=commander, roles=roles)
    return NewTask(
        incident_id=incident_id,
        phase=phase,
        template_id=f"{ADHOC_PREFIX}{uuid.uuid4()}",
        position=adhoc_position(templates, phase),
        title=title,
        description=description,
        owner=who,
        owner_role=role,
        required=required,
        due_after_s=None,
        due_from="created",
        due_at=due_at,
        created_at=now,
    )


class Task(_Model):
    """One incident's task as stored."""

    id: int
    incident_id: str
    phase: str  # a phase of this version, or of a newer one that wrote it
    template_id: str
    position: int
    title: str
    description: str
    owner: str
    owner_role: str | None
    required: bool
    state: TaskState
    due_after_s: int | None
    due_from: str
    due_at: datetime | None
    done_at: datetime | None
    done_by: str | None
    note: str
    escalated_at: datetime | None
    created_at: datetime
    updated_at: datetime
    ticket: dict[str, str] | None = None  # the tracker's ticket it became: tracker, ref, url

    def is_overdue(self, now: datetime) -> bool:
        return self.state == "open" and self.due_at is not None and self.due_at <= now


class PhaseProgress(_Model):
    phase: str
    done: int
    total: int = Field(description="Tasks not cancelled.")
    overdue: int
    required_open: int = Field(description="Required tasks still open: the lifecycle waits for them.")


class Progress(_Model):
    done: int
    total: int
    overdue: int
    phases: list[PhaseProgress]


def progress(tasks: Iterable[Task], *, now: datetime) -> Progress:
    """Per phase, in phase order: how many tasks are done of how many, how many are overdue."""
    by_phase: dict[str, list[Task]] = {}
    for task in tasks:
        if task.state != "cancelled":
            by_phase.setdefault(task.phase, []).append(task)
    order: dict[str, int] = {phase: i for i, phase in enumerate(PHASES)}
    phases = [
        PhaseProgress(
            phase=phase,
            done=sum(t.state == "done" for t in group),
            total=len(group),
            overdue=sum(t.is_overdue(now) for t in group),
            required_open=sum(t.required and t.state == "open" for t in group),
        )
        for phase, group in sorted(by_phase.items(), key=lambda item: order.get(item[0], len(PHASES)))
    ]
    return Progress(
        done=sum(p.done for p in phases),
        total=sum(p.total for p in phases),
        overdue=sum(p.overdue for p in phases),
        phases=phases,
    )


def required_progress(tasks: Iterable[Task]) -> dict[str, tuple[int, int]]:
    """Per phase, (required tasks done, required tasks not cancelled): what a `tasks_done` guard checks."""
    counts: dict[str, tuple[int, int]] = {}
    for task in tasks:
        if task.required and task.state != "cancelled":
            done, total = counts.get(task.phase, (0, 0))
            counts[task.phase] = (done + (task.state == "done"), total + 1)
    return counts


def unfinished_required(tasks: Iterable[Task], *, phases: Collection[str]) -> list[Task]:
    """The required tasks of these phases still open: a guard refuses the next state while there are any."""
    return [t for t in tasks if t.required and t.state == "open" and t.phase in phases]


class OverdueTask(_Model):
    """A task whose deadline passed while it was open: what the coordinator escalates."""

    task: Task
    reason: str


def overdue_reason(task: Task) -> str:
    due = f" at {task.due_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC" if task.due_at is not None else ""
    kind = "required task" if task.required else "task"
    return f"{task.phase} {kind} {task.id} {task.title!r} (owner {task.owner}) was due{due} and is still open"


# ---- errors --------------------------------------------------------------------------------------


class TaskError(VigilError):
    """A task cannot be changed as asked; the message says why."""


class TaskNotFound(TaskError):
    pass


class TaskNotOpen(TaskError):
    """The task is done or cancelled already."""


class IncidentNotFound(TaskError):
    pass


class IncidentNotOpen(TaskError):
    """The incident takes no new task: it is closed, or was merged into another."""


# ---- repository ----------------------------------------------------------------------------------

# What a new task's row is made of, and the type of each column for unnest().
_NEW_COLUMNS = {
    "incident_id": "text",
    "phase": "text",
    "template_id": "text",
    "position": "int",
    "title": "text",
    "description": "text",
    "owner": "text",
    "owner_role": "text",
    "required": "boolean",
    "due_after_s": "int",
    "due_from": "text",
    "due_at": "timestamptz",
    "created_at": "timestamptz",
}
assert set(_NEW_COLUMNS) == set(NewTask.model_fields), "a new task's columns are NewTask's fields"
_INSERT = f"""INSERT INTO coordinator_tasks ({", ".join(_NEW_COLUMNS)})
    SELECT * FROM unnest({", ".join(f"${i}::{kind}[]" for i, kind in enumerate(_NEW_COLUMNS.values(), 1))})
    ON CONFLICT (incident_id, template_id) DO NOTHING
    RETURNING *"""


def task_of(row: asyncpg.Record) -> Task:
    """A task from its row."""
    return Task.model_validate(dict(row))


async def _schedule_due(conn: Conn, tasks: Sequence[Task]) -> None:
    """The due timer of each task that has a due time, in one statement."""
    due = {str(task.id): task.due_at for task in tasks if task.due_at is not None}
    await timers.schedule_many(conn, service=SERVICE, kind=TASK_DUE, due=due)


# The phases an incident has begun when it is detected.
STARTED_AT_DETECTION: tuple[Phase, ...] = ("triage",)


async def create_tasks(
    conn: Conn,
    templates: Iterable[TaskTemplate],
    *,
    incident_id: str,
    incident_type: IncidentType,
    severity: Severity,
    commander: str,
    now: datetime,
    started: Collection[Phase] = STARTED_AT_DETECTION,
    roles: Mapping[str, str] | None = None,
) -> list[Task]:
    """Make the incident's tasks in the caller's transaction; return those made now (none the second time).

    ``started``: the phases the incident has begun; their tasks due from the phase's start are due from now.
    ``roles``: who holds which role on the incident already ({role: person}); their tasks are theirs.
    """
    planned = [
        plan_task(
            t, incident_id=incident_id, severity=severity, commander=commander, now=now, started=started, roles=roles
        )
        for t in tasks_for(templates, incident_type=incident_type, severity=severity)
    ]
    if not planned:
        return []
    rows = await conn.fetch(_INSERT, *([getattr(task, name) for task in planned] for name in _NEW_COLUMNS))
    created = sorted((task_of(r) for r in rows), key=lambda t: t.position)
    await _schedule_due(conn, created)
    if created:
        log.info("incident %s: %d task(s) made", incident_id, len(created))
    return created


async def add_task(
    conn: Conn,
    templates: Iterable[TaskTemplate],
    *,
    incident_id: str,
    phase: Phase,
    title: str,
    description: str = "",
    owner: str | None = None,
    required: bool = False,
    due_at: datetime | None = None,
    now: datetime,
) -> Task:
    """Add an operator's task to the incident in the caller's transaction, with its due timer.

    Raise IncidentNotFound, or IncidentNotOpen for a closed incident or one merged away; a resolved one
    takes tasks, as its post-mortem comes after the resolution.
    """
    # Locked as the coordinator's commands lock it: a `close` checking the required tasks waits for this one.
    row = await conn.fetchrow(
        "SELECT state, commander, roles, merged_into FROM coordinator_incidents WHERE incident_id = $1 FOR UPDATE",
        incident_id,
    )
    if row is None:
        raise IncidentNotFound(f"no incident {incident_id}")
    if row["merged_into"] is not None:
        raise IncidentNotOpen(f"incident {incident_id} was merged into {row['merged_into']}: add the task there")
    if row["state"] == IncidentState.CLOSED.value:
        raise IncidentNotOpen(f"incident {incident_id} is closed: reopen it to add a task")
    planned = plan_adhoc(
        templates,
        incident_id=incident_id,
        phase=phase,
        title=title,
        description=description,
        owner=owner,
        required=required,
        due_at=due_at,
        commander=row["commander"],
        roles=row["roles"],
        now=now,
    )
    inserted = await conn.fetchrow(_INSERT, *([getattr(planned, name)] for name in _NEW_COLUMNS))
    assert inserted is not None  # a new template id: no conflict
    task = task_of(inserted)
    await _schedule_due(conn, [task])
    log.info("incident %s: task %d added to %s", incident_id, task.id, phase)
    return task


async def start_phase(conn: Conn, *, incident_id: str, phase: Phase, now: datetime) -> list[Task]:
    """The incident entered a phase: its open tasks due from the phase's start get their deadline (once)."""
    rows = await conn.fetch(
        """UPDATE coordinator_tasks
           SET due_at = $3::timestamptz + make_interval(secs => due_after_s), updated_at = now()
           WHERE incident_id = $1 AND phase = $2 AND state = 'open' AND due_from = 'phase'
             AND due_after_s IS NOT NULL AND due_at IS NULL
           RETURNING *""",
        incident_id,
        phase,
        now,
    )
    started = sorted((task_of(r) for r in rows), key=lambda t: t.position)
    await _schedule_due(conn, started)
    return started


async def assign_role(conn: Conn, *, incident_id: str, role: str, person: str) -> list[Task]:
    """Someone holds a role on the incident now (a new commander, a scribe): its open tasks become theirs."""
    rows = await conn.fetch(
        """UPDATE coordinator_tasks SET owner = $3, updated_at = now()
           WHERE incident_id = $1 AND owner_role = $2 AND state = 'open' AND owner <> $3
           RETURNING *""",
        incident_id,
        role,
        person,
    )
    return sorted((task_of(r) for r in rows), key=lambda t: t.position)


async def get(conn: Conn, task_id: int) -> Task | None:
    row = await conn.fetchrow("SELECT * FROM coordinator_tasks WHERE id = $1", task_id)
    return None if row is None else task_of(row)


async def list_tasks(conn: Conn, incident_id: str) -> list[Task]:
    """The incident's tasks in phase order, then the templates' order."""
    rows = await conn.fetch("SELECT * FROM coordinator_tasks WHERE incident_id = $1 ORDER BY position, id", incident_id)
    return [task_of(r) for r in rows]


async def overdue(conn: Conn, *, now: datetime) -> list[Task]:
    """Every open task whose deadline has passed, the longest overdue first."""
    rows = await conn.fetch(
        "SELECT * FROM coordinator_tasks WHERE state = 'open' AND due_at <= $1 ORDER BY due_at, id", now
    )
    return [task_of(r) for r in rows]


async def complete(conn: Conn, task_id: int, *, actor: str, note: str, now: datetime | None = None) -> Task:
    """Mark a task done by `actor` and cancel its deadline; raise TaskNotFound or TaskNotOpen."""
    row = await conn.fetchrow("SELECT state, done_by, done_at FROM coordinator_tasks WHERE id = $1 FOR UPDATE", task_id)
    if row is None:
        raise TaskNotFound(f"no task {task_id}")
    if row["state"] != "open":
        when = f"{row['done_at'].astimezone(UTC):%Y-%m-%d %H:%M} UTC"
        raise TaskNotOpen(f"task {task_id} is {row['state']} already (by {row['done_by']} at {when})")
    done = await conn.fetchrow(
        """UPDATE coordinator_tasks SET state = 'done', done_at = $2, done_by = $3, note = $4, updated_at = now()
           WHERE id = $1 RETURNING *""",
        task_id,
        now or datetime.now(UTC),
        actor,
        note,
    )
    await timers.cancel(conn, service=SERVICE, kind=TASK_DUE, subject=str(task_id))
    assert done is not None  # locked above
    return task_of(done)


async def cancel_open(
    conn: Conn, *, incident_id: str, actor: str, note: str, phases: Collection[str] | None = None
) -> list[Task]:
    """Cancel the incident's open tasks (of these phases, or all) and their deadlines: no longer to be done."""
    rows = await conn.fetch(
        """UPDATE coordinator_tasks SET state = 'cancelled', done_at = now(), done_by = $2, note = $3,
               updated_at = now()
           WHERE incident_id = $1 AND state = 'open' AND ($4::text[] IS NULL OR phase = ANY($4::text[]))
           RETURNING *""",
        incident_id,
        actor,
        note,
        None if phases is None else list(phases),
    )
    cancelled = [task_of(r) for r in rows]
    for task in cancelled:
        await timers.cancel(conn, service=SERVICE, kind=TASK_DUE, subject=str(task.id))
    return sorted(cancelled, key=lambda t: t.position)


async def lock_task(conn: Conn, subject: str) -> None:
    """The lock a task's deadline takes first (its subject is the task's id), as finishing the task does."""
    if subject.isascii() and subject.isdigit() and len(subject) <= 18:  # what a bigint id can be
        await conn.execute("SELECT 1 FROM coordinator_tasks WHERE id = $1 FOR UPDATE", int(subject))


async def on_task_due(ctx: HandlerContext, timer: timers.Timer) -> OverdueTask | None:
    """A task's deadline passed: return it for escalation if it is still open, else None.

    Returns each task at most once: the task remembers when it was escalated.
    """
    row = await ctx.conn.fetchrow("SELECT * FROM coordinator_tasks WHERE id = $1 FOR UPDATE", int(timer.subject))
    if row is None:
        log.warning("deadline of task %s fired, but there is no such task", timer.subject)
        return None
    task = task_of(row)
    if task.state != "open" or task.escalated_at is not None:
        return None
    escalated = await ctx.conn.fetchrow(
        "UPDATE coordinator_tasks SET escalated_at = now(), updated_at = now() WHERE id = $1 RETURNING *", task.id
    )
    assert escalated is not None  # locked above
    task = task_of(escalated)
    log.warning("incident %s: task %d %r is overdue", task.incident_id, task.id, task.title)
    return OverdueTask(task=task, reason=overdue_reason(task))
