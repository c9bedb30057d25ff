//! Rules of webhook-ingest and the operations the routes call: Stripe-Signature verification, a
//! pure function ([`signature`]), and the request path of a verified delivery: the event contract,
//! the allow-list and the ledger row that acknowledges it ([`ingest`]). Postgres is reached
//! through `db`.

pub mod ingest;
pub mod signature;
