-- Analyzer: local threat-intelligence feeds. One row per value a feed lists; a feed is loaded whole,
-- and loading it again replaces what it listed before.
CREATE TABLE intel_entries (
    id         bigserial   PRIMARY KEY,
    source     text        NOT NULL,              -- the feed's name
    kind       text        NOT NULL CHECK (kind IN ('ip', 'cidr', 'domain', 'url', 'sha256', 'sha1', 'md5', 'email')),
    value      text        NOT NULL,              -- normalised: canonical addresses and networks, lower-case names
    -- Addresses and networks as inet, so "is this address in any listed network" uses the GiST index.
    network    inet        GENERATED ALWAYS AS (CASE WHEN kind IN ('ip', 'cidr') THEN value::inet END) STORED,
    verdict    text        NOT NULL CHECK (verdict IN ('malicious', 'suspicious', 'benign-listed')),
    confidence smallint    NOT NULL CHECK (confidence BETWEEN 0 AND 100),
    tags       text[]      NOT NULL DEFAULT '{}',  -- actor, malware family, campaign
    first_seen timestamptz,
    last_seen  timestamptz,
    expires_at timestamptz,                         -- NULL: until the feed stops listing it
    loaded_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source, kind, value)
);
CREATE INDEX intel_entries_lookup ON intel_entries (kind, value);
-- Networks only: a listed address is found by the btree, and a GiST index of a million single
-- addresses is slow to build and to search.
CREATE INDEX intel_entries_network ON intel_entries USING gist (network inet_ops) WHERE kind = 'cidr';

-- When each feed was last loaded and how many entries it holds (for refreshing on an interval).
CREATE TABLE intel_sources (
    source    text        PRIMARY KEY,
    entries   integer     NOT NULL,
    loaded_at timestamptz NOT NULL DEFAULT now()
);
