-- Timers: a subject's timers that were not cancelled, fired or not, by their key. Setting many timers
-- at once (timers.schedule_many) leaves alone a subject whose timer for that very time is pending or
-- has fired; without this index that check read the whole table, which grows with every timer set.
CREATE INDEX timers_live_by_subject ON timers (service, kind, subject) WHERE cancelled_at IS NULL;
