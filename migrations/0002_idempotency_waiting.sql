-- tower-idempotency 0.2: whether a process waits on the key (ConflictPolicy::Wait). complete and
-- release notify (pg_notify) only for such rows, so that completions nobody waits for never
-- take NOTIFY's database-wide commit lock. Run it with your migrations, or call
-- PostgresStore::migrate(). Safe to run twice.
ALTER TABLE idempotency_records ADD COLUMN IF NOT EXISTS waiting boolean NOT NULL DEFAULT false;
