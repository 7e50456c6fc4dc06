"""The AsyncAPI 3.0 document of every Vigil topic and event, built from the code that defines them.

The topic registry (``shared.topics``), the event models (``shared.events``), the raw alert model
(``shared.alerts``), the CloudEvents Kafka binding (``shared.cloudevents``) and the dead-letter
headers (``shared.consumer``) are the single source of truth; ``render()`` turns them into YAML.
``vigil asyncapi`` writes the result to ``docs/asyncapi.yaml`` and ``vigil asyncapi --check``
fails when that file no longer matches the code.
"""

from __future__ import annotations

import inspect
import re
from importlib.metadata import PackageNotFoundError, version
from types import SimpleNamespace
from typing import Any

import yaml
from pydantic import BaseModel

from shared.alerts import Alert
from shared.cloudevents import CONTENT_TYPE, SPEC_VERSION, dataschema
from shared.consumer import dead_letter_headers
from shared.events import EVENT_TYPES, EventBase
from shared.settings import SERVICE_NAMES
from shared.topics import ALERTS_DLQ, ALERTS_RAW, ALL_TOPICS, DAY_MS, EVENTS_DLQ, Topic

JSONObject = dict[str, Any]

ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
SCHEMA_REF_TEMPLATE = "#/components/schemas/{model}"
RAW_ALERT_MESSAGE = "RawAlert"
DEAD_LETTER_MESSAGE = "DeadLetter"
FALLBACK_VERSION = "0.1.0"

_JSON = CONTENT_TYPE.decode()
_SERVICES = frozenset(SERVICE_NAMES)

_ENVELOPE_DESCRIPTIONS = {
    "type": "Event type; it carries the schema version of the body (`.v1`).",
    "time": "When the event happened (RFC 3339, with offset).",
}
_DEAD_LETTER_DESCRIPTIONS = {
    "vigil_dlq_reason": "Why the record was refused (UTF-8, cut at 4000 bytes).",
    "vigil_dlq_service": "Service that refused the record.",
    "vigil_dlq_topic": "Topic the record was read from (with the configured prefix, if any).",
    "vigil_dlq_partition": "Partition the record was read from.",
    "vigil_dlq_offset": "Offset of the record in that partition.",
    "vigil_dlq_time": "When the record was dead-lettered (RFC 3339, UTC).",
}
_DEAD_LETTER_FORMATS = {
    "vigil_dlq_partition": {"pattern": "^[0-9]+$"},
    "vigil_dlq_offset": {"pattern": "^[0-9]+$"},
    "vigil_dlq_time": {"format": "date-time"},
}

_DESCRIPTION = """\
Vigil turns alerts from monitoring tools into incidents that are detected, analysed, planned for,
escalated and reported, by services ({services}) that talk only through the Kafka topics below.

**Events: CloudEvents 1.0 in binary content mode.** Every topic except the raw alerts and the
dead-letter topics carries CloudEvents (Kafka protocol binding, binary mode). The envelope travels
in Kafka headers: `ce_specversion` (`{specversion}`), `ce_id`, `ce_source` (`/vigil/<service>`),
`ce_type` (for example `vigil.incident.detected.v1`; the suffix is the schema version, and a breaking
change adds a new type), `ce_time`, `ce_subject` (the incident id), the `ce_correlationid` and
`ce_causationid` extension attributes that chain events to their causes, `ce_dataschema` (the URI of
the schema of the body) and `content-type: {content_type}`. The record's value is the event's `data` as
JSON: the payload schemas below. All header values are UTF-8 strings.

**Key and ordering.** The Kafka key of every event is its incident id (equal to `ce_subject`), so all
events of one incident land on one partition and are consumed in the order they were produced.
There is no order across incidents. Vigil's own alert producers key raw alerts by the entity they are
about (`host:<name>`, `ip:<address>`, `user:<name>` or `source:<name>`), so that alerts about one entity
keep their order too; other producers should do the same.
Delivery is at least once: each service records the ids it has processed (`ce_id`, or the
alert's `source:id` for raw alerts) and ignores repeats.

**Raw alerts.** `{alerts_raw}` carries Vigil's native alert JSON (the `RawAlert` message),
not CloudEvents.

**Dead letters.** A record a service cannot accept (not valid JSON, unknown type, schema mismatch)
is copied, key, value and headers unchanged, to `{alerts_dlq}` (raw alerts) or
`{events_dlq}` (events), with `vigil_dlq_*` headers added that say why, where and when:
{dead_letter_headers}.

**Topic names.** The addresses below are the names with an empty `VIGIL_TOPIC_PREFIX`; a deployment
that shares a cluster prefixes every topic name with it.
"""


