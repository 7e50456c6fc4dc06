"""Pure rules of the watch after containment: what was contained, and which new alerts involve it.

Once every containment step of an incident's plan has ended and some succeeded, the entities they
acted on (blocked addresses, isolated hosts, disabled accounts…) are watched for a period. An
alert of the incident newer than the watch's start that names one of them is evidence that the
containment did not hold: traffic from a blocked address, activity on an isolated host.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from services.responder.steps import FINAL
from shared.events import AlertSummary, ContainmentEvidence, WatchedEntity

# The kinds of target a containment step acts on that alerts can name.
WATCHED_KINDS: frozenset[str] = frozenset({"ip", "host", "user", "domain", "url", "sha256"})
# Evidence kept per watch: enough to show, bounded so that an event stays small.
MAX_EVIDENCE = 50


@dataclass(frozen=True)
class Watch:
    """How long to watch, and how many alerts on contained entities make the containment ineffective."""

    period: timedelta = timedelta(minutes=30)
    threshold: int = 3

    def __post_init__(self) -> None:
        if self.period <= timedelta(0) or self.threshold < 1:
            raise ValueError("the watch after containment needs a positive period and at least one alert")


def contained_entities(steps: Iterable[Mapping[str, Any]]) -> list[WatchedEntity] | None:
    """The entities to watch once containment is over; None while a containment step has not ended."""
    containment = [s for s in steps if s["phase"] == "containment"]
    if not containment or any(s["state"] not in FINAL for s in containment):
        return None
    found = {
        (s["target_kind"], s["item"])
        for s in containment
        if s["state"] == "succeeded" and s["item"] is not None and s["target_kind"] in WATCHED_KINDS
    }
    return [WatchedEntity(kind=kind, value=value) for kind, value in sorted(found)]


def _ip_in(value: str, address: Any) -> bool:
    try:
        return ipaddress.ip_address(str(address)) in ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False


def _domain_of(url: str | None) -> str:
    return (urlsplit(url if "//" in (url or "") else f"//{url}").hostname or "") if url else ""


def involves(alert: AlertSummary, entity: WatchedEntity) -> bool:
    """Whether an alert names a contained entity."""
    value = entity.value.lower()
    if entity.kind == "ip":
        return any(a is not None and _ip_in(entity.value, a) for a in (alert.src_ip, alert.dst_ip))
    if entity.kind == "host":
        return (alert.host or "").lower().rstrip(".") == value.rstrip(".")
    if entity.kind == "user":
        return (alert.user or "").lower() == value
    if entity.kind == "domain":
        host = _domain_of(alert.url).lower()
        named = {v.lower().rstrip(".") for v in alert.labels.values()}
        return host == value or host.endswith(f".{value}") or value in named
    if entity.kind == "url":
        return (alert.url or "").lower() == value
    if entity.kind == "sha256":
        return value in {v.lower() for v in alert.labels.values()}
    return False


def evidence(
    alerts: Sequence[AlertSummary], entities: Sequence[WatchedEntity], *, since: datetime
) -> list[ContainmentEvidence]:
    """The alerts after ``since`` that name a contained entity, each with the first entity it names."""
    found: list[ContainmentEvidence] = []
    for alert in alerts:
        if alert.time < since or alert.kind != "alert" or alert.status != "firing":
            continue
        entity = next((e for e in entities if involves(alert, e)), None)
        if entity is not None:
            found.append(
                ContainmentEvidence(
                    alert_key=alert.key, title=alert.title[:300], time=alert.time, kind=entity.kind, value=entity.value
                )
            )
    return found
