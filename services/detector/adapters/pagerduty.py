"""PagerDuty Events API v2 events, as a tool sends them to ``events.pagerduty.com/v2/enqueue``.

An event has a ``routing_key`` (the integration's secret), an ``event_action`` (``trigger``,
``acknowledge`` or ``resolve``), a ``dedup_key``, and for a trigger a ``payload`` (``summary``,
``source``, ``severity``, optional ``timestamp``, ``component``, ``group``, ``class``,
``custom_details``), with optional ``links``, ``images``, ``client`` and ``client_url``.
Recognised by ``event_action`` beside a ``routing_key``, ``dedup_key`` or ``payload``.

- ``trigger`` is a firing alert; ``resolve`` is the same alert (same ``dedup_key``) resolved;
  ``acknowledge`` is a person taking the alert in PagerDuty, not an alert: it is skipped with
  that reason.
- The ``routing_key`` is a secret: it is never copied into the alert, not even into ``raw``, and
  any text that contains it (PagerDuty's own examples reuse it as ``dedup_key``) has it replaced
  by ``<routing_key>``.

Where each field comes from:

- ``id`` (deduplication): ``dedup_key``; a trigger without one (PagerDuty would make up a new
  key) takes a hash of its payload, so the very same event sent twice is a repeat. A
  ``dedup_key`` containing the routing key is replaced by its hash.
- ``source``: ``pagerduty/<integration>``, the integration being the first 12 hex digits of the routing
  key's SHA-256: PagerDuty deduplicates within an integration, so two tools that send the same
  ``dedup_key`` to different routing keys raise two alerts, and one's resolve never ends the other's.
  The routing key itself is never stored: the event kept on the raw topic carries only that digest
  (``routing_key_sha256``), from which the detector reads the same source. An event with neither is
  ``pagerduty``.
- ``title``: ``payload.summary`` (a resolve without one: ``PagerDuty resolve of <dedup_key>``);
  ``description``: the summary and ``custom_details``, one ``name: value`` a line.
- ``host``: ``payload.source``; ``resource``: ``payload.component``; ``category``:
  ``payload.class``; ``url``: the first of ``links``, else ``client_url``.
- ``time``: ``payload.timestamp``; PagerDuty makes it optional and stamps such an event when it
  receives it, and so does Vigil: the time the detector reads it (label ``time_source`` says so).
- ``labels``: ``group``, ``component``, ``class``, ``client``, ``client_url``, ``links``,
  then ``custom_details`` as ``detail.<name>``.

Severity, from ``payload.severity`` (PagerDuty accepts only these four and refuses any other,
and so does Vigil):

| PagerDuty severity | severity |
|---|---|
| critical | critical |
| error | high |
| warning | medium |
| info | info |
| (a resolve without payload) | info |
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from services.detector.adapters.base import (
    MAX_ID,
    Parsed,
    Rejected,
    build_alert,
    first,
    listed,
    mapping,
    parse_time,
    stable_id,
    string_labels,
    text,
    utc_now,
)
from shared.alerts import Alert

SEVERITIES = {"critical": "critical", "error": "high", "warning": "medium", "info": "info"}
ACTIONS = ("trigger", "acknowledge", "resolve")
REQUIRED = ("summary", "source", "severity")
OPTIONAL = ("timestamp", "component", "group", "class", "custom_details")
REDACTED = "<routing_key>"
# What the stored event keeps of its routing key: enough to tell integrations apart, nothing to send with.
ROUTING_DIGEST = "routing_key_sha256"
# Routing keys are 32 characters; a shorter "key" cannot be told apart from ordinary text.
MIN_SECRET = 6
_HEX12 = re.compile(r"[0-9a-f]{12}")


class PagerDuty:
    name = "pagerduty"
    description = "PagerDuty Events API v2 event: routing_key, event_action, dedup_key, payload."

    def __init__(self, *, clock: Callable[[], datetime] = utc_now) -> None:
        # Only for an event without payload.timestamp: PagerDuty, too, stamps those on receipt.
        self.clock = clock

    def matches(self, payload: Any) -> bool:
        return (
            isinstance(payload, dict)
            and isinstance(payload.get("event_action"), str)
            and ("routing_key" in payload or "dedup_key" in payload or isinstance(payload.get("payload"), Mapping))
        )

    def scrub(self, payload: Any) -> Any:
        return scrub(payload)

    def parse(self, payload: Any) -> Parsed:
        if not isinstance(payload, dict):
            raise Rejected("a PagerDuty event is a JSON object", code="invalid_fields")
        secret = _secret(payload)
        event = _without_secret(payload, secret)
        action = text(event.get("event_action"))
        if action not in ACTIONS:
            shown = action[:60] if action else action
            raise Rejected(
                f"event_action {shown!r} is not one of {', '.join(ACTIONS)} (PagerDuty Events API v2)",
                code="invalid_fields",
            )
        dedup_key = _hashed_key(payload, secret) or text(payload.get("dedup_key"))
        if secret is not None:
            event[ROUTING_DIGEST] = routing_digest(secret)
        if action == "acknowledge":
            if dedup_key is None:  # as PagerDuty: an acknowledgement names what it acknowledges
                raise Rejected(
                    "a PagerDuty acknowledge needs the dedup_key of what it acknowledges", code="missing_fields"
                )
            return Parsed(format=self.name, skipped=[f"pagerduty acknowledge of {dedup_key!r}: not an alert"])
        details = event.get("payload")
        if action == "resolve":
            if dedup_key is None:
                raise Rejected("a PagerDuty resolve needs the dedup_key of what it resolves", code="missing_fields")
            return Parsed(format=self.name, alerts=[self._alert(event, details, dedup_key, "resolved")])
        if not isinstance(details, dict):
            raise Rejected("a PagerDuty trigger needs a payload object", code="missing_fields")
        missing = [name for name in REQUIRED if text(details.get(name)) is None]
        if missing:
            raise Rejected(f"the trigger's payload lacks {', '.join(missing)}", code="missing_fields")
        identity = dedup_key or stable_id(*(_json(details.get(k)) for k in (*REQUIRED, *OPTIONAL)))
        return Parsed(format=self.name, alerts=[self._alert(event, details, identity, "firing")])

    def _alert(self, event: Mapping[str, Any], details: Any, identity: str, status: str) -> Alert:
        details = mapping(details)
        severity, said, reason = _severity(details.get("severity"), resolving=status == "resolved")
        stamped = details.get("timestamp")
        time = parse_time(stamped, field_name="payload.timestamp") if stamped not in (None, "") else self.clock()
        custom = details.get("custom_details")
        summary = text(details.get("summary"))
        links = [link for link in listed(event.get("links")) if isinstance(link, dict)]
        labels = {
            "group": text(details.get("group")),
            "component": text(details.get("component")),
            "class": text(details.get("class")),
            "client": text(event.get("client")),
            "client_url": text(event.get("client_url")),
            "time_source": None if stamped not in (None, "") else "received (no payload.timestamp)",
        }
        integration = _integration(event)
        return build_alert(
            id=identity,
            source=f"pagerduty/{integration}" if integration else "pagerduty",
            title=summary or f"PagerDuty resolve of {identity}",
            description="\n".join(line for line in (summary, *_detail_lines(custom)) if line),
            severity=severity,
            source_severity=said,
            severity_reason=reason,
            time=time,
            status=status,
            host=text(details.get("source")),
            resource=text(details.get("component")),
            category=text(details.get("class")),
            url=first(*(link.get("href") for link in links), event.get("client_url")),
            labels={
                **{k: v for k, v in labels.items() if v},
                **string_labels({"links": links} if links else {}),
                **_detail_labels(custom),
            },
            raw=dict(event),
            format=self.name,
        )


def _severity(value: Any, *, resolving: bool) -> tuple[str, str | None, str]:
    said = text(value)
    if said is None and resolving:
        return "info", None, "a PagerDuty resolve without a severity -> info"
    mapped = SEVERITIES.get(said.lower()) if said else None
    if mapped is None:
        raise Rejected(
            f"payload.severity {said!r} is not one of {', '.join(SEVERITIES)} (PagerDuty Events API v2)",
            code="invalid_fields",
        )
    return mapped, f"severity {said}", f"PagerDuty severity {said} -> {mapped}"


def _detail_lines(custom: Any) -> list[str]:
    if isinstance(custom, dict):
        return [f"{k}: {v if isinstance(v, str) else _json(v)}" for k, v in custom.items()]
    return [custom if isinstance(custom, str) else _json(custom)] if custom is not None else []


def _detail_labels(custom: Any) -> dict[str, str]:
    return string_labels(custom, prefix="detail.") if isinstance(custom, dict) else string_labels({"detail": custom})


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def scrub(payload: Any) -> Any:
    """The event as it may be stored on a topic: without its routing key (a secret).

    A dedup_key that held the routing key is replaced by the digest ``parse`` would use, so the
    scrubbed event reads as the same alert as the original.
    """
    if not isinstance(payload, dict):
        return payload
    secret = _secret(payload)
    event = _without_secret(payload, secret)
    if (hashed := _hashed_key(payload, secret)) is not None:
        event["dedup_key"] = hashed
    if secret is not None:
        event[ROUTING_DIGEST] = routing_digest(secret)
    return event


def routing_digest(routing_key: str) -> str:
    """The integration a routing key stands for: its SHA-256's first 12 hex digits."""
    return hashlib.sha256(routing_key.encode()).hexdigest()[:12]


