-- Responder: the incidents the coordinator has ended (resolved or closed, as its lifecycle says). No
-- action step of one starts while it is there: it is held until the incident is reopened, which takes
-- it out of the table.
CREATE TABLE IF NOT EXISTS responder_ended (
    incident_id text        PRIMARY KEY,
    state       text        NOT NULL,
    ended_at    timestamptz NOT NULL
);
-- The incidents that ended before this table was kept (the shipped lifecycle's ends): the state changes
-- that told of them may be gone from the coordination topic by now.
INSERT INTO responder_ended (incident_id, state, ended_at)
SELECT incident_id, state, coalesce(resolved_at, updated_at)
FROM coordinator_incidents
WHERE state IN ('resolved', 'closed')
ON CONFLICT (incident_id) DO NOTHING;
