//! The PostgreSQL store's schema: the migrations it ships, and what a table older than them
//! makes a statement say.

use std::fmt;

use super::StoreError;

/// The table, as shipped in `migrations/0001_idempotency_records.sql`: the first of
/// [`MIGRATIONS`].
pub const MIGRATION: &str = include_str!("../../migrations/0001_idempotency_records.sql");

/// Every migration, in order, as shipped in `migrations/`: the table, then (0.2) its `waiting`
/// column, which wakes waiters without polling.
/// [`PostgresStore::migrate`](crate::PostgresStore::migrate) runs them all; each is safe to run
/// twice. Ship them with your own migrations, or call `migrate`.
pub const MIGRATIONS: [&str; 2] = [
    MIGRATION,
    include_str!("../../migrations/0002_idempotency_waiting.sql"),
];

/// A statement's error; a table without the `waiting` column (0.1's schema) says what to run.
pub(super) fn schema_error(error: sqlx::Error) -> StoreError {
    // 42703: undefined_column.
    if error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "42703")
    {
        return StoreError::backend(OldSchema(error));
    }
    StoreError::backend(error)
}

/// The table lacks a column of this version's schema.
#[derive(Debug)]
struct OldSchema(sqlx::Error);

impl fmt::Display for OldSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the idempotency_records table is older than this version of tower-idempotency \
             (run PostgresStore::migrate(), or apply every migration in MIGRATIONS): {}",
            self.0
        )
    }
}

impl std::error::Error for OldSchema {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}
