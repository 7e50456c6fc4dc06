-- Analyzer: the incident as its last event described it, without its alerts, so that it can be analysed
-- again without a new event: when a threat-intelligence feed comes to list one of its indicators.
ALTER TABLE analyzer_incidents ADD COLUMN snapshot jsonb;