def _integration(event: Mapping[str, Any]) -> str | None:
    """The digest of the routing key the event was sent with (the event read without its key: see ``scrub``)."""
    digest = event.get(ROUTING_DIGEST)
    return digest if isinstance(digest, str) and _HEX12.fullmatch(digest) else None


def _secret(event: Mapping[str, Any]) -> str | None:
    """The event's routing key, when it is long enough to be told apart from ordinary text."""
    secret = event.get("routing_key")
    return secret if isinstance(secret, str) and len(secret) >= MIN_SECRET else None


def _without_secret(event: Mapping[str, Any], secret: str | None) -> Any:
    """The event without its routing key, and with the key replaced wherever else it was written."""
    return _redact({k: v for k, v in event.items() if k != "routing_key"}, secret)


def _hashed_key(event: Mapping[str, Any], secret: str | None) -> str | None:
    """The digest that stands for a dedup_key holding the routing key or too long for an id; else None."""
    raw_key = text(event.get("dedup_key"))
    if raw_key and (len(raw_key) > MAX_ID or (secret is not None and secret in raw_key)):
        return stable_id(raw_key)
    return None


def _redact(value: Any, secret: str | None) -> Any:
    """The value with every occurrence of the secret in its texts (keys included) replaced."""
    if secret is None:
        return value
    if isinstance(value, str):
        return value.replace(secret, REDACTED)
    if isinstance(value, dict):
        return {_redact(str(k), secret): _redact(v, secret) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, secret) for v in value]
    return value
