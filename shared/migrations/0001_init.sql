-- Vigil's first schema. Each service owns the tables named after it; the outbox and the
-- processed-event ledger are shared plumbing, partitioned by service name.

-- Events a service has handled, by id: the idempotency ledger of the consume loop.
CREATE TABLE processed_events (
    service      text        NOT NULL,
    event_id     text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (service, event_id)
);

-- Events written in the same transaction as the state they describe, published by the relay.
CREATE TABLE outbox (
    id         bigserial   PRIMARY KEY,
    service    text        NOT NULL,
    topic      text        NOT NULL,
    key        bytea       NOT NULL,
    value      bytea       NOT NULL,
    headers    jsonb       NOT NULL,
    event_id   text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at    timestamptz
);
CREATE INDEX outbox_unsent ON outbox (service, id) WHERE sent_at IS NULL;

-- detector ---------------------------------------------------------------------------------
CREATE TABLE detector_incidents (
    id                    text        PRIMARY KEY,
    correlation_key       text        NOT NULL,
    title                 text        NOT NULL,
    type                  text        NOT NULL,
    severity              text        NOT NULL,
    classification_reason text        NOT NULL,
    severity_reason       text        NOT NULL,
    alert_count           integer     NOT NULL,
    max_alert_severity    text        NOT NULL,
    type_votes            jsonb       NOT NULL,
    hosts                 text[]      NOT NULL,
    users                 text[]      NOT NULL,
    first_seen            timestamptz NOT NULL,
    last_seen             timestamptz NOT NULL,
    closed                boolean     NOT NULL DEFAULT false,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX detector_incidents_open_key ON detector_incidents (correlation_key, last_seen) WHERE NOT closed;

CREATE TABLE detector_alerts (
    key         text        PRIMARY KEY,
    incident_id text        NOT NULL REFERENCES detector_incidents (id),
    source      text        NOT NULL,
    title       text        NOT NULL,
    severity    text        NOT NULL,
    time        timestamptz NOT NULL,
    host        text,
    "user"      text,
    src_ip      inet,
    dst_ip      inet,
    body        jsonb       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX detector_alerts_incident ON detector_alerts (incident_id);

-- analyzer ---------------------------------------------------------------------------------
CREATE TABLE analyzer_incidents (
    incident_id text        PRIMARY KEY,
    alert_count integer     NOT NULL DEFAULT 0,
    hosts       text[]      NOT NULL DEFAULT '{}',
    users       text[]      NOT NULL DEFAULT '{}',
    indicators  jsonb       NOT NULL DEFAULT '[]',
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- responder --------------------------------------------------------------------------------
CREATE TABLE responder_plans (
    id            text        PRIMARY KEY,
    incident_id   text        NOT NULL,
    playbook      text        NOT NULL,
    incident_type text        NOT NULL,
    severity      text        NOT NULL,
    actions       jsonb       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    superseded_at timestamptz
);
CREATE UNIQUE INDEX responder_plans_current ON responder_plans (incident_id) WHERE superseded_at IS NULL;

-- coordinator ------------------------------------------------------------------------------
CREATE TABLE coordinator_incidents (
    incident_id     text        PRIMARY KEY,
    state           text        NOT NULL,
    severity        text        NOT NULL,
    type            text        NOT NULL,
    title           text        NOT NULL,
    commander       text        NOT NULL,
    rotation        text        NOT NULL,
    escalation_step integer     NOT NULL DEFAULT 0,
    escalation      jsonb       NOT NULL,
    detected_at     timestamptz NOT NULL,
    acknowledged_at timestamptz,
    resolved_at     timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Durable timers: a service persists what is due and reconciles the schedule at start-up.
CREATE TABLE timers (
    id         bigserial   PRIMARY KEY,
    service    text        NOT NULL,
    kind       text        NOT NULL,
    subject    text        NOT NULL,
    due_at     timestamptz NOT NULL,
    payload    jsonb       NOT NULL DEFAULT '{}',
    fired_at   timestamptz,
    cancelled_at timestamptz
);
CREATE UNIQUE INDEX timers_pending ON timers (service, kind, subject) WHERE fired_at IS NULL AND cancelled_at IS NULL;
CREATE INDEX timers_due ON timers (service, due_at) WHERE fired_at IS NULL AND cancelled_at IS NULL;

-- reporter ---------------------------------------------------------------------------------
CREATE TABLE reporter_incidents (
    id              text        PRIMARY KEY,
    title           text,
    type            text,
    severity        text,
    state           text        NOT NULL DEFAULT 'detected',
    alert_count     integer     NOT NULL DEFAULT 0,
    commander       text,
    hosts           text[]      NOT NULL DEFAULT '{}',
    users           text[]      NOT NULL DEFAULT '{}',
    classification_reason text,
    severity_reason text,
    analysis        jsonb,
    plan            jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    detected_at     timestamptz,
    acknowledged_at timestamptz,
    resolved_at     timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE reporter_alerts (
    key         text        PRIMARY KEY,
    incident_id text        NOT NULL,
    body        jsonb       NOT NULL,
    time        timestamptz NOT NULL
);
CREATE INDEX reporter_alerts_incident ON reporter_alerts (incident_id, time);

CREATE TABLE reporter_timeline (
    event_id    text        PRIMARY KEY,
    incident_id text        NOT NULL,
    time        timestamptz NOT NULL,
    type        text        NOT NULL,
    actor       text        NOT NULL,
    summary     text        NOT NULL,
    data        jsonb       NOT NULL
);
CREATE INDEX reporter_timeline_incident ON reporter_timeline (incident_id, time);
