-- Responder: the incidents the coordinator has ended (resolved or closed): an analysis of one plans
-- nothing new. A reopened incident leaves the table.
CREATE TABLE responder_ended (
    incident_id text        PRIMARY KEY,
    state       text        NOT NULL,
    ended_at    timestamptz NOT NULL
);
