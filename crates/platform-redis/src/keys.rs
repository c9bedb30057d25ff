//! Every Redis key, pub/sub channel and stream name the platform uses: the only place one is spelled.
//!
//! Layout: `<prefix>:v1:<area>:…`. The prefix is configurable (`redis.key_prefix`, one per
//! deployment or per test); `v1` is the schema version, bumped when a value's shape changes so old
//! and new code never read each other's data during a rollout. Parts in `{braces}` are Redis Cluster
//! hash tags: every key that one script or MULTI/EXEC touches carries the same tag, so they hash to
//! one slot.
//!
//! | builder | type | holds |
//! |---|---|---|
//! | [`Keys::cache_entry`] | string | JSON envelope of one cached value (value, computed-at, TTL), with `PX` |
//! | [`Keys::cache_group_members`] | set | the entry keys of one invalidation group, for group deletes without `KEYS` |
//! | [`Keys::rate_limit_window`] | string | request count of one fixed window (two are read for the sliding estimate) |
//! | [`Keys::lock`] | string | random owner token of the lock holder, with `PX` |
//! | [`Keys::lock_fence`] | string | monotonically increasing fencing number for that lock |
//! | [`Keys::stream`] | stream | entries of one [`StreamName`] |
//! | [`Keys::dead_letter_stream`] | stream | entries a consumer group gave up on, with the reason |
//! | [`Keys::invalidation_channel`] | pub/sub | [`crate::messages::Invalidation`] for every replica's in-process cache |
//! | [`Keys::campaign_updates_channel`] | pub/sub | [`crate::messages::CampaignUpdate`] of one campaign |
//! | [`Keys::webhook_dedup`] | string | dedup marker of one Stripe event id: `processing:<token>` (`PX` short) then `done:<stream entry id>` (`PX` past Stripe's 3-day retry window); see [`crate::idempotency`] |
//! | [`Keys::effects_marker`] | string | `1` with `PX`: the once-only effects of one id in one scope were applied ([`crate::once`]) |
//! | [`Keys::customer_count`] | hash | the fresh unique-customer count and its metadata (count, totalInvoices, lastUpdated, fence…), with `PX` = the refresh TTL |
//! | [`Keys::customer_count_last_good`] | hash | the same fields, kept longer (retention), so a failed refresh can keep serving the last count as stale |
//! | [`Keys::customer_count_status`] | hash | outcome of the latest refresh attempt (lastAttemptAt, lastSuccessAt, lastError, consecutiveFailures) |
//! | [`Keys::customer_ids_live`] | set | customer ids seen by the optional real-time mode (`SADD`/`SCARD`), reconciled by each full walk |
//! | [`Keys::usage_counters`] | hash | usage-meter: one organisation's counters of one month (metric → value; gauges also `<metric>:at`) |
//! | [`Keys::usage_events`] | list | usage-meter: newest detail events (JSON with metadata) of one organisation, capped |
//! | [`Keys::usage_idempotency`] | string | usage-meter: marks a producer's idempotency key as counted, with `EX` = its window |
//! | [`Keys::usage_top`] | sorted set | usage-meter: organisations scored by one metric's value in one month |
//! | [`Keys::usage_dirty`] | hash | usage-meter: `<org>\|<month>` → change generation, not yet copied to Postgres |
//! | [`Keys::stripe_customer_of_user`] | string | checkout-api: the Stripe customer id of one user (no TTL; Stripe is the source, this only saves the lookup) |
//! | [`Keys::stripe_state`] | string | checkout-api: JSON of one Stripe customer's synced subscription and payment state, written only under the [`stripe_sync_lock`] fence |
//! | [`Keys::customer_ids_walk_marker`] | string | customer-count real-time mode: fence of the full walk now collecting ids into [`Keys::customer_ids_since_walk`], with `PX` past the run deadline |
//! | [`Keys::customer_ids_since_walk`] | set | customer-count real-time mode: ids received while that walk runs, unioned into the walk's result at the swap so they are not lost |
//! | [`Keys::customer_ids_staging`] | set | customer-count real-time mode: the exact ids one walk (by fence) found, renamed over [`Keys::customer_ids_live`] by the fenced write, with `PX` |
//!
//! The four customer-count keys carry the hash tag of the [`CUSTOMER_COUNT_LOCK`] lock, so the
//! fenced write script can read the lock's fence and write the count in one slot.
//!
//! A Stripe state record carries the hash tag of its customer's [`stripe_sync_lock`], so the fenced
//! write can compare the lock's fence and write the record in one slot.
//!
//! The usage keys of one organisation share the hash tag `{<org>}`. The recording script also
//! touches the (global) top-consumer sets and dirty hash and runs inside the stream consumer's
//! `MULTI` with the `XACK`, so like [`crate::streams`] it assumes centralized mode (or a single
//! shard): in cluster mode these keys are in different slots.

