"""What an incident shares with past ones, and how alike that makes them. Pure.

An incident's features are its indicators (`ipv4:203.0.113.7`), affected hosts and accounts
(`host:web-1`, `user:alice`) and ATT&CK techniques (`technique:T1110`). Past incidents that share
features are ranked by the weight of what they share: a known-bad indicator weighs most, a
technique or an account every machine has (root) least.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from services.analyzer.intel import fits
from shared.addresses import is_internal
from shared.events import Indicator, SimilarIncident

WEIGHTS = {"bad": 8, "indicator": 4, "system": 4, "account": 3, "technique": 1, "common": 1}
# Accounts every machine has: sharing one says little.
COMMON_ACCOUNTS = frozenset(
    {"root", "admin", "administrator", "system", "nt authority\\system", "local service", "network service", "guest"}
)
MAX_FEATURES = 500  # looked up per analysis: known bad first, then the rest
# The most alike past incidents named, those of equal score the more recent first (history.most_alike).
MAX_SIMILAR = 5
MIN_SCORE = 3  # a technique or a root account in common is not "alike"
HASHES = ("md5", "sha1", "sha256")


class Feature(NamedTuple):  # a tuple: hashed and compared at C speed, as ranking does for each shared value
    kind: str  # an indicator kind, "host", "user" or "technique"
    value: str

    @property
    def text(self) -> str:
        return f"{self.kind}:{self.value}"


@dataclass(frozen=True)
class PastIncident:
    incident_id: str
    title: str
    first_seen: datetime | None
    shared: tuple[Feature, ...] = ()  # what it has of this incident's features


def features(
    indicators: Iterable[Indicator], hosts: Iterable[str], users: Iterable[str], techniques: Iterable[str]
) -> list[Feature]:
    """What an incident can share with another: known-bad indicators first, bounded."""
    ranked = sorted(indicators, key=lambda i: (i.verdict not in ("malicious", "suspicious"), i.kind, i.value))
    # A hash of zeros is a tool's placeholder, not a file: every incident of that tool would share it.
    found = [Feature(i.kind, i.value) for i in ranked if not (i.kind in HASHES and not i.value.strip("0"))]
    found += [Feature("host", h.lower()) for h in sorted(hosts)]
    found += [Feature("user", u.lower()) for u in sorted(users)]
    found += [Feature("technique", t) for t in sorted(techniques)]
    # Each is a key of analyzer_incident_features: one too long for its index is nothing to share.
    return [f for f in found if fits(f.value)][:MAX_FEATURES]


def weight(feature: Feature, bad: set[str]) -> tuple[str, int]:
    """What sort of thing a shared feature is, and what it weighs."""
    if feature.kind == "host":
        return "system", WEIGHTS["system"]
    if feature.kind == "user":
        sort = "common" if feature.value in COMMON_ACCOUNTS else "account"
        return sort, WEIGHTS[sort]
    if feature.kind == "technique":
        return "technique", WEIGHTS["technique"]
    if feature.value in bad:
        return "bad", WEIGHTS["bad"]
    if feature.kind in ("ipv4", "ipv6") and is_internal(feature.value):
        return "system", WEIGHTS["system"]  # an internal address is a machine of ours, not an indicator
    return "indicator", WEIGHTS["indicator"]


_WORDS = {
    "bad": ("known-bad indicator", "known-bad indicators"),
    "indicator": ("indicator", "indicators"),
    "system": ("affected system", "affected systems"),
    "account": ("affected account", "affected accounts"),
    "common": ("common account", "common accounts"),
    "technique": ("technique", "techniques"),
}


def weights(features: Iterable[Feature], indicators: Sequence[Indicator]) -> dict[Feature, tuple[str, int]]:
    """Each feature's sort and weight: what sharing it says of a past incident."""
    bad = {i.value for i in indicators if i.verdict in ("malicious", "suspicious")}
    return {feature: weight(feature, bad) for feature in features}


def describe(incident: PastIncident, weighed: dict[Feature, tuple[str, int]]) -> SimilarIncident:
    """A past incident found alike (``history.most_alike``), with its score and what it shares, in words."""
    common = sorted(set(incident.shared), key=lambda f: f.text)
    sorts: dict[str, list[str]] = defaultdict(list)
    for feature in sorted(common, key=lambda f: -weighed[f][1]):
        sorts[weighed[feature][0]].append(feature.value)
    reason = "shares " + "; ".join(
        f"{len(values)} {_WORDS[sort][len(values) != 1]} ({', '.join(values[:3])}"
        + (f" and {len(values) - 3} more)" if len(values) > 3 else ")")
        for sort, values in sorted(sorts.items(), key=lambda item: -WEIGHTS[item[0]])
    )
    return SimilarIncident(
        incident_id=incident.incident_id,
        title=incident.title,
        first_seen=incident.first_seen,
        score=sum(weighed[f][1] for f in common),
        reason=reason,
        shared=[f.text for f in common][:20],
    )
