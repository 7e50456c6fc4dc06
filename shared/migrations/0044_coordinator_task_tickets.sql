-- Coordinator: the ticket a follow-up task became in the team's tracker (GitHub Issues, Jira):
-- {"tracker", "ref", "url"}, set once the tracker answered; none for a task that is no ticket.
ALTER TABLE coordinator_tasks ADD COLUMN ticket jsonb;
-- A tracker's webhook names the ticket: its task is found by it.
CREATE INDEX coordinator_tasks_ticket_ref ON coordinator_tasks ((ticket ->> 'ref')) WHERE ticket IS NOT NULL;
