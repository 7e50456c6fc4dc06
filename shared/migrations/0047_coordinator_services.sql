-- Coordinator: the services an incident concerns (its alerts' `service` label, then the business services
-- its analysis found), which on-call routes and escalation policies with `services:` are matched on.
ALTER TABLE coordinator_incidents ADD COLUMN services text[] NOT NULL DEFAULT '{}';
