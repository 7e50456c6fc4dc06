-- Detector: an alert its tool says has ended is marked resolved, not turned into an incident;
-- each stored alert keeps the classification rule that typed it. Nullable columns without
-- defaults: no table rewrite.
ALTER TABLE detector_alerts
    ADD COLUMN resolved_at timestamptz,
    ADD COLUMN type_rule   text;

-- What an open incident's severity starts from besides its lead alert's severity: that alert's
-- kind (heartbeats and tests never open SEV1/SEV2) and how its tool's severity was mapped, and the
-- first critical asset seen. Incidents opened before this migration were led by real alerts.
ALTER TABLE detector_incidents
    ADD COLUMN lead_kind            text NOT NULL DEFAULT 'alert',
    ADD COLUMN lead_severity_reason text,
    ADD COLUMN critical_asset       text;

-- Reporter: each alert's repeats, when it was last seen and when it ended, from
-- vigil.incident.alerts_changed.v1.
ALTER TABLE reporter_alerts
    ADD COLUMN repeats      integer NOT NULL DEFAULT 0,
    ADD COLUMN last_seen_at timestamptz,
    ADD COLUMN resolved_at  timestamptz;
