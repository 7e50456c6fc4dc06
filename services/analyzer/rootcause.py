"""Root cause and threat analysis of an incident, from a trace folded alert by alert. Pure.

The ``Trace`` keeps what root cause needs of every alert seen so far — the earliest alerts, each
technique, tactic, entity and source address with its first sighting, the earliest alert that
looks like a way in — so that an incident of 10,000 alerts is analysed with work proportional to
its new alerts: ``fold`` adds a batch, the hypotheses read the trace. Order does not matter: the
earliest is always by (time, alert key).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from services.analyzer.attack import Dataset, Mapped, technique_label
from shared import events
from shared.addresses import is_external, is_internal
from shared.events import AlertSummary, Hypothesis, Indicator, RootCause, ThreatProfile

INITIAL_ACCESS = "TA0001"
RECONNAISSANCE = "TA0043"
LATERAL_MOVEMENT = "TA0008"
BRUTE_FORCE = "T1110"
# Bounds on what a trace keeps, so that a huge incident keeps a bounded row.
MAX_EARLIEST = 5
MAX_ENTITIES = 10_000
MAX_SOURCES = 2_000
MAX_MAPPED_BY = 3
MAX_HOPS = 2_000
MAX_HOP_TECHNIQUES_KEPT = 50
# The hops an analysis carries, earliest first, and the techniques each names.
MAX_PATH_STEPS = 50
MAX_HOP_TECHNIQUES = 10
# A lead this long makes the earliest entity clearly first.
CLEAR_LEAD = timedelta(minutes=5)
# Which entities can be patient zero, most telling first: a machine before an account.
ENTITY_PREFERENCE = ("host", "ip", "resource", "user")
BAD_VERDICTS = ("malicious", "suspicious")
Origin = Literal["external", "internal", "mixed", "unknown"]


class Seen(BaseModel):
    first_seen: datetime
    first_alert: str
    alerts: int = 1


class TechniqueSeen(Seen):
    tactics: list[str] = Field(default_factory=list)
    mapped_by: list[str] = Field(default_factory=list)


class TacticSeen(Seen):
    stated: bool = False
    techniques: list[str] = Field(default_factory=list)


class Hop(BaseModel):
    """Activity from one entity to another, as the alerts showed it."""

    first_seen: datetime
    last_seen: datetime
    first_alert: str
    alerts: int = 1
    techniques: list[str] = Field(default_factory=list)  # sorted


class AlertBrief(BaseModel):
    """An alert as the trace remembers it: enough to state it as evidence."""

    key: str
    time: datetime
    source: str
    format: str
    title: str
    host: str | None = None
    user: str | None = None
    src_ip: str | None = None
    dst_ip: str | None = None
    resource: str | None = None
    techniques: list[str] = Field(default_factory=list)
    tactics: list[str] = Field(default_factory=list)
    mapped_by: dict[str, str] = Field(default_factory=dict)

    @property
    def order(self) -> tuple[datetime, str]:
        return (self.time, self.key)

    def where(self) -> str:
        target = self.host or self.resource or self.dst_ip or self.user
        return f" (on {target})" if target else ""

    def said(self) -> str:
        return f"{self.time.isoformat()} {self.source} ({self.format}): {self.title}{self.where()}"


class Trace(BaseModel):
    alerts: int = 0
    earliest: list[AlertBrief] = Field(default_factory=list)
    techniques: dict[str, TechniqueSeen] = Field(default_factory=dict)
    tactics: dict[str, TacticSeen] = Field(default_factory=dict)
    entities: dict[str, Seen] = Field(default_factory=dict)
    sources: dict[str, Seen] = Field(default_factory=dict)
    # The earliest alert of each way in: "initial-access", "brute-force", "external".
    entries: dict[str, AlertBrief] = Field(default_factory=dict)
    lateral: int = Field(0, description="Alerts from one internal address to another.")
    # By "<source> -> <target>": the attack path's hops, the MAX_HOPS earliest. None: the trace was begun
    # before Vigil kept hops, and its path would start midway.
    hops: dict[str, Hop] | None = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _kept_before_hops(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("alerts") and "hops" not in data:
            return {**data, "hops": None}
        return data


def brief(alert: AlertSummary, mapped: Mapped) -> AlertBrief:
    return AlertBrief(
        key=alert.key,
        time=alert.time,
        source=alert.source,
        format=alert.format,
        title=alert.title[:200],
        host=alert.host,
        user=alert.user,
        src_ip=str(alert.src_ip) if alert.src_ip else None,
        dst_ip=str(alert.dst_ip) if alert.dst_ip else None,
        resource=alert.resource,
        techniques=sorted(mapped.techniques),
        tactics=sorted(mapped.tactics),
        mapped_by=dict(mapped.techniques),
    )


def _see(seen: dict[str, Seen], key: str, alert: AlertBrief, limit: int) -> None:
    known = seen.get(key)
    if known is None:
        if len(seen) < limit:
            seen[key] = Seen(first_seen=alert.time, first_alert=alert.key)
        return
    known.alerts += 1
    if alert.order < (known.first_seen, known.first_alert):
        known.first_seen, known.first_alert = alert.time, alert.key


def entities_of(alert: AlertBrief) -> list[str]:
    """What the alert says is affected: its host, account, cloud resource, and internal target address."""
    found = []
    if alert.host:
        found.append(f"host:{alert.host.lower()}")
    if alert.resource:
        found.append(f"resource:{alert.resource}")
    if alert.dst_ip and is_internal(alert.dst_ip):
        found.append(f"ip:{alert.dst_ip}")
    elif not alert.host and alert.src_ip and is_internal(alert.src_ip) and not alert.dst_ip:
        found.append(f"ip:{alert.src_ip}")  # an internal address alone is what the alert is about
    if alert.user:
        found.append(f"user:{alert.user.lower()}")
    return found


def fold(known: Trace | None, alerts: Iterable[tuple[AlertSummary, Mapped]]) -> Trace:
    """The trace with a batch of alerts (and their ATT&CK mapping) added."""
    trace = known.model_copy(deep=True) if known is not None else Trace()
    latest_hop: HopOrder | None = None
    for alert, mapped in alerts:
        if alert.kind == "heartbeat":
            continue  # a tool saying it is alive; a test finding is analysed like the attack it imitates
        seen = brief(alert, mapped)
        trace.alerts += 1
        trace.earliest = sorted([*trace.earliest, seen], key=lambda a: a.order)[:MAX_EARLIEST]
        for tid, how in mapped.techniques.items():
            technique = trace.techniques.get(tid)
            tactics = list(mapped.placed.get(tid, ()))
            if technique is None:
                trace.techniques[tid] = TechniqueSeen(
                    first_seen=seen.time, first_alert=seen.key, tactics=sorted(tactics), mapped_by=[how]
                )
                continue
            technique.alerts += 1
            if seen.order < (technique.first_seen, technique.first_alert):
                technique.first_seen, technique.first_alert = seen.time, seen.key
            technique.tactics = sorted({*technique.tactics, *tactics})
            if how not in technique.mapped_by and len(technique.mapped_by) < MAX_MAPPED_BY:
                technique.mapped_by.append(how)
        for tactic_id in mapped.tactics:
            stated = tactic_id in mapped.stated_tactics
            via = sorted(t for t, placed in mapped.placed.items() if tactic_id in placed)
            tactic = trace.tactics.get(tactic_id)
            if tactic is None:
                trace.tactics[tactic_id] = TacticSeen(
                    first_seen=seen.time, first_alert=seen.key, stated=stated, techniques=via
                )
                continue
            tactic.alerts += 1
            tactic.stated = tactic.stated or stated
            tactic.techniques = sorted({*tactic.techniques, *via})
            if seen.order < (tactic.first_seen, tactic.first_alert):
                tactic.first_seen, tactic.first_alert = seen.time, seen.key
        for entity in entities_of(seen):
            _see(trace.entities, entity, seen, MAX_ENTITIES)
        if seen.src_ip:
            _see(trace.sources, seen.src_ip, seen, MAX_SOURCES)
            if seen.dst_ip and is_internal(seen.src_ip) and is_internal(seen.dst_ip):
                trace.lateral += 1
        for way in _ways_in(seen):
            if way not in trace.entries or seen.order < trace.entries[way].order:
                trace.entries[way] = seen
        if trace.hops is not None and (hop := hop_of(seen)) is not None:
            latest_hop = _hop(trace.hops, hop, seen, latest_hop)
    return trace


def hop_of(alert: AlertBrief) -> tuple[str, str] | None:
    """The hop an alert shows: from its source address to its destination address, else to its host (a login
    from an address). None when it names no source address, or the two ends are one.

    A host with a destination address is no hop: endpoint agents put the host's own address there."""
    if not alert.src_ip:
        return None
    source = f"ip:{alert.src_ip}"
    target = f"ip:{alert.dst_ip}" if alert.dst_ip else f"host:{alert.host.lower()}" if alert.host else None
    if target is None or target == source:
        return None
    return source, target


