//! Redis for every service: the one place keys are spelled, the client factory, and the building
//! blocks the services share (cache-aside, rate limiter, lock, streams, pub/sub, message types).
//!
//! Start with [`RedisClients::connect`], which gives pools per role and a [`Keys`] builder; every
//! other module takes those. See each module's doc for the data structures behind its keys.
//! [`usage`] is the producer side of usage metering (buffered recorder + actix middleware).

pub mod cache;
pub mod client;
pub mod direct;
pub mod error;
pub mod keys;
pub mod lock;
pub mod lua;
pub mod messages;
mod middleware;
pub mod once;
pub mod outbox;
pub mod pubsub;
pub mod ratelimit;
pub mod streams;
pub mod stripe_event;
pub mod trace;
pub mod usage;

pub use client::{
    RedisClients, RedisEndpoint, RedisMode, RedisSettings, Role, RolePool, info_field,
};
pub use direct::{DirectConnection, Reply};
pub use error::{RedisError, Result};
pub use keys::{Keys, StreamName};

/// Re-exported so services use the same fred version and features as this crate.
pub use fred;
