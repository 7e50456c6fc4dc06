-- Coordinator: what the lifecycle's closure guards look at, kept from the detector's events. Both are
-- nullable (no table rewrite); NULL on an incident from before them means not known, which holds
-- nothing up.
ALTER TABLE coordinator_incidents
    ADD COLUMN firing        integer,       -- its alerts still firing, as the detector last counted them
    ADD COLUMN last_alert_at timestamptz;   -- when an alert of it was last seen, new or repeated
