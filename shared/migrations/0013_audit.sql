-- Audit trail: who decided what, when, with what outcome; append-only, each entry chained to the one
-- before it by a SHA-256 hash (shared/audit.py computes the hashes; `vigil audit verify` checks them).
CREATE TABLE audit_log (
    -- Assigned by shared.audit.record under the chain's lock, 1, 2, 3… without gaps (a sequence would
    -- leave one for every rolled-back transaction), so that a deleted entry leaves a hole in the ids.
    id        bigint PRIMARY KEY CHECK (id > 0),
    at        timestamptz NOT NULL,
    service   text NOT NULL,
    principal text NOT NULL,  -- a person's or an integration's name, or system:<service>
    action    text NOT NULL,  -- incident.acknowledge, step.approve, approval.timeout, token.create, …
    target    text NOT NULL,  -- an incident id, a step id, a token name, …
    outcome   text NOT NULL,  -- ok, refused, …
    detail    jsonb NOT NULL DEFAULT '{}',
    prev_hash text NOT NULL UNIQUE CHECK (prev_hash ~ '^[0-9a-f]{64}$'),  -- unique: the chain cannot fork
    hash      text NOT NULL UNIQUE CHECK (hash ~ '^[0-9a-f]{64}$')
);

CREATE INDEX audit_log_at ON audit_log (at);  -- `vigil audit export --since/--until`

-- A guard against accidents (a stray UPDATE, a housekeeping job, a wrong migration), not against a
-- superuser, who can disable it: the hash chain is what shows that (`vigil audit verify`).
CREATE FUNCTION audit_log_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'audit entries are never changed or removed; record a new entry instead';
END
$$;

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();

-- The chain's head, read under the chain's lock, in one round trip. A function and not a CTE: under
-- READ COMMITTED a statement sees the snapshot taken when it started, before it waited for the lock,
-- so `WITH l AS (SELECT pg_advisory_xact_lock(…)) SELECT … FROM audit_log` would miss the entry the
-- previous holder just committed and fork the chain. Each statement in a VOLATILE function takes a
-- fresh snapshot: the SELECT below sees everything committed before the lock was granted.
CREATE FUNCTION audit_log_head(lock_key bigint)
    RETURNS TABLE (id bigint, hash text, at timestamptz, now timestamptz)
    LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        -- Under a transaction snapshot the head read below could be stale, whatever the lock says.
        RAISE EXCEPTION 'audit entries are recorded in READ COMMITTED transactions, not %',
            current_setting('transaction_isolation') USING ERRCODE = 'feature_not_supported';
    END IF;
    PERFORM pg_advisory_xact_lock(lock_key);
    RETURN QUERY
        SELECT a.id, a.hash, a.at, clock_timestamp() FROM audit_log a ORDER BY a.id DESC LIMIT 1;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 0::bigint, repeat('0', 64), NULL::timestamptz, clock_timestamp();
    END IF;
END
$$;
