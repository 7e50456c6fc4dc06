-- Reporter: the alerts the detector held back from incidents (silenced, in a maintenance window,
-- inhibited), from vigil.alert.suppressed.v1: in the alert history beside the incidents' alerts.
-- One row per occurrence (the detector's held-back record): every later sighting while the alert
-- stays held back is counted on it, and what holds it back is the latest event's.
CREATE TABLE reporter_suppressed_alerts (
    occurrence    text        PRIMARY KEY,
    key           text        NOT NULL,
    body          jsonb       NOT NULL,
    time          timestamptz NOT NULL,
    repeats       integer     NOT NULL DEFAULT 0,
    last_seen_at  timestamptz NOT NULL,
    kind          text        NOT NULL,
    suppressed_by text        NOT NULL,
    name          text        NOT NULL,
    reason        text        NOT NULL
);
-- The alert history's order and its cursor, and its filter by source, as on reporter_alerts: one
-- page of both is a merge of the two indexes.
CREATE INDEX reporter_suppressed_alerts_time ON reporter_suppressed_alerts (time DESC, key DESC, occurrence DESC);
CREATE INDEX reporter_suppressed_alerts_source
    ON reporter_suppressed_alerts ((body->>'source'), time DESC, key DESC, occurrence DESC);
