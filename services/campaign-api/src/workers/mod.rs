//! Background tasks: the Stripe event stream consumer that records donations ([`donations`]), the
//! campaign lifecycle ticker ([`lifecycle`]), the retry of owed cache invalidations
//! ([`invalidations`]) and the organisation outbox the shared relay publishes ([`relay`]).

pub mod donations;
pub mod invalidations;
pub mod lifecycle;
pub mod relay;
