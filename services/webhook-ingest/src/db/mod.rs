//! Postgres access: the ledger of every acknowledged event, which is also the outbox of the Stripe
//! stream, with the relay's position and the groups' checkpoints ([`ledger`]), and the group
//! commit that runs concurrent deliveries' ledger inserts as one statement ([`batch`]).

pub mod batch;
pub mod ledger;