class _Dumper(yaml.SafeDumper):
    """The safe dumper, writing multi-line strings (the longer descriptions) as folded blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = ">" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def render() -> str:
    """Return the AsyncAPI 3.0.0 document of Vigil as YAML (deterministic: same code, same text)."""
    return yaml.dump(build(), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


def build() -> JSONObject:
    """Return the AsyncAPI 3.0.0 document of Vigil as a JSON-compatible dict."""
    schemas: dict[str, JSONObject] = {}
    messages: dict[str, JSONObject] = {}
    for event_type, cls in EVENT_TYPES.items():
        messages[cls.__name__] = _event_message(event_type, cls, schemas)
    messages[RAW_ALERT_MESSAGE] = _raw_alert_message(schemas)
    messages[DEAD_LETTER_MESSAGE] = _dead_letter_message()

    channels: dict[str, JSONObject] = {}
    operations: dict[str, JSONObject] = {}
    for topic in ALL_TOPICS:
        channels[topic.name] = _channel(topic)
        for producer in topic.producers:
            _add_operation(operations, topic, producer, "send")
        for consumer in topic.consumers:
            _add_operation(operations, topic, consumer, "receive")

    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Vigil",
            "version": _version(),
            "description": _info_description(),
            "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
        },
        "defaultContentType": _JSON,
        "servers": {
            "production": {
                "host": "kafka:9092",
                "protocol": "kafka",
                "title": "Apache Kafka",
                "description": "The Kafka cluster of a deployment, as named in docker-compose.yml "
                "(`KAFKA_BOOTSTRAP_SERVERS`).",
            },
            "embedded": {
                "host": "127.0.0.1:9092",
                "protocol": "kafka",
                "title": "Embedded broker",
                "description": "The in-memory broker that `vigil up` starts on this machine; "
                "it speaks the same Kafka protocol.",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "messages": messages,
        },
    }


def message_name(event_type: str) -> str:
    """Return the name of the component message of an event type (its class name)."""
    return EVENT_TYPES[event_type].__name__


def channel_messages(topic: Topic) -> list[str]:
    """Return the names of the component messages a topic carries."""
    if topic.cloudevents:
        return [message_name(t) for t in topic.event_types]
    if topic is ALERTS_RAW:
        return [RAW_ALERT_MESSAGE]
    if topic in (ALERTS_DLQ, EVENTS_DLQ):
        return [DEAD_LETTER_MESSAGE]
    raise ValueError(f"no message is declared for {topic.name}")


# ---- messages -----------------------------------------------------------------------------------


def _event_message(event_type: str, cls: type[EventBase], schemas: dict[str, JSONObject]) -> JSONObject:
    data_model = cls.model_fields["data"].annotation
    if not (isinstance(data_model, type) and issubclass(data_model, BaseModel)):
        raise TypeError(f"{cls.__name__}.data is not a pydantic model")
    title = _words(cls.__name__)
    summary = _docstring(cls) or f"{title}: a `{event_type}` CloudEvent."
    topic = _topic_of(event_type)
    description = [f"CloudEvent `{event_type}` on `{topic.name}`."]
    if doc := _docstring(data_model):
        description.append(f"Data: {data_model.__name__}. {doc}")
    description.append(
        f"Produced by {_listing(topic.producers)}; consumed by {_listing(topic.consumers)}. "
        f"Schema of the body: {dataschema(event_type)}."
    )
    return {
        "name": cls.__name__,
        "title": title,
        "summary": summary,
        "description": "\n\n".join(description),
        "contentType": _JSON,
        "correlationId": {
            "description": "Id shared by every event of one causal chain (CloudEvents extension attribute).",
            "location": "$message.header#/ce_correlationid",
        },
        "headers": _cloudevents_headers(event_type, cls),
        "payload": _hoisted_schema(data_model, schemas),
        "bindings": {
            "kafka": {
                "key": {
                    "type": "string",
                    "description": "Incident id (equal to `ce_subject`): one incident's events share a partition.",
                },
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
    }


def _cloudevents_headers(event_type: str, cls: type[EventBase]) -> JSONObject:
    properties: dict[str, JSONObject] = {
        "ce_specversion": {
            "type": "string",
            "const": SPEC_VERSION.decode(),
            "description": "CloudEvents specification version.",
        }
    }
    required = ["ce_specversion"]
    names = [name for name in cls.model_fields if name not in ("data", "type")]
    names.insert(names.index("source") + 1 if "source" in names else 0, "type")
    for name in names:
        field = cls.model_fields[name]
        header = f"ce_{name}"
        schema: JSONObject = {"type": "string"}
        if name == "type":
            schema["const"] = event_type
        if name == "time":
            schema["format"] = "date-time"
        schema["description"] = field.description or _ENVELOPE_DESCRIPTIONS.get(name, f"CloudEvents `{name}`.")
        properties[header] = schema
        if field.is_required() or field.default_factory is not None or field.default is not None:
            required.append(header)
    properties["ce_dataschema"] = {
        "type": "string",
        "const": dataschema(event_type),
        "description": "URI of the schema of the body (this message's payload).",
    }
    properties["content-type"] = {
        "type": "string",
        "const": _JSON,
        "description": "Media type of the body.",
    }
    required += ["ce_dataschema", "content-type"]
    return {
        "type": "object",
        "description": "CloudEvents binary mode: the envelope as Kafka headers, each a UTF-8 string.",
        "properties": properties,
        "required": required,
    }


def _raw_alert_message(schemas: dict[str, JSONObject]) -> JSONObject:
    return {
        "name": RAW_ALERT_MESSAGE,
        "title": "Raw alert",
        "summary": _docstring(Alert),
        "description": f"One alert as JSON in Vigil's native schema (not a CloudEvent) on `{ALERTS_RAW.name}`, "
        f"from {_listing(ALERTS_RAW.producers)}; consumed by {_listing(ALERTS_RAW.consumers)}. "
        f"Severity is matched case-insensitively and surrounding whitespace is ignored. "
        f"A record that does not match goes to `{ALERTS_DLQ.name}`.",
        "contentType": _JSON,
        "payload": _hoisted_schema(Alert, schemas),
        "bindings": {
            "kafka": {
                "key": {
                    "type": "string",
                    "description": "The entity the alert is about: `host:<name>`, else `ip:<address>`, "
                    "else `user:<name>`, else `source:<name>`; alerts about one entity share a partition.",
                },
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
    }


def _dead_letter_message() -> JSONObject:
    properties: dict[str, JSONObject] = {}
    for name in _dead_letter_header_names():
        description = _DEAD_LETTER_DESCRIPTIONS.get(name, "Dead-letter metadata.")
        properties[name] = {"type": "string", **_DEAD_LETTER_FORMATS.get(name, {}), "description": description}
    return {
        "name": DEAD_LETTER_MESSAGE,
        "title": "Dead letter",
        "summary": "A record a Vigil service could not accept, kept with the reason.",
        "description": f"The original record, key, value and headers unchanged, on `{ALERTS_DLQ.name}` "
        f"(from `{ALERTS_RAW.name}`) or `{EVENTS_DLQ.name}` (from the event topics), with `vigil_dlq_*` "
        "headers added. To replay one once the cause is fixed, produce its key, value and original headers "
        "to the topic named in `vigil_dlq_topic`.",
        "contentType": "application/octet-stream",
        "headers": {
            "type": "object",
            "description": "The `vigil_dlq_*` headers; the original record's headers (such as the `ce_*` "
            "headers of an event) are kept beside them.",
            "properties": properties,
            "required": list(properties),
        },
        "payload": {
            "description": "The original record's value, byte for byte: often JSON, but possibly not "
            "(that may be why it was refused).",
        },
        "bindings": {
            "kafka": {
                "key": {
                    "type": "string",
                    "description": "The original record's key: the incident id of an event, the producer's key "
                    "of a raw alert.",
                },
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
    }


def _hoisted_schema(model: type[BaseModel], schemas: dict[str, JSONObject]) -> JSONObject:
    """Return the model's JSON schema with its `$defs` moved into the shared `schemas`."""
    schema = model.model_json_schema(ref_template=SCHEMA_REF_TEMPLATE)
    for name, definition in schema.pop("$defs", {}).items():
        if schemas.setdefault(name, definition) != definition:
            raise ValueError(f"two different JSON schemas are named {name}")
    return schema


