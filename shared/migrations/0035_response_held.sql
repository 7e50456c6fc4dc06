-- Responder: a step due to run while responses are paused (`vigil response pause`) is held where it
-- is, not refused; `vigil response resume` sets a timer that runs the held steps on.
ALTER TABLE responder_steps ADD COLUMN held_at timestamptz;
CREATE INDEX responder_steps_held ON responder_steps (incident_id) WHERE held_at IS NOT NULL;
