//! The producer side of usage metering: a bounded in-memory buffer of
//! [`UsageEvent`]s appended to the usage stream in batches, and actix middleware that records one
//! `api_request` per request of an organisation.
//!
//! Recording never waits for Redis: [`UsageRecorder::record`] puts the event in a bounded queue
//! and returns; a background task appends queued events with [`StreamProducer::append_all`]
//! (one round trip per batch). While Redis is unreachable the task keeps its batch and retries
//! with backoff; the queue fills and further events are dropped and counted
//! ([`UsageRecorder::dropped`]) instead of growing memory. Every event gets an idempotency key if
//! it has none, so a batch re-sent after a partly applied pipeline is counted once by usage-meter.
//! On cancellation the task drains the queue and makes one last attempt.
//!
//! **Counted metrics.** For high-rate metrics (`api_request` on a hot public route) one event per
//! request would flood the stream; [`UsageRecorder::count`] adds to an in-memory tally per
//! organisation and metric instead, and the task turns each tally into one event (`value` = the
//! count, `occurredAt` = its first count) every `linger`. A tally in a failed batch is retried
//! unchanged (same idempotency key) while new counts accumulate in fresh tallies, bounded by
//! [`UsageRecorderSettings::max_tallies`] (counts of further organisations are dropped and counted).
//! [`TrackUsage::aggregated`] makes the middleware count rather than record; requests the rate
//! limiter refused are counted as `rate_limited` (rate-limit hits per organisation), and
//! [`TrackUsage::from_response`] lets the handler name the organisation through a [`UsageOrg`]
//! response extension when only it knows it (e.g. after a cache lookup).

use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::middleware::Next;
use actix_web::{Error, HttpRequest};
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use chrono::{DateTime, SecondsFormat, Utc};
use futures::future::{Ready, ready};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::RedisClients;
use crate::keys::StreamName;
use crate::messages::UsageEvent;
use crate::middleware::{self, FnService};
use crate::ratelimit::Denied;
use crate::streams::StreamProducer;

/// How a [`UsageRecorder`] buffers and sends.
#[derive(Debug, Clone)]
pub struct UsageRecorderSettings {
    /// Events held in memory at most; more are dropped (and counted) while Redis is away.
    pub capacity: usize,
    /// Events per `append_all`.
    pub batch_size: usize,
    /// Longest wait before a partial batch is sent.
    pub linger: Duration,
    /// Approximate cap of the usage stream (`MAXLEN ~`).
    pub stream_max_len: usize,
    /// Organisation × metric tallies of [`UsageRecorder::count`] held between two sends.
    pub max_tallies: usize,
}

impl Default for UsageRecorderSettings {
    fn default() -> Self {
        Self {
            capacity: 10_000,
            batch_size: 500,
            linger: Duration::from_millis(100),
            stream_max_len: 1_000_000,
            max_tallies: 10_000,
        }
    }
}

/// Queues usage events for the usage stream; cheap to clone.
#[derive(Debug, Clone)]
pub struct UsageRecorder {
    queue: mpsc::Sender<UsageEvent>,
    tallies: Arc<Mutex<Tallies>>,
    dropped: Arc<AtomicU64>,
}

/// Counts of [`UsageRecorder::count`] not yet turned into events: metric → organisation → tally.
#[derive(Debug)]
struct Tallies {
    counts: HashMap<&'static str, HashMap<String, Tally>>,
    len: usize,
    capacity: usize,
}

#[derive(Debug)]
struct Tally {
    value: i64,
    since: DateTime<Utc>,
}

impl Tallies {
    /// Adds `value`; false when a new tally would pass the bound.
    fn add(&mut self, org_id: &str, metric: &'static str, value: i64) -> bool {
        let full = self.len >= self.capacity;
        let by_org = self.counts.entry(metric).or_default();
        if let Some(tally) = by_org.get_mut(org_id) {
            tally.value = tally.value.saturating_add(value);
            return true;
        }
        if full {
            return false;
        }
        by_org.insert(org_id.to_owned(), Tally { value, since: Utc::now() });
        self.len += 1;
        true
    }

    /// Moves up to `room` tallies into `batch` as events with fresh idempotency keys.
    fn drain_into(&mut self, batch: &mut Vec<UsageEvent>, room: usize) {
        let mut taken = 0;
        for (metric, by_org) in &mut self.counts {
            let orgs: Vec<String> = by_org.keys().take(room - taken).cloned().collect();
            for org_id in orgs {
                if let Some(tally) = by_org.remove(&org_id) {
                    batch.push(UsageEvent {
                        org_id,
                        metric: (*metric).to_owned(),
                        value: tally.value,
                        occurred_at: Some(tally.since.to_rfc3339_opts(SecondsFormat::Millis, true)),
                        idempotency_key: Some(uuid::Uuid::new_v4().simple().to_string()),
                        metadata: None,
                    });
                    taken += 1;
                }
            }
            if taken >= room {
                break;
            }
        }
        self.counts.retain(|_, by_org| !by_org.is_empty());
        self.len -= taken;
    }
}

