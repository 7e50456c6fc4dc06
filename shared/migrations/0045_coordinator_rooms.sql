-- Coordinator: the incident's room, the Slack channel of its own (rooms in the notifications file), by
-- its name, and its channel's id once Slack opened it: every notice about the incident is posted there
-- too, held until the room is open. A room that could not be opened is given up for the incident.
ALTER TABLE coordinator_incidents
    ADD COLUMN room           text,
    ADD COLUMN room_id        text,
    ADD COLUMN room_open      boolean NOT NULL DEFAULT false,
    ADD COLUMN room_given_up  boolean NOT NULL DEFAULT false;
