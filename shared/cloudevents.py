"""CloudEvents 1.0 Kafka protocol binding, binary content mode, for Vigil's events.

Envelope attributes travel as ``ce_<name>`` headers, ``data`` as the JSON body, and the Kafka key
is the incident id so that each incident's events keep their order on one partition.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from shared.errors import InvalidMessage, UnknownEventType, validation_reason
from shared.events import EVENT_ADAPTER, EVENT_TYPES, Event, EventBase

SPEC_VERSION = b"1.0"
CONTENT_TYPE = b"application/json"
_ENVELOPE = ("id", "source", "type", "time", "subject", "correlationid", "causationid")
# A Vigil event type: a newer service may publish one this version does not know yet.
_VIGIL_TYPE = re.compile(r"^vigil(\.[a-z0-9_]+)+\.v[0-9]+$")
# A header may have no value: Kafka allows it, and aiokafka reads it as None.
Headers = Sequence[tuple[str, bytes | None]]


@dataclass(frozen=True)
class KafkaRecord:
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def dataschema(event_type: str) -> str:
    return f"https://vigil.dev/schemas/{event_type}.json"


def encode(event: EventBase) -> KafkaRecord:
    """Encode one event as a binary-mode CloudEvent Kafka record."""
    envelope = event.model_dump(mode="json", include=set(_ENVELOPE), exclude_none=True)
    headers = [("ce_specversion", SPEC_VERSION)]
    headers += [(f"ce_{name}", str(value).encode()) for name, value in envelope.items()]
    headers.append(("ce_dataschema", dataschema(envelope["type"]).encode()))
    headers.append(("content-type", CONTENT_TYPE))
    data = getattr(event, "data")  # noqa: B009 - every concrete event has data
    # The serializer's JSON bytes as they are: model_dump_json would decode them to text, to be encoded back.
    value = data.__pydantic_serializer__.to_json(data)
    return KafkaRecord(key=event.subject.encode(), value=value, headers=headers)


def attributes_of(headers: Headers) -> dict[str, str]:
    """The record's CloudEvents attributes (its ``ce_`` headers); a header without a value is as if absent."""
    return {
        name[3:]: raw.decode("utf-8", errors="replace")
        for name, raw in headers
        if name.startswith("ce_") and raw is not None
    }


def refuse_nul(value: bytes, attributes: dict[str, str]) -> None:
    """Raise InvalidMessage for an event holding NUL: Postgres text and jsonb cannot hold it, so no consumer
    could store the event, and it would stop each at every retry; refused, it is dead-lettered instead."""
    if b"\\u0000" in value or b"\x00" in value or any("\x00" in text for text in attributes.values()):
        raise InvalidMessage("the event holds a NUL character (\\u0000), which Postgres cannot store")


def decode(value: bytes | None, headers: Headers) -> Event:
    """Decode a binary-mode CloudEvent Kafka record into its event, or raise InvalidMessage.

    Fields this version does not know are ignored (a newer producer may add optional ones); a
    Vigil event type it does not know raises UnknownEventType, which consumers skip.
    """
    attributes: dict[str, Any] = attributes_of(headers)
    if attributes.get("specversion") != "1.0":
        raise InvalidMessage("not a CloudEvents 1.0 binary-mode record (ce_specversion missing or not 1.0)")
    event_type = attributes.get("type")
    if event_type not in EVENT_TYPES:
        if isinstance(event_type, str) and _VIGIL_TYPE.match(event_type):
            raise UnknownEventType(f"event type {event_type!r} is unknown to this version of Vigil")
        raise InvalidMessage(f"unknown event type {event_type!r}")
    if value is None:
        raise InvalidMessage("empty body")
    try:
        data = orjson.loads(value)  # twice as fast as json: every event of every topic is read here
    except orjson.JSONDecodeError as exc:
        # A poison body is dead-lettered, not a crash of every consumer in turn.
        if str(exc).startswith("depth limit"):
            raise InvalidMessage("body is not JSON Vigil reads: nested too deeply") from exc
        raise InvalidMessage(f"body is not JSON: {exc}") from exc
    refuse_nul(value, attributes)
    fields = {name: attributes[name] for name in _ENVELOPE if name in attributes}
    fields["data"] = data
    try:
        return EVENT_ADAPTER.validate_python(fields, extra="ignore")
    except ValidationError as exc:
        raise InvalidMessage(f"{event_type} does not match its schema: {validation_reason(exc)}") from exc
