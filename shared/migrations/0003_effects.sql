-- Side effects (webhook calls, mails, commands) enqueued in a handler's transaction and run after
-- commit by the service's effects runner (shared/effects): at least once, with the same
-- idempotency key on every attempt so the far side can deduplicate.
CREATE TABLE effects (
    id          bigserial   PRIMARY KEY,
    service     text        NOT NULL,
    kind        text        NOT NULL,
    key         text        NOT NULL,                -- idempotency key, passed to the far side
    subject     text        NOT NULL,                -- incident id
    target      text        NOT NULL,                -- host, mailbox or command name; never a secret
    payload     jsonb       NOT NULL DEFAULT '{}',
    status      text        NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'parked')),
    attempts    integer     NOT NULL DEFAULT 0,
    not_before  timestamptz NOT NULL DEFAULT now(),
    lease_until timestamptz,
    -- Set by each claim: only the runner holding this lease may record the attempt's outcome
    -- (the attempt number alone is not enough, as an operator's retry resets it).
    lease_token uuid,
    last_error  text,
    result      jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    UNIQUE (service, kind, key)
);
-- The claim: due pending effects, and running ones whose lease expired, per service.
CREATE INDEX effects_due ON effects (service, kind, not_before) WHERE status IN ('pending', 'running');
CREATE INDEX effects_parked ON effects (service, kind) WHERE status = 'parked';
-- Housekeeping deletes finished effects by age.
CREATE INDEX effects_finished ON effects (service, finished_at) WHERE status IN ('succeeded', 'failed');
