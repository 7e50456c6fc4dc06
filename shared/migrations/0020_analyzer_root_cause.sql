-- The analyzer's root-cause trace of each incident: its earliest alerts, ATT&CK techniques and
-- tactics, entities and source addresses with their first sighting (services/analyzer/rootcause.py),
-- folded batch by batch so that a large incident's analysis costs what its new alerts cost.
CREATE TABLE analyzer_traces (
    incident_id text        PRIMARY KEY,
    title       text        NOT NULL,
    first_seen  timestamptz,
    trace       jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- What each incident has that another may share: indicators (`ipv4`, `domain`, …), affected
-- `host`s and `user`s, ATT&CK `technique`s. "Which incidents have this value" is an index lookup,
-- the most recent first, so that a value common to thousands of incidents costs a bounded read.
CREATE TABLE analyzer_incident_features (
    kind        text        NOT NULL,
    value       text        NOT NULL,
    incident_id text        NOT NULL,
    first_seen  timestamptz NOT NULL,
    PRIMARY KEY (kind, value, incident_id)
);
CREATE INDEX analyzer_incident_features_recent ON analyzer_incident_features (kind, value, first_seen DESC);
CREATE INDEX analyzer_incident_features_incident ON analyzer_incident_features (incident_id);
