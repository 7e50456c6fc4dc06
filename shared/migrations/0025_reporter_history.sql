-- Reporter: every event it consumes is kept as history (envelope and data, unknown types included);
-- the timeline is rendered from it and can be rendered again (vigil timeline rebuild).
CREATE TABLE reporter_history (
    event_id      text        PRIMARY KEY,
    incident_id   text        NOT NULL,
    type          text        NOT NULL,
    source        text        NOT NULL,
    time          timestamptz NOT NULL,
    correlationid text,
    causationid   text,
    data          jsonb       NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reporter_history_incident ON reporter_history (incident_id, time, event_id);
CREATE INDEX reporter_history_type ON reporter_history (type, time);

-- What the timeline held so far becomes history; its actor stands for the source it did not keep.
INSERT INTO reporter_history (event_id, incident_id, type, source, time, data)
SELECT event_id, incident_id, type, '/vigil/' || actor, time, data FROM reporter_timeline
ON CONFLICT DO NOTHING;
ALTER TABLE reporter_timeline DROP COLUMN data;
DROP INDEX reporter_timeline_incident;
CREATE INDEX reporter_timeline_incident ON reporter_timeline (incident_id, time, event_id);

-- Milestones of the response (each time-to-X is the gap between two of them), what the query API
-- filters on, and a full-text document kept by a trigger.
ALTER TABLE reporter_incidents
    ADD COLUMN first_alert_at timestamptz,
    ADD COLUMN contained_at   timestamptz,
    ADD COLUMN recovered_at   timestamptz,
    ADD COLUMN closed_at      timestamptz,
    ADD COLUMN resolution     text,
    ADD COLUMN sources        text[] NOT NULL DEFAULT '{}',
    ADD COLUMN rules          text[] NOT NULL DEFAULT '{}',
    ADD COLUMN services       text[] NOT NULL DEFAULT '{}',
    ADD COLUMN indicators     text[] NOT NULL DEFAULT '{}',
    ADD COLUMN search         tsvector;

UPDATE reporter_incidents SET first_alert_at = created_at WHERE detected_at IS NOT NULL;
UPDATE reporter_incidents i SET sources = s.sources
FROM (SELECT incident_id, array_agg(DISTINCT body->>'source') AS sources FROM reporter_alerts GROUP BY incident_id) s
WHERE s.incident_id = i.id;

CREATE FUNCTION reporter_incident_search() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.search :=
        setweight(to_tsvector('english', coalesce(NEW.title, '')), 'A')
        || setweight(to_tsvector('english', coalesce(NEW.classification_reason, '') || ' '
                                 || coalesce(NEW.severity_reason, '')), 'B')
        || setweight(to_tsvector('simple', array_to_string(NEW.hosts || NEW.users || NEW.indicators
                                                           || NEW.services || NEW.sources, ' ')), 'B')
        || setweight(to_tsvector('english', coalesce(NEW.analysis->>'summary', '')), 'C');
    RETURN NEW;
END $$;
CREATE TRIGGER reporter_incident_search BEFORE INSERT OR UPDATE ON reporter_incidents
    FOR EACH ROW EXECUTE FUNCTION reporter_incident_search();
UPDATE reporter_incidents SET search = NULL;  -- the trigger fills it in

-- Indexes for 100,000 incidents and 10 million alerts: the default order and its cursor, each
-- filter, the arrays by containment, the text search.
CREATE INDEX reporter_incidents_created ON reporter_incidents (created_at DESC, id DESC);
CREATE INDEX reporter_incidents_state ON reporter_incidents (state, created_at DESC);
CREATE INDEX reporter_incidents_severity ON reporter_incidents (severity, created_at DESC);
CREATE INDEX reporter_incidents_type ON reporter_incidents (type, created_at DESC);
CREATE INDEX reporter_incidents_commander ON reporter_incidents (commander, created_at DESC);
CREATE INDEX reporter_incidents_by_severity ON reporter_incidents (severity, id);
CREATE INDEX reporter_incidents_by_updated ON reporter_incidents (updated_at, id);
CREATE INDEX reporter_incidents_by_alerts ON reporter_incidents (alert_count, id);
CREATE INDEX reporter_incidents_arrays ON reporter_incidents
    USING gin (sources, services, hosts, indicators);
CREATE INDEX reporter_incidents_search ON reporter_incidents USING gin (search);
CREATE INDEX reporter_alerts_time ON reporter_alerts (time DESC, key DESC, incident_id DESC);
CREATE INDEX reporter_alerts_source ON reporter_alerts ((body->>'source'), time DESC, key DESC, incident_id DESC);

-- The response's steps as they stand: what ran, what it did, who approved it, whether it held.
CREATE TABLE reporter_actions (
    step_id     text        PRIMARY KEY,
    incident_id text        NOT NULL,
    plan_id     text        NOT NULL,
    name        text        NOT NULL,
    phase       text,
    item        text,
    connector   text        NOT NULL,
    action      text        NOT NULL,
    state       text        NOT NULL,
    dry_run     boolean     NOT NULL DEFAULT false,
    executed_at timestamptz,
    succeeded   boolean,
    approved_by text,
    approved_at timestamptz,
    reason      text        NOT NULL DEFAULT '',
    updated_at  timestamptz NOT NULL
);
CREATE INDEX reporter_actions_incident ON reporter_actions (incident_id, updated_at);

-- Whether an executed action held, as a validation said; kept apart, as it may arrive before the step.
CREATE TABLE reporter_validations (
    step_id     text        PRIMARY KEY,
    incident_id text        NOT NULL,
    validated   boolean     NOT NULL,
    at          timestamptz NOT NULL
);
