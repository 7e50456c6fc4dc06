-- The answer each API request with an Idempotency-Key got, per principal and operation: a retry
-- gets the same answer (a refusal included) and changes nothing.
CREATE TABLE api_idempotency (
    principal  text        NOT NULL,
    operation  text        NOT NULL,
    key        text        NOT NULL,
    status     integer     NOT NULL,
    body       jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, operation, key)
);
CREATE INDEX api_idempotency_age ON api_idempotency (created_at);
