"""docs/asyncapi.yaml is current, covers every topic and event, is self-contained and valid AsyncAPI 3.0.0.

The document is generated from the code (``shared.asyncapi.render``); these tests fail when the file
on disk lags behind the code, when a topic or an event type is missing from it, when a ``$ref``
points nowhere, when it breaks the official AsyncAPI 3.0.0 JSON schema, or when what the codec puts
on the wire no longer matches what the document describes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import unquote

import jsonschema
import pytest
import yaml

from shared import cloudevents
from shared.alerts import Alert, AlertSeverity
from shared.asyncapi import build, operation_id, render
from shared.consumer import dead_letter_headers
from shared.events import (
    EVENT_TYPES,
    AcknowledgeIncident,
    AlertSummary,
    CommandArgs,
    EventBase,
    IncidentDetected,
    IncidentState,
    IncidentStateChanged,
    StateChange,
)
from shared.topics import ALERTS_DLQ, ALERTS_RAW, ALL_TOPICS, EVENTS_DLQ
from tests import factories

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "docs" / "asyncapi.yaml"
ASYNCAPI_SCHEMA = ROOT / "tests" / "data" / "asyncapi-3.0.0.json"
STALE = "docs/asyncapi.yaml is stale: run `vigil asyncapi`"


@cache
def rendered() -> str:
    return render()


def document() -> dict[str, Any]:
    loaded = yaml.safe_load(rendered())
    assert isinstance(loaded, dict)
    return loaded


def resolve(doc: dict[str, Any], ref: str) -> Any:
    """Follow a local `$ref` (a JSON pointer into the document) and return its target."""
    assert ref.startswith("#/"), f"{ref} does not point inside the document"
    node: Any = doc
    for token in ref[2:].split("/"):
        key = unquote(token).replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and key in node, f"{ref} does not resolve ({key!r} is missing)"
        node = node[key]
    return node


def refs(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Yield (where, ref) for every `$ref` in a document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield path or "/", value
            else:
                yield from refs(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from refs(value, f"{path}/{index}")


def channel_messages(doc: dict[str, Any], channel: str) -> dict[str, dict[str, Any]]:
    return {name: resolve(doc, ref["$ref"]) for name, ref in doc["channels"][channel]["messages"].items()}


def validate_payload(doc: dict[str, Any], schema: dict[str, Any], instance: Any) -> None:
    """Validate against a payload schema whose `$ref`s point at the document's components."""
    rooted = {**schema, "components": {"schemas": doc["components"]["schemas"]}}
    jsonschema.Draft202012Validator(rooted).validate(instance)


# ---- (a) the document on disk is the one the code renders ---------------------------------------


def test_document_on_disk_is_current() -> None:
    if not DOCUMENT.is_file() or DOCUMENT.read_text(encoding="utf-8") != rendered():
        pytest.fail(STALE, pytrace=False)


def test_rendering_is_deterministic_and_round_trips() -> None:
    assert render() == rendered()
    assert document() == build()
    assert document()["asyncapi"] == "3.0.0"


# ---- (b) every topic is a channel, every event type a message of its channel ---------------------


def test_every_topic_is_a_channel_with_its_kafka_settings() -> None:
    doc = document()
    assert set(doc["channels"]) == {topic.name for topic in ALL_TOPICS}
    for topic in ALL_TOPICS:
        channel = doc["channels"][topic.name]
        assert channel["address"] == topic.name
        kafka = channel["bindings"]["kafka"]
        assert kafka["partitions"] == topic.partitions
        assert kafka["topicConfiguration"]["retention.ms"] == topic.retention_ms
        assert channel["messages"], f"{topic.name} carries no message"
        for party in (*topic.producers, *topic.consumers):
            assert party in channel["description"], f"{party} is missing from {topic.name}'s description"


def test_every_event_type_is_a_message_of_the_channel_that_carries_it() -> None:
    doc = document()
    for event_type, cls in EVENT_TYPES.items():
        carriers = [topic for topic in ALL_TOPICS if event_type in topic.event_types]
        assert carriers, f"no topic carries {event_type}"
        for topic in carriers:
            messages = channel_messages(doc, topic.name)
            assert cls.__name__ in messages, f"{topic.name} does not reference {cls.__name__}"
            message = messages[cls.__name__]
            assert message["name"] == cls.__name__
            assert message["headers"]["properties"]["ce_type"]["const"] == event_type
            assert message["bindings"]["kafka"]["key"]["type"] == "string"


def test_cloudevents_channels_carry_only_their_event_types() -> None:
    doc = document()
    for topic in ALL_TOPICS:
        if not topic.cloudevents:
            continue
        types = [m["headers"]["properties"]["ce_type"]["const"] for m in channel_messages(doc, topic.name).values()]
        assert sorted(types) == sorted(topic.event_types), topic.name


def test_raw_alert_and_dead_letter_channels() -> None:
    doc = document()
    raw = channel_messages(doc, ALERTS_RAW.name)
    assert list(raw) == ["RawAlert"]
    assert raw["RawAlert"]["payload"]["title"] == Alert.__name__
    for topic in (ALERTS_DLQ, EVENTS_DLQ):
        dead = channel_messages(doc, topic.name)
        assert list(dead) == ["DeadLetter"], topic.name
    record = SimpleNamespace(topic=ALERTS_RAW.name, partition=3, offset=42)
    written = {name: value.decode() for name, value in dead_letter_headers("detector", record, "not JSON")}
    headers_schema = doc["components"]["messages"]["DeadLetter"]["headers"]
    assert set(headers_schema["properties"]) == set(written)
    jsonschema.Draft7Validator(headers_schema).validate(written)


