//! Background tasks: the usage-stream consumer ([`consumer`]), the organisation-stream consumer
//! ([`organisations`]) and the periodic flusher loop ([`flush`]).

pub mod consumer;
pub mod flush;
pub mod organisations;