impl UsageRecorder {
    /// Starts the sending task; it stops (after draining) when `cancel` fires.
    pub fn start(
        clients: &RedisClients,
        settings: UsageRecorderSettings,
        cancel: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let (queue, receiver) = mpsc::channel(settings.capacity.max(1));
        let producer =
            StreamProducer::new(clients, StreamName::UsageEvents, settings.stream_max_len);
        let tallies = Arc::new(Mutex::new(Tallies {
            counts: HashMap::new(),
            len: 0,
            capacity: settings.max_tallies.max(1),
        }));
        let task =
            tokio::spawn(send_loop(producer, receiver, Arc::clone(&tallies), settings, cancel));
        (Self { queue, tallies, dropped: Arc::default() }, task)
    }

    /// Adds `value` to the tally of `metric` for `org_id`, sent as one event per organisation
    /// and metric every `linger` (see the module doc). Memory only; false (and counted as
    /// dropped) when the tally table is full.
    pub fn count(&self, org_id: &str, metric: &'static str, value: i64) -> bool {
        let added = lock(&self.tallies).add(org_id, metric, value);
        if !added {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(dropped, metric, "usage tally table full; dropping counts");
            }
        }
        added
    }

    /// Queues `event` without waiting; false (and counted as dropped) when the buffer is full.
    pub fn record(&self, mut event: UsageEvent) -> bool {
        if event.idempotency_key.is_none() {
            event.idempotency_key = Some(uuid::Uuid::new_v4().simple().to_string());
        }
        match self.queue.try_send(event) {
            Ok(()) => true,
            Err(_) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(dropped, "usage buffer full; dropping usage events");
                }
                false
            }
        }
    }

    /// Events (or counts) dropped because the buffer (or tally table) was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The longest pause between two failed appends.
const APPEND_PAUSE_MAX: Duration = Duration::from_secs(3);

/// Pauses between failed appends while Redis is away: 100 ms, doubling up to 3 s.
const APPEND_BACKOFF: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(100))
    .with_max_delay(APPEND_PAUSE_MAX)
    .without_max_times();

async fn send_loop(
    producer: StreamProducer,
    mut receiver: mpsc::Receiver<UsageEvent>,
    tallies: Arc<Mutex<Tallies>>,
    settings: UsageRecorderSettings,
    cancel: CancellationToken,
) {
    let batch_size = settings.batch_size.max(1);
    let mut batch: Vec<UsageEvent> = Vec::with_capacity(batch_size);
    // The pauses of the current run of failures; a success starts them over.
    let mut pauses: Option<ExponentialBackoff> = None;
    loop {
        let mut linger = true;
        if batch.is_empty() {
            // An event, or one linger period for the tallies.
            tokio::select! {
                () = cancel.cancelled() => break,
                received = receiver.recv() => match received {
                    Some(event) => batch.push(event),
                    None => break,
                },
                () = tokio::time::sleep(settings.linger) => linger = false,
            }
        }
        if linger {
            // Linger briefly for a fuller batch.
            let deadline = tokio::time::sleep(settings.linger);
            tokio::pin!(deadline);
            while batch.len() < batch_size {
                tokio::select! {
                    () = &mut deadline => break,
                    () = cancel.cancelled() => break,
                    received = receiver.recv() => match received {
                        Some(event) => batch.push(event),
                        None => break,
                    },
                }
            }
        }
        let room = batch_size.saturating_sub(batch.len());
        lock(&tallies).drain_into(&mut batch, room);
        if batch.is_empty() {
            continue;
        }
        match producer.append_all(&batch).await {
            Ok(_) => {
                batch.clear();
                pauses = None;
            }
            Err(error) => {
                let pause = pauses
                    .get_or_insert_with(|| APPEND_BACKOFF.build())
                    .next()
                    .unwrap_or(APPEND_PAUSE_MAX);
                tracing::warn!(%error, pending = batch.len(), pause_ms = pause.as_millis() as u64, "appending usage events failed; keeping them for a retry");
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
        if cancel.is_cancelled() {
            break;
        }
    }
    // Drain what is queued and try once more.
    receiver.close();
    while let Ok(event) = receiver.try_recv() {
        batch.push(event);
    }
    lock(&tallies).drain_into(&mut batch, usize::MAX);
    for chunk in batch.chunks(batch_size) {
        if let Err(error) = producer.append_all(chunk).await {
            tracing::warn!(%error, lost = batch.len(), "final usage append failed; events lost");
            break;
        }
    }
}

type OrgFn = Arc<dyn Fn(&ServiceRequest) -> Option<String> + Send + Sync>;
type RequestOrgFn = Arc<dyn Fn(&HttpRequest) -> Option<String> + Send + Sync>;

/// The organisation a request is billed to, named by the handler: insert it into the response's
/// extensions (`response.extensions_mut().insert(UsageOrg(id))`) for [`TrackUsage`] to find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageOrg(pub String);

/// Records one `api_request` usage event per request whose organisation `org` finds (e.g. from
/// a path parameter; wrap the resource or scope so it is matched), after the response, with the
/// route pattern, method and status as metadata. When `org` finds none, a [`UsageOrg`] in the
/// response's extensions names it; requests with neither pass untouched.
/// [`TrackUsage::aggregated`] counts instead (no metadata, one event per organisation per send).
/// Requests the rate limiter refused are counted as `rate_limited`, never as `api_request`
/// (wrap `TrackUsage` outside the [`crate::ratelimit::RateLimit`] so it sees them).
#[derive(Clone)]
pub struct TrackUsage {
    recorder: UsageRecorder,
    org: OrgFn,
    aggregated: bool,
    denied_org: Option<RequestOrgFn>,
}

impl fmt::Debug for TrackUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackUsage").finish_non_exhaustive()
    }
}

