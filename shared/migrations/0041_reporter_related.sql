-- Reporter: what else names an incident's hosts, users and indicators (vigil incidents related): the
-- users of every incident by overlap, and the held-back alerts by host, the latest seen first.
CREATE INDEX reporter_incidents_users ON reporter_incidents USING gin (users);
CREATE INDEX reporter_suppressed_alerts_host
    ON reporter_suppressed_alerts ((body->>'host'), last_seen_at DESC);
