-- An analysis that changes only in what can wait (counts, times, indicators no feed lists) is
-- published at most once per interval per incident: the latest version waits in its row until
-- the interval since the last publication ends.
ALTER TABLE analyzer_incidents
    ADD COLUMN published_urgent text,          -- digest of what is published at once when it changes
    ADD COLUMN published_at     timestamptz,
    ADD COLUMN pending_event    jsonb;         -- the IncidentAnalyzed waiting for the interval to end
CREATE INDEX analyzer_incidents_waiting ON analyzer_incidents (published_at) WHERE pending_event IS NOT NULL;
