"""The analyzer's own metrics."""

from prometheus_client import Counter

ANALYSES = Counter(
    "vigil_analyzer_analyses",
    "Analyses made, by what became of them: published (at once), deferred (kept for the incident's "
    "publication interval; a later version may supersede it), published_later (a deferred version, when "
    "its interval ended), or unchanged (the same as the one published, not published again).",
    ["outcome"],
)

INTEL_LOOKUPS = Counter(
    "vigil_analyzer_intel_lookups",
    "Indicators analyses looked up in threat intelligence, by why: named (the batch's alerts named it), answered "
    "(an online provider answered for it since) or recheck (a feed changed since it was looked up, or what gave "
    "its verdict expired). Every other indicator keeps the verdict it has.",
    ["reason"],
)

RETRO_HUNTS = Counter(
    "vigil_analyzer_retro_hunts",
    "Incidents set to be analysed again because a feed, once loaded, lists an indicator they name (retro-hunt).",
)
