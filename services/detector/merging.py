"""Pure decisions of merging incidents and detaching alerts. No I/O here.

A merge folds N incidents into one survivor: their alerts and correlation keys move to it, and they
end, pointing at it. A detach moves some alerts of an incident into a new incident of their own; the
incident is judged again from the alerts it keeps. Merging an incident that was merged already is
refused, naming its survivor: redirecting the operator's command to an incident they did not name
could fold a whole other incident in by surprise.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta

from services.detector import classification, correlation, domain
from services.detector.classification import Classifier
from services.detector.correlation import CorrelationRules, Route
from services.detector.domain import IncidentChange, IncidentState, SeverityInputs
from shared.alerts import Alert
from shared.events import AlertCorrelation

# The correlation key of an incident made of detached alerts: no alert carries it, so later alerts
# keep going where they went before (the detached keys that left the incident entirely excepted).
DETACHED_KEY_PREFIX = "detached:"


class Refused(Exception):
    """An operator's merge or detach that cannot be applied; the message says why."""


@dataclass(frozen=True)
class Standing:
    """Whether an incident may take part in a merge or a detach."""

    id: str
    closed: bool
    merged_into: str | None = None


def check_merge(survivor: str, others: Sequence[str], found: Mapping[str, Standing]) -> list[str]:
    """Return the incidents to merge into ``survivor``, each once, in the order named; raise Refused with why."""
    merged = list(dict.fromkeys(others))
    if not merged:
        raise Refused("name at least one incident to merge into the survivor")
    if survivor in merged:
        raise Refused(f"incident {survivor} cannot be merged into itself")
    for incident_id in (survivor, *merged):
        standing = found.get(incident_id)
        if standing is None:
            raise Refused(f"no incident {incident_id}")
        if standing.merged_into is not None:
            if incident_id == survivor:
                raise Refused(
                    f"incident {survivor} was merged into {standing.merged_into} already: merge into that one"
                )
            if standing.merged_into == survivor:
                raise Refused(f"incident {incident_id} was merged into {survivor} already")
            raise Refused(f"incident {incident_id} was merged into {standing.merged_into} already")
        if standing.closed:
            raise Refused(f"incident {incident_id} has ended: an ended incident is neither merged nor merged into")
    return merged


def _lead_rank(incident: IncidentState) -> tuple[bool, int]:
    # As the detector ranks an incident's lead alert: real alerts before heartbeats and tests, then severity.
    return incident.lead_kind == "alert", incident.max_alert_severity.rank


def combine(
    survivor: IncidentState,
    others: Sequence[IncidentState],
    classifier: Classifier | None = None,
    *,
    correlations: CorrelationRules | None = None,
) -> IncidentState:
    """Return the survivor holding every alert of ``others`` too, judged from all of them.

    Alert votes, counts, hosts and users add up; the lead alert is the highest ranked of all (the
    survivor's on a tie), and titles it unless the survivor's correlation rule sets its title; the
    severity is never lower than any merged incident's, and rises if the merged whole is wider (more
    hosts or users) than each part was.
    """
    rules = classifier or classification.shipped()
    ruled = (correlation.shipped() if correlations is None else correlations).owner(survivor.correlation_key)
    everyone = [survivor, *others]
    votes: Counter[str] = Counter()
    for incident in everyone:
        votes.update(incident.type_votes)
    hosts = tuple(dict.fromkeys(h for i in everyone for h in i.hosts))
    users = tuple(dict.fromkeys(u for i in everyone for u in i.users))
    lead = max(everyone, key=_lead_rank)  # the first of the highest: the survivor wins a tie
    critical = next((i.critical_asset for i in everyone if i.critical_asset), None)
    incident_type = domain.decide_type(dict(votes))
    reached, why = domain.prioritise(
        SeverityInputs(
            alert_severity=lead.max_alert_severity,
            alert_reason=lead.lead_severity_reason,
            alert_kind=lead.lead_kind,
            incident_type=incident_type,
            hosts=len(hosts),
            users=len(users),
            critical_asset=critical,
        ),
        rules.severity,
    )
    highest = max(everyone, key=lambda i: i.severity.urgency)
    severity, severity_reason = (
        (reached, why) if reached.urgency > highest.severity.urgency else (highest.severity, highest.severity_reason)
    )
    if incident_type is survivor.type:
        reason = survivor.classification_reason
    else:
        said = next((i.classification_reason for i in everyone if i.type is incident_type), "merged incidents")
        tally = ", ".join(f"{name} {weight}" for name, weight in sorted(votes.items(), key=lambda v: -v[1]))
        reason = f"{said}; weighted alert votes of the merged incidents: {tally}"
    return replace(
        survivor,
        title=survivor.title if ruled is not None and ruled.title else lead.title,
        type=incident_type,
        severity=severity,
        classification_reason=reason,
        severity_reason=severity_reason,
        alert_count=sum(i.alert_count for i in everyone),
        max_alert_severity=lead.max_alert_severity,
        type_votes=dict(votes),
        hosts=hosts,
        users=users,
        first_seen=min(i.first_seen for i in everyone),
        last_seen=max(i.last_seen for i in everyone),
        lead_kind=lead.lead_kind,
        lead_severity_reason=lead.lead_severity_reason,
        critical_asset=critical,
    )


