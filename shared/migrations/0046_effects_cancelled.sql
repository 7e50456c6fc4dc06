-- Effects: `cancelled`, for an effect its service no longer wants done (the post of a Slack room that
-- could not be opened, an archiving undone by a reopening): final, never retried. And the look-up an
-- in-order kind makes, for each effect it could run, of an older one to the same target.
ALTER TABLE effects DROP CONSTRAINT effects_status_check;
ALTER TABLE effects ADD CONSTRAINT effects_status_check
    CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'parked', 'cancelled'));
CREATE INDEX effects_in_order ON effects (service, kind, target, id) WHERE status IN ('pending', 'running');
