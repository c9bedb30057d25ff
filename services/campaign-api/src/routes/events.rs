//! Live campaign updates over Server-Sent Events: `GET /api/campaigns/{id}/events`, fed by the
//! campaign's pub/sub channel.
//!
//! Every SSE client holds one [`Subscription`]; the shared [`PubSub`] keeps one Redis `SUBSCRIBE`
//! per channel however many clients watch it. A client that goes away is noticed at the next
//! write (an update or the keep-alive comment), its stream is dropped, and with it the
//! subscription (`UNSUBSCRIBE` when it was the channel's last). Streams end at shutdown so the
//! server can drain, and after `live.max_stream_secs`, before a proxy's timeout cuts them: the
//! browser's `EventSource` reconnects on its own (`retry: 3000`).

use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::{HttpResponse, web};
use futures::stream::{self, Stream};
use platform_redis::keys::Keys;
use platform_redis::messages::CampaignUpdate;
use platform_redis::pubsub::{PubSub, Subscription};
use platform_service::openapi::{RateLimited, Unavailable};
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{State, campaign_id};
use crate::error::ApiError;

/// `GET /api/campaigns/{id}/events`: the campaign's live updates as Server-Sent Events, until the
/// client goes away or the server shuts down.
#[utoipa::path(
    get,
    path = "/api/campaigns/{id}/events",
    tag = "public",
    params(("id" = Uuid, Path, description = "The campaign id")),
    responses(
        (status = 200, description = "A `text/event-stream` that ends after `live.max_stream_secs` (or at shutdown): `retry: 3000` and a `: connected` comment, then \
            one event per update (`event: new_donation | goal_reached | campaign_ended`, `data:` a `CampaignUpdate` \
            as JSON) and a `: keep-alive` comment every `live.keep_alive_secs`", content_type = "text/event-stream", body = String, headers(
            ("Cache-Control" = String, description = "`no-cache`"),
            ("X-Accel-Buffering" = String, description = "`no`: proxies must not buffer the stream"),
        )),
        (status = 400, description = "The id is not a UUID (`invalid_campaign_id`)", body = platform_service::ErrorBody),
        (status = 404, description = "No such campaign, or deleted (`campaign_not_found`)", body = platform_service::ErrorBody),
        RateLimited,
        Unavailable,
    )
)]
#[tracing::instrument(name = "campaign_events", skip(state))]
pub(super) async fn campaign_events(
    state: web::Data<State>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = campaign_id(&path)?;
    // 404 for campaigns that do not exist (cached, so cheap and Postgres-independent when warm).
    state.pages.stats(id).await?;
    event_stream(
        &state.pubsub,
        state.redis.keys(),
        id,
        state.live,
        state.stop.clone(),
        state.metrics.sse_clients.clone(),
    )
    .await
}

/// How long an SSE stream stays quiet before a keep-alive comment, and how long it lasts at most.
#[derive(Debug, Clone, Copy)]
pub struct StreamTimes {
    pub keep_alive: Duration,
    pub max_duration: Duration,
}

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
    ends_at: tokio::time::Instant,
    stop: CancellationToken,
    _guard: ClientGuard,
}

/// The SSE response for one campaign's channel.
pub async fn event_stream(
    pubsub: &PubSub,
    keys: &Keys,
    campaign_id: Uuid,
    times: StreamTimes,
    stop: CancellationToken,
    clients: Gauge,
) -> Result<HttpResponse, ApiError> {
    let channel = keys.campaign_updates_channel(&campaign_id.to_string());
    // It only fails once pub/sub has stopped, at shutdown.
    let subscription =
        pubsub.subscribe::<CampaignUpdate>(&channel).await.map_err(ApiError::LiveUpdatesStopped)?;
    clients.inc();
    let now = tokio::time::Instant::now();
    let mut interval = tokio::time::interval_at(now + times.keep_alive, times.keep_alive);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = SseState {
        subscription,
        keep_alive: interval,
        ends_at: now + times.max_duration,
        stop,
        _guard: ClientGuard(clients),
    };
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
            () = tokio::time::sleep_until(state.ends_at) => return None,
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
