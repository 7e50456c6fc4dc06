"""The analyzer's own metrics."""

from prometheus_client import Counter

ANALYSES = Counter(
    "vigil_analyzer_analyses",
    "Analyses made, by what became of them: published (at once), deferred (kept for the incident's "
    "publication interval; a later version may supersede it), published_later (a deferred version, when "
    "its interval ended), or unchanged (the same as the one published, not published again).",
    ["outcome"],
)
