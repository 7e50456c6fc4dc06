-- Responder: the incidents the coordinator has ended (resolved or closed, as its lifecycle says). No
-- action step of one starts while it is there: it is held until the incident is reopened, which takes
-- it out of the table.
CREATE TABLE IF NOT EXISTS responder_ended (
    incident_id text        PRIMARY KEY,
    state       text        NOT NULL,
    ended_at    timestamptz NOT NULL
);
