//! Rules and types of customer-count-refresher, and the operations the routes and workers call:
//! the refresh (lock, walk, fenced store, in-memory fallback copy, read views: [`refresh`]), the
//! cron schedule with per-replica jitter ([`schedule`]) and the real-time intake's input
//! ([`intake`]). Nothing here speaks to Redis or simPRO itself: `store` and `upstream` do.

pub mod intake;
pub mod refresh;
pub mod schedule;