HopOrder = tuple[datetime, str, str]


def _hop(hops: dict[str, Hop], hop: tuple[str, str], alert: AlertBrief, latest: HopOrder | None) -> HopOrder | None:
    """Fold one alert into the hops, keeping the MAX_HOPS earliest (by first sighting, alert key, hop), the
    same whatever order the alerts come in. ``latest``: the latest hop kept, as the fold last knew it (None:
    not known); returns it as it stands now, so that a full trace fed in time order is not scanned per alert."""
    key = f"{hop[0]} -> {hop[1]}"
    known = hops.get(key)
    if known is None:
        if len(hops) >= MAX_HOPS:
            if latest is None:
                latest = max((h.first_seen, h.first_alert, k) for k, h in hops.items())
            if (alert.time, alert.key, key) >= latest:
                return latest
            del hops[latest[2]]
            latest = None  # another is the latest now; found again when next needed
        techniques = sorted(alert.techniques)[:MAX_HOP_TECHNIQUES_KEPT]
        hops[key] = Hop(first_seen=alert.time, last_seen=alert.time, first_alert=alert.key, techniques=techniques)
        return latest
    known.alerts += 1
    if alert.order < (known.first_seen, known.first_alert):
        known.first_seen, known.first_alert = alert.time, alert.key
        latest = None  # it may have been the latest
    known.last_seen = max(known.last_seen, alert.time)
    known.techniques = sorted({*known.techniques, *alert.techniques})[:MAX_HOP_TECHNIQUES_KEPT]
    return latest


