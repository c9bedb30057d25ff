//! Following a stream without a consumer group: every reader sees every entry from where it
//! started, for state every replica keeps in process (e.g. the rate limiter's organisations).

use std::time::Duration;

use fred::prelude::*;

use serde::de::DeserializeOwned;

use super::wire::{decode, parse_read_response};
use crate::client::RedisClients;
use crate::error::{RedisError, Result};
use crate::keys::StreamName;

/// A reader of the entries appended to one stream after it started, on its own connection.
#[derive(Debug)]
pub struct StreamTail {
    reader: Client,
    key: String,
    last_id: String,
}

impl StreamTail {
    /// Starts after the stream's current last entry (everything appended from now on). Fails
    /// when Redis does not answer within `redis.connect_timeout_ms`, closing its connection.
    pub async fn start(clients: &RedisClients, stream: StreamName) -> Result<Self> {
        let key = clients.keys().stream(stream);
        let reader = clients.dedicated()?;
        let _connection = reader.connect();
        let wait = Duration::from_millis(clients.settings().connect_timeout_ms);
        let last = tokio::time::timeout(wait, async {
            reader.wait_for_connect().await?;
            reader
                .xrevrange::<Vec<(String, Vec<(String, String)>)>, _, _, _>(&key, "+", "-", Some(1))
                .await
        })
        .await;
        let last = match last {
            Ok(Ok(last)) => last,
            failed => {
                // A client left connecting would retry in the background for ever.
                let _ = reader.quit().await;
                return Err(match failed {
                    Ok(Err(error)) => error.into(),
                    _ => RedisError::Unexpected(format!("no redis connection within {wait:?}")),
                });
            }
        };
        let last_id = last.into_iter().next().map_or_else(|| "0-0".to_owned(), |(id, _)| id);
        Ok(Self { reader, key, last_id })
    }

    /// The next entries (at most `count`, waiting up to `block` for one), decoded; an entry that
    /// does not decode is skipped with a warning.
    pub async fn next<T: DeserializeOwned>(
        &mut self,
        count: u64,
        block: Duration,
    ) -> Result<Vec<T>> {
        let millis = u64::try_from(block.as_millis()).unwrap_or(u64::MAX);
        let options =
            Options { timeout: Some(block + Duration::from_secs(5)), ..Options::default() };
        let value: Value = self
            .reader
            .with_options(&options)
            .xread(Some(count), Some(millis), self.key.as_str(), self.last_id.as_str())
            .await?;
        let entries = parse_read_response(value)?;
        let mut bodies = Vec::with_capacity(entries.len());
        for entry in entries {
            match decode(&entry) {
                Ok(body) => bodies.push(body),
                Err(reason) => {
                    tracing::warn!(stream = %self.key, id = %entry.id, %reason, "skipping an entry that does not decode");
                }
            }
            self.last_id = entry.id;
        }
        Ok(bodies)
    }

    /// Closes the reader's connection.
    pub async fn close(self) {
        let _ = self.reader.quit().await;
    }
}
