-- Effects: a caller may give one effect its own timeout and attempts (a playbook step's).
ALTER TABLE effects
    ADD COLUMN timeout_s    double precision CHECK (timeout_s > 0),
    ADD COLUMN max_attempts integer          CHECK (max_attempts >= 1);

-- Responder: every step of every response plan and its state. A step's id is stable for its
-- incident, playbook step and item, so a revised plan finds the steps it already holds and
-- never runs one twice.
CREATE TABLE responder_steps (
    id                 text        PRIMARY KEY,  -- <incident id>:<step>[:<item digest>]
    incident_id        text        NOT NULL,
    plan_id            text        NOT NULL,     -- the plan it belongs to now
    playbook           text        NOT NULL,
    step               text        NOT NULL,     -- the playbook step's id
    position           integer     NOT NULL,     -- later steps wait until earlier ones are done
    item               text,                     -- what a for_each step acts on
    target_kind        text,
    name               text        NOT NULL,
    phase              text        NOT NULL,
    response           text        NOT NULL,
    connector          text        NOT NULL,
    action             text        NOT NULL,
    params             jsonb       NOT NULL,
    undo               jsonb,
    lease_s            integer,
    timeout_s          integer     NOT NULL,
    retries            integer     NOT NULL,
    on_failure         text        NOT NULL,
    risk               text        NOT NULL,
    approval           text        NOT NULL,     -- the playbook's: none, or required (at least one)
    dry_run            boolean     NOT NULL,
    state              text        NOT NULL CHECK (state IN (
                           'planned', 'awaiting_approval', 'approved', 'denied', 'running', 'succeeded',
                           'failed', 'refused', 'simulated', 'skipped', 'cancelled', 'rolled_back')),
    reason             text        NOT NULL DEFAULT '',
    policy_rule        text        NOT NULL DEFAULT '',
    approvals_required integer     NOT NULL DEFAULT 0,
    approver_roles     text[]      NOT NULL DEFAULT '{}',
    approval_deadline  timestamptz,
    on_timeout         text        CHECK (on_timeout IN ('proceed', 'deny')),
    approvals          jsonb       NOT NULL DEFAULT '[]',  -- [{actor, role, note, at}]
    sent               jsonb,                  -- what was sent, or would have been (dry run)
    result             jsonb,
    dispatched_at      timestamptz,
    finished_at        timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX responder_steps_incident ON responder_steps (incident_id, position, id);
-- Rate limits and blast radius count what was dispatched recently.
CREATE INDEX responder_steps_dispatched ON responder_steps (dispatched_at) WHERE dispatched_at IS NOT NULL;

-- Every change of a step's state: who or what caused it, and why (the audit record).
CREATE TABLE responder_step_log (
    id          bigserial   PRIMARY KEY,
    step_id     text        NOT NULL,
    incident_id text        NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    from_state  text,
    to_state    text        NOT NULL,
    actor       text        NOT NULL,
    reason      text        NOT NULL DEFAULT ''
);
CREATE INDEX responder_step_log_step ON responder_step_log (step_id, id);
CREATE INDEX responder_step_log_incident ON responder_step_log (incident_id, id);
