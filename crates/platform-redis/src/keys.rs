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
//! | [`Keys::stream`] | stream | entries of one [`StreamName`] (stream slot) |
//! | [`Keys::dead_letter_stream`] | stream | entries a consumer group gave up on, with the reason (stream slot) |
//! | [`Keys::invalidation_channel`] | pub/sub | [`crate::messages::Invalidation`] for every replica's in-process cache |
//! | [`Keys::campaign_updates_channel`] | pub/sub | [`crate::messages::CampaignUpdate`] of one campaign |
//! | [`Keys::stream_group_checkpoints`] | hash | consumer group → entry id it acknowledged everything up to, kept by the stream's relay ([`crate::outbox`]) (stream slot) |
//! | [`Keys::effects_marker`] | string | `1` with `PX`: the once-only effects of one id in one scope were applied ([`crate::once`]) (stream slot) |
//! | [`Keys::customer_count`] | hash | the fresh unique-customer count and its metadata (count, totalInvoices, lastUpdated, fence…), with `PX` = the refresh TTL |
//! | [`Keys::customer_count_last_good`] | hash | the same fields, kept longer (retention), so a failed refresh can keep serving the last count as stale |
//! | [`Keys::customer_count_status`] | hash | outcome of the latest refresh attempt (lastAttemptAt, lastSuccessAt, lastError, consecutiveFailures) |
//! | [`Keys::customer_ids_live`] | set | customer ids seen by the optional real-time mode (`SADD`/`SCARD`), reconciled by each full walk |
//! | [`Keys::usage_counters`] | hash | usage-meter: one organisation's counters of one month (metric → value; gauges also `<metric>:at`) (stream slot) |
//! | [`Keys::usage_events`] | list | usage-meter: newest detail events (JSON with metadata) of one organisation, capped (stream slot) |
//! | [`Keys::usage_idempotency_marks`] | set | usage-meter: `<org>\|<key>` of every producer idempotency key counted in one time bucket (unix seconds / window); read for two buckets, `EXPIRE` two windows (stream slot) |
//! | [`Keys::usage_top`] | sorted set | usage-meter: organisations scored by one metric's value in one month (stream slot) |
//! | [`Keys::usage_dirty`] | hash | usage-meter: `<org>\|<month>` → change generation, not yet copied to Postgres (stream slot) |
//! | [`Keys::usage_unflushed_marks`] | set | usage-meter: `<org>\|<key>` of the durable-metric idempotency keys counted into one organisation's month and not yet copied to Postgres (stream slot) |
//! | [`Keys::usage_flush_seq`] | string | usage-meter: sequence of flushes to Postgres (restore epoch in the high 32 bits); absent or behind Postgres = Redis lost data, recording is fenced (stream slot) |
//! | [`Keys::usage_parked`] | list | usage-meter: recording calls (JSON of their keys and arguments) queued while the counters are restored, replayed in order (stream slot) |
//! | [`Keys::usage_restore`] | string | usage-meter: random token of the replica restoring the counters from Postgres, with `PX` (stream slot) |
//! | [`Keys::stripe_customer_of_user`] | string | checkout-api: the Stripe customer id of one user (no TTL; Stripe is the source, this only saves the lookup) |
//! | [`Keys::stripe_state`] | string | checkout-api: JSON of one Stripe customer's synced subscription and payment state, written only under the [`stripe_sync_lock`] fence |
//! | [`Keys::checkout_session`] | string | checkout-api: JSON record of one checkout session, with `PX` = the sliding TTL (30 min default) |
//! | [`Keys::checkout_index`] | sorted set | checkout-api: session id → expiry (ms since epoch; may lag the key's real expiry by up to a tenth of the TTL: reads skip the `ZADD` that long), for listing and cleanup |
//! | [`Keys::checkout_stats`] | hash | checkout-api: counters totalCreated, totalCompleted, totalFailed and create/update latency sums (no TTL) |
//! | [`Keys::user_session`] | string | checkout-api: JSON of one user or guest session (kind, userId, timestamps; nothing sensitive), with `EX` = 24 h default |
//! | [`Keys::customer_ids_walk_marker`] | string | customer-count real-time mode: fence of the full walk now collecting ids into [`Keys::customer_ids_since_walk`], with `PX` past the run deadline |
//! | [`Keys::customer_ids_since_walk`] | set | customer-count real-time mode: ids received while that walk runs, unioned into the walk's result at the swap so they are not lost |
//! | [`Keys::customer_ids_staging`] | set | customer-count real-time mode: the exact ids one walk (by fence) found, renamed over [`Keys::customer_ids_live`] by the fenced write, with `PX` |
//!
//! The customer-count keys (count, last good, status, live ids, walk marker, since-walk and
//! staging sets) carry the hash tag of the [`CUSTOMER_COUNT_LOCK`] lock, so the
//! fenced write script can read the lock's fence and write the count in one slot.
//!
//! A Stripe state record carries the hash tag of its customer's [`stripe_sync_lock`], so the fenced
//! write can compare the lock's fence and write the record in one slot.
//!
//! # Redis Cluster: the stream slot
//!
//! Everything that commits together with a stream operation carries the one hash tag
//! [`STREAMS_HASH_TAG`] (`{streams}`), so it all lives in one slot, on one shard:
//! - both streams and their dead-letter streams (a handler's effects may append to the other
//!   stream: campaign-api's donation effects append a usage event inside the Stripe consumer's
//!   `MULTI`; dead-lettering is an `XADD` in the same `MULTI` as the `XACK`);
//! - the group checkpoints of a stream ([`crate::outbox`]: read with the stream in one script);
//! - the once-only effect markers ([`crate::once`], queued with the `XACK`);
//! - every usage-meter key: its recording script is queued with the usage stream's `XACK` and
//!   touches the counters of all organisations in a batch, the top sets and the dirty hash.
//!
//! Why one slot rather than one per stream or per organisation: the exactly-once guarantee needs
//! a consumer's effects to commit in the `MULTI` that acks the entry, and Redis runs a `MULTI` in
//! one slot. Splitting usage data by organisation would need one stream per slot (partitioned
//! producers and consumers); that is more machinery than the current load calls for. The limit:
//! stream traffic and usage data are served by one shard (as in centralized mode), while cache,
//! rate-limit, lock, session, customer-count and Stripe-state keys spread over the cluster. A
//! handler must queue effects only on keys of the stream slot; anything else (a cache
//! invalidation) it does outside the transaction, idempotently.
//!
//! Moving these keys into the tag changed their names but not the `v1` segment: the product is
//! not released, so there is no old data to migrate. After an upgrade from a pre-tag build,
//! unconsumed entries of the old stream keys would be left behind (drain first).

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
    /// Organisation changes and campaign creations, relayed from campaign-api's outbox, read by
    /// usage-meter.
    OrganisationEvents,
}