# ---- channels and operations --------------------------------------------------------------------


def _channel(topic: Topic) -> JSONObject:
    details = [
        topic.description,
        f"Produced by {_listing(topic.producers)}; consumed by {_listing(topic.consumers)}.",
        f"{topic.partitions} partition{'s' if topic.partitions != 1 else ''}; "
        f"records kept {_duration(topic.retention_ms)} (`retention.ms` {topic.retention_ms}).",
    ]
    return {
        "address": topic.name,
        "title": topic.name,
        "description": "\n\n".join(details),
        "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in channel_messages(topic)},
        "bindings": {
            "kafka": {
                "partitions": topic.partitions,
                "topicConfiguration": {"retention.ms": topic.retention_ms},
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
    }


def operation_id(party: str, action: str, topic: Topic) -> str:
    """Return the key of the operation of one producer or consumer on one topic."""
    return f"{_slug(party)}.{action}.{topic.name}"


def _add_operation(operations: dict[str, JSONObject], topic: Topic, party: str, action: str) -> None:
    key = operation_id(party, action, topic)
    if key in operations:
        raise ValueError(f"duplicate operation {key}")
    direction = "to" if action == "send" else "from"
    done = "Sent to" if action == "send" else "Received from"
    operation: JSONObject = {
        "action": action,
        "channel": {"$ref": f"#/channels/{topic.name}"},
        "title": f"{party}: {action} {direction} {topic.name}",
        "summary": f"{done} `{topic.name}` by {party}.",
        "messages": [{"$ref": f"#/channels/{topic.name}/messages/{name}"} for name in channel_messages(topic)],
    }
    if party in _SERVICES:
        client_id = {"type": "string", "const": f"vigil-{party}"}
        binding: JSONObject = {"clientId": client_id}
        if action == "receive":
            # After the deployment's topic prefix, as its topics (shared.kafka.group_id).
            group = {"type": "string", "pattern": f"vigil-{party}$", "examples": [f"vigil-{party}"]}
            binding = {"groupId": group, **binding}
        operation["bindings"] = {"kafka": {**binding, "bindingVersion": KAFKA_BINDING_VERSION}}
    operations[key] = operation


# ---- helpers ------------------------------------------------------------------------------------


def _info_description() -> str:
    text = _DESCRIPTION.format(
        services=_listing(SERVICE_NAMES),
        specversion=SPEC_VERSION.decode(),
        content_type=_JSON,
        alerts_raw=ALERTS_RAW.name,
        alerts_dlq=ALERTS_DLQ.name,
        events_dlq=EVENTS_DLQ.name,
        dead_letter_headers=", ".join(f"`{name}`" for name in _dead_letter_header_names()),
    )
    paragraphs = text.strip().split("\n\n")
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in paragraphs)


def _dead_letter_header_names() -> list[str]:
    record = SimpleNamespace(topic="", partition=0, offset=0)
    return [name for name, _ in dead_letter_headers("", record, "")]


def _version() -> str:
    try:
        return version("vigil")
    except PackageNotFoundError:
        return FALLBACK_VERSION


def _topic_of(event_type: str) -> Topic:
    for topic in ALL_TOPICS:
        if event_type in topic.event_types:
            return topic
    raise ValueError(f"no topic carries {event_type}")


def _docstring(cls: type) -> str:
    """Return the first paragraph of a class's own docstring (not an inherited one), on one line."""
    doc = cls.__dict__.get("__doc__")
    if not isinstance(doc, str) or not doc.strip():
        return ""
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())


def _words(class_name: str) -> str:
    words = re.findall(r"[A-Z][a-z0-9]*", class_name)
    return " ".join([words[0], *(w.lower() for w in words[1:])]) if words else class_name


def _slug(party: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", party.lower()).strip("-")


def _listing(parties: tuple[str, ...]) -> str:
    if not parties:
        return "nobody"
    if len(parties) == 1:
        return parties[0]
    return f"{', '.join(parties[:-1])} and {parties[-1]}"


def _duration(ms: int) -> str:
    if ms % DAY_MS == 0:
        days = ms // DAY_MS
        return f"{days} day{'s' if days != 1 else ''}"
    return f"{ms} ms"
