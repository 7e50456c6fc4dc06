-- Analyzer: each indicator keeps the verdict threat intelligence gave it, so that an analysis looks up
-- only what its batch named and what may have changed, not every indicator of the incident; and the
-- analysis carries the worst indicators, read in order from an index, not all of them.

-- Changes to what the feeds say (a feed's entries, or a feed counting again after it expired) are
-- numbered in the order they commit (a load takes its number under a lock it holds to its commit): an
-- indicator keeps the number of the last change its lookup saw, and is looked up again after a later one.
-- Not a time: a load that commits after an analysis looked up may have taken its timestamp before.
CREATE SEQUENCE intel_changes;
ALTER TABLE intel_sources ADD COLUMN changed bigint NOT NULL DEFAULT 0;  -- its last change's number

ALTER TABLE analyzer_indicators
    ADD COLUMN intel_verdict    text CHECK (intel_verdict IN ('malicious', 'suspicious', 'benign-listed')),
    ADD COLUMN intel_confidence smallint NOT NULL DEFAULT 0,  -- 0 without a verdict
    ADD COLUMN intel_feeds      text[]   NOT NULL DEFAULT '{}',
    ADD COLUMN intel_tags       text[]   NOT NULL DEFAULT '{}',
    -- The number of the last feed change its lookup saw (intel_sources.changed); -1: never looked up,
    -- or to be looked up again; NULL: an observable, which no feed lists.
    ADD COLUMN intel_checked    bigint,
    ADD COLUMN intel_checked_at timestamptz,
    -- When the first of what gave the verdict stops counting (a feed entry's or a feed's expiry, a
    -- provider's answer's TTL): it is looked up again then.
    ADD COLUMN intel_expires_at timestamptz,
    ADD COLUMN intel_rank       smallint GENERATED ALWAYS AS (
        CASE intel_verdict WHEN 'malicious' THEN 0 WHEN 'suspicious' THEN 1 WHEN 'benign-listed' THEN 2 ELSE 3 END
    ) STORED;

-- Indicators the analyzer stored before: looked up again, a few with each analysis of their incident.
UPDATE analyzer_indicators SET intel_checked = -1
 WHERE kind IN ('ipv4', 'ipv6', 'domain', 'url', 'md5', 'sha1', 'sha256', 'email');

-- The analysis' indicators: the worst verdicts first, the highest confidence, the most sightings.
CREATE INDEX analyzer_indicators_worst ON analyzer_indicators
    (incident_id, intel_rank, intel_confidence DESC, count DESC, kind COLLATE "C", value COLLATE "C");
-- Those to look up again: checked before a feed changed, the oldest check first; or expired.
CREATE INDEX analyzer_indicators_checked ON analyzer_indicators (incident_id, intel_checked)
    WHERE intel_checked IS NOT NULL;
CREATE INDEX analyzer_indicators_expiring ON analyzer_indicators (incident_id, intel_expires_at)
    WHERE intel_expires_at IS NOT NULL;

-- How many of each incident's values there are by kind, verdict and whether they are internal, kept by
-- the triggers below as rows change: the analysis counts every indicator without reading every row.
CREATE TABLE analyzer_indicator_counts (
    incident_id text    NOT NULL,
    kind        text    NOT NULL,
    verdict     text    NOT NULL,  -- '' when no feed lists them
    internal    boolean NOT NULL,
    n           integer NOT NULL,
    PRIMARY KEY (incident_id, kind, verdict, internal)
);
INSERT INTO analyzer_indicator_counts (incident_id, kind, verdict, internal, n)
SELECT incident_id, kind, coalesce(intel_verdict, ''), internal, count(*)
  FROM analyzer_indicators GROUP BY 1, 2, 3, 4;

-- Once per statement, from the rows it changed (its transition tables): as much work as it did.
CREATE FUNCTION analyzer_count_indicators() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO analyzer_indicator_counts AS c (incident_id, kind, verdict, internal, n)
        SELECT incident_id, kind, coalesce(intel_verdict, ''), internal, -count(*) FROM old_rows
         GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
        ON CONFLICT (incident_id, kind, verdict, internal) DO UPDATE SET n = c.n + EXCLUDED.n;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO analyzer_indicator_counts AS c (incident_id, kind, verdict, internal, n)
        SELECT incident_id, kind, coalesce(intel_verdict, ''), internal, count(*) FROM new_rows
         GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
        ON CONFLICT (incident_id, kind, verdict, internal) DO UPDATE SET n = c.n + EXCLUDED.n;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER analyzer_indicators_counted_insert AFTER INSERT ON analyzer_indicators
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION analyzer_count_indicators();
CREATE TRIGGER analyzer_indicators_counted_update AFTER UPDATE ON analyzer_indicators
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION analyzer_count_indicators();
CREATE TRIGGER analyzer_indicators_counted_delete AFTER DELETE ON analyzer_indicators
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION analyzer_count_indicators();

-- Values an online provider answered for an incident that waited for them: its next analysis looks
-- them up again. Only ever inserted (by the answer) and deleted (by the analysis): neither waits for
-- the other's row locks.
CREATE TABLE analyzer_intel_answered (
    id          bigserial PRIMARY KEY,
    incident_id text NOT NULL,
    kind        text NOT NULL,  -- as threat intelligence names it (ip, domain, …)
    value       text NOT NULL
);
CREATE INDEX analyzer_intel_answered_incident ON analyzer_intel_answered (incident_id);
