"""The reporter's timeline renderers and its decoding of events of types it does not know."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from services.reporter.handlers import decode, foreign_event, history_of
from services.reporter.timeline import RENDERERS, HistoryEvent, event_name, generic, render
from shared import cloudevents
from shared.errors import InvalidMessage
from shared.events import (
    EVENT_TYPES,
    IncidentDetected,
    IncidentState,
    IncidentStateChanged,
    StateChange,
    TaskCompleted,
    TaskDone,
)
from shared.timeline import TimelineEntry
from tests.factories import T0, snapshot


def _foreign(event_type: str = "vigil.incident.archived.v1", **data: object) -> HistoryEvent:
    return HistoryEvent(id="e-1", type=event_type, source="/vigil/coordinator", subject="inc-1", time=T0, data=data)


def test_every_known_event_type_has_a_renderer() -> None:
    assert set(EVENT_TYPES) <= set(RENDERERS)


def test_a_known_event_renders_from_its_model_with_the_person_who_acted() -> None:
    event = IncidentStateChanged(
        source="/vigil/coordinator",
        subject="inc-1",
        data=StateChange(from_state=IncidentState.DETECTED, to_state=IncidentState.ACKNOWLEDGED, actor="alice"),
    )
    assert render(history_of(event)) == TimelineEntry("alice", "state detected -> acknowledged")


def test_a_snapshot_in_parts_says_which_part_it_is() -> None:
    event = IncidentDetected(source="/vigil/detector", subject="inc-1", data=snapshot(part=2, parts=3))
    entry = render(history_of(event))
    assert entry.actor == "detector"
    assert entry.summary.startswith("SEV1 system_compromise detected: Reverse shell spawned")
    assert entry.summary.endswith("(part 2 of 3)")


def test_an_unknown_type_renders_generically_with_its_actor_and_plain_fields() -> None:
    event = _foreign(actor="bob", into="inc-7", reason="same host", alerts=["a", "b"], score=None)
    assert generic(event) == TimelineEntry("bob", "incident archived: into=inc-7, reason=same host")
    assert render(event) == generic(event)


def test_an_unknown_type_without_an_actor_is_the_service_s() -> None:
    assert render(_foreign("vigil.alert.suppressed.v2", rule="maintenance")) == TimelineEntry(
        "coordinator", "alert suppressed: rule=maintenance"
    )


def test_a_generic_line_stays_short() -> None:
    entry = generic(_foreign(a="x" * 500, b=1, c=2, d=3, e=4, f=5))
    assert entry.summary.count("=") == 4
    assert len(entry.summary) < 200


def test_a_renderer_for_a_new_type_is_one_table_entry() -> None:
    renderers = {
        **RENDERERS,
        "vigil.incident.archived.v1": lambda e: TimelineEntry(e.actor, f"merged into {e.data['into']}"),
    }
    assert render(_foreign(into="inc-7"), renderers) == TimelineEntry("coordinator", "merged into inc-7")


def test_data_a_renderer_cannot_read_falls_back_to_the_generic_line() -> None:
    # A known type whose stored data no longer matches its model (a field renamed in a newer producer).
    odd = HistoryEvent(
        id="e-2",
        type=TaskCompleted.model_fields["type"].default,
        source="/vigil/coordinator",
        subject="inc-1",
        time=T0,
        data={"title": "Isolate host", "by_person": "carol"},
    )
    assert render(odd) == TimelineEntry("coordinator", "incident task done: by_person=carol, title=Isolate host")


@pytest.mark.parametrize(
    ("event_type", "name"),
    [
        ("vigil.incident.archived.v1", "incident archived"),
        ("vigil.response.step_validated.v12", "response step validated"),
        ("custom", "custom"),
    ],
)
def test_event_names(event_type: str, name: str) -> None:
    assert event_name(event_type) == name


class _Record:
    def __init__(self, value: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        self.value, self.headers = value, headers


def _headers(**attributes: str) -> list[tuple[str, bytes]]:
    return [("ce_specversion", b"1.0"), *((f"ce_{k}", v.encode()) for k, v in attributes.items())]


def test_decode_keeps_an_event_of_an_unknown_type() -> None:
    headers = _headers(
        id="e-9",
        type="vigil.incident.archived.v1",
        source="/vigil/coordinator",
        subject="inc-1",
        time="2026-11-24T09:00:00Z",
        correlationid="c-1",
    )
    event_id, item = decode(_Record(json.dumps({"into": "inc-7", "actor": "bob"}).encode(), headers))
    assert event_id == "e-9"
    assert isinstance(item, HistoryEvent)
    assert (item.type, item.subject, item.time, item.correlationid) == (
        "vigil.incident.archived.v1",
        "inc-1",
        T0,
        "c-1",
    )
    assert item.data == {"into": "inc-7", "actor": "bob"}


def test_decode_returns_known_events_as_their_models() -> None:
    event = TaskCompleted(
        source="/vigil/coordinator",
        subject="inc-1",
        data=TaskDone(task_id=1, phase="containment", title="Isolate", actor="carol", required=True),
    )
    record = cloudevents.encode(event)
    assert decode(_Record(record.value, record.headers)) == (event.id, event)


@pytest.mark.parametrize(
    ("value", "attributes", "reason"),
    [
        (b"{}", {"id": "e", "type": "vigil.x.y.v1", "source": "/vigil/a", "time": "2026-11-24T09:00:00Z"}, "subject"),
        (
            b"[1]",
            {"id": "e", "type": "vigil.x.y.v1", "source": "s", "subject": "i", "time": "2026-11-24T09:00:00Z"},
            "not a JSON object",
        ),
        (
            b"{",
            {"id": "e", "type": "vigil.x.y.v1", "source": "s", "subject": "i", "time": "2026-11-24T09:00:00Z"},
            "not JSON",
        ),
        (b"{}", {"id": "e", "type": "vigil.x.y.v1", "source": "s", "subject": "i", "time": "yesterday"}, "ISO 8601"),
        (
            b"{}",
            {"id": "e", "type": "vigil.x.y.v1", "source": "s", "subject": "i", "time": "2026-11-24T09:00:00"},
            "no timezone",
        ),
        # What Postgres cannot store would stop the reporter at every retry: refused, it is dead-lettered.
        (
            b'{"reason": "bad \\ud800 text"}',
            {"id": "e", "type": "vigil.x.y.v1", "source": "s", "subject": "i", "time": "2026-11-24T09:00:00Z"},
            "not JSON",
        ),
        (
            b"{}",
            {"id": "e", "type": "vigil.x.y.v1", "source": "s", "subject": "i", "time": "0001-01-01T00:00:00+01:00"},
            "out of range",
        ),
        (
            b"{}",
            {"id": "e", "type": "vigil.x.y.v1", "source": "s", "subject": "i", "time": "9999-12-31T23:00:00-05:00"},
            "out of range",
        ),
    ],
)
def test_an_unknown_event_that_cannot_be_kept_is_invalid_with_a_reason(
    value: bytes, attributes: dict[str, str], reason: str
) -> None:
    with pytest.raises(InvalidMessage, match=reason):
        foreign_event(value, _headers(**attributes))


def test_an_unknown_event_is_kept_as_jsonb_and_timestamptz_can_hold_it() -> None:
    """Its time in UTC, its data as the database's JSON codec (orjson) writes it: an integer past 64 bits,
    which the stdlib's json reads as one, is the float orjson reads."""
    attributes = {"id": "e", "type": "vigil.x.y.v1", "source": "s", "subject": "i", "time": "0001-01-01T02:00:00+01:00"}
    event = foreign_event(b'{"count": 123456789012345678901234567890}', _headers(**attributes))
    assert event.time == datetime(1, 1, 1, 1, tzinfo=UTC) and event.time.utcoffset() == timedelta(0)
    assert orjson.loads(orjson.dumps(event.data)) == {"count": 1.2345678901234568e29}
