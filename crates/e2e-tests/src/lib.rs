//! Cross-service end-to-end tests live in `tests/`; this library is empty (a package needs a
//! target, and the tests need nothing shared beyond `platform-testing`).
//!
//! - `tests/trace.rs`: one donation webhook is one trace through webhook-ingest, the Stripe event
//!   stream, campaign-api, the usage stream and usage-meter.
//! - `tests/durability.rs`: donations acknowledged by webhook-ingest survive Redis losing
//!   everything or the tail after its last snapshot, and are applied and counted once.
//! - `tests/tenant_tokens.rs`: a tenant token minted by campaign-api opens usage-meter's reads of
//!   that organisation only.
