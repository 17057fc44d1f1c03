//! The Redis store's notifications: one subscriber connection per store subscribes to the
//! channels of the keys this process waits on, and hands each message to the waiters.
//!
//! `complete` and `release` publish on the key's channel from inside their scripts: no extra
//! round trip, and a publish nobody listens to costs the server a lookup. The channel,
//! `tower-idempotency:{<digest>}`, carries the record key's hash tag, so on a cluster the
//! sharded message stays on the key's shard; it does not carry the key prefix, so a store's
//! prefix can change after it subscribed (two services that share a server and a key digest
//! under different prefixes only wake each other's waiters to look once more). A waiter subscribes
//! before it looks at the key again and waits only once the subscription is confirmed, so no
//! change between the look and the wait is missed. When the connection breaks, every waiter
//! polls slowly until the subscriber is back and has subscribed again.

use std::{
    collections::HashSet,
    sync::{Arc, Weak},
    time::Duration,
};

use redis::{aio::ConnectionManager, PushInfo, PushKind, RedisResult, Value};
use tokio::sync::{mpsc, Notify};

use super::{Health, KeyHub, StoreKey};
use crate::hex;

/// How long the subscriber waits before trying again after a failure, at first and at most.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// The connection the subscriber subscribes through.
pub(super) enum Subscriber {
    /// One server: plain pub/sub, many channels per command.
    Server(redis::Client),
    /// A cluster: sharded pub/sub (Redis 7.0+), one channel per command, each sent to the
    /// shard that holds the key.
    #[cfg(feature = "redis-cluster")]
    Cluster(Vec<String>),
}

/// A live subscriber connection.
enum Connection {
    Server(ConnectionManager),
    #[cfg(feature = "redis-cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Connection {
    async fn subscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Self::Server(conn) => conn.subscribe(channels).await,
            #[cfg(feature = "redis-cluster")]
            Self::Cluster(conn) => {
                for channel in channels {
                    conn.ssubscribe(channel).await?;
                }
                Ok(())
            }
        }
    }

    async fn unsubscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Self::Server(conn) => conn.unsubscribe(channels).await,
            #[cfg(feature = "redis-cluster")]
            Self::Cluster(conn) => {
                for channel in channels {
                    conn.sunsubscribe(channel).await?;
                }
                Ok(())
            }
        }
    }
}

/// Starts the subscriber of a store whose record keys start with `prefix`, and returns the hub
/// its waiters watch. `None` outside a Tokio runtime (the store then has no notifications).
pub(super) fn spawn(subscriber: Subscriber) -> Option<Arc<KeyHub>> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let (hub, changes) = KeyHub::remote();
    let lost = Arc::new(Notify::new());
    let pushes = push_handler(Arc::downgrade(&hub), Arc::clone(&lost));
    let task = Task {
        hub: Arc::downgrade(&hub),
        changes,
        lost,
        subscribed: HashSet::new(),
    };
    runtime.spawn(task.run(subscriber, pushes));
    Some(hub)
}

/// What the connection hands every push to: messages wake the key's waiters at once (on the
/// connection's own task); a lost connection marks the notifications broken and has the
/// subscriber subscribe again.
fn push_handler(
    hub: Weak<KeyHub>,
    lost: Arc<Notify>,
) -> impl Fn(PushInfo) -> Result<(), Gone> + Clone + Send + Sync + 'static {
    move |push: PushInfo| {
        let hub = hub.upgrade().ok_or(Gone)?;
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                if let Some(key) = push.data.first().and_then(key_of_channel) {
                    hub.notify(&key);
                }
            }
            PushKind::Disconnection => {
                hub.set_health(Health::Down);
                lost.notify_one();
            }
            _ => {}
        }
        Ok(())
    }
}

/// The store is gone: pushes are no longer wanted.
#[derive(Debug)]
struct Gone;

/// The key a channel (`tower-idempotency:{<64 hex digits>}`) belongs to.
fn key_of_channel(channel: &Value) -> Option<StoreKey> {
    let Value::BulkString(name) = channel else {
        return None;
    };
    let tagged = name.get(name.len().checked_sub(66)?..)?;
    let digest = tagged.strip_prefix(b"{")?.strip_suffix(b"}")?;
    hex::decode32(digest).map(StoreKey::from_bytes)
}

/// The subscriber: keeps the connection's subscriptions equal to the keys waited on.
struct Task {
    hub: Weak<KeyHub>,
    /// Keys whose watchers came or went.
    changes: mpsc::UnboundedReceiver<StoreKey>,
    /// Told when the connection was lost.
    lost: Arc<Notify>,
    /// The keys this connection is subscribed to.
    subscribed: HashSet<StoreKey>,
}