use std::fmt;

/// Version segment of every key; see the module doc.
pub const SCHEMA_VERSION: &str = "v1";

/// The streams the services exchange events on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamName {
    /// Verified Stripe events, appended by webhook-ingest, read by campaign-api and checkout-api.
    StripeEvents,
    /// Usage events, appended by every service, read by usage-meter.
    UsageEvents,
}

impl StreamName {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamName::StripeEvents => "stripe-events",
            StreamName::UsageEvents => "usage-events",
        }
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Name of the lock taken by a customer-count refresh; the customer-count keys share its hash tag.
pub const CUSTOMER_COUNT_LOCK: &str = "customer-count";

/// Name of the lock held while one Stripe customer's state is fetched and written (checkout-api);
/// [`Keys::stripe_state`] shares its hash tag.
pub fn stripe_sync_lock(customer_id: &str) -> String {
    format!("stripe-sync:{customer_id}")
}

/// Name of the lock held while the Stripe customer of one user is looked up or created
/// (checkout-api), so concurrent checkouts of a new user create one customer.
pub fn stripe_customer_lock(user_id: &str) -> String {
    format!("stripe-customer:{user_id}")
}

/// Builds keys under one prefix. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    root: String,
}

impl Keys {
    /// `prefix` is used as given (e.g. `platform`, or a per-test prefix).
    pub fn new(prefix: impl AsRef<str>) -> Self {
        Self { root: format!("{}:{SCHEMA_VERSION}", prefix.as_ref()) }
    }

    /// `<prefix>:v1`, the start of every key; useful for `SCAN MATCH` in admin tools.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// One cached value. `group` is the invalidation group (e.g. `org:42`), used as hash tag so
    /// the entry and its group's member set live in one slot.
    pub fn cache_entry(&self, group: &str, key: &str) -> String {
        format!("{}:cache:{{{group}}}:{key}", self.root)
    }

    /// Set of the entry keys written in `group`; deleting the group deletes them.
    pub fn cache_group_members(&self, group: &str) -> String {
        format!("{}:cache:{{{group}}}:__members", self.root)
    }

    /// Counter for one fixed window of a rate-limit policy and identifier. The hash tag is the
    /// policy and identifier, so the current and previous window hash to one slot.
    pub fn rate_limit_window(&self, policy: &str, identifier: &str, window_index: u64) -> String {
        format!("{}:rl:{{{policy}:{identifier}}}:{window_index}", self.root)
    }

    /// The lock named `name`; holds the owner token.
    pub fn lock(&self, name: &str) -> String {
        format!("{}:lock:{{{name}}}", self.root)
    }

    /// The fencing counter of the lock named `name` (same slot as the lock).
    pub fn lock_fence(&self, name: &str) -> String {
        format!("{}:lock:{{{name}}}:fence", self.root)
    }

    /// A stream's key.
    pub fn stream(&self, stream: StreamName) -> String {
        format!("{}:stream:{stream}", self.root)
    }

    /// The dead-letter stream of `group` on `stream`.
    pub fn dead_letter_stream(&self, stream: StreamName, group: &str) -> String {
        format!("{}:stream:{stream}:dead:{group}", self.root)
    }

    /// Channel on which cache invalidations are broadcast to every replica.
    pub fn invalidation_channel(&self) -> String {
        format!("{}:chan:invalidate", self.root)
    }

