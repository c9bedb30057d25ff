//! Typed pub/sub: publishing [`Envelope`]s as JSON, and subscriptions that share one Redis
//! `SUBSCRIBE` per channel and come back by themselves after Redis restarts.
//!
//! One [`PubSub`] per process owns one dedicated subscriber connection (pub/sub needs its own).
//! Local [`Subscription`]s are reference-counted per channel: the first one of a channel sends
//! `SUBSCRIBE`, the others share it, and dropping the last one sends `UNSUBSCRIBE`, so a service
//! can open one subscription per SSE client without a Redis subscription per client.
//!
//! The set of channels with local subscribers is the source of truth. A background task makes
//! Redis match it: after every (re)connect it re-sends `SUBSCRIBE` for all of them (including
//! channels whose `SUBSCRIBE` failed while Redis was down), after a subscription is dropped it
//! sends `UNSUBSCRIBE`, and on a short timer it compares again as a safety net. Start-up never
//! fails because Redis is down; subscriptions made meanwhile start receiving once it is back.
//! Messages published while the connection was down are lost (pub/sub has no replay).
//!
//! fred's own `SubscriberClient::manage_subscriptions` is deliberately not used: in fred 10.1 its
//! `resubscribe_all` sends `SUBSCRIBE` and `PSUBSCRIBE` without arguments when it tracks no
//! channels (or no patterns); Redis answers those with errors that fred then hands to the next
//! command on the connection. The reconnect task here does the same job with non-empty lists.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, Message};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::RedisClients;
use crate::error::Result;
use crate::messages::{Envelope, MESSAGE_VERSION};

/// Messages buffered per channel for a local subscriber that is slow to read; beyond it the
/// oldest are dropped for that subscriber (with a warning) rather than blocking the others.
const LOCAL_BUFFER: usize = 1_024;

/// How often the subscription set is compared with Redis even without a trigger.
const RESYNC_INTERVAL: Duration = Duration::from_secs(2);

/// Publishes `body` on `channel` inside an [`Envelope`] (version and current `traceparent`) as
/// JSON. Returns how many subscriber connections received it (0 is not an error: nobody listens).
#[tracing::instrument(name = "redis.publish", skip(pool, body))]
pub async fn publish<T: Serialize>(pool: &Pool, channel: &str, body: &T) -> Result<u64> {
    let text = serde_json::to_string(&Envelope::new(body))?;
    let receivers: u64 = pool.next_connected().publish(channel, text).await?;
    Ok(receivers)
}

/// The process's pub/sub connection. Cheap to clone; clones share the connection and the
/// subscriptions.
#[derive(Clone)]
pub struct PubSub {
    inner: Arc<Inner>,
}

