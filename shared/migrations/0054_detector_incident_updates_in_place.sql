-- An open incident's row is updated with every batch that brings it alerts, and again when what waited
-- for it is published. While an index reads a column those updates change (last_seen, published_at,
-- held), each update writes a new entry into every index of the table, and each look-up walks past
-- the dead ones; without, Postgres updates the row in place (a heap-only tuple) when its page has room.
--
-- The open incident collecting a key is found by detector_incidents_collecting_key (one per key); the
-- incidents whose held alerts are due, by the held alerts themselves: each row notes when the
-- incident's last publication was, which the interval counts from.
DROP INDEX detector_incidents_open_key;
DROP INDEX detector_incidents_held;
ALTER TABLE detector_incidents SET (fillfactor = 80);

ALTER TABLE detector_held_alerts ADD COLUMN since timestamptz;
UPDATE detector_held_alerts h SET since = coalesce(i.published_at, '-infinity')
FROM detector_incidents i WHERE i.id = h.incident_id;
ALTER TABLE detector_held_alerts ALTER COLUMN since SET NOT NULL;
CREATE INDEX detector_held_alerts_since ON detector_held_alerts (since);
