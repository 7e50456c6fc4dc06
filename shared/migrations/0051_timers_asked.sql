-- Timers: the time a timer was asked for, kept when a failed attempt moves its due time on (NULL: the
-- due time is the time asked). Restating that time leaves the timer alone, retrying or fired: it neither
-- resets the retries' backoff nor fires again a timer that fired on a retry.
ALTER TABLE timers ADD COLUMN asked_at timestamptz;
