//! The cached reads of campaign-api (active list per organisation, stats per campaign) on the
//! shared two-tier cache, and their invalidation.
//!
//! Cache layout: one invalidation group per organisation, `org:<slug>`, holding the `active`
//! list and every `stats:<campaignId>` of its campaigns, so one `invalidate_group` after a write
//! drops all of them in Redis and in every replica's L1. The slug (immutable) names the group
//! rather than the id so the public route needs no Postgres lookup to find it. The stats route
//! finds a campaign's group through `campaign-org` → `<campaignId>` (the slug; a campaign never
//! changes organisation), itself cached.
//!
//! An invalidation that fails because Redis is unreachable is remembered and retried by
//! `workers::invalidations` until it succeeds, so an L2 entry written before the outage cannot
//! outlive a write made during it (L1 copies are cleared by every replica when its pub/sub
//! connection comes back).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::header::HeaderValue;
use chrono::Utc;
use platform_redis::cache::{Cache, Cached, JsonBytes};
use prometheus_client::metrics::counter::Counter;
use sqlx::PgPool;
use uuid::Uuid;

use crate::db;
use crate::domain::{ActivePage, CampaignStats, CampaignView, Slug};
use crate::error::ApiError;

/// The group that holds `campaignId → org slug`.
const CAMPAIGN_ORG_GROUP: &str = "campaign-org";
/// Life of a `campaignId → slug` entry; the mapping never changes.
const CAMPAIGN_ORG_TTL: Duration = Duration::from_secs(24 * 3600);

/// Cached reads and invalidation. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Pages {
    cache: Cache,
    db: PgPool,
    ttl: Duration,
    /// `Cache-Control` of cached reads, built once.
    cache_control: HeaderValue,
    pending: Arc<Mutex<BTreeSet<String>>>,
    /// Page computations that went to Postgres (misses that coalesced share one).
    computes: Counter,
}

/// The invalidation group of an organisation.
pub fn org_group(slug: &str) -> String {
    ["org:", slug].concat()
}

impl Pages {
    pub fn new(cache: Cache, db: PgPool, ttl: Duration) -> Self {
        // Static, so cloning it per response touches no reference count shared between worker
        // threads; one small string per `Pages`, which a process builds once.
        let cache_control: &'static str =
            Box::leak(format!("public, max-age={}", ttl.as_secs()).into_boxed_str());
        let cache_control = HeaderValue::from_static(cache_control);
        Self {
            cache,
            db,
            ttl,
            cache_control,
            pending: Arc::default(),
            computes: Counter::default(),
        }
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Counts computations from Postgres (`campaign_cache_computes`).
    pub fn computes(&self) -> Counter {
        self.computes.clone()
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// `Cache-Control: public, max-age=<ttl>` for cached reads.
    pub fn cache_control(&self) -> HeaderValue {
        self.cache_control.clone()
    }

    /// The active campaigns of `slug` (`org_id: None` when no such organisation).
    pub async fn active(&self, slug: &Slug) -> Result<Cached<ActivePage>, ApiError> {
        let group = org_group(slug.as_str());
        if let Some(hit) = self.cache.fresh_l1_hit(&group, "active", ActivePage::copied) {
            return Ok(hit);
        }
        let db = self.db.clone();
        let owned = slug.clone();
        let computes = self.computes.clone();
        self.cache
            .get_or_compute(&group, "active", self.ttl, move || async move {
                computes.inc();
                let Some(org_id) = db::organisation_id(&db, &owned).await? else {
                    return Ok(ActivePage { org_id: None, campaigns: body(&[])? });
                };
                let rows = db::active_campaigns(&db, org_id, Utc::now()).await?;
                let campaigns: Vec<CampaignView> = rows.iter().map(CampaignView::from).collect();
                Ok::<_, ApiError>(ActivePage { org_id: Some(org_id), campaigns: body(&campaigns)? })
            })
            .await
    }

    /// The organisation id behind `slug` if this replica's L1 holds its active page: no I/O,
    /// for metering requests the rate limiter refused before the handler could look it up (an
    /// organisation hot enough to be limited is in L1).
    pub fn cached_org_id(&self, slug: &str) -> Option<Uuid> {
        self.cache.peek::<ActivePage>(&org_group(slug), "active")?.org_id
    }

    /// The stats of a campaign; [`ApiError::CampaignNotFound`] for unknown or deleted ones.
    pub async fn stats(&self, id: Uuid) -> Result<Cached<CampaignStats>, ApiError> {
        let db = self.db.clone();
        let slug = self
            .cache
            .get_or_compute(
                CAMPAIGN_ORG_GROUP,
                &id.to_string(),
                CAMPAIGN_ORG_TTL,
                move || async move { Ok::<_, ApiError>(db::campaign_org_slug(&db, id).await?) },
            )
            .await?
            .value
            .ok_or(ApiError::CampaignNotFound)?;
        let db = self.db.clone();
        let computes = self.computes.clone();
        let cached = self
            .cache
            .get_or_compute(
                &org_group(&slug),
                &format!("stats:{id}"),
                self.ttl,
                move || async move {
                    computes.inc();
                    let row = db::campaign(&db, id).await?;
                    Ok::<_, ApiError>(row.as_ref().map(CampaignStats::from))
                },
            )
            .await?;
        match cached.value {
            Some(value) => Ok(Cached { value, status: cached.status, tier: cached.tier }),
            None => Err(ApiError::CampaignNotFound),
        }
    }

    /// Drops the organisation's active list and campaign stats in Redis and every replica's L1.
    /// When Redis is unreachable the local L1 is still dropped and the Redis part is retried in
    /// the background; the caller's write stands either way.
    pub async fn invalidate_org(&self, slug: &str) {
        match self.cache.invalidate_group(&org_group(slug)).await {
            Ok(deleted) => tracing::debug!(slug, deleted, "organisation cache invalidated"),
            Err(error) => {
                tracing::warn!(slug, %error, "cache invalidation failed; retrying in the background");
                lock(&self.pending).insert(slug.to_owned());
            }
        }
    }

    /// Organisations whose invalidation is still owed.
    pub fn pending_invalidations(&self) -> usize {
        lock(&self.pending).len()
    }

    /// Retries every owed invalidation once; those still failing stay owed.
    pub async fn retry_owed_invalidations(&self) {
        let owed: Vec<String> = std::mem::take(&mut *lock(&self.pending)).into_iter().collect();
        for slug in owed {
            if let Err(error) = self.cache.invalidate_group(&org_group(&slug)).await {
                tracing::debug!(slug, %error, "cache invalidation still failing");
                lock(&self.pending).insert(slug);
            } else {
                tracing::info!(slug, "owed cache invalidation done");
            }
        }
    }
}

/// The list as the JSON body the public route sends.
fn body(campaigns: &[CampaignView]) -> Result<JsonBytes, ApiError> {
    JsonBytes::to_json(campaigns).map_err(|error| ApiError::Internal(error.into()))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
