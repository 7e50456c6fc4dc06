-- Whether an incident holds alerts is whether detector_held_alerts has rows for it (found by its
-- primary key): a flag on the incident's row wrote that row once more each time it began to hold,
-- and again when it published, beside the batch's own update of it.
ALTER TABLE detector_incidents DROP COLUMN held;
