"""Every alert format the detector reads, registered in one table, and how a record finds its adapter.

A record names its format when the channel does (the ``vigil_format`` Kafka header, an HTTP
path or ``?format=``); otherwise a record with every key of a native alert is one (the commonest
case, so it is tried first), and else the first adapter whose ``matches`` recognises the payload's
shape reads it. Shapes are specific enough that no payload matches two adapters (a test walks
the corpus to keep it so); one that matches none is rejected with the formats that were tried.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import orjson

from services.detector.adapters.alertmanager import Alertmanager
from services.detector.adapters.base import Adapter, Parsed, Rejected
from services.detector.adapters.crowdstrike import CrowdStrike
from services.detector.adapters.defender import Defender
from services.detector.adapters.elastic import Elastic
from services.detector.adapters.falco import Falco
from services.detector.adapters.guardduty import GuardDuty
from services.detector.adapters.hayabusa import Hayabusa
from services.detector.adapters.native import REQUIRED, Native
from services.detector.adapters.ocsf import Ocsf
from services.detector.adapters.osquery import Osquery
from services.detector.adapters.pagerduty import PagerDuty
from services.detector.adapters.sentinelone import SentinelOne
from services.detector.adapters.suricata import Suricata
from services.detector.adapters.user_report import UserReport
from services.detector.adapters.wazuh import Wazuh
from services.detector.adapters.zeek import Zeek

# The most specific shapes first; Vigil's native schema last (though it is tried first by its keys).
ADAPTERS: tuple[Adapter, ...] = (
    Alertmanager(),
    Wazuh(),
    GuardDuty(),
    Falco(),
    Ocsf(),
    Suricata(),
    Elastic(),
    PagerDuty(),
    Zeek(),
    CrowdStrike(),
    Defender(),
    SentinelOne(),
    UserReport(),
    Hayabusa(),
    Osquery(),
    Native(),
)
FORMATS: dict[str, Adapter] = {adapter.name: adapter for adapter in ADAPTERS}

log = logging.getLogger(__name__)

NATIVE = FORMATS["native"]

# The raw topic's records and the HTTP ingest's bodies are bounded: a bigger one is a mistake.
MAX_RECORD_BYTES = 1024 * 1024
# No tool nests a record this deep; an alert's record is serialised again as evidence, and a JSON
# writer stops at some depth (orjson and pydantic at 255): a deeper one would be stored by nobody.
MAX_DEPTH = 64
FORMAT_HEADER = "vigil_format"


def parse_payload(payload: Any, *, format_name: str | None = None) -> Parsed:
    """Return what the decoded JSON payload holds, read by the named adapter or the one that recognises it."""
    if format_name is None and NATIVE.matches(payload):
        return NATIVE.parse(payload)  # the commonest record, recognised by its keys alone
    if format_name is not None:
        adapter = FORMATS.get(format_name)
        if adapter is None:
            raise Rejected(
                f"unknown format {format_name!r}; known formats: {', '.join(FORMATS)}", code="unknown_format"
            )
        return adapter.parse(payload)
    if isinstance(payload, list):
        raise Rejected(
            "a JSON array: publish one record per message (the HTTP ingest splits arrays and NDJSON)",
            code="unknown_format",
        )
    for adapter in ADAPTERS:
        if adapter.matches(payload):
            return adapter.parse(payload)
    if isinstance(payload, dict):
        # Most hand-written records are meant as native alerts: say what they lack.
        missing = ", ".join(sorted(REQUIRED - payload.keys()))
        shape = f"an object with keys {sorted(payload)[:12]}; as a native alert it lacks {missing}"
    else:
        shape = f"a JSON {type(payload).__name__}"
    raise Rejected(
        f"no adapter recognised the record ({shape}); formats tried: {', '.join(FORMATS)}", code="unknown_format"
    )


def _escapes_nul(value: bytes) -> bool:
    """Whether the JSON text escapes a NUL: a ``\\u0000`` whose backslash is not itself escaped (``\\\\u0000``
    is a backslash, then the text ``u0000``: a WAF alert quoting an injection, say)."""
    at = value.find(b"\\u0000")
    while at != -1:
        before = at
        while before > 0 and value[before - 1] == ord("\\"):
            before -= 1
        if (at - before) % 2 == 0:  # an even run of backslashes before this one: it starts an escape
            return True
        at = value.find(b"\\u0000", at + 1)
    return False


def parse_record(value: bytes | None, *, format_name: str | None = None) -> Parsed:
    """Return what one raw record holds, or raise Rejected with why it cannot be read."""
    if not value:
        raise Rejected("empty record", code="empty")
    if len(value) > MAX_RECORD_BYTES:
        raise Rejected(f"record of {len(value)} bytes is over the {MAX_RECORD_BYTES}-byte limit", code="too_large")
    if b"\x00" in value or (b"\\u0000" in value and _escapes_nul(value)):
        raise Rejected("record contains a NUL character (\\u0000), which Postgres text cannot store", code="nul")
    try:
        payload = orjson.loads(value)
    except orjson.JSONDecodeError:
        try:
            body = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Rejected(f"record is not UTF-8: {exc}", code="not_utf8") from exc
        try:  # what orjson refuses but JSON allows: integers beyond 64 bits, and escaped lone surrogates
            payload = json.loads(body)
            # A lone surrogate (``"\\ud800"``) is no character: it cannot be stored, nor sent on as UTF-8.
            json.dumps(payload, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise Rejected(f"record is not UTF-8 once read: {exc.reason} in its text", code="not_utf8") from exc
        except ValueError as exc:
            raise Rejected(f"record is not JSON: {exc}", code="not_json") from exc
        except RecursionError as exc:  # orjson refused it for its depth too: refused, not a crash of the detector
            raise Rejected("record is not JSON Vigil reads: nested too deeply", code="not_json") from exc
    # Counting brackets is nearly free; only a record with that many is walked.
    if value.count(b"{") + value.count(b"[") > MAX_DEPTH and depth_over(payload, MAX_DEPTH):
        raise Rejected(f"record is nested more than {MAX_DEPTH} levels deep", code="too_deep")
    try:
        return parse_payload(payload, format_name=format_name)
    except Rejected:
        raise
    except Exception as exc:
        # An adapter's defect on one record: refused with what went wrong, never a crash of the detector
        # or of the ingest, and logged whole for whoever fixes the adapter.
        log.exception("an adapter failed on a record (format %s)", format_name or "detected from its shape")
        raise Rejected(
            f"the record could not be read: {type(exc).__name__}: {str(exc)[:200]}", code="adapter_error"
        ) from exc


def depth_over(payload: Any, limit: int) -> bool:
    """Whether the JSON value nests objects and arrays more than ``limit`` levels deep."""
    pending: list[tuple[Any, int]] = [(payload, 1)]
    while pending:
        value, depth = pending.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


__all__ = [
    "ADAPTERS",
    "FORMATS",
    "FORMAT_HEADER",
    "MAX_RECORD_BYTES",
    "Adapter",
    "Parsed",
    "Rejected",
    "parse_payload",
    "parse_record",
    "storable",
]


def storable(value: bytes, parsed: Parsed) -> bytes:
    """The record as it may be published and stored: secrets a format carries removed (PagerDuty's routing key).

    An adapter with a ``scrub`` method says what to remove; the scrubbed record reads as the same alert.
    """
    scrub = getattr(FORMATS.get(parsed.format), "scrub", None)
    if scrub is None:
        return value
    return json.dumps(scrub(json.loads(value)), ensure_ascii=False, separators=(",", ":")).encode()