struct Inner {
    client: SubscriberClient,
    /// Channels with at least one local subscriber: what Redis should be subscribed to.
    channels: Mutex<HashMap<String, LocalChannel>>,
    /// Serialises every SUBSCRIBE / UNSUBSCRIBE so the last reconciliation always wins.
    sync_lock: tokio::sync::Mutex<()>,
    resync: Notify,
    shutdown: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

struct LocalChannel {
    sender: broadcast::Sender<Arc<str>>,
    subscribers: usize,
}

impl fmt::Debug for PubSub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PubSub")
            .field("channels", &self.subscribed_channels())
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl PubSub {
    /// Builds the subscriber connection on the primary instance and starts connecting. Waits up to
    /// `connect_timeout_ms` for the first connection, then returns even if Redis is down (the
    /// connection keeps retrying in the background).
    pub async fn start(clients: &RedisClients) -> Result<PubSub> {
        let client = clients.subscriber()?;
        // Receivers first, so neither the first connection nor the first message is missed.
        let messages = client.message_rx();
        let reconnects = client.reconnect_rx();
        let _connection = client.connect();

        let inner = Arc::new(Inner {
            client,
            channels: Mutex::new(HashMap::new()),
            sync_lock: tokio::sync::Mutex::new(()),
            resync: Notify::new(),
            shutdown: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
        });
        let dispatcher = tokio::spawn(dispatch(Arc::clone(&inner), messages));
        let reconciler = tokio::spawn(reconcile(Arc::clone(&inner), reconnects));
        lock(&inner.tasks).extend([dispatcher, reconciler]);

        let wait = Duration::from_millis(clients.settings().connect_timeout_ms);
        match tokio::time::timeout(wait, inner.client.wait_for_connect()).await {
            Ok(Ok(())) => tracing::debug!("pub/sub connection up"),
            _ => tracing::warn!(
                wait_ms = wait.as_millis() as u64,
                "pub/sub connection is not up yet; subscribing once redis is reachable"
            ),
        }
        Ok(PubSub { inner })
    }

    /// Subscribes to `channel`. Shares the Redis subscription with other local subscribers of the
    /// same channel. When Redis is reachable the `SUBSCRIBE` is confirmed before this returns, so
    /// a message published afterwards is received; when it is not, the subscription is made as
    /// soon as Redis is back. Fails only after [`PubSub::stop`].
    pub async fn subscribe<T>(&self, channel: &str) -> Result<Subscription<T>>
    where
        T: DeserializeOwned + Send + 'static,
    {
        if self.inner.shutdown.is_cancelled() {
            return Err(fred::error::Error::new(
                fred::error::ErrorKind::Canceled,
                "pub/sub is stopped",
            )
            .into());
        }
        let receiver = {
            let mut channels = lock(&self.inner.channels);
            let local = channels.entry(channel.to_owned()).or_insert_with(|| LocalChannel {
                sender: broadcast::channel(LOCAL_BUFFER).0,
                subscribers: 0,
            });
            local.subscribers += 1;
            local.sender.subscribe()
        };
        // Built before any await: if this future is dropped, Drop still releases the count.
        let subscription = Subscription {
            channel: channel.to_owned(),
            receiver,
            inner: Arc::clone(&self.inner),
            _body: PhantomData,
        };
        if self.inner.client.is_connected()
            && let Err(error) = self.inner.sync(false).await
        {
            tracing::warn!(%error, channel, "subscribe failed; retrying in the background");
        }
        Ok(subscription)
    }

    /// Channels that have at least one local [`Subscription`], sorted. Redis is subscribed to
    /// exactly these whenever it is reachable.
    pub fn subscribed_channels(&self) -> Vec<String> {
        let mut channels: Vec<String> = lock(&self.inner.channels).keys().cloned().collect();
        channels.sort();
        channels
    }

    /// Whether the subscriber connection is up.
    pub fn is_connected(&self) -> bool {
        self.inner.client.is_connected()
    }

    /// A receiver that gets an event after every (re)connection of the subscriber connection.
    /// Messages published while it was down are lost, so listeners that keep derived state (the
    /// cache's L1) use this to drop what they may have missed invalidations for.
    pub fn reconnections(&self) -> broadcast::Receiver<Server> {
        self.inner.client.reconnect_rx()
    }

    /// Unsubscribes, closes the connection and ends the background tasks. Every open
    /// [`Subscription`] then returns `None`. Idempotent. Call it at shutdown: the background
    /// tasks keep the connection alive until then.
    pub async fn stop(&self) {
        if self.inner.shutdown.is_cancelled() {
            return;
        }
        self.inner.shutdown.cancel();
        let tasks: Vec<JoinHandle<()>> = lock(&self.inner.tasks).drain(..).collect();
        for task in tasks {
            task.abort();
        }
        // Dropping the senders ends every Subscription's stream.
        lock(&self.inner.channels).clear();
        if self.inner.client.is_connected()
            && let Err(error) = self.inner.client.unsubscribe_all().await
        {
            tracing::debug!(%error, "unsubscribe on stop failed");
        }
        let _ = self.inner.client.quit().await;
    }
}

impl Inner {
    /// Makes Redis's subscriptions match the local channel set. `force` re-sends `SUBSCRIBE` for
    /// every wanted channel (after a reconnect the server has none, whatever fred tracked).
    async fn sync(&self, force: bool) -> Result<()> {
        let _serial = self.sync_lock.lock().await;
        let wanted: BTreeSet<String> = lock(&self.channels).keys().cloned().collect();
        let tracked: BTreeSet<String> =
            self.client.tracked_channels().iter().map(|c| c.to_string()).collect();
        let subscribe: Vec<String> = if force {
            wanted.iter().cloned().collect()
        } else {
            wanted.difference(&tracked).cloned().collect()
        };
        let unsubscribe: Vec<String> = tracked.difference(&wanted).cloned().collect();
        let changed = !subscribe.is_empty() || !unsubscribe.is_empty();
        // Never call either with an empty list: an empty UNSUBSCRIBE means "all channels".
        if !subscribe.is_empty() {
            tracing::debug!(channels = ?subscribe, "subscribing");
            self.client.subscribe(subscribe).await?;
        }
        if !unsubscribe.is_empty() {
            tracing::debug!(channels = ?unsubscribe, "unsubscribing");
            self.client.unsubscribe(unsubscribe).await?;
        }
        if changed {
            // fred resolves (UN)SUBSCRIBE once written, not once Redis ran it. Redis answers one
            // connection's commands in order, so the PING reply means the change has taken
            // effect: a message published after this returns is delivered. In a cluster fred sends
            // (UN)SUBSCRIBE to the node owning the slot of the client id, so the PING goes there
            // too (a plain PING may go to any node, which proves nothing).
            let slot = fred::util::redis_keyslot(self.client.id().as_bytes());
            let ping = CustomCommand::new_static("PING", ClusterHash::Custom(slot), false);
            let _: Value = self.client.custom(ping, Vec::<Value>::new()).await?;
        }
        Ok(())
    }

