-- tower-idempotency: the table PostgresStore keeps its records in.
-- Run it with your migrations, or call PostgresStore::migrate(). Safe to run twice.
CREATE TABLE IF NOT EXISTS idempotency_records (
    -- SHA-256 over scope, method, path and key: never the raw key.
    key          bytea       PRIMARY KEY,
    -- 'p' while a request holds the lease, 'c' once its response is recorded.
    state        text        NOT NULL CHECK (state IN ('p', 'c')),
    fingerprint  bytea       NOT NULL,
    -- The holder's lease token; kept once completed, so that a complete sent twice succeeds.
    token        bytea,
    -- The encoded response (tower-idempotency's versioned format), once completed.
    record       bytea,
    -- End of the lease while in progress; end of the result TTL once completed.
    expires_at   timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_records_expires_at ON idempotency_records (expires_at);
-- Fencing tokens: one sequence for every key, so they grow per key.
CREATE SEQUENCE IF NOT EXISTS idempotency_records_fence;
