//! Rate limiting: named policies, the Redis sliding-window limiter, its in-process blocked cache
//! and fallback, and the actix middleware ([`RateLimit`]) that puts it in front of routes.
//!
//! Layout: `settings` (policies and the `[rate_limit]` section), `limiter` ([`RateLimiter`]: where
//! each decision comes from), `script` (the Lua scripts it runs in Redis), `window` (the
//! arithmetic, in Lua and in Rust, and the fallback's windows), `leases` and `blocked` (what a
//! replica keeps in memory per identifier), `fallback` (the switch to deciding in process),
//! `policy` (one policy's state), `decision` (answers and counters), `organisations` (the limits
//! of known organisations under `by_organisation` policies), `middleware` ([`RateLimit`]).
//!
//! # Algorithm
//! Sliding window by the weighted two-window approximation: time is cut into fixed windows of the
//! policy's length `W`; one counter per window ([`crate::keys::Keys::rate_limit_window`], the
//! current and the previous share a hash tag), and the count "in the last `W`" is estimated as
//! `previous * (1 - elapsed / W) + current`. One Lua script (loaded once, called with `EVALSHA`,
//! reloaded on `NOSCRIPT`) reads both counters, increments the current one only when the request
//! is allowed and gives it a TTL of two windows, and answers allowed / limit / remaining / reset:
//! one round trip per decision. The exact arithmetic, shared with the fallback, is in `window`.
//!
//! Error bound: the estimate assumes the previous window's requests were spread evenly. With `e`
//! ms elapsed it differs from the true sliding count by at most `previous * max(e, W - e) / W`
//! (so by less than `limit`), and in the adversarial worst case (a full burst at the very end of
//! one window, another at the end of the next) just under `2 * limit` requests pass within one
//! interval of length `W`; a fixed window allows `2 * limit`. On evenly spread traffic it is exact,
//! and no fixed window ever admits more than `limit`.
//!
//! `reset` in a [`Decision`]: while requests remain, the time until the current fixed window
//! ends; once none remain (and on every denial), the time until the estimate has decayed enough
//! for one more request to pass, assuming no other request arrives meanwhile. The window index and
//! elapsed time come from this process's wall clock, so replicas should run NTP.
//!
//! # Organisations (per policy, `by_organisation = true`)
//! Such a policy's identifiers that are known organisations (the service calls
//! [`RateLimiter::set_organisation`] with each organisation's tier and override whenever it learns
//! them) are limited by their own allowance: the override, else `rate_limit.tiers.<tier>`, both in
//! requests per minute and scaled to the policy's window. The lookup is in process; other
//! identifiers keep the policy's `limit`. Everything below holds per identifier with its limit.
//!
//! # Leases (per policy, `lease > 0`)
//! Exact mode (`lease = 0`, the default) costs one `EVALSHA` per allowed request. A policy with
//! `lease = N` lets each replica take up to `N` tokens per identifier in one `EVALSHA` (a second
//! script, same keys and arithmetic) and spend them in memory: the grant is
//! `min(N, max(1, room / rate_limit.expected_replicas))`, where `room` is what the exact script
//! would still allow one by one right now, and it is added to the current window's count at once.
//! A lease is spent only in the fixed window it was counted in and for at most
//! `rate_limit.lease_max_age_ms` after its last grant; after that its unspent tokens are given
//! back (subtracted from the count they were added to) by the same `EVALSHA` that takes the next
//! lease.
//!
//! Exactness: every admitted request was counted in Redis, in its own fixed window, before it was
//! admitted, and Redis never grants beyond `room`; so no fixed window ever admits more than
//! `limit` across all replicas, and over any interval of length `W` the bound of exact mode holds
//! (no over-admission is added). What leases cost is the other direction: tokens held unspent by
//! one replica are counted, so another replica can be denied while up to
//! `1.5 × lease × (replicas − 1)` tokens sit elsewhere (one and a half leases each, see below;
//! until they are spent, given back at that replica's next grant, or the window passes).
//! `X-RateLimit-Remaining` on a leased decision is Redis' remaining count at the last grant plus
//! this replica's unspent tokens, i.e. the shared estimate minus what this replica spent since;
//! other replicas' spending shows at the next grant (at most `lease_max_age_ms` later). Denials
//! come from Redis (a grant of 0) and then from the blocked cache, as in exact mode; the fallback
//! is the same in both modes (a live lease is still spent while Redis is down: its tokens are
//! counted there).
//!
//! ## Refills ahead of need
//! A lease that simply ran out would make every request arriving during the next grant's round
//! trip wait for it (and each of them would take a lease of its own). So the request whose token
//! takes a lease down to half of `lease` starts the next `EVALSHA` in the background and is
//! answered at once; the grant adds to the held tokens when it lands. A busy identifier's
//! requests wait on Redis only if half a lease is spent before that grant lands. The price: a
//! replica holds up to one and a half leases. Nothing is asked ahead when Redis had no room left
//! at the last grant, in fallback, or for leases under three tokens. A lease of a past window or
//! past `lease_max_age_ms` is renewed by the request that finds it dead, as before.
//!
//! # Redis calls saved and avoided
//! - Leases: one `EVALSHA` per lease instead of per request (above).
//! - Blocked cache: once an identifier is denied, later checks for it answer from memory until
//!   its reset instant, with no Redis command. Other replicas' requests can only delay the real
//!   reset, never advance it, so the cache never blocks longer than Redis would.
//! - Fallback: when the rate-limit pool is disconnected, or a command fails because Redis cannot be
//!   reached, decisions come from the same algorithm in memory (fail-safe: still limiting, per
//!   process). The switch is logged once (warn) and so is the return (info); [`RateLimiter::mode`]
//!   reports it for the health route. While in fallback on a connection that looks up, only one
//!   probe per `fallback.probe_interval_ms` goes to Redis, so a hung server does not add a command
//!   timeout to every request.

mod blocked;
mod decision;
mod fallback;
mod leases;
mod limiter;
mod middleware;
mod organisations;
mod policy;
mod script;
mod settings;
mod window;

pub use decision::{Decision, DecisionSource, RateLimitStats, UnknownPolicy};
pub use fallback::LimiterMode;
pub use limiter::RateLimiter;
pub use middleware::{Denied, RateLimit};
pub use settings::{
    DEFAULT_POLICIES, FallbackSettings, MAX_LIMIT, MAX_WINDOW_SECS, PolicySettings,
    RateLimitSettings,
};
