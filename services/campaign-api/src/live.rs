//! Live campaign updates: the Server-Sent Events route fed by the campaign's pub/sub channel, and
//! the lifecycle ticker that notices campaigns starting and ending.
//!
//! Every SSE client holds one [`Subscription`]; the shared [`PubSub`] keeps one Redis `SUBSCRIBE`
//! per channel however many clients watch it. A client that goes away is noticed at the next
//! write (an update or the keep-alive comment), its stream is dropped, and with it the
//! subscription (`UNSUBSCRIBE` when it was the channel's last). Streams end at shutdown so the
//! server can drain.

use std::time::Duration;

use actix_web::HttpResponse;
use actix_web::web::Bytes;
use futures::stream::{self, Stream};
use platform_redis::keys::Keys;
use platform_redis::messages::CampaignUpdate;
use platform_redis::pubsub::{self, PubSub, Subscription};
use prometheus_client::metrics::gauge::Gauge;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::ApiError;
use crate::pages::Pages;
use crate::storage;

/// Holds an SSE client's place in the `sse_clients` gauge.
struct ClientGuard(Gauge);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

struct SseState {
    subscription: Subscription<CampaignUpdate>,
    keep_alive: tokio::time::Interval,
    stop: CancellationToken,
    _guard: ClientGuard,
}

/// The SSE response for one campaign's channel.
pub async fn event_stream(
    pubsub: &PubSub,
    keys: &Keys,
    campaign_id: Uuid,
    keep_alive: Duration,
    stop: CancellationToken,
    clients: Gauge,
) -> Result<HttpResponse, ApiError> {
    let channel = keys.campaign_updates_channel(&campaign_id.to_string());
    let subscription = pubsub
        .subscribe::<CampaignUpdate>(&channel)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    clients.inc();
    let mut interval =
        tokio::time::interval_at(tokio::time::Instant::now() + keep_alive, keep_alive);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = SseState { subscription, keep_alive: interval, stop, _guard: ClientGuard(clients) };
    let opening = stream::once(async {
        Ok::<_, actix_web::Error>(Bytes::from_static(b"retry: 3000\n: connected\n\n"))
    });
    let body = futures::StreamExt::chain(opening, updates(state));
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

fn updates(state: SseState) -> impl Stream<Item = Result<Bytes, actix_web::Error>> {
    stream::unfold(state, |mut state| async move {
        let chunk = tokio::select! {
            () = state.stop.cancelled() => return None,
            message = state.subscription.recv() => match message {
                Some(envelope) => format_event(&envelope.body),
                None => return None,
            },
            _ = state.keep_alive.tick() => Bytes::from_static(b": keep-alive\n\n"),
        };
        Some((Ok(chunk), state))
    })
}

/// `event: <type>` and the update's JSON as `data:`.
pub fn format_event(update: &CampaignUpdate) -> Bytes {
    let name = match update {
        CampaignUpdate::NewDonation { .. } => "new_donation",
        CampaignUpdate::GoalReached { .. } => "goal_reached",
        CampaignUpdate::CampaignEnded { .. } => "campaign_ended",
    };
    let data = serde_json::to_string(update).unwrap_or_else(|_| "{}".to_owned());
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// Publishes `campaign_ended` for a campaign (best effort: pub/sub has no replay anyway).
pub async fn announce_ended(redis: &platform_redis::RedisClients, campaign_id: Uuid) {
    let id = campaign_id.to_string();
    let channel = redis.keys().campaign_updates_channel(&id);
    let update = CampaignUpdate::CampaignEnded { campaign_id: id };
    if let Err(error) = pubsub::publish(&redis.primary(), &channel, &update).await {
        tracing::warn!(campaign_id = %campaign_id, %error, "campaign_ended not published");
    }
}

/// Every `every`: campaigns that started or ended since the last tick (claimed in Postgres, so
/// each transition is handled by one replica once) get their organisation's cache invalidated,
/// and ended ones a `campaign_ended` update.
pub fn spawn_lifecycle(
    db: PgPool,
    pages: Pages,
    redis: platform_redis::RedisClients,
    every: Duration,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            match storage::claim_started(&db).await {
                Ok(started) => {
                    for campaign in started {
                        tracing::info!(campaign_id = %campaign.id, "campaign started");
                        pages.invalidate_org(&campaign.org_slug).await;
                    }
                }
                Err(error) => tracing::debug!(%error, "lifecycle tick: start check failed"),
            }
            match storage::claim_ended(&db).await {
                Ok(ended) => {
                    for campaign in ended {
                        tracing::info!(campaign_id = %campaign.id, "campaign ended");
                        pages.invalidate_org(&campaign.org_slug).await;
                        announce_ended(&redis, campaign.id).await;
                    }
                }
                Err(error) => tracing::debug!(%error, "lifecycle tick: end check failed"),
            }
        }
    })
}
