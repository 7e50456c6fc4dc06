-- Effects: how many times a runner started each one, never taken back. `attempts` forgets an attempt a
-- clean stop cut short (not the effect's failure); a kind whose far side keeps no idempotency key (a chat
-- post) reads `runs` to look for what such an attempt may have done before doing it again.
ALTER TABLE effects ADD COLUMN runs integer NOT NULL DEFAULT 0;