def attack_path(trace: Trace, *, limit: int = MAX_PATH_STEPS) -> list[events.PathStep]:
    """The incident's hops, earliest first: each source to what it reached, with its techniques."""
    hops = trace.hops or {}
    ordered = sorted(hops.items(), key=lambda item: (item[1].first_seen, item[1].first_alert, item[0]))
    steps = []
    for key, hop in ordered[:limit]:
        source, _, target = key.partition(" -> ")
        steps.append(
            events.PathStep(
                source=source,
                target=target,
                first_seen=hop.first_seen,
                last_seen=hop.last_seen,
                alerts=hop.alerts,
                techniques=hop.techniques[:MAX_HOP_TECHNIQUES],
                lateral=_internal(source) and _internal(target),
            )
        )
    return steps


def _internal(entity: str) -> bool:
    """A host is inside; an address is inside when it is internal (a hop's source is always an address)."""
    kind, _, value = entity.partition(":")
    return kind == "host" or (kind == "ip" and is_internal(value))


def _ways_in(alert: AlertBrief) -> list[str]:
    ways = []
    if INITIAL_ACCESS in alert.tactics:
        ways.append("initial-access")
    if any(t == BRUTE_FORCE or t.startswith(f"{BRUTE_FORCE}.") for t in alert.techniques):
        ways.append("brute-force")
    if alert.src_ip and is_external(alert.src_ip):
        ways.append("external")
    return ways


