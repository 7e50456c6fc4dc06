-- Detector: the heartbeat watch. Each heartbeat's usual interval, learned from its sightings, and the
-- alert Vigil raised when it stopped coming (cleared, and that alert resolved, at its next sighting).
ALTER TABLE detector_heartbeats
    ADD COLUMN interval_s   double precision,  -- smoothed seconds between firing sightings
    ADD COLUMN missed_since timestamptz,       -- when it counted as missing, while it does
    ADD COLUMN missed_alert text;              -- the id of the alert raised then
