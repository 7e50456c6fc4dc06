-- An alert that fires again after its incident ended is a new occurrence, in a new incident: the
-- ended incident's alerts are retired, and an alert key is unique only among the live ones.
ALTER TABLE detector_alerts ADD COLUMN retired boolean NOT NULL DEFAULT false;
ALTER TABLE detector_alerts DROP CONSTRAINT detector_alerts_pkey;
ALTER TABLE detector_alerts ADD PRIMARY KEY (key, incident_id);
CREATE UNIQUE INDEX detector_alerts_live_key ON detector_alerts (key) WHERE NOT retired;

-- The reporter keeps each occurrence with its incident.
ALTER TABLE reporter_alerts DROP CONSTRAINT reporter_alerts_pkey;
ALTER TABLE reporter_alerts ADD PRIMARY KEY (key, incident_id);