def test_every_producer_sends_and_every_consumer_receives() -> None:
    doc = document()
    operations = doc["operations"]
    expected = set()
    for topic in ALL_TOPICS:
        for action, parties in (("send", topic.producers), ("receive", topic.consumers)):
            for party in parties:
                key = operation_id(party, action, topic)
                expected.add(key)
                assert key in operations, f"no {action} operation for {party} on {topic.name}"
                assert operations[key]["action"] == action
                assert operations[key]["channel"]["$ref"] == f"#/channels/{topic.name}"
    assert set(operations) == expected
    assert "detector.send.vigil.incidents" in operations
    for key, operation in operations.items():
        channel = resolve(doc, operation["channel"]["$ref"])
        prefix = f"{operation['channel']['$ref']}/messages/"
        assert operation["messages"], f"{key} lists no message"
        for message in operation["messages"]:
            assert message["$ref"].startswith(prefix), f"{key} lists a message its channel does not carry"
            assert message["$ref"][len(prefix) :] in channel["messages"]


# ---- the document describes what the codec puts on the wire -------------------------------------


def sample_events() -> list[EventBase]:
    detected = IncidentDetected(
        source="/vigil/detector",
        subject="inc-1",
        data=factories.snapshot(
            new_alerts=[
                AlertSummary(
                    key="suricata:1",
                    source="suricata",
                    title="ET SCAN Potential SSH Scan",
                    severity=AlertSeverity.MEDIUM,
                    time=factories.T0,
                    host="web-01",
                    labels={"rule": "2001219"},
                )
            ]
        ),
    )
    acknowledge = AcknowledgeIncident(source="/vigil/coordinator", subject="inc-1", data=CommandArgs(actor="alice"))
    changed = IncidentStateChanged(
        source="/vigil/coordinator",
        data=StateChange(from_state=None, to_state=IncidentState.ACKNOWLEDGED, actor="alice"),
        **acknowledge.caused_by(),
    )
    return [detected, acknowledge, changed]


@pytest.mark.parametrize("event", sample_events(), ids=lambda event: event.type)
def test_encoded_events_match_their_message(event: EventBase) -> None:
    doc = document()
    message = doc["components"]["messages"][type(event).__name__]
    record = cloudevents.encode(event)
    headers = {name: value.decode() for name, value in record.headers}
    jsonschema.Draft7Validator(message["headers"]).validate(headers)
    validate_payload(doc, message["payload"], json.loads(record.value))
    assert record.key.decode() == headers["ce_subject"]


def test_native_alerts_match_the_raw_alert_message() -> None:
    doc = document()
    payload = doc["components"]["messages"]["RawAlert"]["payload"]
    validate_payload(doc, payload, factories.alert_dict())
    validate_payload(doc, payload, json.loads(factories.alert(labels={"env": "prod"}).model_dump_json()))
    with pytest.raises(jsonschema.ValidationError):
        validate_payload(doc, payload, {**factories.alert_dict(), "unexpected": 1})


# ---- (c) every $ref resolves inside the document ------------------------------------------------


def test_every_ref_resolves_inside_the_document() -> None:
    doc = document()
    found = list(refs(doc))
    assert len(found) > len(ALL_TOPICS), "the document has suspiciously few references"
    for where, ref in found:
        assert ref.startswith("#/"), f"{where}: {ref} points outside the document"
        target = resolve(doc, ref)
        assert isinstance(target, dict), f"{where}: {ref} resolves to {target!r}"
    used = {ref.rsplit("/", 1)[1] for _, ref in found if ref.startswith("#/components/schemas/")}
    assert used == set(doc["components"]["schemas"]), "unused or missing component schemas"


# ---- (d) the document is valid AsyncAPI 3.0.0 ---------------------------------------------------


def test_document_is_valid_asyncapi_3_0_0() -> None:
    if not ASYNCAPI_SCHEMA.is_file():
        pytest.skip(f"{ASYNCAPI_SCHEMA.relative_to(ROOT)} is missing (see tests/data/README.md)")
    schema = json.loads(ASYNCAPI_SCHEMA.read_text(encoding="utf-8"))
    validator_class = jsonschema.validators.validator_for(schema)
    assert validator_class is jsonschema.Draft7Validator, "the AsyncAPI 3.0.0 schema declares draft-07"
    validator_class.check_schema(schema)
    errors = sorted(validator_class(schema).iter_errors(document()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(str(p) for p in error.absolute_path) or '/'}: {error.message[:300]}" for error in errors[:20]
    )


def test_the_schema_rejects_a_broken_document() -> None:
    if not ASYNCAPI_SCHEMA.is_file():
        pytest.skip(f"{ASYNCAPI_SCHEMA.relative_to(ROOT)} is missing (see tests/data/README.md)")
    schema = json.loads(ASYNCAPI_SCHEMA.read_text(encoding="utf-8"))
    broken = document()
    first = next(iter(broken["operations"]))
    broken["operations"][first]["action"] = "publish"  # AsyncAPI 2 wording, not valid in 3.0.0
    assert not jsonschema.Draft7Validator(schema).is_valid(broken)
