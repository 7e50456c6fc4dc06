"""An incident's risk score, 0-100, as the sum of six factors, each with its points and its reason. Pure.

The factors and their most points: severity 25, the most critical affected asset 20, threat
intelligence 15, the furthest ATT&CK tactic 15, breadth (systems and accounts) 10, the highest
privilege of an affected account 15. A system or account the asset inventory lacks counts as a
middling one (6 and 4 points), beside the known ones: knowing more of them never lowers the score.
Each says why it gave what it gave, so that an operator can check the score and argue with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from shared.events import Indicator, Risk, RiskFactor, Severity

SEVERITY_POINTS = {Severity.SEV1: 25, Severity.SEV2: 18, Severity.SEV3: 10, Severity.SEV4: 4}
CRITICALITY_POINTS = {1: 20, 2: 14, 3: 8, 4: 3}
UNKNOWN_SYSTEMS_POINTS = 6  # unknown to the inventory: weighed as a middling asset, not as nothing
PRIVILEGE_POINTS = {"domain_admin": 15, "admin": 11, "elevated": 6, "standard": 2}
UNKNOWN_USERS_POINTS = 4
TACTIC_MAX = 15
BREADTH_STEPS = ((1, 2), (2, 4), (5, 6), (20, 8))  # (at most this many entities, points); more: 10
Level = Literal["low", "medium", "high", "critical"]
LEVELS: tuple[tuple[int, Level], ...] = ((75, "critical"), (50, "high"), (25, "medium"), (0, "low"))


@dataclass(frozen=True)
class RiskInputs:
    severity: Severity
    most_critical: int | None = None  # 1 (most critical) to 4, of the affected assets the inventory knows
    crown_jewels: Sequence[str] = ()
    unknown_systems: int = 0
    indicators: Sequence[Indicator] = ()  # the worst first, when not all of them (the analysis carries the worst)
    verdict_counts: Mapping[str, int] | None = None  # of all the indicators, when ``indicators`` are not all
    tactic: tuple[int, str] | None = None  # (stage 1-14, name) of the furthest tactic reached
    tactics_in_matrix: int = 14
    hosts: int = 0
    users: int = 0
    privileges: dict[str, str] = field(default_factory=dict)  # affected account -> privilege, where known
    unknown_users: int = 0


def _severity(inputs: RiskInputs) -> RiskFactor:
    points = SEVERITY_POINTS[inputs.severity]
    return RiskFactor(factor="severity", points=points, max_points=25, reason=f"{inputs.severity.value} incident")


def _criticality(inputs: RiskInputs) -> RiskFactor:
    # Unknown systems weigh as a middling asset whatever else is known: learning of one more (a test box)
    # never lowers the score.
    known = CRITICALITY_POINTS[inputs.most_critical] if inputs.most_critical is not None else 0
    unknown = UNKNOWN_SYSTEMS_POINTS if inputs.unknown_systems else 0
    unknown_reason = f"{inputs.unknown_systems} affected system(s) unknown to the asset inventory"
    if inputs.most_critical is not None and known >= unknown:
        points = known
        reason = f"most critical affected asset is criticality {inputs.most_critical}"
        if inputs.crown_jewels:
            reason += f" (crown jewel {', '.join(inputs.crown_jewels[:3])})"
    elif inputs.unknown_systems:
        points, reason = unknown, unknown_reason
        if inputs.most_critical is not None:
            reason += f" (the most critical known is criticality {inputs.most_critical})"
    else:
        points, reason = 0, "no affected system named"
    return RiskFactor(factor="asset_criticality", points=points, max_points=20, reason=reason)


def _intel(inputs: RiskInputs) -> RiskFactor:
    malicious = [i for i in inputs.indicators if i.verdict == "malicious"]
    suspicious = [i for i in inputs.indicators if i.verdict == "suspicious"]
    # The most confident of a verdict is among the worst indicators whenever any has it; the counts cover all.
    counted = inputs.verdict_counts
    n_malicious = counted.get("malicious", 0) if counted is not None else len(malicious)
    n_suspicious = counted.get("suspicious", 0) if counted is not None else len(suspicious)
    if n_malicious:
        confidence = max((i.confidence or 0 for i in malicious), default=0)
        points = 8 + round(7 * confidence / 100)
        reason = f"{n_malicious} indicator(s) malicious to threat intelligence (confidence up to {confidence})"
    elif n_suspicious:
        confidence = max((i.confidence or 0 for i in suspicious), default=0)
        points = 4 + round(4 * confidence / 100)
        reason = f"{n_suspicious} indicator(s) suspicious to threat intelligence (confidence up to {confidence})"
    else:
        points, reason = 0, "no indicator is known to threat intelligence"
    return RiskFactor(factor="intel", points=points, max_points=15, reason=reason)


def _tactic(inputs: RiskInputs) -> RiskFactor:
    if inputs.tactic is None:
        return RiskFactor(factor="tactic", points=0, max_points=TACTIC_MAX, reason="no ATT&CK tactic seen")
    stage, name = inputs.tactic
    points = round(TACTIC_MAX * stage / inputs.tactics_in_matrix)
    reason = f"reached {name}, stage {stage} of {inputs.tactics_in_matrix} of the ATT&CK kill chain"
    return RiskFactor(factor="tactic", points=points, max_points=TACTIC_MAX, reason=reason)


def _breadth(inputs: RiskInputs) -> RiskFactor:
    entities = inputs.hosts + inputs.users
    points = 10
    for most, given in BREADTH_STEPS:
        if entities <= most:
            points = given
            break
    if entities == 0:
        points = 0
    return RiskFactor(
        factor="breadth",
        points=points,
        max_points=10,
        reason=f"{inputs.hosts} host(s) and {inputs.users} account(s) affected",
    )


def _privilege(inputs: RiskInputs) -> RiskFactor:
    # As with systems: accounts the inventory lacks weigh as a middling account whatever else is known.
    known_points, account, level = 0, "", ""
    if inputs.privileges:
        account, level = max(inputs.privileges.items(), key=lambda item: (PRIVILEGE_POINTS.get(item[1], 0), item[0]))
        known_points = PRIVILEGE_POINTS.get(level, 0)
    unknown = UNKNOWN_USERS_POINTS if inputs.unknown_users else 0
    if inputs.privileges and known_points >= unknown:
        points, reason = known_points, f"{account} is {level.replace('_', ' ')}"
    elif inputs.unknown_users:
        points = unknown
        reason = f"{inputs.unknown_users} affected account(s) unknown to the inventory"
        if inputs.privileges:
            reason += f" (the most privileged known, {account}, is {level.replace('_', ' ')})"
    else:
        points, reason = 0, "no account affected"
    return RiskFactor(factor="privilege", points=points, max_points=15, reason=reason)


def score(inputs: RiskInputs) -> Risk:
    """The risk and every factor of it; the score is their sum, at most 100."""
    factors = [
        _severity(inputs),
        _criticality(inputs),
        _intel(inputs),
        _tactic(inputs),
        _breadth(inputs),
        _privilege(inputs),
    ]
    total = min(100, sum(f.points for f in factors))
    level = next(name for floor, name in LEVELS if total >= floor)
    return Risk(score=total, level=level, factors=factors)
