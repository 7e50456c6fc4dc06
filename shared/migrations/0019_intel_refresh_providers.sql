-- Analyzer: threat-intel feeds refreshed on a schedule, online providers behind a cache, and a
-- feed table that loads a million entries in seconds.

-- One unique btree serves both the upsert and the lookups (kind and value first); the surrogate
-- key, the second btree and the per-row load time cost every row of a load and served nothing.
ALTER TABLE intel_entries DROP CONSTRAINT intel_entries_pkey;
ALTER TABLE intel_entries DROP COLUMN id;
ALTER TABLE intel_entries DROP COLUMN loaded_at;
ALTER TABLE intel_entries DROP CONSTRAINT intel_entries_source_kind_value_key;
DROP INDEX intel_entries_lookup;
CREATE UNIQUE INDEX intel_entries_lookup ON intel_entries (kind, value, source);

-- A feed's entries stop counting when it has not loaded successfully by then (its configured expiry).
ALTER TABLE intel_sources ADD COLUMN expires_at timestamptz;

-- Feeds configured in intel.yaml, refreshed on a durable timer (kind intel.refresh): what an operator
-- sees of each (`vigil intel feeds`).
CREATE TABLE intel_feeds (
    name            text        PRIMARY KEY,
    format          text        NOT NULL,
    location        text        NOT NULL,  -- the path or URL, as configured (never a credential)
    refresh_minutes integer     NOT NULL,
    configured      boolean     NOT NULL DEFAULT true,  -- false: no longer in intel.yaml; its data stays until it expires
    last_attempt_at timestamptz,
    last_success_at timestamptz,
    last_error      text,                    -- the last failure (a bad line, a download refused); kept until a success
    last_error_at   timestamptz,
    content_sha256  text,                    -- of what was last loaded: the same content is not loaded again
    etag            text,                    -- the server's, for a conditional download
    last_modified   text,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Online providers (AbuseIPDB, VirusTotal, GreyNoise, plug-ins) as the analyzer last started, and
-- their request budget: each lookup is given the next free slot (`per_minute` apart, `per_day` at most).
CREATE TABLE intel_providers (
    name       text        PRIMARY KEY,
    enabled    boolean     NOT NULL,
    kinds      text[]      NOT NULL,
    ttl_s      integer     NOT NULL CHECK (ttl_s > 0),
    per_minute integer     NOT NULL CHECK (per_minute > 0),
    per_day    integer     CHECK (per_day > 0),
    next_slot  timestamptz NOT NULL DEFAULT now(),
    day        date,
    day_used   integer     NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- What a provider answered for a value, until it expires (its TTL). A null verdict: it knows nothing
-- against the value; an error: the lookup failed, remembered briefly so it is not asked again at once.
CREATE TABLE intel_provider_cache (
    kind       text        NOT NULL,
    value      text        NOT NULL,
    provider   text        NOT NULL,
    verdict    text        CHECK (verdict IN ('malicious', 'suspicious', 'benign-listed')),
    confidence smallint    NOT NULL DEFAULT 0 CHECK (confidence BETWEEN 0 AND 100),
    tags       text[]      NOT NULL DEFAULT '{}',
    detail     jsonb       NOT NULL DEFAULT '{}',
    error      text,
    fetched_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (kind, value, provider)
);
CREATE INDEX intel_provider_cache_expiry ON intel_provider_cache (expires_at);

-- Incidents whose analysis waits for a provider's answer on a value; the answer re-analyses them.
CREATE TABLE intel_provider_waits (
    provider    text NOT NULL,
    kind        text NOT NULL,
    value       text NOT NULL,
    incident_id text NOT NULL,
    PRIMARY KEY (provider, kind, value, incident_id)
);
CREATE INDEX intel_provider_waits_incident ON intel_provider_waits (incident_id);

-- Per incident: its last incident event without the alerts (re-analysed as it was when answers
-- arrive) and a digest of the verdicts last published (a re-analysis that changes none publishes nothing).
CREATE TABLE intel_enrichment (
    incident_id     text        PRIMARY KEY,
    event           jsonb       NOT NULL,
    verdicts_digest text        NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