    /// Channel of live updates (donations, goal reached, ended) for one campaign.
    pub fn campaign_updates_channel(&self, campaign_id: &str) -> String {
        format!("{}:chan:campaign:{campaign_id}", self.root)
    }

    /// Dedup marker of one Stripe webhook event id (webhook-ingest). No hash tag: the script that
    /// sets it to `done` also appends to the stream, which has none either (centralized Redis, as
    /// [`crate::streams`] assumes).
    pub fn webhook_dedup(&self, event_id: &str) -> String {
        format!("{}:webhook:dedup:{event_id}", self.root)
    }

    /// The fresh unique-customer count (hash, expires with the refresh TTL).
    pub fn customer_count(&self) -> String {
        format!("{}:simpro:{{{CUSTOMER_COUNT_LOCK}}}:count", self.root)
    }

    /// The last successfully stored count (hash, kept for the longer retention).
    pub fn customer_count_last_good(&self) -> String {
        format!("{}:simpro:{{{CUSTOMER_COUNT_LOCK}}}:count:last-good", self.root)
    }

    /// Outcome of the latest refresh attempt, shared by every replica (hash).
    pub fn customer_count_status(&self) -> String {
        format!("{}:simpro:{{{CUSTOMER_COUNT_LOCK}}}:status", self.root)
    }

    /// Customer ids seen by the real-time mode (set).
    pub fn customer_ids_live(&self) -> String {
        format!("{}:simpro:{{{CUSTOMER_COUNT_LOCK}}}:ids", self.root)
    }

    /// Marker that the once-only effects ([`crate::once::OnceEffects`]) of `id` in `scope` (e.g.
    /// `donation`, a payment intent id) were applied.
    pub fn effects_marker(&self, scope: &str, id: &str) -> String {
        format!("{}:once:{{{scope}:{id}}}", self.root)
    }

    /// usage-meter: counters of organisation `org` for `month` (`YYYY-MM`), a hash of metric →
    /// value (gauges also keep `<metric>:at`, the event time of the value). Tagged by the org.
    pub fn usage_counters(&self, org: &str, month: &str) -> String {
        format!("{}:usage:{{{org}}}:{month}", self.root)
    }

    /// usage-meter: capped list of the organisation's newest detail events (JSON).
    pub fn usage_events(&self, org: &str) -> String {
        format!("{}:usage:{{{org}}}:events", self.root)
    }

    /// usage-meter: marker that the producer idempotency key `key` of `org` was counted; it
    /// expires after the idempotency window. Scoped per organisation (same tag as its counters).
    pub fn usage_idempotency(&self, org: &str, key: &str) -> String {
        format!("{}:usage:{{{org}}}:idem:{key}", self.root)
    }

    /// usage-meter: sorted set of organisations scored by `metric` in `month` (top consumers).
    pub fn usage_top(&self, metric: &str, month: &str) -> String {
        format!("{}:usage:top:{metric}:{month}", self.root)
    }

    /// usage-meter: hash of `<org>|<month>` → change generation, for counters changed since their
    /// last copy to Postgres.
    pub fn usage_dirty(&self) -> String {
        format!("{}:usage:dirty", self.root)
    }

    /// checkout-api: the Stripe customer id of user `user_id`.
    pub fn stripe_customer_of_user(&self, user_id: &str) -> String {
        format!("{}:stripe:user:{user_id}:customer", self.root)
    }

    /// checkout-api: the synced state record of Stripe customer `customer_id`. Tagged like
    /// [`stripe_sync_lock`] of that customer.
    pub fn stripe_state(&self, customer_id: &str) -> String {
        format!("{}:stripe:{{{}}}:state", self.root, stripe_sync_lock(customer_id))
    }

    /// customer-count real-time mode: the fence of the full walk currently collecting the ids
    /// received meanwhile (string, expires). Same hash tag as the count and the lock.
    pub fn customer_ids_walk_marker(&self) -> String {
        format!("{}:simpro:{{{CUSTOMER_COUNT_LOCK}}}:ids:walk", self.root)
    }

