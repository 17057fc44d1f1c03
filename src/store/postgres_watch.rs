//! The PostgreSQL store's notifications: `LISTEN` on one connection per store (its own, opened
//! when a key is first waited on), and `pg_notify` only for keys someone waits on.
//!
//! `NOTIFY` serialises the commits of every notifying transaction on a database-wide lock, so a
//! notification on every completion would cap first executions. Instead a waiting process
//! marks the key's row (`waiting`), and `complete` and `release` notify, in the same statement,
//! only when their row is marked. The mark is the waiter's subscription, and it is the key's,
//! not one execution's: it marks the row whatever its state (or leaves an expired row where
//! the key has none), a takeover by `begin` keeps it, and the reaper leaves a marked row a
//! minute past its expiry. So whatever the waiter's next look sees in progress (the execution
//! it saw, or one that took the key over after a release) notifies when it ends. A mark of the
//! live row in progress only would have missed a release that came first: the execution that
//! then took the key over would have been unmarked, and its waiters woken by no one.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use sqlx::{
    postgres::{PgConnectOptions, PgListener, PgPoolOptions},
    PgPool,
};
use tokio::sync::{mpsc, oneshot};

use super::{Health, KeyHub, StoreKey};
use crate::hex;

/// How long the listener waits before trying again after a failure, at first and at most.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// What the store's notifications need: where to listen and how to mark a key waited on.
pub(super) struct Channel {
    /// The channel `complete` and `release` notify on, with the key's digest in hex.
    pub(super) name: String,
    /// Marks keys (`$1`, a `bytea[]`, sorted and without duplicates) as waited on.
    pub(super) mark: String,
}

/// Starts the store's marker, and the listener once a key is first waited on, and returns the
/// hub its waiters watch. `None` outside a Tokio runtime (the store then has no notifications).
///
/// The listener's connection is its own, made with the pool's options: held for the store's
/// life, a pooled one would leave the application's statements one connection short; and a
/// store whose requests never wait (the default policy) opens none.
pub(super) fn spawn(pool: PgPool, channel: Channel) -> Option<Arc<KeyHub>> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let (hub, keys) = KeyHub::remote();
    let (stop, stopped) = oneshot::channel();
    let (start, started) = oneshot::channel();
    let own = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(PgConnectOptions::clone(&pool.connect_options()));
    runtime.spawn(listen(
        Arc::downgrade(&hub),
        own,
        channel.name,
        started,
        stopped,
    ));
    runtime.spawn(mark(
        Arc::downgrade(&hub),
        pool,
        channel.mark,
        keys,
        start,
        stop,
    ));
    Some(hub)
}

/// Hands every notification to the key's waiters; while the connection is lost, the waiters
/// poll, and once it is back they all look again (a change may have been missed).
async fn listen(
    hub: Weak<KeyHub>,
    pool: PgPool,
    channel: String,
    started: oneshot::Receiver<()>,
    mut stopped: oneshot::Receiver<()>,
) {
    // Nothing to listen for until a key is waited on; an error: the store is gone.
    tokio::select! {
        start = started => if start.is_err() { return },
        _ = &mut stopped => return,
    }
    let mut retry = RETRY_FIRST;
    let mut listener: Option<PgListener> = None;
    loop {
        let Some(live) = &mut listener else {
            let connected = async {
                let mut listener = PgListener::connect_with(&pool).await?;
                listener.listen(&channel).await?;
                Ok::<_, sqlx::Error>(listener)
            };
            let result = tokio::select! {
                result = connected => result,
                _ = &mut stopped => return,
            };
            match result {
                Ok(live) => {
                    listener = Some(live);
                    retry = RETRY_FIRST;
                    set_health(&hub, Health::Up);
                }
                Err(error) => {
                    tracing::warn!(%error, "idempotency: the PostgreSQL listener cannot connect; waiters poll");
                    set_health(&hub, Health::Down);
                    tokio::select! {
                        () = tokio::time::sleep(retry) => {}
                        _ = &mut stopped => return,
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
            continue;
        };
        let received = tokio::select! {
            received = live.try_recv() => received,
            _ = &mut stopped => return,
        };
        match received {
            Ok(Some(notification)) => {
                let key = hex::decode32(notification.payload().as_bytes());
                match (hub.upgrade(), key) {
                    (Some(hub), Some(key)) => hub.notify(&StoreKey::from_bytes(key)),
                    (None, _) => return,
                    (Some(_), None) => {}
                }
            }
            // The connection was lost and is back, listening again: wake every waiter to look.
            Ok(None) => {
                set_health(&hub, Health::Down);
                set_health(&hub, Health::Up);
            }
            Err(error) => {
                tracing::debug!(%error, "idempotency: the PostgreSQL listener failed");
                set_health(&hub, Health::Down);
                listener = None;
            }
        }
    }
}

fn set_health(hub: &Weak<KeyHub>, health: Health) {
    if let Some(hub) = hub.upgrade() {
        hub.set_health(health);
    }
}

/// Marks the rows of keys that gained a waiter, then lets their waiters look and wait; starts
/// the listener with the first one. Dropping `stop` (when the store is gone) ends the listener
/// too.
async fn mark(
    hub: Weak<KeyHub>,
    pool: PgPool,
    statement: String,
    mut keys: mpsc::UnboundedReceiver<StoreKey>,
    start: oneshot::Sender<()>,
    _stop: oneshot::Sender<()>,
) {
    let mut start = Some(start);
    while let Some(key) = keys.recv().await {
        if let Some(start) = start.take() {
            let _ = start.send(());
        }
        let mut batch = vec![key];
        while let Ok(key) = keys.try_recv() {
            batch.push(key);
        }
        let mut retry = RETRY_FIRST;
        loop {
            let Some(strong) = hub.upgrade() else {
                return;
            };
            // Keys whose watchers already left need nothing. Sorted, without duplicates: an
            // upsert may not touch one row twice, and marks from several processes lock the
            // rows in one order.
            batch.retain(|key| strong.is_watched(key));
            batch.sort_unstable();
            batch.dedup();
            drop(strong);
            if batch.is_empty() {
                break;
            }
            let digests: Vec<Vec<u8>> = batch.iter().map(|k| k.as_bytes().to_vec()).collect();
            match sqlx::query(&statement).bind(digests).execute(&pool).await {
                Ok(_) => {
                    if let Some(hub) = hub.upgrade() {
                        hub.confirm(&batch);
                    }
                    break;
                }
                Err(error) => {
                    // Unmarked, a completion would not notify: the waiters wait for the mark
                    // (or their timeout), never for a wake-up that cannot come.
                    let error = super::postgres_schema::schema_error(error);
                    tracing::debug!(%error, "idempotency: marking keys waited on failed");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
    }
}
