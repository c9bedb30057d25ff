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

/// Error replies that mean the server cannot serve right now rather than that the command was
/// wrong. fred reports these, like every `ERR` reply, as `ErrorKind::Unknown`.
const UNAVAILABLE_REPLIES: [&str; 7] =
    ["LOADING", "BUSY", "MASTERDOWN", "READONLY", "TRYAGAIN", "OOM", "CLUSTERDOWN"];

impl RedisError {
    /// True when the error means Redis could not be reached or cannot serve now (as opposed to a
    /// bad command or value), which is when callers switch to their fallback.
    ///
    /// An `ERR` reply (wrong arguments, a failing script, a value of the wrong shape) is a bug,
    /// not an outage: falling back on it would hide the bug behind a working fallback, so it is
    /// not "unavailable" — except `ERR max number of clients reached`, which is.
    pub fn is_unavailable(&self) -> bool {
        use fred::error::ErrorKind;
        let RedisError::Command(e) = self else {
            return false;
        };
        let reply_code = e.details().split_whitespace().next().unwrap_or("");
        match e.kind() {
            ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Canceled => true,
            ErrorKind::Cluster => reply_code == "CLUSTERDOWN",
            // fred's own failures ("Too many failed write attempts", "No response!") land here too.
            ErrorKind::Unknown if reply_code == "ERR" => {
                e.details().contains("max number of clients reached")
            }
            ErrorKind::Unknown => {
                UNAVAILABLE_REPLIES.contains(&reply_code) || !is_reply_code(reply_code)
            }
            _ => false,
        }
    }
}

/// Whether `word` looks like a Redis error code (`WRONGTYPE`, `NOSCRIPT`, …): all capitals.
/// Codes outside [`UNAVAILABLE_REPLIES`] are command errors; anything else is fred's own text.
fn is_reply_code(word: &str) -> bool {
    !word.is_empty() && word.chars().all(|c| c.is_ascii_uppercase())
}

pub type Result<T, E = RedisError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use fred::error::{Error, ErrorKind};

    use super::RedisError;

    fn unavailable(kind: ErrorKind, details: &'static str) -> bool {
        RedisError::Command(Error::new(kind, details)).is_unavailable()
    }

    #[test]
    fn connection_failures_and_busy_servers_are_unavailable() {
        assert!(unavailable(ErrorKind::IO, "Connection refused"));
        assert!(unavailable(ErrorKind::Timeout, "Request timed out."));
        assert!(unavailable(ErrorKind::Canceled, "Canceled."));
        assert!(unavailable(ErrorKind::Unknown, "Too many failed write attempts."));
        assert!(unavailable(ErrorKind::Unknown, "No response!"));
        assert!(unavailable(ErrorKind::Unknown, "LOADING Redis is loading the dataset in memory"));
        assert!(unavailable(ErrorKind::Unknown, "BUSY Redis is busy running a script."));
        assert!(unavailable(
            ErrorKind::Unknown,
            "READONLY You can't write against a read only replica."
        ));
        assert!(unavailable(
            ErrorKind::Unknown,
            "OOM command not allowed when used memory > 'maxmemory'."
        ));
        assert!(unavailable(ErrorKind::Unknown, "ERR max number of clients reached"));
        assert!(unavailable(ErrorKind::Cluster, "CLUSTERDOWN The cluster is down"));
    }

    #[test]
    fn wrong_commands_and_values_are_not_unavailable() {
        assert!(!unavailable(
            ErrorKind::Unknown,
            "ERR wrong number of arguments for 'get' command"
        ));
        assert!(!unavailable(ErrorKind::Unknown, "ERR Error running script (call to f_1): bad"));
        assert!(!unavailable(ErrorKind::Unknown, "NOPERM this user has no permissions"));
        assert!(!unavailable(ErrorKind::InvalidArgument, "WRONGTYPE Operation against a key"));
        assert!(!unavailable(ErrorKind::Auth, "NOAUTH Authentication required."));
        assert!(!unavailable(ErrorKind::Parse, "Could not convert to map."));
        assert!(!RedisError::Unexpected("odd".into()).is_unavailable());
    }
}
