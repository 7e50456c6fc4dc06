"""The detector's own metrics."""

from prometheus_client import Counter

ALERTS = Counter(
    "vigil_detector_alerts",
    "Raw alerts by outcome: accepted, repeat (stored before, sent again) or invalid.",
    ["outcome"],
)
INCIDENTS_OPENED = Counter("vigil_incidents_opened", "Incidents opened.", ["type", "severity"])
