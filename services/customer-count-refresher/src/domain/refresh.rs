//! The refresh: lock → walk → fenced store, the in-memory fallback copy, and the read views.
//!
//! One refresh at a time across replicas: the `customer-count` lock from `platform_redis::lock`
//! (owner token, compare-and-delete release), renewed every third of its TTL during the walk; if
//! the renewal reports the lock lost the walk is abandoned. The result is written with the lock's
//! fence (see `store::count`), so an overtaken refresh cannot overwrite a newer count.
//!
//! When Redis is unreachable the refresh still runs (guarded by the in-process flag only) and its
//! result lives in memory; reads then answer from that copy with `source: memory`. A failed refresh
//! leaves the stored count alone: reads keep serving it, flagged `stale`, and the failure is in the
//! shared status record, the status route and the metrics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use platform_redis::RedisClients;
use platform_redis::keys::CUSTOMER_COUNT_LOCK;
use platform_redis::lock::{Lock, LockGuard};
use platform_service::metrics::Metrics;

use crate::config::{RealtimeSettings, RefreshSettings, SimproSettings};
use crate::domain::intake::IntakeBody;
use crate::domain::schedule::CronSchedule;
use crate::error::{IntakeError, RefreshError};
use crate::metrics::RefreshMetrics;
use crate::store::count::{
    self as storage, CountRecord, LiveIds, Reconciled, RefreshStatus, WriteOutcome,
};
use crate::store::realtime::{self, IntakeOutcome};
use crate::upstream::simpro::SimproClient;
use crate::upstream::walk::{WalkResult, walk_all};

/// Where a count was stored or read from (the `storage` / `source` fields of the JSON answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Redis,
    Memory,
    None,
}

/// A successful refresh.
#[derive(Debug, Clone)]
pub struct RefreshReport {
    pub record: CountRecord,
    pub storage: Source,
    pub retries: u64,
    pub result_total: Option<u64>,
    /// Real-time mode: `SCARD` of the live set after this walk replaced it.
    pub live_count: Option<u64>,
    pub reconciled: Option<Reconciled>,
}

/// What reads see now.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub record: Option<CountRecord>,
    pub source: Source,
    /// No fresh count (TTL passed), or the latest attempt failed after this count was made.
    pub stale: bool,
    /// Remaining TTL of the fresh count.
    pub ttl: Duration,
    pub status: RefreshStatus,
    pub is_refreshing: bool,
    /// Real-time mode: the live set's `SCARD`, once a walk has reconciled it (Redis reads only).
    pub live_count: Option<u64>,
}

#[derive(Debug, Default)]
struct MemoryCopy {
    record: Option<CountRecord>,
    status: RefreshStatus,
}

/// The refresh coordinator shared by the routes, the scheduler and `refresh-once`.
#[derive(Debug)]
pub struct Refresher {
    redis: RedisClients,
    client: SimproClient,
    simpro: SimproSettings,
    settings: RefreshSettings,
    realtime: RealtimeSettings,
    schedule: CronSchedule,
    memory: Mutex<MemoryCopy>,
    running: AtomicBool,
    metrics: RefreshMetrics,
}

/// Clears the in-process running flag however the refresh ends.
struct RunningFlag<'a>(&'a AtomicBool);
impl Drop for RunningFlag<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

impl Refresher {
    pub fn new(
        redis: RedisClients,
        simpro: SimproSettings,
        settings: RefreshSettings,
        realtime: RealtimeSettings,
        metrics: &Metrics,
    ) -> Result<Self, RefreshError> {
        // reqwest is built without a crypto provider of its own (docs/dependencies.md).
        platform_service::telemetry::install_crypto_provider();
        let client = SimproClient::new(&simpro)?;
        let schedule = CronSchedule::parse(&settings.schedule)?;
        Ok(Self {
            redis,
            client,
            simpro,
            settings,
            realtime,
            schedule,
            memory: Mutex::new(MemoryCopy::default()),
            running: AtomicBool::new(false),
            metrics: RefreshMetrics::register(metrics),
        })
    }

    pub fn settings(&self) -> &RefreshSettings {
        &self.settings
    }

    /// The parsed `refresh.schedule`.
    pub fn schedule(&self) -> &CronSchedule {
        &self.schedule
    }

