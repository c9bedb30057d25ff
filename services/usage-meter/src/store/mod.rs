//! Redis access for usage: recording batches ([`record`](mod@record), running the Lua of
//! `script`), reads of counters, top lists, detail events and quota counters ([`read`]), and the
//! Redis side of the Postgres copy and of the restore after a data loss: the dirty set, the
//! flusher's and the restore's scripts ([`sync`]). The recording and read calls are re-exported
//! here.
//!
//! Keys: [`platform_redis::Keys::usage_counters`] and siblings (see the key table there).

pub mod read;
pub mod record;
mod script;
pub mod sync;

pub use read::{counter, recent_events, top, usage};
pub use record::{Fence, RecordError, Retention, queue_record, record, record_at, replay_parked};