impl StreamName {
    /// Every stream.
    pub const ALL: [StreamName; 3] =
        [StreamName::StripeEvents, StreamName::UsageEvents, StreamName::OrganisationEvents];

    /// Whether a relay appends it from an outbox at ids the outbox chose ([`crate::outbox`]):
    /// nothing else may append to it.
    pub fn fed_by_outbox(self) -> bool {
        matches!(self, StreamName::StripeEvents | StreamName::OrganisationEvents)
    }

    /// The stream called `name`.
    pub fn parse(name: &str) -> Option<StreamName> {
        StreamName::ALL.into_iter().find(|stream| stream.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StreamName::StripeEvents => "stripe-events",
            StreamName::UsageEvents => "usage-events",
            StreamName::OrganisationEvents => "organisation-events",
        }
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Hash tag of the stream slot: the streams and every key written together with a stream
/// operation (see the module doc).
pub const STREAMS_HASH_TAG: &str = "streams";

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
        let mut entry = String::new();
        self.write_cache_entry(&mut entry, group, key);
        entry
    }

    /// [`Self::cache_entry`] appended to `out`, for hot lookups that reuse one buffer.
    pub fn write_cache_entry(&self, out: &mut String, group: &str, key: &str) {
        out.reserve(self.root.len() + group.len() + key.len() + 10);
        for part in [self.root.as_str(), ":cache:{", group, "}:", key] {
            out.push_str(part);
        }
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

    /// A stream's key, in the stream slot.
    pub fn stream(&self, stream: StreamName) -> String {
        format!("{}:stream:{{{STREAMS_HASH_TAG}}}:{stream}", self.root)
    }

    /// The dead-letter stream of `group` on `stream`, in the stream slot (it is appended to in the
    /// `MULTI` that acks the entry).
    pub fn dead_letter_stream(&self, stream: StreamName, group: &str) -> String {
        format!("{}:stream:{{{STREAMS_HASH_TAG}}}:{stream}:dead:{group}", self.root)
    }

    /// Hash of consumer group → the stream entry id up to which that group has acknowledged
    /// everything, kept by the stream's relay (webhook-ingest for the Stripe stream). A consumer
    /// whose group is gone (`NOGROUP`) recreates it at this id, so it neither skips nor replays
    /// the stream's history.
    pub fn stream_group_checkpoints(&self, stream: StreamName) -> String {
        format!("{}:stream:{{{STREAMS_HASH_TAG}}}:{stream}:checkpoints", self.root)
    }

    /// Channel on which cache invalidations are broadcast to every replica.
    pub fn invalidation_channel(&self) -> String {
        format!("{}:chan:invalidate", self.root)
    }

    /// Channel of live updates (donations, goal reached, ended) for one campaign.
    pub fn campaign_updates_channel(&self, campaign_id: &str) -> String {
        format!("{}:chan:campaign:{campaign_id}", self.root)
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
    /// `donation`, a payment intent id) were applied. In the stream slot: the effects append to a
    /// stream and are queued with a consumer's `XACK`.
    pub fn effects_marker(&self, scope: &str, id: &str) -> String {
        format!("{}:once:{{{STREAMS_HASH_TAG}}}:{scope}:{id}", self.root)
    }

    /// usage-meter: counters of organisation `org` for `month` (`YYYY-MM`), a hash of metric →
    /// value (gauges also keep `<metric>:at`, the event time of the value). Like every usage key
    /// in the stream slot: the recording script runs in the usage consumer's `MULTI`.
    pub fn usage_counters(&self, org: &str, month: &str) -> String {
        format!("{}:usage:{{{STREAMS_HASH_TAG}}}:org:{org}:{month}", self.root)
    }

    /// usage-meter: capped list of the organisation's newest detail events (JSON).
    pub fn usage_events(&self, org: &str) -> String {
        format!("{}:usage:{{{STREAMS_HASH_TAG}}}:org:{org}:events", self.root)
    }

    /// usage-meter: set of `<org>|<key>`, the producer idempotency keys counted during time
    /// bucket `bucket` (unix seconds / idempotency window). One set per bucket for all
    /// organisations, so a batch checks and marks all its keys with one command per set.
    pub fn usage_idempotency_marks(&self, bucket: u64) -> String {
        format!("{}:usage:{{{STREAMS_HASH_TAG}}}:idem:{bucket}", self.root)
    }

    /// usage-meter: sorted set of organisations scored by `metric` in `month` (top consumers).
    pub fn usage_top(&self, metric: &str, month: &str) -> String {
        format!("{}:usage:{{{STREAMS_HASH_TAG}}}:top:{metric}:{month}", self.root)
    }

    /// usage-meter: hash of `<org>|<month>` → change generation, for counters changed since their
    /// last copy to Postgres.
    pub fn usage_dirty(&self) -> String {
        format!("{}:usage:{{{STREAMS_HASH_TAG}}}:dirty", self.root)
    }

    /// usage-meter: set of `<org>|<key>`, the idempotency keys of durable metrics counted into
    /// `org`'s `month` since that month's last copy to Postgres (copied with its counters).
    pub fn usage_unflushed_marks(&self, org: &str, month: &str) -> String {
        format!("{}:usage:{{{STREAMS_HASH_TAG}}}:org:{org}:{month}:unflushed-marks", self.root)
    }

    /// usage-meter: the flush sequence (`epoch << 32 | flushes`); Postgres keeps the last one
    /// it committed, so a missing or smaller value here means Redis lost data.
    pub fn usage_flush_seq(&self) -> String {
        format!("{}:usage:{{{STREAMS_HASH_TAG}}}:flush-seq", self.root)
    }

    /// usage-meter: list of recording calls parked while the counters are being restored.
    pub fn usage_parked(&self) -> String {
        format!("{}:usage:{{{STREAMS_HASH_TAG}}}:parked", self.root)
    }

    /// usage-meter: owner token of the restore from Postgres in progress (a lease).
    pub fn usage_restore(&self) -> String {
        format!("{}:usage:{{{STREAMS_HASH_TAG}}}:restore", self.root)
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

    /// checkout-api: one checkout session. The checkout keys share the tag `{checkout}` because
    /// one script reads or writes a session together with the index and the statistics; in cluster
    /// mode they all live on one shard.
    pub fn checkout_session(&self, id: &str) -> String {
        format!("{}:checkout:{{checkout}}:session:{id}", self.root)
    }

    /// checkout-api: sorted set of session ids scored by expiry in ms (same slot as the sessions).
    pub fn checkout_index(&self) -> String {
        format!("{}:checkout:{{checkout}}:index", self.root)
    }

    /// checkout-api: hash of checkout counters (same slot as the sessions).
    pub fn checkout_stats(&self) -> String {
        format!("{}:checkout:{{checkout}}:stats", self.root)
    }

    /// checkout-api: one user or guest session, by its random session id (the cookie value).
    pub fn user_session(&self, id: &str) -> String {
        format!("{}:user-session:{id}", self.root)
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
        assert_eq!(keys.stream(StreamName::StripeEvents), "app:v1:stream:{streams}:stripe-events");
        assert_eq!(
            keys.dead_letter_stream(StreamName::UsageEvents, "meter"),
            "app:v1:stream:{streams}:usage-events:dead:meter"
        );
        assert_eq!(keys.invalidation_channel(), "app:v1:chan:invalidate");
        assert_eq!(keys.campaign_updates_channel("9"), "app:v1:chan:campaign:9");
        assert_eq!(
            keys.stream_group_checkpoints(StreamName::StripeEvents),
            "app:v1:stream:{streams}:stripe-events:checkpoints"
        );
        assert_eq!(keys.effects_marker("donation", "pi_1"), "app:v1:once:{streams}:donation:pi_1");
        assert_eq!(keys.customer_count(), "app:v1:simpro:{customer-count}:count");
        assert_eq!(
            keys.customer_count_last_good(),
            "app:v1:simpro:{customer-count}:count:last-good"
        );
        assert_eq!(keys.customer_count_status(), "app:v1:simpro:{customer-count}:status");
        assert_eq!(keys.customer_ids_live(), "app:v1:simpro:{customer-count}:ids");
        assert_eq!(keys.lock(CUSTOMER_COUNT_LOCK), "app:v1:lock:{customer-count}");
        assert_eq!(keys.usage_counters("o1", "2026-11"), "app:v1:usage:{streams}:org:o1:2026-11");
        assert_eq!(keys.usage_events("o1"), "app:v1:usage:{streams}:org:o1:events");
        assert_eq!(keys.usage_idempotency_marks(29_123), "app:v1:usage:{streams}:idem:29123");
        assert_eq!(
            keys.usage_top("sms_sent", "2026-11"),
            "app:v1:usage:{streams}:top:sms_sent:2026-11"
        );
        assert_eq!(keys.usage_dirty(), "app:v1:usage:{streams}:dirty");
        assert_eq!(
            keys.usage_unflushed_marks("o1", "2026-11"),
            "app:v1:usage:{streams}:org:o1:2026-11:unflushed-marks"
        );
        assert_eq!(keys.usage_flush_seq(), "app:v1:usage:{streams}:flush-seq");
        assert_eq!(keys.usage_parked(), "app:v1:usage:{streams}:parked");
        assert_eq!(keys.usage_restore(), "app:v1:usage:{streams}:restore");
        assert_eq!(keys.stripe_customer_of_user("u1"), "app:v1:stripe:user:u1:customer");
        assert_eq!(keys.stripe_state("cus_1"), "app:v1:stripe:{stripe-sync:cus_1}:state");
        assert_eq!(
            keys.lock_fence(&stripe_sync_lock("cus_1")),
            "app:v1:lock:{stripe-sync:cus_1}:fence"
        );
        assert_eq!(keys.lock(&stripe_customer_lock("u1")), "app:v1:lock:{stripe-customer:u1}");
        assert_eq!(keys.checkout_session("s1"), "app:v1:checkout:{checkout}:session:s1");
        assert_eq!(keys.checkout_index(), "app:v1:checkout:{checkout}:index");
        assert_eq!(keys.checkout_stats(), "app:v1:checkout:{checkout}:stats");
        assert_eq!(keys.user_session("abc"), "app:v1:user-session:abc");
    }

    #[test]
    fn keys_written_together_share_one_hash_slot() {
        let keys = Keys::new("app");
        let slot = |key: String| fred::util::redis_keyslot(key.as_bytes());
        let stream_slot = slot(keys.stream(StreamName::StripeEvents));
        for key in [
            keys.stream(StreamName::UsageEvents),
            keys.stream(StreamName::OrganisationEvents),
            keys.dead_letter_stream(StreamName::StripeEvents, "campaign-api"),
            keys.dead_letter_stream(StreamName::UsageEvents, "usage-meter"),
            keys.stream_group_checkpoints(StreamName::StripeEvents),
            keys.effects_marker("donation", "pi_1"),
            keys.usage_counters("o1", "2026-11"),
            keys.usage_events("o2"),
            keys.usage_idempotency_marks(7),
            keys.usage_top("sms_sent", "2026-11"),
            keys.usage_dirty(),
            keys.usage_unflushed_marks("o1", "2026-11"),
            keys.usage_flush_seq(),
            keys.usage_parked(),
            keys.usage_restore(),
        ] {
            assert_eq!(slot(key.clone()), stream_slot, "{key} is not in the stream slot");
        }
        let pairs = [
            (keys.cache_entry("org:1", "active"), keys.cache_group_members("org:1")),
            (keys.rate_limit_window("api", "ip", 7), keys.rate_limit_window("api", "ip", 6)),
            (keys.lock("job"), keys.lock_fence("job")),
            (keys.customer_count(), keys.lock_fence(CUSTOMER_COUNT_LOCK)),
            (keys.customer_count_last_good(), keys.customer_count_status()),
            (keys.stripe_state("cus_1"), keys.lock_fence(&stripe_sync_lock("cus_1"))),
            (keys.checkout_session("s1"), keys.checkout_index()),
            (keys.checkout_index(), keys.checkout_stats()),
        ];
        for (a, b) in pairs {
            assert_eq!(slot(a.clone()), slot(b.clone()), "{a} and {b} are in different slots");
        }
    }

    #[test]
    fn customer_id_set_keys_share_the_customer_count_hash_tag() {
        let keys = Keys::new("app");
        assert_eq!(keys.customer_ids_walk_marker(), "app:v1:simpro:{customer-count}:ids:walk");
        assert_eq!(keys.customer_ids_since_walk(), "app:v1:simpro:{customer-count}:ids:since-walk");
        assert_eq!(keys.customer_ids_staging(7), "app:v1:simpro:{customer-count}:ids:staging:7");
    }
}
