//! Background tasks: the usage-stream consumer ([`consumer`]) and the periodic flusher loop
//! ([`flush`]).

pub mod consumer;
pub mod flush;
