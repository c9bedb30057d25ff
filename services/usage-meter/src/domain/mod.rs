//! Rules and types of usage-meter, and the operations the routes and workers call: metrics,
//! months, organisation ids and event validation ([`usage`]), pricing tiers and bills
//! ([`pricing`]), the organisations' plans learned from campaign-api ([`organisations`]), the
//! check-restore-flush cycle that copies counters to Postgres ([`flush`]) and
//! the restore of Redis from that copy after a data loss ([`recovery`]). Nothing here speaks to
//! Redis or Postgres itself: `store` and `db` do.

pub mod flush;
pub mod organisations;
pub mod pricing;
pub mod recovery;
pub mod usage;
