-- Detector: an alert re-sent after its processed-event id expired (an Alertmanager fingerprint
-- may repeat for weeks) is counted on the stored alert instead of being stored again.
-- Both columns are added without rewriting the table: `repeats` has a constant default, and
-- `last_seen_at` stays NULL on rows stored before this migration (their `received_at` is when
-- they were last seen); rows stored from now on start with it equal to their arrival.
ALTER TABLE detector_alerts
    ADD COLUMN repeats      integer NOT NULL DEFAULT 0,
    ADD COLUMN last_seen_at timestamptz;
ALTER TABLE detector_alerts ALTER COLUMN last_seen_at SET DEFAULT now();
