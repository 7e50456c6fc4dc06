-- Reporter: the incidents' runbook tasks, from vigil.incident.tasks_created.v1, task_done.v1 and
-- tasks_cancelled.v1, so that a compliance report can list the follow-ups still open. The events may
-- come in any order: a task done or cancelled before its creation was read stays so.
CREATE TABLE reporter_tasks (
    task_id     bigint      PRIMARY KEY,
    incident_id text        NOT NULL,
    phase       text,
    title       text,
    owner       text,
    required    boolean,
    due_at      timestamptz,
    created_at  timestamptz,
    state       text        NOT NULL DEFAULT 'open',  -- open, done, cancelled
    done_at     timestamptz,
    done_by     text
);
CREATE INDEX reporter_tasks_open ON reporter_tasks (incident_id) WHERE state = 'open';
