//! Background tasks: the relay that moves ledger rows onto the Stripe stream and refills it after
//! Redis lost entries ([`relay`]).

pub mod relay;