    /// customer-count real-time mode: ids received while the marked walk runs (set), so the
    /// walk's swap of the live set keeps them.
    pub fn customer_ids_since_walk(&self) -> String {
        format!("{}:simpro:{{{CUSTOMER_COUNT_LOCK}}}:ids:since-walk", self.root)
    }

    /// customer-count real-time mode: the ids found by the walk holding lock fence `fence` (set),
    /// one per walk so an overtaken walk never writes into a newer one's set.
    pub fn customer_ids_staging(&self, fence: u64) -> String {
        format!("{}:simpro:{{{CUSTOMER_COUNT_LOCK}}}:ids:staging:{fence}", self.root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_prefix_version_and_hash_tags() {
        let keys = Keys::new("app");
        assert_eq!(keys.cache_entry("org:1", "active"), "app:v1:cache:{org:1}:active");
        assert_eq!(keys.cache_group_members("org:1"), "app:v1:cache:{org:1}:__members");
        assert_eq!(keys.rate_limit_window("api", "1.2.3.4", 7), "app:v1:rl:{api:1.2.3.4}:7");
        assert_eq!(keys.lock("refresh"), "app:v1:lock:{refresh}");
        assert_eq!(keys.lock_fence("refresh"), "app:v1:lock:{refresh}:fence");
        assert_eq!(keys.stream(StreamName::StripeEvents), "app:v1:stream:stripe-events");
        assert_eq!(
            keys.dead_letter_stream(StreamName::UsageEvents, "meter"),
            "app:v1:stream:usage-events:dead:meter"
        );
        assert_eq!(keys.invalidation_channel(), "app:v1:chan:invalidate");
        assert_eq!(keys.campaign_updates_channel("9"), "app:v1:chan:campaign:9");
        assert_eq!(keys.webhook_dedup("evt_1"), "app:v1:webhook:dedup:evt_1");
        assert_eq!(keys.customer_count(), "app:v1:simpro:{customer-count}:count");
        assert_eq!(
            keys.customer_count_last_good(),
            "app:v1:simpro:{customer-count}:count:last-good"
        );
        assert_eq!(keys.customer_count_status(), "app:v1:simpro:{customer-count}:status");
        assert_eq!(keys.customer_ids_live(), "app:v1:simpro:{customer-count}:ids");
        assert_eq!(keys.lock(CUSTOMER_COUNT_LOCK), "app:v1:lock:{customer-count}");
        assert_eq!(keys.usage_counters("o1", "2026-11"), "app:v1:usage:{o1}:2026-11");
        assert_eq!(keys.usage_events("o1"), "app:v1:usage:{o1}:events");
        assert_eq!(keys.usage_idempotency("o1", "k"), "app:v1:usage:{o1}:idem:k");
        assert_eq!(keys.usage_top("sms_sent", "2026-11"), "app:v1:usage:top:sms_sent:2026-11");
        assert_eq!(keys.usage_dirty(), "app:v1:usage:dirty");
        assert_eq!(keys.stripe_customer_of_user("u1"), "app:v1:stripe:user:u1:customer");
        assert_eq!(keys.stripe_state("cus_1"), "app:v1:stripe:{stripe-sync:cus_1}:state");
        assert_eq!(
            keys.lock_fence(&stripe_sync_lock("cus_1")),
            "app:v1:lock:{stripe-sync:cus_1}:fence"
        );
        assert_eq!(keys.lock(&stripe_customer_lock("u1")), "app:v1:lock:{stripe-customer:u1}");
    }

    #[test]
    fn customer_id_set_keys_share_the_customer_count_hash_tag() {
        let keys = Keys::new("app");
        assert_eq!(keys.customer_ids_walk_marker(), "app:v1:simpro:{customer-count}:ids:walk");
        assert_eq!(keys.customer_ids_since_walk(), "app:v1:simpro:{customer-count}:ids:since-walk");
        assert_eq!(keys.customer_ids_staging(7), "app:v1:simpro:{customer-count}:ids:staging:7");
    }
}
