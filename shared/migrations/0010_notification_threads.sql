-- The first mail the coordinator sent about each incident: every later notice about it names this
-- Message-ID in In-Reply-To and References, so that mail clients keep one conversation per incident.
-- Written in the transaction that enqueues that first mail (a rolled-back notice leaves no root).
CREATE TABLE notification_threads (
    incident_id text        PRIMARY KEY,
    message_id  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