    pub fn realtime(&self) -> &RealtimeSettings {
        &self.realtime
    }

    /// The next scheduled refresh (cron tick after now), or when the current count expires if
    /// the in-process schedule is off.
    pub fn next_refresh(&self, record: Option<&CountRecord>) -> Option<DateTime<Utc>> {
        if self.settings.schedule_enabled {
            self.schedule.next_after(Utc::now())
        } else {
            let updated = DateTime::from_timestamp_millis(record?.last_updated_ms)?;
            Some(updated + self.settings.ttl())
        }
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, MemoryCopy> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one full refresh now. `InProgress` when any replica is already refreshing.
    #[tracing::instrument(name = "refresh", skip(self))]
    pub async fn refresh(&self) -> Result<RefreshReport, RefreshError> {
        if self.running.swap(true, Ordering::SeqCst) {
            return Err(RefreshError::InProgress);
        }
        let _running = RunningFlag(&self.running);
        let lock_ttl = self.settings.lock_ttl();
        let guard = match Lock::acquire(&self.redis, CUSTOMER_COUNT_LOCK, lock_ttl).await {
            Ok(Some(guard)) => Some(guard),
            Ok(None) => return Err(RefreshError::InProgress),
            Err(error) if error.is_unavailable() => {
                tracing::warn!(%error, "redis unreachable; refreshing into the in-memory copy only");
                None
            }
            Err(error) => return Err(error.into()),
        };
        let started = Instant::now();
        let started_ms = now_ms();
        if guard.is_some()
            && let Err(error) = storage::record_attempt(&self.redis, started_ms).await
        {
            tracing::warn!(%error, "could not record the refresh attempt");
        }
        self.memory().status.last_attempt_ms = Some(started_ms);

        let outcome = self.walk_and_store(guard.as_ref(), started, lock_ttl).await;
        let elapsed = started.elapsed();
        self.metrics.duration.observe(elapsed.as_secs_f64());
        if let Some(guard) = guard
            && let Err(error) = guard.release().await
        {
            tracing::warn!(%error, "could not release the refresh lock; it expires with its TTL");
        }
        match &outcome {
            Ok(report) => {
                self.metrics.last_success.set(1);
                self.metrics.last_success_timestamp.set(Utc::now().timestamp() as f64);
                self.metrics.successes.inc();
                self.metrics.invoices_walked.inc_by(report.record.total_invoices);
                self.metrics.pages_fetched.inc_by(report.record.pages);
                self.metrics.upstream_retries.inc_by(report.retries);
                self.metrics.unique_customers.set(report.record.count as i64);
                if let Some(live) = report.live_count {
                    self.metrics.live_customers.set(i64::try_from(live).unwrap_or(i64::MAX));
                }
                tracing::info!(
                    count = report.record.count,
                    invoices = report.record.total_invoices,
                    pages = report.record.pages,
                    retries = report.retries,
                    duration_ms = report.record.duration_ms,
                    storage = ?report.storage,
                    live = ?report.live_count,
                    reconciled = ?report.reconciled,
                    "customer count refreshed"
                );
            }
            Err(error) => self.record_failure(error).await,
        }
        outcome
    }

    async fn walk_and_store(
        &self,
        guard: Option<&LockGuard>,
        started: Instant,
        lock_ttl: Duration,
    ) -> Result<RefreshReport, RefreshError> {
        let fence = guard.map_or(0, LockGuard::fence);
        // Renewed until the result is stored (staging the ids of a big walk takes a while too).
        let renewal = guard.map(|guard| guard.spawn_renewal(lock_ttl / 3, lock_ttl));
        let live = match guard {
            Some(_) if self.realtime.enabled => self.begin_live(fence, lock_ttl).await,
            _ => LiveIds::Off,
        };
        let outcome = async {
            let walk = walk_all(&self.client, self.simpro.concurrency, self.simpro.run_deadline());
            let result = match &renewal {
                Some(renewal) => tokio::select! {
                    result = walk => result?,
                    () = renewal.lost() => return Err(RefreshError::LockLost),
                },
                None => walk.await?,
            };
            self.store(guard, started, result, live).await
        }
        .await;
        if live == LiveIds::Swap && outcome.as_ref().is_err() {
            realtime::abandon_walk(&self.redis, fence).await;
        }
        outcome
    }

    /// Real-time mode: marks the walk's start so ids received from now on survive its swap.
    async fn begin_live(&self, fence: u64, lock_ttl: Duration) -> LiveIds {
        let marker_ttl = self.simpro.run_deadline() + lock_ttl + Duration::from_secs(60);
        match realtime::begin_walk(&self.redis, fence, marker_ttl).await {
            Ok(()) => LiveIds::Swap,
            Err(error) => {
                tracing::warn!(%error, "could not mark the walk for the live id set; this walk will not reconcile it");
                LiveIds::Keep
            }
        }
    }

    async fn store(
        &self,
        guard: Option<&LockGuard>,
        started: Instant,
        result: WalkResult,
        mut live: LiveIds,
    ) -> Result<RefreshReport, RefreshError> {
        let fence = guard.map_or(0, LockGuard::fence);
        if live == LiveIds::Swap {
            let ttl = self.simpro.run_deadline() + self.settings.lock_ttl();
            if let Err(error) = realtime::stage(
                &self.redis,
                fence,
                &result.customer_ids,
                self.realtime.stage_chunk,
                ttl,
            )
            .await
            {
                tracing::warn!(%error, "could not stage the walked ids; the live id set is not reconciled this time");
                realtime::abandon_walk(&self.redis, fence).await;
                live = LiveIds::Keep;
            }
        }
        let record = CountRecord {
            count: result.unique_customers,
            total_invoices: result.total_invoices,
            last_updated_ms: now_ms(),
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            pages: result.pages,
            fence,
        };
        drop(result.customer_ids);
        let (storage, live_count, reconciled) = match guard {
            None => (Source::Memory, None, None),
            Some(_) => {
                match storage::write_fenced_with(
                    &self.redis,
                    &record,
                    self.settings.ttl(),
                    self.settings.retention(),
                    live,
                )
                .await
                {
                    Ok(WriteOutcome::Written { live_count, reconciled }) => {
                        (Source::Redis, live_count, reconciled)
                    }
                    Ok(WriteOutcome::Refused) => return Err(RefreshError::Superseded),
                    Err(error) => {
                        tracing::warn!(%error, "could not store the count in redis; keeping it in memory");
                        (Source::Memory, None, None)
                    }
                }
            }
        };
        if reconciled == Some(Reconciled::Merged) {
            tracing::warn!(
                fence,
                "the walk outlived its real-time marker; its ids were added to the live set, none removed"
            );
        }
        let mut memory = self.memory();
        memory.record = Some(record.clone());
        memory.status = RefreshStatus {
            last_attempt_ms: memory.status.last_attempt_ms,
            last_success_ms: Some(record.last_updated_ms),
            last_failure_ms: memory.status.last_failure_ms,
            last_error: None,
            consecutive_failures: 0,
        };
        Ok(RefreshReport {
            record,
            storage,
            retries: result.retries,
            result_total: result.result_total,
            live_count,
            reconciled,
        })
    }

    /// Real-time intake: adds the customer ids of `body`'s invoices to the live set.
    #[tracing::instrument(name = "customers.intake_ids", skip_all, fields(invoices = body.invoices.len()))]
    pub async fn intake(&self, body: &IntakeBody) -> Result<IntakeOutcome, IntakeError> {
        if !self.realtime.enabled {
            return Err(IntakeError::Disabled);
        }
        if body.invoices.len() > self.realtime.max_batch {
            return Err(IntakeError::TooManyInvoices {
                got: body.invoices.len(),
                max: self.realtime.max_batch,
            });
        }
        let ids = body.customer_ids();
        let outcome = realtime::intake(&self.redis, &ids).await?;
        self.metrics.intake_invoices.inc_by(body.invoices.len() as u64);
        self.metrics.intake_new_ids.inc_by(outcome.added);
        if outcome.seeded {
            self.metrics.live_customers.set(i64::try_from(outcome.live_count).unwrap_or(i64::MAX));
        }
        tracing::debug!(
            invoices = body.invoices.len(),
            ids = ids.len(),
            added = outcome.added,
            live = outcome.live_count,
            "invoice customers recorded"
        );
        Ok(outcome)
    }

    async fn record_failure(&self, error: &RefreshError) {
        if matches!(error, RefreshError::InProgress) {
            return;
        }
        let at = now_ms();
        let summary = error.summary();
        tracing::warn!(error = %summary, "customer count refresh failed; the previous count is still served");
        self.metrics.last_success.set(0);
        self.metrics.failures.inc();
        {
            let mut memory = self.memory();
            memory.status.last_failure_ms = Some(at);
            memory.status.last_error = Some(summary.clone());
            memory.status.consecutive_failures += 1;
        }
        if let Err(error) =
            storage::record_failure(&self.redis, at, &summary, self.settings.retention()).await
        {
            tracing::warn!(%error, "could not record the refresh failure in redis");
        }
    }

    /// What is stored now: Redis first, else the in-memory copy.
    pub async fn snapshot(&self) -> Snapshot {
        let locally_running = self.running.load(Ordering::SeqCst);
        match storage::read(&self.redis).await {
            Ok(stored) => {
                let (record, ttl, fresh) = match (stored.fresh, stored.last_good) {
                    (Some((record, ttl)), _) => (Some(record), ttl, true),
                    (None, last_good) => (last_good, Duration::ZERO, false),
                };
                let mut memory = self.memory();
                if let Some(record) = &record
                    && memory
                        .record
                        .as_ref()
                        .is_none_or(|m| m.last_updated_ms < record.last_updated_ms)
                {
                    memory.record = Some(record.clone());
                }
                if record.is_none()
                    && let Some(kept) = memory.record.clone()
                {
                    // Redis is reachable but empty (restarted without persistence, or flushed):
                    // the copy this replica holds is still the best answer until the next refresh.
                    let stale =
                        self.memory_ttl(&kept).is_zero() || failed_since(&memory.status, &kept);
                    return Snapshot {
                        ttl: self.memory_ttl(&kept),
                        record: Some(kept),
                        source: Source::Memory,
                        stale,
                        status: stored.status,
                        is_refreshing: locally_running || stored.locked,
                        live_count: None,
                    };
                }
                let stale =
                    record.as_ref().is_some_and(|r| !fresh || failed_since(&stored.status, r));
                Snapshot {
                    source: if record.is_some() { Source::Redis } else { Source::None },
                    record,
                    stale,
                    ttl,
                    status: stored.status,
                    is_refreshing: locally_running || stored.locked,
                    live_count: if self.realtime.enabled { stored.live_count } else { None },
                }
            }
            Err(error) => {
                tracing::warn!(%error, "redis unreachable; answering from the in-memory copy");
                let memory = self.memory();
                let ttl = memory.record.as_ref().map_or(Duration::ZERO, |r| self.memory_ttl(r));
                let stale = memory
                    .record
                    .as_ref()
                    .is_some_and(|r| ttl.is_zero() || failed_since(&memory.status, r));
                Snapshot {
                    source: if memory.record.is_some() { Source::Memory } else { Source::None },
                    record: memory.record.clone(),
                    stale,
                    ttl,
                    status: memory.status.clone(),
                    is_refreshing: locally_running,
                    live_count: None,
                }
            }
        }
    }

    /// What is left of the TTL of a count held in memory.
    fn memory_ttl(&self, record: &CountRecord) -> Duration {
        let age =
            Duration::from_millis(u64::try_from(now_ms() - record.last_updated_ms).unwrap_or(0));
        self.settings.ttl().saturating_sub(age)
    }

    /// Starts a refresh in the background when nothing is stored (and none is running).
    /// Returns whether one was started.
    pub async fn refresh_if_empty(self: &Arc<Self>) -> bool {
        let snapshot = self.snapshot().await;
        if snapshot.record.is_some() || snapshot.is_refreshing {
            return false;
        }
        self.spawn_refresh();
        true
    }

    /// Runs a refresh on its own task (a caller that goes away does not cancel it).
    pub fn spawn_refresh(
        self: &Arc<Self>,
    ) -> tokio::task::JoinHandle<Result<RefreshReport, RefreshError>> {
        let this = self.clone();
        tokio::spawn(async move { this.refresh().await })
    }
}

fn failed_since(status: &RefreshStatus, record: &CountRecord) -> bool {
    status.last_failure_ms.is_some_and(|failed| failed > record.last_updated_ms)
}
