-- An open incident's new alerts are published at most once per interval (as Alertmanager's
-- group_interval): those that come sooner wait here, in order, until the interval since the last
-- publication ends. A new incident, and a change of its type or severity, is published at once.
ALTER TABLE detector_incidents
    ADD COLUMN published_at       timestamptz,  -- when an event last carried its new alerts
    ADD COLUMN published_type     text,         -- the type and severity that event said
    ADD COLUMN published_severity text,
    ADD COLUMN held               boolean NOT NULL DEFAULT false;  -- alerts wait in detector_held_alerts
CREATE INDEX detector_incidents_held ON detector_incidents (published_at) WHERE held;

CREATE TABLE detector_held_alerts (
    incident_id text   NOT NULL REFERENCES detector_incidents (id),
    seq         bigserial,                      -- the order they came in
    alerts      bytea  NOT NULL,                -- one batch's alert summaries, a JSON list as the event carries them
    PRIMARY KEY (incident_id, seq)
);
