-- Coordinator: escalation chains as data. Who was paged for an incident, in order, and when the
-- chain ran out (reported once).
ALTER TABLE coordinator_incidents
    ADD COLUMN paged        jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN exhausted_at timestamptz,
    ADD COLUMN acks         jsonb NOT NULL DEFAULT '[]';  -- who acknowledged, where a policy wants several
