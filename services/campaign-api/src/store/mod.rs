//! Redis access: the cached page reads on the shared two-tier cache, computed from `db` on a miss,
//! and their invalidation ([`pages`]); the `campaign_ended` update on a campaign's pub/sub channel
//! ([`updates`]).

pub mod pages;
pub mod updates;