impl TrackUsage {
    pub fn new<F>(recorder: UsageRecorder, org: F) -> Self
    where
        F: Fn(&ServiceRequest) -> Option<String> + Send + Sync + 'static,
    {
        Self { recorder, org: Arc::new(org), aggregated: false, denied_org: None }
    }

    /// The organisation comes only from the handler's [`UsageOrg`] response extension.
    pub fn from_response(recorder: UsageRecorder) -> Self {
        Self::new(recorder, |_| None)
    }

    /// Counts requests per organisation with [`UsageRecorder::count`] instead of recording one
    /// event each: for hot routes.
    pub fn aggregated(mut self) -> Self {
        self.aggregated = true;
        self
    }

    /// Names the organisation of a request the rate limiter refused when neither `org` nor the
    /// handler (which never ran) did, e.g. from a cache of path slug → organisation id.
    pub fn org_when_denied<F>(mut self, org: F) -> Self
    where
        F: Fn(&HttpRequest) -> Option<String> + Send + Sync + 'static,
    {
        self.denied_org = Some(Arc::new(org));
        self
    }
}

impl<S, B> Transform<S, ServiceRequest> for TrackUsage
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Transform = FnService<B>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        // Shared by `Rc`: cloning the recorder per request would count its `Arc`s and channel
        // sender up and down, cache lines every worker thread fights over.
        let config = Rc::new(self.clone());
        ready(middleware::wrap(service, move |req, next| {
            Box::pin(track(Rc::clone(&config), req, next))
        }))
    }
}

/// One request: the inner service, then its usage recorded (or counted) for its organisation.
async fn track<B>(
    config: Rc<TrackUsage>,
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<B>, Error> {
    let org = (config.org)(&req);
    let recorder = &config.recorder;
    if config.aggregated {
        let response = next.call(req).await?;
        if count_denied(recorder, &response, org.as_deref(), config.denied_org.as_ref()) {
            return Ok(response);
        }
        if let Some(org_id) = org {
            recorder.count(&org_id, "api_request", 1);
        } else if let Some(UsageOrg(org_id)) = response.response().extensions().get() {
            recorder.count(org_id, "api_request", 1);
        }
        return Ok(response);
    }
    let method = req.method().to_string();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".to_owned());
    let response = next.call(req).await?;
    if count_denied(recorder, &response, org.as_deref(), config.denied_org.as_ref()) {
        return Ok(response);
    }
    let org =
        org.or_else(|| response.response().extensions().get::<UsageOrg>().map(|org| org.0.clone()));
    if let Some(org_id) = org {
        recorder.record(UsageEvent {
            org_id,
            metric: "api_request".to_owned(),
            value: 1,
            occurred_at: Some(chrono::Utc::now().to_rfc3339()),
            idempotency_key: None,
            metadata: Some(serde_json::json!({
                "path": route,
                "method": method,
                "status": response.status().as_u16(),
            })),
        });
    }
    Ok(response)
}

/// A request the rate limiter refused ([`Denied`]) is not usage: it is tallied as `rate_limited`
/// for its organisation (rate-limit hits per organisation), always aggregated so a flood
/// of refusals cannot flood the stream. True when the response was such a refusal.
fn count_denied<B>(
    recorder: &UsageRecorder,
    response: &ServiceResponse<B>,
    org: Option<&str>,
    denied_org: Option<&RequestOrgFn>,
) -> bool {
    if response.response().extensions().get::<Denied>().is_none() {
        return false;
    }
    let org = org.map(str::to_owned).or_else(|| denied_org.and_then(|f| f(response.request())));
    if let Some(org_id) = org {
        recorder.count(&org_id, "rate_limited", 1);
    }
    true
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves the tallies consistent, so a poisoned lock is used as is.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