def correlate_merged(
    alerts: Sequence[Alert],
    survivors: Mapping[str, IncidentState],
    changes: Sequence[IncidentChange],
    *,
    window: timedelta,
    new_id: Callable[[], str],
    classifier: Classifier | None = None,
    rules: CorrelationRules | None = None,
    routes: Mapping[str, Route | None] | None = None,
) -> list[IncidentChange]:
    """Add alerts whose key was merged away to the survivor each key now leads to, after ``changes``.

    ``survivors`` maps such a key (an entity, or a rule's group by ``routes``) to its open survivor;
    ``changes`` are what the batch's other alerts did, which may have added to a survivor already:
    these alerts are folded in after them, so one incident is never folded twice from the same state
    and every alert that reaches a survivor joins it. The correlation window holds as for any entity:
    an alert later than the window after the survivor's last alert opens a new incident on its key.
    """
    result = list(changes)
    position = {change.incident.id: n for n, change in enumerate(result) if not change.created}
    routes = routes if routes is not None else {}
    by_key: dict[str, list[Alert]] = {}
    for alert in alerts:
        by_key.setdefault(domain.correlation_key(alert, routes.get(alert.key)), []).append(alert)
    for key in sorted(by_key):
        survivor = survivors[key]
        earlier = result[position[survivor.id]] if survivor.id in position else None
        base = earlier.incident if earlier else survivor
        correlated = domain.correlate_all(
            by_key[key], {key: base}, window=window, new_id=new_id, classifier=classifier, rules=rules, routes=routes
        )
        for change in correlated.changes:
            if change.created:
                result.append(change)
                continue
            # Folded under the merged-away key: the survivor keeps its own.
            incident = replace(change.incident, correlation_key=survivor.correlation_key)
            if earlier is None:
                earlier = IncidentChange(
                    incident,
                    created=False,
                    alerts=list(change.alerts),
                    type_rules=change.type_rules,
                    reasons=change.reasons,
                )
                position[survivor.id] = len(result)
                result.append(earlier)
            else:
                earlier = IncidentChange(
                    incident,
                    created=earlier.created,
                    alerts=[*earlier.alerts, *change.alerts],
                    type_rules={**earlier.type_rules, **change.type_rules},
                    reasons={**earlier.reasons, **change.reasons},
                )
                result[position[survivor.id]] = earlier
    return result


def check_detach(incident_id: str, keys: Sequence[str], live: Iterable[str]) -> list[str]:
    """Return the alert keys to detach, each once, in the order named; raise Refused with why."""
    wanted = list(dict.fromkeys(keys))
    held = set(live)
    if not wanted:
        raise Refused("name at least one alert to detach")
    missing = [key for key in wanted if key not in held]
    if missing:
        named = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise Refused(f"incident {incident_id} holds no alert {named}")
    if len(wanted) == len(held):
        raise Refused(
            f"detaching every alert of incident {incident_id} would leave it empty: resolve it, or merge it instead"
        )
    return wanted


@dataclass(frozen=True)
class Split:
    """An incident after some of its alerts were detached, and the new incident they make."""

    kept: IncidentChange  # the incident judged again from the alerts it keeps, all of them in ``alerts``
    detached: IncidentChange  # the new incident, created


def split(
    incident: IncidentState,
    kept: Sequence[Alert],
    detached: Sequence[Alert],
    *,
    new_incident_id: str,
    classifier: Classifier | None = None,
    correlations: CorrelationRules | None = None,
) -> Split:
    """Judge an incident again from the alerts it keeps, and a new one from the alerts detached from it.

    Both are judged as if their alerts had come in one batch, except that the incident keeps its
    severity if that was higher: an open incident is never downgraded by itself (people were paged
    at it); a person who finds it lower says so (`vigil severity`). An incident a correlation rule
    titles, or sets the severity of, keeps them.
    """
    rules = classifier or classification.shipped()
    # The detector's one fold, from nothing: each part judged as the detector judges any incident.
    kept_rules: dict[str, str] = {}
    kept_alerts = sorted(kept, key=lambda a: a.time)
    kept_state = domain._fold(None, kept_alerts, incident.correlation_key, incident.id, rules, kept_rules)
    if incident.severity.urgency > kept_state.severity.urgency:
        kept_state = replace(kept_state, severity=incident.severity, severity_reason=incident.severity_reason)
    ruled = (correlation.shipped() if correlations is None else correlations).owner(incident.correlation_key)
    kept_state = domain.kept_as_ruled(kept_state, incident, ruled)
    new_rules: dict[str, str] = {}
    new_alerts = sorted(detached, key=lambda a: a.time)
    new_key = f"{DETACHED_KEY_PREFIX}{new_incident_id}"
    new_state = domain._fold(None, new_alerts, new_key, new_incident_id, rules, new_rules)
    return Split(
        kept=IncidentChange(kept_state, created=False, alerts=kept_alerts, type_rules=kept_rules),
        detached=IncidentChange(new_state, created=True, alerts=new_alerts, type_rules=new_rules),
    )


def joined_by(alert: Alert, reason: AlertCorrelation | None) -> str:
    """The correlation key an alert joined its incident by, as ``correlation.unordered`` writes it.

    Read from why it joined (a rule's group, or its entity): the rules in force may place it elsewhere now.
    """
    if reason is None or reason.rule == correlation.ENTITY_RULE or reason.window_start is None:
        return alert.entity
    return correlation.unordered(correlation.group_key(reason.rule, reason.key.items(), reason.window_start))


def keys_following(
    aliases: Iterable[str],
    kept: Iterable[Alert],
    detached: Iterable[Alert],
    reasons: Mapping[str, AlertCorrelation | None] | None = None,
) -> set[str]:
    """The merged-in keys whose every alert left with the detached ones: later alerts on them follow.

    ``reasons``: why each alert joined (by alert key); an alert without one joined by its entity.
    """
    why = reasons or {}
    staying = {joined_by(a, why.get(a.key)) for a in kept}
    leaving = {joined_by(a, why.get(a.key)) for a in detached}
    return {key for key in aliases if correlation.unordered(key) in leaving - staying}
