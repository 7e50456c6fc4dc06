"""The event contract: CloudEvents binary mode on Kafka, validation, and the analyzer's extraction."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary_event
from pydantic import ValidationError

from services.analyzer import domain as analyzer
from services.detector.domain import summarise
from shared import cloudevents
from shared.alerts import AlertSeverity
from shared.consumer import DeadLetterGuard
from shared.errors import DeadLetterLimitExceeded, InvalidMessage, UnknownEventType
from shared.events import (
    EVENT_CLASSES,
    AlertSummary,
    ApproveStep,
    IncidentDetected,
    IncidentState,
    IncidentStateChanged,
    ResponseStepChanged,
    ResponseStepsChanged,
    StateChange,
    StepAnswer,
    StepChange,
    StepChanges,
    trusted,
)
from shared.timeline import TimelineEntry, timeline_entry
from tests.factories import alert, snapshot


def detected() -> IncidentDetected:
    return IncidentDetected(source="/vigil/detector", subject="inc-1", data=snapshot())


def test_encode_is_cloudevents_binary_mode() -> None:
    event = detected()
    record = cloudevents.encode(event)
    headers = dict(record.headers)
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_id"] == event.id.encode()
    assert headers["ce_type"] == b"vigil.incident.detected.v1"
    assert headers["ce_source"] == b"/vigil/detector"
    assert headers["ce_subject"] == b"inc-1"
    assert headers["content-type"] == b"application/json"
    assert record.key == b"inc-1"
    assert json.loads(record.value)["title"] == "Reverse shell spawned"


def test_the_cloudevents_sdk_reads_what_vigil_writes() -> None:
    event = detected()
    record = cloudevents.encode(event)
    parsed = from_binary_event(KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value))
    assert parsed.get_id() == event.id
    assert parsed.get_type() == "vigil.incident.detected.v1"
    assert parsed.get_subject() == "inc-1"
    assert parsed.get_time() == event.time
    assert parsed.get_dataschema() == cloudevents.dataschema("vigil.incident.detected.v1")
    data = parsed.get_data()
    assert isinstance(data, dict)
    assert data["severity"] == "SEV1"


def test_round_trip_keeps_every_field() -> None:
    event = detected()
    record = cloudevents.encode(event)
    assert cloudevents.decode(record.value, record.headers) == event


def test_every_event_type_is_in_the_union() -> None:
    types = [cls.model_fields["type"].default for cls in EVENT_CLASSES]
    assert len(types) == len(set(types))
    assert all(re.fullmatch(r"vigil(\.[a-z_]+)+\.v[1-9][0-9]*", t) for t in types), types
    # A new version of an event is a new type beside the old, which consumers go on reading.
    latest: dict[str, int] = {}
    for name, _, version in (t.rpartition(".v") for t in types):
        latest[name] = max(latest.get(name, 0), int(version))
    assert all(f"{name}.v{v}" in types for name, last in latest.items() for v in range(1, last + 1))


@pytest.mark.parametrize(
    ("value", "headers", "reason"),
    [
        (b"{}", [], "not a CloudEvents 1.0"),
        (b"{}", [("ce_specversion", b"1.0"), ("ce_type", b"vigil.nope.v1")], "unknown to this version"),
        (b"{}", [("ce_specversion", b"1.0"), ("ce_type", b"com.example.thing")], "unknown event type"),
        (b"not json", [("ce_specversion", b"1.0"), ("ce_type", b"vigil.incident.detected.v1")], "not JSON"),
        (
            b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
            [("ce_specversion", b"1.0"), ("ce_type", b"vigil.incident.detected.v1")],
            "nested too deeply",
        ),
        (
            b'{"title": 1}',
            [("ce_specversion", b"1.0"), ("ce_type", b"vigil.incident.detected.v1"), ("ce_id", b"x")],
            "does not match its schema",
        ),
    ],
)
def test_decode_rejects_bad_records_with_a_reason(
    value: bytes, headers: list[tuple[str, bytes | None]], reason: str
) -> None:
    with pytest.raises(InvalidMessage, match=reason):
        cloudevents.decode(value, headers)


def test_an_event_holding_nul_is_refused_since_no_consumer_could_store_it() -> None:
    event = detected()
    record = cloudevents.encode(event)
    with_nul = record.value.replace(b'"title":"', b'"title":"\\u0000', 1)
    assert with_nul != record.value
    with pytest.raises(InvalidMessage, match="NUL character"):
        cloudevents.decode(with_nul, record.headers)
    headers = [(name, raw + b"\x00" if name == "ce_id" else raw) for name, raw in record.headers]
    with pytest.raises(InvalidMessage, match="NUL character"):
        cloudevents.decode(record.value, headers)


@pytest.mark.parametrize("header", ["ce_id", "ce_source", "ce_subject", "ce_correlationid", "ce_causationid"])
def test_an_envelope_too_long_for_any_index_is_refused_since_no_consumer_could_store_it(header: str) -> None:
    # An id of thousands of characters would fail the ledger's primary key at every redelivery.
    record = cloudevents.encode(detected().model_copy(update={"correlationid": "c", "causationid": "c"}))
    long = [(name, b"x" * 3000 if name == header else raw) for name, raw in record.headers]
    with pytest.raises(InvalidMessage, match="at most 500 characters"):
        cloudevents.decode(record.value, long)
    fits = [(name, b"x" * 500 if name == header else raw) for name, raw in record.headers]
    assert cloudevents.decode(record.value, fits) is not None


@pytest.mark.parametrize("when", [b"0001-01-01T00:00:00+01:00", b"9999-12-31T23:00:00-05:00"])
def test_an_event_whose_time_has_no_utc_is_refused_since_no_consumer_could_store_it(when: bytes) -> None:
    record = cloudevents.encode(detected())
    headers = [(name, when if name == "ce_time" else raw) for name, raw in record.headers]
    with pytest.raises(InvalidMessage, match="out of the range a timestamp holds"):
        cloudevents.decode(record.value, headers)


def test_a_header_without_a_value_is_as_if_absent() -> None:
    # Kafka allows a header with no value, and aiokafka reads it as None: never a crash of every consumer.
    event = detected()
    record = cloudevents.encode(event)
    assert cloudevents.decode(record.value, [*record.headers, ("ce_traceparent", None)]) == event
    without_version = [(name, None if name == "ce_specversion" else raw) for name, raw in record.headers]
    with pytest.raises(InvalidMessage, match=r"not a CloudEvents 1\.0"):
        cloudevents.decode(record.value, without_version)


def test_an_unknown_vigil_event_type_is_told_apart_from_garbage() -> None:
    headers = [("ce_specversion", b"1.0"), ("ce_type", b"vigil.incident.archived.v1"), ("ce_id", b"x")]
    with pytest.raises(UnknownEventType):
        cloudevents.decode(b"{}", headers)
    with pytest.raises(InvalidMessage) as caught:
        cloudevents.decode(b"{}", [("ce_specversion", b"1.0"), ("ce_type", b"vigil.incident.detected")])
    assert not isinstance(caught.value, UnknownEventType)


def test_consumers_ignore_fields_a_newer_producer_added() -> None:
    event = IncidentDetected(source="/vigil/detector", subject="inc-1", data=snapshot(new_alerts=[summarise(alert())]))
    record = cloudevents.encode(event)
    body = json.loads(record.value)
    body["merged_into"] = "inc-9"  # a field of a future version, at the top and nested
    body["new_alerts"] = [{**summary, "tactic": "TA0001"} for summary in body["new_alerts"]]
    decoded = cloudevents.decode(json.dumps(body).encode(), [*record.headers, ("ce_traceparent", b"00-ab")])
    assert decoded == event
    assert decoded.data.new_alerts[0].key == event.data.new_alerts[0].key


@pytest.mark.parametrize(
    ("to_state", "ended", "ends"),
    [
        (IncidentState.RESOLVED, None, True),  # an older coordinator: the shipped lifecycle's ends
        (IncidentState.CLOSED, None, True),
        (IncidentState.RECOVERED, None, False),
        (IncidentState.RESOLVED, False, False),  # a lifecycle whose only end is closed
        (IncidentState.RECOVERED, True, True),  # one that ends at recovered
    ],
)
def test_a_state_change_ends_the_incident_as_its_lifecycle_says(
    to_state: IncidentState, ended: bool | None, ends: bool
) -> None:
    assert StateChange(from_state=None, to_state=to_state, actor="alice", ended=ended).ends_incident() is ends


def test_producers_still_refuse_unknown_fields() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        IncidentDetected.model_validate({**detected().model_dump(), "merged_into": "inc-9"})


def test_events_are_frozen() -> None:
    event = detected()
    with pytest.raises(Exception, match="frozen"):
        event.subject = "other"  # type: ignore[misc]


def test_dead_letter_guard_stops_a_consumer_that_dead_letters_everything() -> None:
    guard = DeadLetterGuard(ratio=0.5, window=10)
    guard.record([False] * 5 + [True] * 5)  # exactly half: allowed
    with pytest.raises(DeadLetterLimitExceeded, match="6 of the last 10"):
        guard.record([True])  # the oldest (ok) one leaves the window


def test_dead_letter_guard_forgets_old_failures() -> None:
    guard = DeadLetterGuard(ratio=0.5, window=10)
    guard.record([True] * 5 + [False] * 5)
    guard.record([False] * 10)
    guard.record([True] * 5)  # 5 of the last 10


def test_indicators_from_text_and_addresses() -> None:
    summary = summarise(
        alert(
            title="ET MALWARE Cobalt Strike Beacon",
            description="TLS to cdn-update.bad-actor.example.com, sha256 "
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 from http://bad-actor.example.com/x",
            src_ip="10.0.4.17",
            dst_ip="198.51.100.23",
        )
    )
    found = {(i.kind, i.value) for i in analyzer.extract_indicators([summary])}
    assert ("ipv4", "10.0.4.17") in found
    assert ("ipv4", "198.51.100.23") in found
    assert ("domain", "cdn-update.bad-actor.example.com") in found
    assert ("sha256", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") in found
    assert ("url", "http://bad-actor.example.com/x") in found


def test_analysis_summary_reads_well() -> None:
    assert analyzer.summarise(1, ["a"], [], []) == "1 alert on 1 host and 0 users; 0 indicators"


def test_timeline_names_the_person_for_state_changes() -> None:
    event = IncidentStateChanged(
        source="/vigil/coordinator",
        subject="inc-1",
        data=StateChange(from_state=IncidentState.DETECTED, to_state=IncidentState.ACKNOWLEDGED, actor="alice"),
    )
    entry = timeline_entry(event)
    assert entry.actor == "alice"
    assert entry.summary == "state detected -> acknowledged"
    assert timeline_entry(detected()).actor == "detector"


def test_a_step_change_and_an_approval_read_as_who_did_what_on_the_timeline() -> None:
    change = StepChange(
        step_id="inc-1:isolate:ab",
        plan_id="p",
        step="isolate",
        name="Isolate host",
        item="web-1",
        connector="webhook",
        action="isolate_host",
        from_state="running",
        state="failed",
        actor="responder",
        reason="refused for good: HTTP 400",
        on_failure="escalate",
    )
    entry = timeline_entry(ResponseStepChanged(source="/vigil/responder", subject="inc-1", data=change))
    assert entry.actor == "responder"
    assert entry.summary == (
        "step 'Isolate host: web-1' failed: refused for good: HTTP 400 (its playbook escalates this failure)"
    )
    approval = ApproveStep(
        source="/vigil/responder/api",
        subject="inc-1",
        data=StepAnswer(step_id="inc-1:isolate", actor="alice", role="commander", note="go"),
    )
    assert timeline_entry(approval) == TimelineEntry("alice", "approval of step inc-1:isolate as commander: go")


def test_one_causes_step_changes_read_as_one_line_grouped_by_where_they_went_and_why() -> None:
    def change(item: str, state: str, actor: str, reason: str) -> StepChange:
        return StepChange(
            step_id=f"inc-1:block:{item}",
            plan_id="p",
            step="block",
            name="Block address",
            item=item,
            connector="webhook",
            action="block_ip",
            from_state=None,
            state=state,  # type: ignore[arg-type]
            actor=actor,
            reason=reason,
            on_failure="escalate",
        )

    waiting = "planned by ransomware; containment needs approval"
    changes = [change(f"203.0.113.{n}", "awaiting_approval", "policy", waiting) for n in range(1, 6)]
    changes.append(change("198.51.100.1", "planned", "planner", "planned by ransomware"))
    many = ResponseStepsChanged(source="/vigil/responder", subject="inc-1", data=StepChanges(changes=changes))
    assert timeline_entry(many) == TimelineEntry(
        "policy, planner",
        "6 steps changed: 5 awaiting approval ('Block address: 203.0.113.1', 'Block address: 203.0.113.2', "
        "'Block address: 203.0.113.3' and 2 more): planned by ransomware; containment needs approval; "
        "1 planned ('Block address: 198.51.100.1'): planned by ransomware",
    )
    # Past three groups, the line says how many more changes there were; a long reason is cut.
    varied = [change(f"10.0.0.{n}", "skipped", "planner", f"reason {n} " + "x" * 200) for n in range(5)]
    line = timeline_entry(ResponseStepsChanged(source="/r", subject="i", data=StepChanges(changes=varied))).summary
    assert line.startswith("5 steps changed: 1 skipped ('Block address: 10.0.0.0'): reason 0 xxx")
    assert line.endswith("…; and 2 more") and line.count("…") == 3
    # One change reads as the first version's line.
    [one] = changes[-1:]
    single = ResponseStepsChanged(source="/vigil/responder", subject="inc-1", data=StepChanges(changes=[one]))
    assert timeline_entry(single) == timeline_entry(
        ResponseStepChanged(source="/vigil/responder", subject="inc-1", data=one)
    )


def test_bad_address_in_an_event_is_invalid_not_a_crash() -> None:
    record = cloudevents.encode(detected())
    body = json.loads(record.value)
    body["new_alerts"] = [
        {
            "key": "s:1",
            "source": "s",
            "title": "t",
            "severity": "low",
            "time": "2026-11-24T09:00:00Z",
            "src_ip": "999.1.1.1",
        }
    ]
    with pytest.raises(InvalidMessage, match="src_ip"):
        cloudevents.decode(json.dumps(body).encode(), record.headers)


def test_a_trusted_payload_is_the_one_model_construct_makes() -> None:
    given: dict[str, Any] = {"key": "falco:1", "source": "falco", "title": "shell in container"}
    given |= {"severity": AlertSeverity.HIGH}
    given |= {"time": alert().time, "labels": {"pod": "web"}, "tags": ["container"], "techniques": ["T1059"]}
    made = trusted(AlertSummary, **given)
    reference = AlertSummary.model_construct(**given)
    assert made == reference and made.model_dump_json() == reference.model_dump_json()
    assert made.model_fields_set == reference.model_fields_set
    assert made.raw_cut is False and made.raw is None  # plain defaults filled in
    assert made.model_copy(update={"title": "other"}).title == "other" and made.title == "shell in container"
    with pytest.raises(TypeError, match="labels, tags, techniques must be given"):
        trusted(AlertSummary, key="k", source="s", title="t", severity="high", time=alert().time)


def test_a_lesson_reads_as_such_on_the_timeline_and_is_never_also_a_status_update() -> None:
    from shared.events import AddNote, NoteArgs

    lesson = AddNote(source="/t", subject="inc-1", data=NoteArgs(actor="alice", note="paged fast", lesson="went_well"))
    assert timeline_entry(lesson).summary == "went well: paged fast"
    with pytest.raises(ValidationError, match="a status update or a lesson, not both"):
        NoteArgs(actor="alice", note="x", lesson="went_badly", status_update=True)
