//! Invalidation across replicas: publishing [`Invalidation`] on the invalidation channel, and the
//! listener that applies other replicas' messages to this replica's L1 (and clears it when the
//! pub/sub connection comes back, since messages sent meanwhile were lost).

use std::sync::{Arc, Weak};

use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use super::l1::L1;
use crate::client::RolePool;
use crate::error::Result;
use crate::messages::Invalidation;
use crate::pubsub::{self, PubSub};

/// Where one cache's invalidations go.
pub(super) struct Broadcast {
    /// Invalidations are published where [`PubSub`] subscribes: the primary.
    primary: RolePool,
    channel: String,
}

impl Broadcast {
    pub fn new(primary: RolePool, channel: String) -> Broadcast {
        Broadcast { primary, channel }
    }

    pub async fn publish(&self, message: &Invalidation) -> Result<()> {
        let receivers = pubsub::publish(&self.primary.pool(), &self.channel, message).await?;
        tracing::debug!(receivers, "invalidation published");
        Ok(())
    }

    /// Subscribes, then applies every message to `l1` until `pubsub` stops or `l1` is dropped.
    /// When Redis is reachable the subscription is confirmed before this returns.
    pub async fn listen(&self, pubsub: &PubSub, l1: &Arc<L1>) -> Result<JoinHandle<()>> {
        let mut reconnections = pubsub.reconnections();
        let mut messages = pubsub.subscribe::<Invalidation>(&self.channel).await?;
        let l1: Weak<L1> = Arc::downgrade(l1);
        Ok(tokio::spawn(async move {
            loop {
                tokio::select! {
                    message = messages.recv() => {
                        let (Some(message), Some(l1)) = (message, l1.upgrade()) else {
                            return;
                        };
                        apply(&l1, message.body).await;
                    }
                    event = reconnections.recv() => {
                        if matches!(event, Err(RecvError::Closed)) {
                            return;
                        }
                        let Some(l1) = l1.upgrade() else { return };
                        let dropped = l1.clear();
                        tracing::info!(dropped, "pub/sub reconnected; cleared L1 (invalidations may have been missed)");
                    }
                }
            }
        }))
    }
}

/// Drops from `l1` what `message` names.
pub(super) async fn apply(l1: &L1, message: Invalidation) {
    match message {
        Invalidation::Keys { keys } => l1.drop_keys(&keys).await,
        Invalidation::Group { group } => l1.drop_group(&group),
    }
}
