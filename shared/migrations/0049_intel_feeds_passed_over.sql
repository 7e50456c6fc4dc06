-- Threat-intel feeds: what the last load passed over (values too long to keep, with their lines), shown
-- with the feed until a load passes over nothing. NULL: nothing.
ALTER TABLE intel_feeds ADD COLUMN passed_over text;
