-- The asset inventory the analyzer weighs an incident against: what a host, an address or a cloud
-- resource is, who owns it, how critical it is and what data it holds; and the directory accounts
-- alerts name, with their privilege. Loaded by `vigil assets import` (services/analyzer/assets.py).
CREATE TABLE assets (
    kind                text        NOT NULL CHECK (kind IN ('host', 'ip', 'cidr', 'cloud_resource')),
    -- Canonical: a host name in lower case, an address or network as Python's ipaddress writes it,
    -- a cloud resource id as given. Unique per kind: a host and a resource may share a name.
    identifier          text        NOT NULL CHECK (identifier <> ''),
    owner               text,
    business_service    text,
    criticality         smallint    NOT NULL CHECK (criticality BETWEEN 1 AND 4),  -- 1 = most critical
    environment         text        NOT NULL CHECK (environment ~ '^[a-z0-9][a-z0-9_-]*$'),
    data_classification text        NOT NULL
        CHECK (data_classification IN ('public', 'internal', 'confidential', 'restricted')),
    tags                text[]      NOT NULL DEFAULT '{}',
    -- Derived, so it cannot disagree with the identifier: what an alert's address is matched against.
    address             inet GENERATED ALWAYS AS (
        CASE WHEN kind IN ('ip', 'cidr') THEN identifier::inet END) STORED,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, identifier),
    CHECK (kind <> 'host' OR identifier = lower(identifier)),
    CHECK (kind <> 'ip' OR masklen(identifier::inet) = CASE WHEN family(identifier::inet) = 4 THEN 32 ELSE 128 END)
);

-- "Which networks contain this address" (>>=) without a scan of every CIDR.
CREATE INDEX assets_address ON assets USING gist (address inet_ops) WHERE address IS NOT NULL;

-- Accounts as alerts name them (not Vigil's own API principals): a compromised domain admin weighs
-- more than a standard user.
CREATE TABLE users (
    name       text        PRIMARY KEY CHECK (name <> '' AND name = lower(name)),
    department text,
    privilege  text        NOT NULL CHECK (privilege IN ('standard', 'elevated', 'admin', 'domain_admin')),
    owns       text[]      NOT NULL DEFAULT '{}',  -- business services this person owns
    tags       text[]      NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
