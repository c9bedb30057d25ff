//! Background tasks: the Stripe event stream consumer that records donations ([`donations`]), the
//! campaign lifecycle ticker ([`lifecycle`]), the retry of owed cache invalidations
//! ([`invalidations`]), the organisation outbox the shared relay publishes ([`relay`]) and the
//! organisations' rate limits kept current in every replica ([`limits`]).

pub mod donations;
pub mod invalidations;
pub mod lifecycle;
pub mod limits;
pub mod relay;
