"""Prometheus Alertmanager's webhook message, version "4" (``webhook_config``).

One message carries a group of alerts, each ``firing`` or ``resolved``; every one becomes an
alert (a resolved one with ``status: resolved``, which closes the stored alert rather than
opening an incident). Recognised by its shape: an object with an ``alerts`` list and a
``receiver`` or ``groupKey``. A message whose ``version`` is not ``"4"`` is refused
(``unsupported_version``).

Where each field comes from:

- ``id`` (deduplication): the alert's ``fingerprint``; without one (older Alertmanagers), a hash
  of its sorted labels, as the labels are what identify an Alertmanager alert.
- ``source``: ``alertmanager/<receiver>``.
- ``title``: annotation ``summary``, else ``title``, else label ``alertname``, else annotation
  ``description``; ``rule``: label ``alertname``.
- ``description``: annotation ``description``, else ``message``, else ``summary``.
- ``time``: ``startsAt``. ``endsAt`` is kept as label ``ends_at`` when set
  (``0001-01-01T00:00:00Z``, Go's zero time, means unset).
- ``status``: the alert's ``status``, else the message's; a message that says neither is refused.
- ``host``: label ``host``, ``hostname``, ``nodename``, ``node`` or ``instance`` (without its port,
  or the host of a URL), else ``pod`` / ``pod_name``; never ``job``, which groups many hosts.
- ``resource``: ``<namespace>/<pod>`` from labels ``namespace`` and ``pod`` / ``pod_name``.
- ``url``: ``generatorURL``, else the message's ``externalURL``.
- ``labels``: the alert's labels; its other annotations as ``annotation.<name>`` (``runbook_url``
  among them); ``alertmanager.receiver``, ``alertmanager.group_key``, ``alertmanager.external_url``.
- ``raw``: the one alert under ``alert``, with the message's common fields.

Labels and annotations common to the group (``commonLabels``, ``commonAnnotations``) apply to an
alert that lacks them.

Severity, from the ``severity`` label (else ``priority``), case-insensitive:

| label value | severity |
|---|---|
| ``critical``, ``crit``, ``page``, ``p1``, ``emergency``, ``fatal``, ``disaster`` | critical |
| ``error``, ``err``, ``high``, ``major``, ``severe``, ``p2`` | high |
| ``warning``, ``warn``, ``medium``, ``moderate``, ``average``, ``p3`` | medium |
| ``low``, ``minor``, ``notice``, ``p4`` | low |
| ``info``, ``informational``, ``none``, ``debug``, ``ok``, ``p5`` | info |
| absent or any other value | medium (the reason says so) |

Alertmanager's always-firing heartbeat, the ``Watchdog`` (also named ``DeadMansSwitch`` or
``DeadMansSnitch``), or an alert with severity ``none`` whose annotations say it checks the
alerting pipeline, is ``kind: heartbeat``: the detector notes it (when last seen firing), never an incident.

An alert of the group that cannot be read is listed in ``skipped`` with its reason while the
others are read; a message none of whose alerts can be read is refused with the first reason.
``truncatedAlerts`` (alerts Alertmanager left out for ``max_alerts``) is reported in ``skipped``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from services.detector.adapters.base import (
    Parsed,
    Rejected,
    build_alert,
    first,
    parse_time,
    stable_id,
    string_labels,
    text,
)
from shared.alerts import Alert

# The label that names the alert's group (the message's groupKey): the ingest keys a message by it.
GROUP_LABEL = "alertmanager.group_key"
SUPPORTED_VERSION = "4"
# Go's zero time: Alertmanager writes it for an end time it does not know.
UNSET_TIME = "0001-01-01T00:00:00Z"
STATUSES = frozenset({"firing", "resolved"})

SEVERITIES: dict[str, str] = {
    **dict.fromkeys(("critical", "crit", "page", "p1", "emergency", "fatal", "disaster"), "critical"),
    **dict.fromkeys(("error", "err", "high", "major", "severe", "p2"), "high"),
    **dict.fromkeys(("warning", "warn", "medium", "moderate", "average", "p3"), "medium"),
    **dict.fromkeys(("low", "minor", "notice", "p4"), "low"),
    **dict.fromkeys(("info", "informational", "none", "debug", "ok", "p5"), "info"),
}
DEFAULT_SEVERITY = "medium"
HEARTBEAT_NAMES = frozenset({"watchdog", "deadmansswitch", "deadmanswitch", "deadmanssnitch"})
# Words of the kube-prometheus Watchdog's description, for heartbeats renamed but kept at severity none.
HEARTBEAT_WORDS = ("alerting pipeline", "dead man", "deadman", "always firing", "always be firing")
HOST_LABELS = ("host", "hostname", "nodename", "node", "instance")
# Annotations that make the title or the description, not labels.
DESCRIBED = frozenset({"summary", "title", "description", "message"})
# The message's fields kept with each alert's raw record.
COMMON_FIELDS = (
    "version",
    "groupKey",
    "truncatedAlerts",
    "status",
    "receiver",
    "groupLabels",
    "commonLabels",
    "commonAnnotations",
    "externalURL",
)


class Alertmanager:
    name = "alertmanager"
    description = 'Prometheus Alertmanager webhook message, version "4": an object with "alerts" and a "receiver".'

    def matches(self, payload: Any) -> bool:
        return (
            isinstance(payload, dict)
            and isinstance(payload.get("alerts"), list)
            and ("receiver" in payload or "groupKey" in payload)
        )

    def parse(self, payload: Any) -> Parsed:
        if not isinstance(payload, dict):
            raise Rejected("an Alertmanager webhook message is a JSON object", code="invalid_fields")
        if not self.matches(payload) and "version" not in payload:
            # Named as Alertmanager's (its route, ?format=) but not shaped like it: say so, not "version None".
            raise Rejected(
                "not an Alertmanager webhook message: it has no 'alerts' list beside 'receiver' or 'groupKey' "
                f"(its keys: {', '.join(sorted(map(str, payload))[:12])})",
                code="invalid_fields",
            )
        version = payload.get("version")
        if version != SUPPORTED_VERSION:
            raise Rejected(
                f"Alertmanager webhook version {version!r} is not supported: Vigil reads version "
                f'"{SUPPORTED_VERSION}" (the webhook_config message of Alertmanager 0.x)',
                code="unsupported_version",
            )
        items = payload.get("alerts")
        if not isinstance(items, list):
            raise Rejected("the message's 'alerts' is not a list", code="invalid_fields")
        common = {name: payload[name] for name in COMMON_FIELDS if name in payload}
        alerts: list[Alert] = []
        skipped: list[str] = []
        refusals: list[Rejected] = []
        for number, item in enumerate(items, 1):
            try:
                alerts.append(_alert(item, common))
            except Rejected as exc:
                refusals.append(exc)
                skipped.append(f"alertmanager alert {number} of {len(items)} not read: {exc.reason}")
        if refusals and not alerts:
            first_refusal = refusals[0]
            raise Rejected(
                f"none of the message's {len(items)} alert(s) can be read; the first: {first_refusal.reason}",
                code=first_refusal.code,
            )
        if not items:
            skipped.append("alertmanager message with no alerts")
        truncated = payload.get("truncatedAlerts")
        if isinstance(truncated, int) and not isinstance(truncated, bool) and truncated > 0:
            skipped.append(f"alertmanager left out {truncated} alert(s) of the group (max_alerts)")
        return Parsed(format="alertmanager", alerts=alerts, skipped=skipped)


def _alert(item: Any, common: dict[str, Any]) -> Alert:
    if not isinstance(item, dict):
        raise Rejected("an alert is not a JSON object", code="invalid_fields")
    labels = _merged(common.get("commonLabels"), item.get("labels"))
    annotations = _merged(common.get("commonAnnotations"), item.get("annotations"))
    status = first(item.get("status"), common.get("status"))
    if status is None:
        raise Rejected("the alert has no status, nor has its message (firing or resolved)", code="missing_fields")
    if status not in STATUSES:
        raise Rejected(f"status {status!r} is neither firing nor resolved", code="invalid_fields")
    alertname = labels.get("alertname")
    severity, source_severity, reason = _severity(labels)
    fingerprint = text(item.get("fingerprint"))
    receiver = text(common.get("receiver"))
    ends_at = text(item.get("endsAt"))
    pod = first(labels.get("pod"), labels.get("pod_name"))
    namespace = labels.get("namespace")
    return build_alert(
        id=fingerprint or stable_id(*sorted(labels.items())),
        source=f"alertmanager/{receiver}"[:100] if receiver else "alertmanager",
        title=first(annotations.get("summary"), annotations.get("title"), alertname, annotations.get("description")),
        description=first(annotations.get("description"), annotations.get("message"), annotations.get("summary")) or "",
        severity=severity,
        source_severity=source_severity,
        severity_reason=reason,
        time=parse_time(item.get("startsAt"), field_name="startsAt"),
        status=status,
        kind="heartbeat" if _is_heartbeat(alertname, labels.get("severity"), annotations) else "alert",
        rule=alertname,
        host=_host(labels) or pod,
        resource="/".join(part for part in (namespace, pod) if part) or None,
        url=first(item.get("generatorURL"), common.get("externalURL")),
        labels=_labels(labels, annotations, common, receiver, ends_at),
        raw={"alert": dict(item), **common},
        format="alertmanager",
    )


def _strings(values: Any) -> dict[str, str]:
    # Labels and annotations are strings in Alertmanager; anything else is rendered, never trusted.
    return string_labels(values) if isinstance(values, dict) else {}


def _merged(common: Any, own: Any) -> dict[str, str]:
    """The group's common labels (or annotations) overridden by the alert's own."""
    if isinstance(own, dict) and own == common and list(own) == list(common):
        return _strings(own)  # a group of one alert: its own are the common ones, rendered once
    return {**_strings(common), **_strings(own)}


def _labels(
    labels: dict[str, str],
    annotations: dict[str, str],
    common: dict[str, Any],
    receiver: str | None,
    ends_at: str | None,
) -> dict[str, str]:
    """The alert's labels, its annotations but those that are its title or description, and the message's own."""
    found = dict(labels)
    for name, annotation in annotations.items():
        if name not in DESCRIBED:
            found[f"annotation.{name}"] = annotation
    meta = (
        ("alertmanager.receiver", receiver),
        (GROUP_LABEL, text(common.get("groupKey"))),
        ("alertmanager.external_url", text(common.get("externalURL"))),
        ("ends_at", ends_at if ends_at != UNSET_TIME else None),
    )
    for name, value in meta:
        if value:
            found[name] = value
    return found


def _severity(labels: dict[str, str]) -> tuple[str, str | None, str]:
    """Return the severity, the label as the tool said it, and the mapping applied."""
    for name in ("severity", "priority"):
        if (said := labels.get(name)) is not None:
            mapped = SEVERITIES.get(said.strip().lower())
            if mapped is None:
                return DEFAULT_SEVERITY, f"{name}={said}", f"Alertmanager {name} {said!r} is not mapped -> medium"
            return mapped, f"{name}={said}", f"Alertmanager {name} {said!r} -> {mapped}"
    return DEFAULT_SEVERITY, None, "Alertmanager alert without a severity label -> medium"


def _is_heartbeat(alertname: str | None, severity: str | None, annotations: dict[str, str]) -> bool:
    if alertname is not None and alertname.strip().lower() in HEARTBEAT_NAMES:
        return True
    if severity is None or severity.strip().lower() != "none":
        return False
    said = " ".join(annotations.values()).lower()
    return any(words in said for words in HEARTBEAT_WORDS)


def _host(labels: dict[str, str]) -> str | None:
    """The host named by the first host label, without the port or URL around it (``node-1:9100``)."""
    # The labels are rendered, stripped text: the first that is not empty is the one first() would take.
    value = next((found for name in HOST_LABELS if (found := labels.get(name))), None)
    if value is None:
        return None
    if "://" in value:
        try:
            return urlsplit(value).hostname or value
        except ValueError:
            return value
    if value.startswith("[") and "]" in value:  # [2001:db8::1]:9100
        return value[1 : value.index("]")] or value
    host, colon, port = value.rpartition(":")
    return host if colon and host and port.isdigit() and ":" not in host else value
