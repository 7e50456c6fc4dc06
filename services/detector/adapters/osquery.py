"""osquery result logs (and status logs): query results, accounted for and never raised as alerts.

**Detected by** a scheduled query's result log line: a ``name`` with a differential result
(``action`` ``added``/``removed`` and its ``columns``), a snapshot (``snapshot``, a list of rows) or a
batch (``diffResults`` with ``added``/``removed`` rows), as osqueryd's filesystem, TLS or Kafka
logger writes them; or a status log line (``severity``, ``filename``, ``line``, ``message``).

**Never an alert**: a result log says what a query returned, not that anything is wrong, and the
format has no field that says otherwise: a pack's or query's name (``pack_incident-response_...``,
``pack_ossec-rootkit_...``) and ``decorations`` are naming conventions chosen by whoever wrote the
configuration, not a verdict or a severity, so Vigil does not guess one from them. Every record is
returned as skipped, with the query's name, its action and host, saying so: route queries meant to
alert through a tool that raises alerts from them (a SIEM rule, Fleet policies, Wazuh's osquery
integration) and send Vigil that tool's alerts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.detector.adapters.base import Parsed, Rejected, first, json_object, text

ROUTE = "a query result, not an alert; route alerting queries through a tool that raises alerts"
STATUS_KEYS = ("severity", "filename", "line", "message")


def _is_status(payload: Mapping[str, Any]) -> bool:
    return all(k in payload for k in STATUS_KEYS) and ("hostIdentifier" in payload or "unixTime" in payload)


def _shape(payload: Mapping[str, Any]) -> str | None:
    """What kind of result line this is, as its skip reason words it; None when it is none."""
    if not isinstance(payload.get("name"), str):
        return None
    diff = payload.get("diffResults")
    if isinstance(diff, dict):
        added, removed = (len(rows) if isinstance(rows := diff.get(k), list) else 0 for k in ("added", "removed"))
        return f"batched diffResults: {added} added, {removed} removed"
    if isinstance(payload.get("snapshot"), list):
        return f"action snapshot, {len(payload['snapshot'])} rows"
    if isinstance(payload.get("action"), str) and isinstance(payload.get("columns"), Mapping):
        return f"action {payload['action']}"
    return None


class Osquery:
    name = "osquery"
    description = "osquery result logs (differential, snapshot, batched) and status logs: never alerts."

    def matches(self, payload: Any) -> bool:
        return isinstance(payload, dict) and (_shape(payload) is not None or _is_status(payload))

    def parse(self, payload: Any) -> Parsed:
        payload = json_object(payload, "an osquery log line")
        host = first(payload.get("hostIdentifier"), payload.get("hostname"))
        on = f" on {host}" if host else ""
        shape = _shape(payload)
        if shape is not None:
            return Parsed(format=self.name, skipped=[f"osquery {payload['name']} result ({shape}){on}: {ROUTE}"])
        if _is_status(payload):
            severity = text(payload.get("severity"))
            return Parsed(
                format=self.name,
                skipped=[f"osquery status log (severity {severity}){on}: the daemon's own log, not an alert"],
            )
        raise Rejected(
            "not an osquery result or status log: no name with columns, snapshot or diffResults",
            code="missing_fields",
        )
