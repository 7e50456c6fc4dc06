"""The detector's own metrics."""

from prometheus_client import Counter, Gauge

ALERTS = Counter(
    "vigil_detector_alerts",
    "Raw alerts by outcome: accepted, waiting (stored, its correlation rule's condition does not hold yet), "
    "repeat (stored before, sent again), resolved (a stored alert ended), "
    "resolved_unknown (a resolution for an alert never seen, not stored), invalid, suppressed - stored, "
    "in no incident - as silenced, maintenance or inhibited (each sighting), or heartbeat (a tool's sign "
    "that its alerting works, noted in detector_heartbeats, never an incident).",
    ["outcome"],
)
ALERTS_BY_SOURCE = Counter(
    "vigil_detector_alerts_received",
    "Alerts read from raw records, by source (the tool or sender as the alert names it; past the first "
    "SOURCE_LABELS distinct ones, `other`) and format; vigil_detector_alerts says what became of them.",
    ["source", "format"],
)
# Distinct sources that get a label of their own: the source is the sender's text, so it is bounded here.
SOURCE_LABELS = 100
INCIDENTS_OPENED = Counter("vigil_incidents_opened", "Incidents opened.", ["type", "severity"])
RECORDS = Counter(
    "vigil_detector_records",
    "Raw records by format and outcome: alerts (raised at least one), not_alert (read, accounted for, raised "
    "nothing, e.g. a Suricata flow event), or the reason code it was dead-lettered with.",
    ["format", "outcome"],
)
INGEST_REQUESTS = Counter(
    "vigil_ingest_requests",
    "HTTP ingest requests by route (alerts, alertmanager, pagerduty) and HTTP status.",
    ["route", "status"],
)
INGEST_RECORDS = Counter(
    "vigil_ingest_records",
    "Records the HTTP ingest accepted (published and acknowledged by the broker), by format.",
    ["format"],
)
INGEST_REFUSED = Counter(
    "vigil_ingest_refused",
    "HTTP ingest requests refused, by route and reason code (unauthorized, too_large, not_json, broker_unavailable, "
    "or the adapter's rejection code).",
    ["route", "code"],
)
RULE_RELOADS = Counter(
    "vigil_detector_correlation_reloads",
    "Correlation rules files read again, by outcome (loaded, refused).",
    ["outcome"],
)
COMMANDS = Counter(
    "vigil_detector_commands",
    "Operators' merge and detach commands by command (merge, detach) and outcome (applied, refused).",
    ["command", "outcome"],
)
HEARTBEAT_SEEN = Gauge(
    "vigil_detector_heartbeat_last_seen_timestamp_seconds",
    "When this detector last saw each source's heartbeat firing (Alertmanager's Watchdog), as Unix time; past "
    "the first SOURCE_LABELS sources, `other`. Alert on `time() - max by (source) (...)` beyond the interval "
    "its tool sends it at.",
    ["source"],
)
INCIDENT_UPDATES = Counter(
    "vigil_detector_incident_updates",
    "A batch's new alerts for an open incident, by outcome: published (at once: the incident's update interval "
    "had ended, its type or severity changed, or its stored alerts changed), held (waiting for that interval "
    "to end), or published_later (an incident's held alerts, published as one event when it ended).",
    ["outcome"],
)
