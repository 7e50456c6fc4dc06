-- Detector: correlation rules as data.
--
-- Why each alert joined its incident (the rule, its key and value, the alerts that made a
-- threshold rule hold). Nullable, no default: no table rewrite.
ALTER TABLE detector_alerts ADD COLUMN correlation jsonb;

-- Alerts a correlation rule took while its condition does not hold: stored and listed, raising
-- nothing. When the condition holds they move to detector_alerts with the incident they open.
CREATE TABLE detector_waiting (
    key         text        PRIMARY KEY,  -- the alert's key
    group_key   text        NOT NULL,     -- the rule's group: its key values in one window
    correlation text        NOT NULL,     -- the correlation rule's name
    rule        text,                     -- the base rule that selected it
    value       text,                     -- value_count's field, as the alert has it
    time        timestamptz NOT NULL,
    body        jsonb       NOT NULL,
    repeats     integer     NOT NULL DEFAULT 0,
    received_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz
);
CREATE INDEX detector_waiting_group ON detector_waiting (group_key);
CREATE INDEX detector_waiting_time ON detector_waiting (time);

-- One incident at most collects alerts for a correlation key, whatever number of detectors run:
-- an older incident on an entity stops collecting when a gap opens a new one (alerts already
-- joined only the newest, as the detector looked them up).
ALTER TABLE detector_incidents ADD COLUMN collecting boolean NOT NULL DEFAULT true;
UPDATE detector_incidents SET collecting = false
WHERE NOT closed AND id NOT IN (
    SELECT DISTINCT ON (correlation_key) id FROM detector_incidents
    WHERE NOT closed ORDER BY correlation_key, last_seen DESC);
CREATE UNIQUE INDEX detector_incidents_collecting_key ON detector_incidents (correlation_key)
    WHERE collecting AND NOT closed;
