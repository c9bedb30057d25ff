//! Redis access: checkout sessions (Redis first, Postgres fallback: [`sessions`]), user and guest
//! sessions (memory fallback: [`user_sessions`]), the Stripe records ([`stripe`]) and the tier
//! switch both session stores share ([`tier`]).

pub mod sessions;
pub mod stripe;
pub mod tier;
pub mod user_sessions;
