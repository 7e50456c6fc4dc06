-- Responder: closing the loop. Each action's effect is validated; reversible actions are leases
-- with a state and a log; containment is watched; a response can be rolled back.

-- The check that proves an action worked (its own effect, run after the action's).
ALTER TABLE responder_steps
    ADD COLUMN validation        text CHECK (validation IN ('pending', 'validated', 'failed', 'unchecked')),
    ADD COLUMN validation_reason text NOT NULL DEFAULT '',
    ADD COLUMN validated_at      timestamptz,
    -- The lease it gets when it succeeds, decided as it is sent (the block list entry carries its end).
    ADD COLUMN lease_offence     integer;

-- A reversible action in force: it ends (its undo runs) at due_at, unless extended or made permanent.
CREATE TABLE responder_leases (
    step_id         text        PRIMARY KEY,
    incident_id     text        NOT NULL,
    target_kind     text        NOT NULL DEFAULT '',  -- ip, domain, url, sha256, host, user
    target          text        NOT NULL DEFAULT '',
    action          text        NOT NULL,
    state           text        NOT NULL CHECK (state IN (
                        'active', 'extended', 'permanent', 'reverting', 'reverted', 'revert_failed')),
    offence         integer     NOT NULL DEFAULT 1,  -- 1: the target's first lease within the window
    duration_s      integer     NOT NULL,
    started_at      timestamptz NOT NULL,
    due_at          timestamptz,                     -- NULL once permanent
    reverted_at     timestamptz,
    revert_reason   text        NOT NULL DEFAULT '', -- expired, revoked, rolled back
    undo_validation text CHECK (undo_validation IN ('pending', 'validated', 'failed', 'unchecked')),
    changed_by      text        NOT NULL,
    change_reason   text        NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
-- Repeat offenders: earlier leases on the same target.
CREATE INDEX responder_leases_target ON responder_leases (target_kind, target, started_at);
CREATE INDEX responder_leases_incident ON responder_leases (incident_id);
CREATE INDEX responder_leases_open ON responder_leases (due_at) WHERE state IN ('active', 'extended');

-- Who changed a lease, how and why.
CREATE TABLE responder_lease_log (
    id      bigserial   PRIMARY KEY,
    step_id text        NOT NULL,
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text        NOT NULL,
    change  text        NOT NULL,
    reason  text        NOT NULL DEFAULT '',
    due_at  timestamptz
);
CREATE INDEX responder_lease_log_step ON responder_lease_log (step_id, id);

-- After containment, the incident's new alerts are watched for the contained entities.
CREATE TABLE responder_monitors (
    id          bigserial   PRIMARY KEY,
    incident_id text        NOT NULL,
    started_at  timestamptz NOT NULL,
    ends_at     timestamptz NOT NULL,
    entities    jsonb       NOT NULL,              -- [{kind, value, step_id}]
    threshold   integer     NOT NULL,
    state       text        NOT NULL CHECK (state IN ('watching', 'confirmed', 'ineffective')),
    evidence    jsonb       NOT NULL DEFAULT '[]', -- alerts that involved a contained entity
    ended_at    timestamptz
);
-- One watch at a time per incident.
CREATE UNIQUE INDEX responder_monitors_watching ON responder_monitors (incident_id) WHERE state = 'watching';
CREATE INDEX responder_monitors_incident ON responder_monitors (incident_id, id);

-- A rollback of a whole response: its undos one at a time, in reverse order of execution.
CREATE TABLE responder_rollbacks (
    id           bigserial   PRIMARY KEY,
    incident_id  text        NOT NULL,
    requested_by text        NOT NULL,
    reason       text        NOT NULL DEFAULT '',
    steps        text[]      NOT NULL,               -- in the order they are undone
    position     integer     NOT NULL DEFAULT 0,     -- the next one to undo
    failed       text[]      NOT NULL DEFAULT '{}',
    state        text        NOT NULL CHECK (state IN ('running', 'done', 'done_with_failures')),
    requested_at timestamptz NOT NULL DEFAULT now(),
    ended_at     timestamptz
);
CREATE UNIQUE INDEX responder_rollbacks_running ON responder_rollbacks (incident_id) WHERE state = 'running';

-- Recovery steps a person owns: who, by when, and how it went.
ALTER TABLE responder_steps
    ADD COLUMN owner      text,
    ADD COLUMN due_at     timestamptz,
    ADD COLUMN required   boolean NOT NULL DEFAULT true,
    ADD COLUMN recovery   text;   -- system, data, service, business

-- Coordinator: a step whose check failed has not ended well; the leases in force (a false positive offers
-- their rollback); containment as the responder watched it.
ALTER TABLE coordinator_response_steps
    ADD COLUMN validation text,
    ADD COLUMN lease      text,
    ADD COLUMN required   boolean NOT NULL DEFAULT true,
    ADD COLUMN name       text,
    ADD COLUMN owner      text;
ALTER TABLE coordinator_incidents ADD COLUMN containment text;
