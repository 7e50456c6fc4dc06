-- Coordinator: the people who reported a problem (user reports) that an incident holds, by the
-- address Vigil may write back to. They hear that their report is being handled and, once, that it
-- was resolved; an incident merged away hands its reporters to the one it was merged into. Their
-- report's words are not kept here: the mails never quote them (anyone who may send alerts could
-- make Vigil mail an internal address whatever words they like).
CREATE TABLE coordinator_reporters (
    incident_id  text        NOT NULL,
    address      text        NOT NULL,
    alert_key    text        NOT NULL,
    reported_at  timestamptz NOT NULL,
    thread_of    text        NOT NULL,  -- the incident whose first mail to them started their conversation
    PRIMARY KEY (incident_id, address)
);
