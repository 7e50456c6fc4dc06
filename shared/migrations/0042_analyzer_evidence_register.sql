-- Analyzer: each incident's evidence register: what was collected (a disk image, a memory dump, a log
-- export), its SHA-256 and size, where it is kept, and its chain of custody: who registered it, every
-- hand-over, every check of its hash. The items themselves stay where they are kept.
CREATE TABLE analyzer_evidence_items (
    id            bigserial   PRIMARY KEY,
    incident_id   text        NOT NULL,
    name          text        NOT NULL,
    sha256        text        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size_bytes    bigint      CHECK (size_bytes >= 0),
    location      text        NOT NULL,
    description   text        NOT NULL DEFAULT '',
    collected_at  timestamptz,
    custodian     text        NOT NULL,
    registered_by text        NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (incident_id, sha256, location)
);
CREATE INDEX analyzer_evidence_items_incident ON analyzer_evidence_items (incident_id, id);

CREATE TABLE analyzer_evidence_custody (
    id          bigserial   PRIMARY KEY,
    item_id     bigint      NOT NULL REFERENCES analyzer_evidence_items (id),
    at          timestamptz NOT NULL DEFAULT now(),
    action      text        NOT NULL CHECK (action IN ('registered', 'transferred', 'verified')),
    actor       text        NOT NULL,
    custodian   text        NOT NULL,  -- who holds it after this entry
    verified    boolean,               -- on `verified`: the hash matched
    note        text        NOT NULL DEFAULT ''
);
CREATE INDEX analyzer_evidence_custody_item ON analyzer_evidence_custody (item_id, id);