    fn release(&self, channel: &str) {
        let mut channels = lock(&self.channels);
        let last = match channels.get_mut(channel) {
            Some(local) => {
                local.subscribers = local.subscribers.saturating_sub(1);
                local.subscribers == 0
            }
            None => false,
        };
        if last {
            channels.remove(channel);
            drop(channels);
            self.resync.notify_one();
        }
    }
}

/// Forwards every message from the subscriber connection to the local subscribers of its channel.
async fn dispatch(inner: Arc<Inner>, mut messages: broadcast::Receiver<Message>) {
    loop {
        let message = tokio::select! {
            () = inner.shutdown.cancelled() => return,
            message = messages.recv() => message,
        };
        match message {
            Ok(message) => {
                let channel: &str = &message.channel;
                let sender = lock(&inner.channels).get(channel).map(|local| local.sender.clone());
                let Some(sender) = sender else { continue };
                match message.value.into_string() {
                    // No receivers left is fine: the last subscriber is being dropped.
                    Some(text) => drop(sender.send(Arc::from(text))),
                    None => tracing::warn!(channel, "non-text pub/sub message skipped"),
                }
            }
            Err(broadcast::error::RecvError::Lagged(skipped)) => {
                tracing::warn!(skipped, "pub/sub dispatcher fell behind; messages dropped");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Keeps Redis's subscriptions equal to the local channel set; see the module doc.
async fn reconcile(inner: Arc<Inner>, mut reconnects: broadcast::Receiver<Server>) {
    let mut tick = tokio::time::interval(RESYNC_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let force = tokio::select! {
            () = inner.shutdown.cancelled() => return,
            () = inner.resync.notified() => false,
            event = reconnects.recv() => match event {
                Ok(server) => {
                    tracing::info!(%server, "pub/sub connected; restoring subscriptions");
                    true
                }
                Err(broadcast::error::RecvError::Lagged(_)) => true,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = tick.tick() => false,
        };
        if !force && !inner.client.is_connected() {
            continue;
        }
        if let Err(error) = inner.sync(force).await {
            tracing::warn!(%error, "pub/sub subscriptions out of date; retrying");
        }
    }
}

/// The messages of one channel, decoded into `Envelope<T>`. Dropping the last subscription of a
/// channel unsubscribes it from Redis.
pub struct Subscription<T> {
    channel: String,
    receiver: broadcast::Receiver<Arc<str>>,
    inner: Arc<Inner>,
    _body: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription").field("channel", &self.channel).finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned> Subscription<T> {
    /// The next message. Messages that do not decode, or carry a version this code does not know,
    /// are skipped with a warning. Returns `None` once the [`PubSub`] is stopped.
    pub async fn recv(&mut self) -> Option<Envelope<T>> {
        loop {
            match self.receiver.recv().await {
                Ok(text) => match decode::<T>(&text) {
                    Ok(envelope) => return Some(envelope),
                    Err(reason) => {
                        tracing::warn!(channel = %self.channel, reason, "pub/sub message skipped");
                    }
                },
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    tracing::warn!(
                        channel = %self.channel,
                        skipped,
                        "subscriber too slow; messages dropped"
                    );
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The channel this subscription reads.
    pub fn channel(&self) -> &str {
        &self.channel
    }
}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        self.inner.release(&self.channel);
    }
}

fn decode<T: DeserializeOwned>(text: &str) -> std::result::Result<Envelope<T>, &'static str> {
    #[derive(serde::Deserialize)]
    struct Version {
        v: u32,
    }
    // Check the version before the body: a newer body shape must be skipped, not misread.
    let version: Version = serde_json::from_str(text).map_err(|_| "not a message envelope")?;
    if version.v != MESSAGE_VERSION {
        return Err("unknown message version");
    }
    serde_json::from_str(text).map_err(|_| "body does not decode")
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves the data consistent (single inserts and
    // removes), so a poisoned lock is used as is.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_skips_unknown_versions_and_garbage() {
        assert!(decode::<u32>(r#"{"v":1,"body":7}"#).is_ok());
        assert_eq!(decode::<u32>(r#"{"v":2,"body":7}"#).err(), Some("unknown message version"));
        assert_eq!(decode::<u32>("nope").err(), Some("not a message envelope"));
        assert_eq!(decode::<u32>(r#"{"v":1,"body":"x"}"#).err(), Some("body does not decode"));
    }
}
