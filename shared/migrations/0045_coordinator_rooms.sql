-- Coordinator: the incident's room, the Slack channel of its own (rooms in the notifications file), by
-- its name: every notice about the incident is posted there too; held until the room is open.
ALTER TABLE coordinator_incidents
    ADD COLUMN room      text,
    ADD COLUMN room_open boolean NOT NULL DEFAULT false;
