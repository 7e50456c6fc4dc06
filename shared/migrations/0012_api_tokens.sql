-- API tokens: each a principal (a person or an integration) with a role. Only a hash of the secret
-- is kept; the token itself is shown once, when it is created.
CREATE TABLE api_tokens (
    id          text        PRIMARY KEY,     -- the public part of the token (vigil_<id>_<secret>)
    name        text        NOT NULL,        -- the principal: a person's or an integration's name
    role        text        NOT NULL CHECK (role IN ('viewer', 'responder', 'commander', 'admin', 'ingest')),
    kind        text        NOT NULL CHECK (kind IN ('person', 'integration')),
    secret_hash text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text        NOT NULL,
    expires_at  timestamptz,
    revoked_at  timestamptz,
    revoked_by  text
);
