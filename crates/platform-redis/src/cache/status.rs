//! What a read returns (the value with its status and tier) and the counters a cache keeps.

use std::fmt;

use serde::Serialize;

/// Whether a read was served from the cache; see [`CacheStatus::as_header`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheStatus {
    /// Served from L1 or L2.
    Hit,
    /// Computed for this request (or for a concurrent request this one waited for).
    Miss,
    /// Served from L1 or L2 while a background refresh of the entry runs (early refresh).
    Stale,
}

impl CacheStatus {
    /// The `X-Cache` header value: `HIT`, `MISS` or `STALE`.
    pub fn as_header(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Stale => "STALE",
        }
    }
}

impl fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_header())
    }
}

/// Where the value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// This process's memory.
    L1,
    /// Redis.
    L2,
    /// The `compute` function.
    Origin,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::L1 => "l1",
            Tier::L2 => "l2",
            Tier::Origin => "origin",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value with how it was served.
#[derive(Debug, Clone, PartialEq)]
pub struct Cached<T> {
    pub value: T,
    pub status: CacheStatus,
    pub tier: Tier,
}

/// Counters since the cache was built (shared by clones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheStats {
    /// Reads served from L1 with status `HIT`.
    pub l1_hits: u64,
    /// Reads served from Redis with status `HIT`.
    pub l2_hits: u64,
    /// Reads that returned a computed value (including coalesced waiters and disabled cache).
    pub misses: u64,
    /// Reads served with status `STALE` while an early refresh runs.
    pub stale: u64,
    /// Redis commands that failed or were skipped because Redis was unreachable, and stored
    /// values that did not decode.
    pub errors: u64,
    /// Misses that waited for another caller's `compute` instead of running their own.
    pub coalesced: u64,
    /// Live entries in L1.
    pub l1_entries: usize,
}
