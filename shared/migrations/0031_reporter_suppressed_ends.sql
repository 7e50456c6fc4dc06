-- Reporter: a held-back alert's end (vigil.alert.suppressed_resolved.v1), so that the alert history
-- shows it resolved. Seen again while held back after its end, it fires again: the later event wins.
ALTER TABLE reporter_suppressed_alerts
    ADD COLUMN resolved_at      timestamptz,
    ADD COLUMN resolved_told_at timestamptz;  -- the time of the event that told the end
