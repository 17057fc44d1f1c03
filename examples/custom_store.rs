//! A store written outside the crate, as you would write one for your own database, and the
//! conformance suite run against it with one macro call.
//!
//! Run the example (one request and its retry through the layer), then the suite:
//!
//! ```not_rust
//! cargo run --example custom_store
//! cargo test --example custom_store
//! ```
//!
//! `LedgerStore` keeps rows in a map behind a mutex, standing in for a table: each method is
//! what would be one statement (or one transaction) in a database. What it must do is the
//! store contract in `IdempotencyStore`'s docs; the suite checks every point of it through the
//! real layer.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::time::Instant;
use tower_idempotency::{
    BeginOutcome, CompletedRecord, FencingToken, Fingerprint, IdempotencyStore, LeaseToken,
    StoreError, StoreKey,
};

/// One row: a key held in progress, or completed.
#[derive(Debug, Clone)]
struct Row {
    fingerprint: Fingerprint,
    token: LeaseToken,
    /// `None` while in progress.
    record: Option<CompletedRecord>,
    expires_at: Instant,
}

/// The rows, and the sequence fencing tokens come from.
#[derive(Debug, Clone, Default)]
pub struct LedgerStore {
    rows: Arc<Mutex<(HashMap<StoreKey, Row>, u64)>>,
}

impl LedgerStore {
    fn lock(&self) -> MutexGuard<'_, (HashMap<StoreKey, Row>, u64)> {
        self.rows
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the row `key` holds with `token`, if it is live and in progress.
    fn held<T>(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        f: impl FnOnce(&mut Row) -> T,
    ) -> Option<T> {
        let mut rows = self.lock();
        let row = rows.0.get_mut(key)?;
        let held = row.record.is_none() && row.token == *token && row.expires_at > Instant::now();
        held.then(|| f(row))
    }
}

impl IdempotencyStore for LedgerStore {
    async fn begin(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<BeginOutcome, StoreError> {
        let now = Instant::now();
        let mut rows = self.lock();
        let (table, fence) = &mut *rows;
        if let Some(row) = table.get(key).filter(|row| row.expires_at > now) {
            let mine = row.record.is_none() && row.token == *token;
            if row.fingerprint != *fingerprint {
                return Ok(BeginOutcome::Mismatch);
            }
            match &row.record {
                Some(record) => {
                    return Ok(BeginOutcome::Completed {
                        record: record.clone(),
                        expires_in: Some(row.expires_at - now),
                    })
                }
                // The same holder asking again gets its lease back; anyone else waits.
                None if !mine => {
                    return Ok(BeginOutcome::InProgress {
                        retry_after: Some(row.expires_at - now),
                    })
                }
                None => {}
            }
        }
        let row = Row {
            fingerprint: *fingerprint,
            token: *token,
            record: None,
            expires_at: now + lease,
        };
        table.insert(*key, row);
        *fence += 1;
        Ok(BeginOutcome::Acquired {
            fencing_token: FencingToken::new(*fence),
        })
    }

    async fn complete(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        _fingerprint: &Fingerprint,
        record: &CompletedRecord,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let completed = self.held(key, token, |row| {
            row.record = Some(record.clone());
            row.expires_at = Instant::now() + ttl;
        });
        if completed.is_some() {
            return Ok(true);
        }
        // Sent again by the holder whose first reply was lost.
        let rows = self.lock();
        Ok(rows.0.get(key).is_some_and(|row| {
            row.token == *token
                && row.record.as_ref() == Some(record)
                && row.expires_at > Instant::now()
        }))
    }

    async fn release(&self, key: &StoreKey, token: &LeaseToken) -> Result<bool, StoreError> {
        let held = self.held(key, token, |_| ()).is_some();
        if held {
            self.lock().0.remove(key);
        }
        Ok(held)
    }

    async fn renew(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        Ok(self
            .held(key, token, |row| row.expires_at = Instant::now() + lease)
            .is_some())
    }
}

#[tokio::main]
async fn main() {
    use http::Request;
    use tower::{Service, ServiceBuilder, ServiceExt};
    use tower_idempotency::{IdempotencyLayer, RequestBody};

    let mut svc = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(LedgerStore::default()))
        .service_fn(|_req: Request<RequestBody<String>>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::from("charged once")))
        });
    for attempt in ["first", "retry"] {
        let request = Request::post("/charges")
            .header("idempotency-key", "c-1")
            .body(String::from("{}"))
            .expect("a valid request");
        let response = svc
            .ready()
            .await
            .expect("ready")
            .call(request)
            .await
            .expect("no error");
        let replayed = response.headers().contains_key("idempotent-replayed");
        println!("{attempt}: {} replayed={replayed}", response.status());
    }
}

#[cfg(test)]
mod tests {
    async fn ledger() -> (super::LedgerStore, ()) {
        (super::LedgerStore::default(), ())
    }

    tower_idempotency::conformance_tests! {
        ledger => ledger;
    }
}
