//! The error type of this crate.

/// What can go wrong talking to Redis or decoding what it holds.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// The command failed or timed out, or there is no connection.
    #[error("redis command failed")]
    Command(#[from] fred::error::Error),
    /// A stored value or message could not be (de)serialised.
    #[error("could not (de)serialise a redis value")]
    Codec(#[from] serde_json::Error),
    /// The settings are unusable; the message names the setting.
    #[error("invalid redis setting: {0}")]
    Config(String),
    /// A value held in Redis is not what this code wrote there.
    #[error("unexpected redis data: {0}")]
    Unexpected(String),
}

impl RedisError {
    /// True when the error means Redis could not be reached (as opposed to a bad command or value),
    /// which is when callers switch to their fallback.
    pub fn is_unavailable(&self) -> bool {
        use fred::error::ErrorKind;
        match self {
            RedisError::Command(e) => matches!(
                e.kind(),
                ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Canceled | ErrorKind::Unknown
            ),
            _ => false,
        }
    }
}

pub type Result<T, E = RedisError> = std::result::Result<T, E>;
