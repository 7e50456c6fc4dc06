-- Responder: each incident's latest analysis, as it came: a step a person asks for on demand is
-- rendered and judged by the approval policy from it, as the plan's steps were.
CREATE TABLE responder_analyses (
    incident_id text        PRIMARY KEY,
    analysis    jsonb       NOT NULL,
    analysed_at timestamptz NOT NULL
);
