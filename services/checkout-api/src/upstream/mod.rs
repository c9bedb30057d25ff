//! Clients of external HTTP APIs: Stripe ([`stripe`]).

pub mod stripe;