# ---- hypotheses ----------------------------------------------------------------------------------


def _ago(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172_800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86_400} days"


def first_alert(trace: Trace) -> Hypothesis | None:
    """The incident's first alert: the earliest by the tools' own times."""
    if not trace.earliest:
        return None
    first = trace.earliest[0]
    evidence = [first.said(), f"the earliest of {trace.alerts} alert(s), by the time each tool gave"]
    if len(trace.earliest) == 1:
        confidence = 95
    else:
        following = trace.earliest[1]
        lead = following.time - first.time
        if lead > timedelta(0):
            evidence.append(f"the next alert came {_ago(lead)} later: {following.title}")
            confidence = 90
        else:
            ties = sum(a.time == first.time for a in trace.earliest)
            evidence.append(f"{ties} alerts share its time: which came first is not certain")
            confidence = 50
    return Hypothesis(
        statement=f"The first alert is {first.title!r} from {first.source} at {first.time.isoformat()}",
        subject=first.key,
        confidence=confidence,
        evidence=evidence,
    )


def patient_zero(trace: Trace) -> Hypothesis | None:
    """The earliest affected entity: a host before an address, a resource or an account."""
    for kind in ENTITY_PREFERENCE:
        candidates = sorted(
            ((name, seen) for name, seen in trace.entities.items() if name.startswith(f"{kind}:")),
            key=lambda item: (item[1].first_seen, item[0]),
        )
        if candidates:
            break
    else:
        return None
    (name, seen), rest = candidates[0], candidates[1:]
    entity = name.split(":", 1)[1]
    first_of_it = next((a for a in trace.earliest if a.key == seen.first_alert), None)
    evidence = [
        f"{kind} {entity} first seen {seen.first_seen.isoformat()}"
        + (f" in {first_of_it.title!r}" if first_of_it else f" (alert {seen.first_alert})"),
        f"{seen.alerts} alert(s) name it",
    ]
    if not rest:
        confidence = 75
        evidence.append(f"the only {kind} the alerts name")
    else:
        runner, runner_seen = rest[0]
        lead = runner_seen.first_seen - seen.first_seen
        if lead <= timedelta(0):
            confidence = 40
            evidence.append(f"{runner.split(':', 1)[1]} was seen at the same time: either may be first")
        else:
            confidence = 80 if lead >= CLEAR_LEAD else 65
            evidence.append(f"the next {kind}, {runner.split(':', 1)[1]}, was seen {_ago(lead)} later")
    way_in = next((trace.entries[w] for w in ("initial-access", "brute-force", "external") if w in trace.entries), None)
    if way_in is not None and name in entities_of(way_in):
        confidence = min(95, confidence + 10)
        evidence.append(f"the probable way in targets it: {way_in.title}")
    return Hypothesis(
        statement=f"Patient zero is {kind} {entity}", subject=name, confidence=confidence, evidence=evidence
    )


