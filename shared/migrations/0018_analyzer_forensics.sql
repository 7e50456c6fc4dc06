-- Analyzer: forensic analysis. Each alert of an incident is read once, as it joins: what it names is
-- kept with it (the evidence timeline), and folded into one row per value it names (the provenance),
-- so that analysing a 10,000-alert incident never reads its alerts again.
CREATE TABLE analyzer_alerts (
    incident_id text        NOT NULL,
    alert_key   text        NOT NULL,
    time        timestamptz NOT NULL,               -- when the tool saw it
    source      text        NOT NULL,
    format      text        NOT NULL,
    title       text        NOT NULL,
    severity    text        NOT NULL,
    host        text,
    "user"      text,
    sightings   jsonb       NOT NULL DEFAULT '[]',  -- [{kind, value, field, internal}]
    raw         jsonb,                              -- the tool's record as the incident event carried it
    raw_cut     boolean     NOT NULL DEFAULT false, -- only its first fields: the detector keeps it whole
    analysed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (incident_id, alert_key)
);
CREATE INDEX analyzer_alerts_timeline ON analyzer_alerts (incident_id, time, alert_key);

CREATE TABLE analyzer_indicators (
    incident_id text        NOT NULL,
    kind        text        NOT NULL,   -- ipv4 … email (indicators), cve … cloud_resource (observables)
    value       text        NOT NULL,
    internal    boolean     NOT NULL,   -- a private or reserved address, an internal name
    fields      text[]      NOT NULL,   -- the fields it was found in, the first 20
    first_seen  timestamptz NOT NULL,   -- the time of the first and last alert that named it
    last_seen   timestamptz NOT NULL,
    count       integer     NOT NULL CHECK (count > 0),  -- alerts that named it
    alert_keys  text[]      NOT NULL,   -- the first 20 of them; analyzer_alerts has every one
    PRIMARY KEY (incident_id, kind, value)
);

-- The analysis last published for each incident, by digest: analysing the same inputs again
-- publishes nothing new.
ALTER TABLE analyzer_incidents ADD COLUMN published_digest text;
