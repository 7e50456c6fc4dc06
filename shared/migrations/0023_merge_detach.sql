-- Operators merge incidents into one survivor and detach alerts into new incidents.
-- Detector: an incident merged away is closed and points at its survivor; the correlation keys it
-- (and whatever was merged into it before) answered to lead later alerts to the survivor while it is
-- open. Nullable column without a default: no table rewrite.
ALTER TABLE detector_incidents ADD COLUMN merged_into text REFERENCES detector_incidents (id);

CREATE TABLE detector_merged_keys (
    correlation_key text        NOT NULL,
    incident_id     text        NOT NULL REFERENCES detector_incidents (id),  -- the survivor
    merged_from     text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (correlation_key, incident_id)
);
CREATE INDEX detector_merged_keys_incident ON detector_merged_keys (incident_id);

-- Coordinator and reporter: a merged incident ended by the merge, and where it went.
ALTER TABLE coordinator_incidents ADD COLUMN merged_into text;
ALTER TABLE reporter_incidents ADD COLUMN merged_into text;
CREATE INDEX reporter_incidents_merged_into ON reporter_incidents (merged_into) WHERE merged_into IS NOT NULL;
