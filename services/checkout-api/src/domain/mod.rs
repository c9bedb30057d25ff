//! Rules and types of checkout-api, and the operations the routes and workers call: checkout
//! sessions ([`sessions`], stored as [`session_store`] says, operated by [`checkout`]), the
//! product catalog ([`catalog`]), coupons and delivery ([`pricing`]), user sessions
//! ([`user_sessions`]), who is calling ([`caller`]) and Stripe payments ([`stripe`], operated by
//! [`payments`]). Nothing here speaks to Redis, Postgres or Stripe itself: `store`, `db` and
//! `upstream` do.

pub mod caller;
pub mod catalog;
pub mod checkout;
pub mod payments;
pub mod pricing;
pub mod session_store;
pub mod sessions;
pub mod stripe;
pub mod user_sessions;