def entry_vector(trace: Trace, dataset: Dataset, indicators: Sequence[Indicator]) -> Hypothesis | None:
    """How the attacker probably got in: an initial-access technique, else brute force, else an outside address."""
    bad = {i.value: i for i in indicators if i.verdict in BAD_VERDICTS}
    first = trace.earliest[0] if trace.earliest else None
    if (alert := trace.entries.get("initial-access")) is not None:
        tid = next(
            (t for t in alert.techniques if INITIAL_ACCESS in (dataset.technique(t) or _NONE).tactics),
            None,
        )
        how = alert.mapped_by.get(tid, "") if tid else "tactic named by the tool"
        confidence = 60 if how.startswith("rule ") else 75
        evidence = [alert.said(), f"ATT&CK Initial Access ({how})" if how else "ATT&CK Initial Access"]
        if first is not None and alert.key == first.key:
            confidence += 10
            evidence.append("it is also the incident's first alert")
        label = technique_label(tid, dataset) if tid else "an Initial Access technique"
        return Hypothesis(
            statement=f"Entry by {label}", subject=tid or INITIAL_ACCESS, confidence=confidence, evidence=evidence
        )
    if (alert := trace.entries.get("brute-force")) is not None and alert.src_ip and is_external(alert.src_ip):
        evidence = [alert.said(), f"from outside address {alert.src_ip}"]
        confidence = 55
        if alert.src_ip in bad:
            confidence += 15
            evidence.append(f"{alert.src_ip} is {bad[alert.src_ip].verdict} to threat intelligence")
        return Hypothesis(
            statement=f"Entry by brute force of credentials from {alert.src_ip}",
            subject=BRUTE_FORCE,
            confidence=confidence,
            evidence=evidence,
        )
    if (alert := trace.entries.get("external")) is not None and alert.src_ip:
        evidence = [alert.said(), f"the earliest alert from an outside address, {alert.src_ip}"]
        confidence = 35
        if alert.src_ip in bad:
            confidence += 20
            evidence.append(f"{alert.src_ip} is {bad[alert.src_ip].verdict} to threat intelligence")
        if first is not None and alert.key == first.key:
            confidence += 10
            evidence.append("it is also the incident's first alert")
        return Hypothesis(
            statement=f"Entry from outside address {alert.src_ip}",
            subject=f"ip:{alert.src_ip}",
            confidence=confidence,
            evidence=evidence,
        )
    if trace.techniques:
        tid, seen = min(trace.techniques.items(), key=lambda item: (item[1].first_seen, item[0]))
        return Hypothesis(
            statement=f"Way in not seen; the earliest activity is {technique_label(tid, dataset)}",
            subject=tid,
            confidence=20,
            evidence=[
                "no alert shows initial access, brute force or an outside address",
                f"{tid} first seen {seen.first_seen.isoformat()} (alert {seen.first_alert})",
            ],
        )
    return None


class _NoTechnique:
    tactics: tuple[str, ...] = ()


_NONE = _NoTechnique()


def stage(trace: Trace, dataset: Dataset) -> Hypothesis | None:
    """The kill-chain stage: the furthest tactic of the Enterprise matrix the alerts show."""
    reached = sorted(
        ((dataset.tactics[t], seen) for t, seen in trace.tactics.items() if t in dataset.tactics),
        key=lambda item: item[0].stage,
    )
    if not reached:
        return None
    tactic, seen = reached[-1]
    path = " → ".join(t.name for t, _ in reached)
    evidence = [f"tactics reached: {path}", f"{tactic.name} first seen {seen.first_seen.isoformat()}"]
    if seen.stated:
        confidence = 85
        evidence.append(f"a tool named {tactic.name} itself")
    else:
        sole = [t for t in seen.techniques if (dataset.technique(t) or _NONE).tactics == (tactic.id,)]
        confidence = 70 if sole else 45
        named = ", ".join(technique_label(t, dataset) for t in (sole or seen.techniques)[:3])
        evidence.append(f"inferred from {named}" + ("" if sole else " (which serves other tactics too)"))
    return Hypothesis(
        statement=f"Reached {tactic.name} (stage {tactic.stage} of {len(dataset.tactics)})",
        subject=tactic.id,
        confidence=confidence,
        evidence=evidence,
    )


def root_cause(trace: Trace, dataset: Dataset, indicators: Sequence[Indicator]) -> RootCause:
    return RootCause(
        stage=stage(trace, dataset),
        patient_zero=patient_zero(trace),
        entry_vector=entry_vector(trace, dataset, indicators),
        first_alert=first_alert(trace),
    )


# ---- ATT&CK as the event carries it --------------------------------------------------------------