impl Task {
    async fn run<P>(mut self, subscriber: Subscriber, pushes: P)
    where
        P: Fn(PushInfo) -> Result<(), Gone> + Clone + Send + Sync + 'static,
    {
        let mut retry = RETRY_FIRST;
        let mut conn = loop {
            match connect(&subscriber, pushes.clone()).await {
                Ok(conn) => break conn,
                Err(error) => {
                    tracing::warn!(%error, "idempotency: the Redis subscriber cannot connect; waiters poll");
                    if !self.pause(Health::Down, &mut retry).await {
                        return;
                    }
                }
            }
        };
        let mut resubscribe = true;
        loop {
            if resubscribe {
                // After a loss the server forgot the subscriptions (a cluster connection
                // restores them itself; subscribing twice is harmless).
                self.subscribed.clear();
                match self.subscribe_all(&mut conn).await {
                    Some(Ok(())) => {
                        resubscribe = false;
                        retry = RETRY_FIRST;
                    }
                    Some(Err(error)) => {
                        tracing::debug!(%error, "idempotency: the Redis subscriber failed to subscribe");
                        if !self.pause(Health::Down, &mut retry).await {
                            return;
                        }
                        continue;
                    }
                    None => return,
                }
            }
            let mut keys = Vec::new();
            tokio::select! {
                key = self.changes.recv() => match key {
                    Some(key) => keys.push(key),
                    None => return,
                },
                () = self.lost.notified() => {
                    resubscribe = true;
                    continue;
                }
            }
            while let Ok(key) = self.changes.try_recv() {
                keys.push(key);
            }
            match self.follow(&mut conn, keys).await {
                Some(Ok(())) => {}
                Some(Err(error)) => {
                    tracing::debug!(%error, "idempotency: the Redis subscriber failed to (un)subscribe");
                    resubscribe = true;
                }
                None => return,
            }
        }
    }

    /// Marks the notifications `health` and waits before the next try; `false` once the
    /// store is gone.
    async fn pause(&self, health: Health, retry: &mut Duration) -> bool {
        let Some(hub) = self.hub.upgrade() else {
            return false;
        };
        hub.set_health(health);
        drop(hub);
        tokio::time::sleep(*retry).await;
        *retry = (*retry * 2).min(RETRY_MAX);
        true
    }

    /// Subscribes to every key waited on, then says the notifications work. `None` once the
    /// store is gone.
    async fn subscribe_all(&mut self, conn: &mut Connection) -> Option<RedisResult<()>> {
        let keys = self.hub.upgrade()?.watched();
        if !keys.is_empty() {
            if let Err(error) = conn.subscribe(&self.channels(&keys)).await {
                return Some(Err(error));
            }
        }
        self.subscribed.extend(keys.iter().copied());
        let hub = self.hub.upgrade()?;
        hub.confirm(&keys);
        // Waiters wake on this and look again: a change may have been missed meanwhile.
        hub.set_health(Health::Up);
        Some(Ok(()))
    }

    /// Subscribes to the keys that gained their first watcher and unsubscribes from those
    /// that lost their last. `None` once the store is gone.
    async fn follow(
        &mut self,
        conn: &mut Connection,
        keys: Vec<StoreKey>,
    ) -> Option<RedisResult<()>> {
        let (mut new, mut known, mut left) = (Vec::new(), Vec::new(), Vec::new());
        {
            let hub = self.hub.upgrade()?;
            for key in keys {
                match (hub.is_watched(&key), self.subscribed.contains(&key)) {
                    (true, false) if !new.contains(&key) => new.push(key),
                    (true, true) => known.push(key),
                    (false, true) if !left.contains(&key) => left.push(key),
                    _ => {}
                }
            }
            // A key that left and came back between two rounds is still subscribed.
            hub.confirm(&known);
        }
        if !new.is_empty() {
            if let Err(error) = conn.subscribe(&self.channels(&new)).await {
                return Some(Err(error));
            }
            self.subscribed.extend(new.iter().copied());
            self.hub.upgrade()?.confirm(&new);
        }
        if !left.is_empty() {
            if let Err(error) = conn.unsubscribe(&self.channels(&left)).await {
                return Some(Err(error));
            }
            for key in &left {
                self.subscribed.remove(key);
            }
        }
        Some(Ok(()))
    }

    fn channels(&self, keys: &[StoreKey]) -> Vec<String> {
        keys.iter().map(channel).collect()
    }
}

/// A key's channel, as the scripts name it.
fn channel(key: &StoreKey) -> String {
    format!("tower-idempotency:{{{key}}}")
}

/// Opens the subscriber connection (RESP3, so pushes and replies share it).
async fn connect<P>(subscriber: &Subscriber, pushes: P) -> RedisResult<Connection>
where
    P: Fn(PushInfo) -> Result<(), Gone> + Clone + Send + Sync + 'static,
{
    match subscriber {
        Subscriber::Server(client) => {
            let config = redis::aio::ConnectionManagerConfig::new().set_push_sender(pushes);
            let conn = client.get_connection_manager_with_config(config).await?;
            Ok(Connection::Server(conn))
        }
        #[cfg(feature = "redis-cluster")]
        Subscriber::Cluster(nodes) => {
            let client = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(pushes)
                .build()?;
            Ok(Connection::Cluster(client.get_async_connection().await?))
        }
    }
}

/// A client for the subscriber: the store's address and credentials, speaking RESP3.
pub(super) fn resp3(client: &redis::Client) -> RedisResult<redis::Client> {
    let info = client.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    redis::Client::open(info.set_redis_settings(settings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_name_their_keys() {
        let key = StoreKey::from_bytes([0xab; 32]);
        let name = channel(&key);
        assert_eq!(
            key_of_channel(&Value::BulkString(name.into_bytes())),
            Some(key)
        );
        for other in [
            Value::BulkString(b"tower-idempotency:{ab}".to_vec()),
            Value::BulkString(Vec::new()),
            Value::Int(1),
        ] {
            assert_eq!(key_of_channel(&other), None, "{other:?}");
        }
    }
}
