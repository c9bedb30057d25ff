//! Background tasks: the consumer of the Stripe event stream ([`stripe_events`]).

pub mod stripe_events;