def techniques_of(trace: Trace, dataset: Dataset) -> list[events.AttackTechnique]:
    found = []
    for tid, seen in sorted(trace.techniques.items(), key=lambda item: (item[1].first_seen, item[0])):
        technique = dataset.technique(tid)
        found.append(
            events.AttackTechnique(
                id=tid,
                name=technique_label(tid, dataset).split(" ", 1)[1] if technique else "unknown",
                tactics=seen.tactics,
                alerts=seen.alerts,
                first_seen=seen.first_seen,
                first_alert=seen.first_alert,
                mapped_by=seen.mapped_by,
            )
        )
    return found


def tactics_of(trace: Trace, dataset: Dataset) -> list[events.AttackTactic]:
    found = []
    for tid, seen in trace.tactics.items():
        tactic = dataset.tactics.get(tid)
        if tactic is not None:
            found.append(
                events.AttackTactic(
                    id=tid,
                    name=tactic.name,
                    stage=tactic.stage,
                    first_seen=seen.first_seen,
                    stated=seen.stated,
                    techniques=seen.techniques,
                )
            )
    return sorted(found, key=lambda t: t.stage)


# ---- threat profile ------------------------------------------------------------------------------


def threat_profile(
    trace: Trace, dataset: Dataset, indicators: Sequence[Indicator], *, known_bad_outside: int | None = None
) -> ThreatProfile:
    """Where the activity came from, what intelligence knows of it, and who or what feeds tag it with.

    ``known_bad_outside``: how many of all the incident's indicators are known bad and not addresses of
    ours, when ``indicators`` are only its worst (known bad first).
    """
    external = sorted((a for a in trace.sources if is_external(a)), key=lambda a: (trace.sources[a].first_seen, a))
    internal = [a for a in trace.sources if is_internal(a)]
    bad = [i for i in indicators if i.verdict in BAD_VERDICTS]
    bad_outside = [i for i in bad if i.kind not in ("ipv4", "ipv6") or is_external(i.value)]
    n_bad_outside = len(bad_outside) if known_bad_outside is None else known_bad_outside
    evidence = []
    if external:
        evidence.append(f"{len(external)} outside source address(es), first {external[0]}")
    if n_bad_outside:
        evidence.append(f"{n_bad_outside} indicator(s) known bad to threat intelligence")
    lateral = trace.lateral or LATERAL_MOVEMENT in trace.tactics
    if internal:
        evidence.append(f"{len(internal)} internal source address(es)")
    if lateral:
        evidence.append("movement between internal addresses" if trace.lateral else "ATT&CK Lateral Movement")
    origin: Origin
    if (external or n_bad_outside) and lateral:
        origin = "mixed"
    elif external or n_bad_outside:
        origin = "external"
    elif internal or trace.entities:
        origin = "internal"
        if not internal:
            evidence.append("no alert names an outside address")
    else:
        origin = "unknown"
    actors: dict[str, None] = {}
    malware: dict[str, None] = {}
    other: dict[str, None] = {}
    for indicator in bad:
        for tag in indicator.tags:
            named = dataset.named(tag)
            if named is None:
                other[tag] = None
            elif named.kind == "actor":
                actors[f"{named.name} ({named.id})"] = None
            else:
                malware[f"{named.name} ({named.id}, {named.kind})"] = None
    return ThreatProfile(
        origin=origin,
        origin_evidence=evidence,
        external_sources=external[:20],
        known_bad=[
            f"{i.kind} {i.value}: {i.verdict}"
            + (f" ({i.confidence})" if i.confidence is not None else "")
            + (f" by {', '.join(i.feeds)}" if i.feeds else "")
            for i in sorted(bad, key=lambda i: (i.verdict != "malicious", -(i.confidence or 0), i.kind, i.value))[:20]
        ],
        actors=sorted(actors),
        malware=sorted(malware),
        tags=sorted(other)[:20],
    )
