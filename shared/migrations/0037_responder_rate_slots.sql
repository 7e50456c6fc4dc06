-- Responder: the rate limits' count. A dispatch takes a slot, committed at once on a connection of its
-- own, so that a dispatch another transaction is deciding at the same moment counts before it commits.
CREATE TABLE responder_rate_slots (
    step_id     text PRIMARY KEY,
    action      text NOT NULL,
    target      text NOT NULL,
    reserved_at timestamptz NOT NULL
);
CREATE INDEX responder_rate_slots_at ON responder_rate_slots (reserved_at);
-- What was dispatched before keeps counting: the longest window a shipped limit has is a day.
INSERT INTO responder_rate_slots (step_id, action, target, reserved_at)
SELECT id, action, coalesce(item, ''), dispatched_at FROM responder_steps
WHERE dispatched_at > now() - interval '1 day' AND state IN ('running', 'succeeded', 'failed', 'rolled_back');
