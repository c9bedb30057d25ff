//! Background tasks: the Stripe event stream consumer that records donations ([`donations`]), the
//! campaign lifecycle ticker ([`lifecycle`]) and the retry of owed cache invalidations
//! ([`invalidations`]).

pub mod donations;
pub mod invalidations;
pub mod lifecycle;
