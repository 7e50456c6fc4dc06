-- Platform, second pass: parked outbox rows and timers, a persisted dead-letter guard, and the
-- indexes housekeeping deletes by.

-- An outbox row the broker refuses for good (too large, or any non-retriable error) is parked
-- with its error so that the rows behind it flow; `vigil outbox retry ID` re-queues it.
ALTER TABLE outbox
    ADD COLUMN attempts  integer NOT NULL DEFAULT 0,
    ADD COLUMN error     text,
    ADD COLUMN parked_at timestamptz;
DROP INDEX outbox_unsent;
CREATE INDEX outbox_unsent ON outbox (service, id) WHERE sent_at IS NULL AND parked_at IS NULL;
CREATE INDEX outbox_parked ON outbox (service, id) WHERE sent_at IS NULL AND parked_at IS NOT NULL;
CREATE INDEX outbox_sent ON outbox (service, sent_at) WHERE sent_at IS NOT NULL;

CREATE INDEX processed_events_age ON processed_events (service, processed_at);

-- A timer whose handler fails is retried with backoff and parked after a few attempts.
ALTER TABLE timers
    ADD COLUMN attempts   integer NOT NULL DEFAULT 0,
    ADD COLUMN last_error text,
    ADD COLUMN parked_at  timestamptz;
DROP INDEX timers_due;
CREATE INDEX timers_due ON timers (service, due_at) WHERE fired_at IS NULL AND cancelled_at IS NULL AND parked_at IS NULL;
CREATE INDEX timers_done ON timers (service, coalesce(fired_at, cancelled_at))
    WHERE fired_at IS NOT NULL OR cancelled_at IS NOT NULL;

-- The dead-letter guard's window of recent verdicts ('1' dead-lettered, '0' handled), oldest
-- first, so that a consumer restarting in a loop cannot drain a topic a window at a time.
CREATE TABLE consumer_guards (
    service    text        PRIMARY KEY,
    verdicts   text        NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
