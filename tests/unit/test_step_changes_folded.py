"""One cause's run of step changes goes out as one event; a rolled-back savepoint still takes all it queued."""

from __future__ import annotations

from typing import Any

from services.responder.domain import fold_step_changes
from shared.consumer import HandlerContext
from shared.events import (
    MAX_STEP_CHANGES,
    ResponseStepChanged,
    ResponseStepsChanged,
    StepChange,
    StepChanges,
)
from shared.topics import TopicNames


def change(n: int, **fields: Any) -> StepChange:
    return StepChange(
        step_id=f"inc-1:block:{n}",
        plan_id="p",
        step="block",
        name="Block address",
        item=f"203.0.113.{n}",
        connector="webhook",
        action="block_ip",
        from_state=None,
        state="awaiting_approval",
        actor="policy",
        reason="containment needs approval",
        on_failure="stop",
        **fields,
    )


def steps(*changes: StepChange, subject: str = "inc-1", cause: str | None = "ev-1") -> ResponseStepsChanged:
    return ResponseStepsChanged(
        source="/vigil/responder",
        subject=subject,
        causationid=cause,
        correlationid=cause,
        data=StepChanges(changes=list(changes)),
    )


def test_one_causes_changes_to_one_incident_fold_in_order() -> None:
    folded = fold_step_changes(steps(change(1)), steps(change(2), change(3)))
    assert folded is not None
    assert [c.step_id for c in folded.data.changes] == ["inc-1:block:1", "inc-1:block:2", "inc-1:block:3"]


def test_changes_with_another_cause_or_incident_or_what_was_sent_stay_apart() -> None:
    assert fold_step_changes(steps(change(1)), steps(change(2), cause="ev-2")) is None
    assert fold_step_changes(steps(change(1)), steps(change(2), subject="inc-2")) is None
    assert fold_step_changes(steps(change(1)), steps(change(2, sent={"ip": "203.0.113.2"}))) is None
    assert fold_step_changes(steps(change(1, result={"status": 200})), steps(change(2))) is None
    first_version = ResponseStepChanged(
        source="/vigil/responder", subject="inc-1", causationid="ev-1", correlationid="ev-1", data=change(1)
    )
    assert fold_step_changes(first_version, steps(change(2))) is None


def test_an_event_holds_at_most_the_limit() -> None:
    full = steps(*(change(n) for n in range(MAX_STEP_CHANGES)))
    assert fold_step_changes(full, steps(change(MAX_STEP_CHANGES))) is None
    assert fold_step_changes(steps(*full.data.changes[1:]), steps(change(0))) is not None


def context() -> HandlerContext:
    return HandlerContext(conn=None, service="responder", names=TopicNames(""))  # type: ignore[arg-type]


def test_a_context_folds_what_it_queued_since_its_last_mark_only() -> None:
    ctx = context()
    ctx.emit_folded(steps(change(1)), fold_step_changes)
    ctx.emit_folded(steps(change(2)), fold_step_changes)
    assert [len(e.data.changes) for e in ctx.emitted if isinstance(e, ResponseStepsChanged)] == [2]
    # A savepoint begins: what is queued after it may be dropped, so it is never folded into what came before.
    mark = ctx.mark()
    ctx.emit_folded(steps(change(3)), fold_step_changes)
    ctx.emit_folded(steps(change(4)), fold_step_changes)
    assert [len(e.data.changes) for e in ctx.emitted if isinstance(e, ResponseStepsChanged)] == [2, 2]
    ctx.drop_since(mark)  # rolled back: the changes before it are as they were
    [kept] = ctx.emitted
    assert isinstance(kept, ResponseStepsChanged)
    assert [c.step_id for c in kept.data.changes] == ["inc-1:block:1", "inc-1:block:2"]
