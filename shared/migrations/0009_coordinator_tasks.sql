-- Coordinator: each incident's tasks, one per task template that applies to it (its type and
-- severity), grouped by runbook phase. A template makes at most one task per incident, so
-- creating an incident's tasks again creates nothing new. Title, description and owner are
-- copied from the template when the task is made: a later edit of the file changes new
-- incidents' tasks only.
CREATE TABLE coordinator_tasks (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- short, for `vigil tasks done 42`
    incident_id  text        NOT NULL,
    phase        text        NOT NULL,
    template_id  text        NOT NULL,
    position     integer     NOT NULL,   -- the template's place in the file: phase order, then file order
    title        text        NOT NULL,
    description  text        NOT NULL DEFAULT '',
    owner        text        NOT NULL,   -- a person (the commander's name), a role, or group:<name>
    owner_role   text,                   -- the role the template names; NULL for a named person or group
    required     boolean     NOT NULL,   -- the incident's lifecycle waits for it
    state        text        NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'done', 'cancelled')),
    due_after_s  integer     CHECK (due_after_s > 0),
    due_from     text        NOT NULL CHECK (due_from IN ('created', 'phase')),
    due_at       timestamptz,            -- NULL: no deadline, or its phase has not started yet
    done_at      timestamptz,            -- when it was done or cancelled
    done_by      text,
    note         text        NOT NULL DEFAULT '',
    escalated_at timestamptz,            -- when its deadline passed with the task still open
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (incident_id, template_id),
    CHECK ((state = 'open') = (done_at IS NULL))
);
CREATE INDEX coordinator_tasks_incident ON coordinator_tasks (incident_id, position);
CREATE INDEX coordinator_tasks_due ON coordinator_tasks (due_at) WHERE state = 'open';
