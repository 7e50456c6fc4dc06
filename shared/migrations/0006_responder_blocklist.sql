-- Responder: Vigil's own enforcement lists, served as External Dynamic Lists. One row per value a
-- step listed; removing (a lease ending, a rollback) keeps the row for the audit trail.
CREATE TABLE responder_blocklist (
    id          bigserial PRIMARY KEY,
    kind        text        NOT NULL CHECK (kind IN ('ip', 'domain', 'url', 'sha256')),
    value       text        NOT NULL,
    incident_id text        NOT NULL,
    step_id     text        NOT NULL,
    reason      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,              -- NULL: until removed
    removed_at  timestamptz,
    UNIQUE (kind, value, step_id)         -- a step listing the same value again changes nothing
);
CREATE INDEX responder_blocklist_active ON responder_blocklist (kind, value) WHERE removed_at IS NULL;

-- Responder: the global kill switch. One row; while paused no new action is executed.
CREATE TABLE response_controls (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    paused     boolean     NOT NULL,
    reason     text        NOT NULL,
    changed_by text        NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);
