-- Detector: tools' heartbeats (Alertmanager's Watchdog, a native record of kind heartbeat). A heartbeat
-- says the alerting pipeline works: it is noted here, when last seen firing and how often, never made
-- an incident; a tool that says it stopped (a resolved Watchdog) sets resolved_at.
CREATE TABLE detector_heartbeats (
    key           text PRIMARY KEY,         -- the alert's key: source:id
    source        text NOT NULL,
    format        text NOT NULL,
    title         text NOT NULL,
    host          text,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz,              -- last seen firing
    sightings     bigint NOT NULL DEFAULT 0, -- firing sightings
    resolved_at   timestamptz               -- its tool said it stopped; a later firing sighting clears it
);
CREATE INDEX detector_heartbeats_seen ON detector_heartbeats (last_seen_at DESC NULLS LAST);
