-- Detector: silences, maintenance windows and inhibition. A suppressed alert is stored here with
-- what suppressed it, and opens or joins no incident; nothing is dropped.

-- Silences, as Alertmanager's: matchers on an alert's fields and labels, a time span, who and why.
-- Expiring one early moves its end to the moment it was expired (and says who did it).
CREATE TABLE detector_silences (
    id         text        PRIMARY KEY,
    matchers   jsonb       NOT NULL,
    starts_at  timestamptz NOT NULL,
    ends_at    timestamptz NOT NULL,
    created_by text        NOT NULL,
    comment    text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expired_by text,
    CHECK (ends_at > starts_at OR expired_by IS NOT NULL)
);
CREATE INDEX detector_silences_ends ON detector_silences (ends_at);

-- Maintenance windows of a host or service (matchers say which): one span, or an iCalendar RRULE
-- whose occurrences each last `duration_s`, from `starts_at` in `time_zone` until `ends_at` (if any).
CREATE TABLE detector_maintenance_windows (
    id         text        PRIMARY KEY,
    name       text        NOT NULL,
    matchers   jsonb       NOT NULL,
    starts_at  timestamptz NOT NULL,
    ends_at    timestamptz,
    rrule      text,
    duration_s integer,
    time_zone  text        NOT NULL DEFAULT 'UTC',
    created_by text        NOT NULL,
    comment    text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    ended_by   text,
    CHECK ((rrule IS NULL) = (duration_s IS NULL)),
    CHECK (rrule IS NOT NULL OR ends_at IS NOT NULL)
);

-- Alerts that fired while a silence, a maintenance window or an inhibiting alert covered them:
-- `kind` and `suppressed_by` (a silence id, a window id, or the inhibiting alert's key) say which,
-- `reason` says it in words. One live row per alert key; a later sighting is counted on it while it
-- stays suppressed, and once nothing suppresses it any more the row is released (`released_at`)
-- and the alert goes on to correlation like a new one.
CREATE TABLE detector_suppressed_alerts (
    id            bigserial   PRIMARY KEY,
    key           text        NOT NULL,
    source        text        NOT NULL,
    title         text        NOT NULL,
    severity      text        NOT NULL,
    time          timestamptz NOT NULL,
    host          text,
    body          jsonb       NOT NULL,
    kind          text        NOT NULL CHECK (kind IN ('silence', 'maintenance', 'inhibition')),
    suppressed_by text        NOT NULL,
    rule          text,
    reason        text        NOT NULL,
    repeats       integer     NOT NULL DEFAULT 0,
    received_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    resolved_at   timestamptz,
    released_at   timestamptz
);
CREATE UNIQUE INDEX detector_suppressed_alerts_live ON detector_suppressed_alerts (key) WHERE released_at IS NULL;
CREATE INDEX detector_suppressed_alerts_by ON detector_suppressed_alerts (suppressed_by);
CREATE INDEX detector_suppressed_alerts_received ON detector_suppressed_alerts (received_at DESC);

-- Firing alerts that match an inhibition rule's source side, by rule and the values of its `equal`
-- fields: a target alert with the same values is inhibited while one of these fires.
CREATE TABLE detector_inhibitors (
    rule         text        NOT NULL,
    equal_values text        NOT NULL,
    source_key   text        NOT NULL,
    last_seen_at timestamptz NOT NULL,
    expires_at   timestamptz,
    resolved_at  timestamptz,
    PRIMARY KEY (rule, equal_values, source_key)
);
CREATE INDEX detector_inhibitors_source ON detector_inhibitors (source_key);
