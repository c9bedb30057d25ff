//! webhook-ingest
