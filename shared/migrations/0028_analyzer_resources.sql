-- The cloud resources an incident's alerts are about (their normalised `resource` field), gathered like
-- its hosts and users: the analyzer looks them up in the asset inventory with every new alert.
ALTER TABLE analyzer_incidents ADD COLUMN resources text[] NOT NULL DEFAULT '{}';
