-- Coordinator: the incident lifecycle as data. Every move is logged with who, when and why; the
-- first time an incident entered each state is kept for the reporter's MTTx.
ALTER TABLE coordinator_incidents
    ADD COLUMN resolution   text,
    ADD COLUMN state_times  jsonb NOT NULL DEFAULT '{}',   -- {state: first entered at}
    ADD COLUMN edited_by    jsonb NOT NULL DEFAULT '{}',   -- {field: person}: set by a person, only offered after
    ADD COLUMN roles        jsonb NOT NULL DEFAULT '{}';   -- {role: person}, the commander included

CREATE TABLE coordinator_transitions (
    id          bigserial   PRIMARY KEY,
    incident_id text        NOT NULL,
    at          timestamptz NOT NULL,
    from_state  text,
    to_state    text        NOT NULL,
    transition  text,
    actor       text        NOT NULL,
    reason      text        NOT NULL DEFAULT '',
    resolution  text,
    command_id  text
);
CREATE INDEX coordinator_transitions_incident ON coordinator_transitions (incident_id, id);

-- The responder's steps as the lifecycle's guards see them (from vigil.response.step_changed events).
CREATE TABLE coordinator_response_steps (
    incident_id text        NOT NULL,
    step_id     text        NOT NULL,
    phase       text        NOT NULL,
    state       text        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (incident_id, step_id)
);

-- Reporter: the fields a person edited (severity, type, title), which detector snapshots no longer change.
ALTER TABLE reporter_incidents ADD COLUMN edited text[] NOT NULL DEFAULT '{}';
