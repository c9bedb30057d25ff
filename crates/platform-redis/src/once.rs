//! Redis effects applied at most once per id, even when the work that leads to them is redone:
//! a marker key set with `NX` and the effects run in one Lua script.
//!
//! Why: a stream handler that writes to Postgres first and queues its Redis effects with the
//! `XACK` can crash after the Postgres commit and before `EXEC`. On redelivery the Postgres work is
//! idempotent (`ON CONFLICT DO NOTHING`) and finds nothing new, yet the effects (a live update, a
//! usage event) were never applied. Queueing the same [`OnceEffects`] again on every delivery,
//! inserted or not, applies them exactly once: the script sets [`Keys::effects_marker`] with `NX`
//! and only when that succeeds publishes and appends. Two consumers racing on duplicate events
//! cannot both win the `NX`. The marker lives `ttl`; keep it longer than any redelivery window.
//!
//! [`OnceEffects::queue`] queues the script on a [`Transaction`] (the handler's, so the effects
//! commit with the `XACK`); [`OnceEffects::apply`] runs it directly. In Redis Cluster the marker
//! and the streams appended to must share a slot: [`Keys::effects_marker`] and the stream keys
//! are all in the stream slot (see [`crate::keys`]). Publishes are not keys and work from any slot.
//!
//! [`Keys::effects_marker`]: crate::keys::Keys::effects_marker

use std::time::Duration;

use fred::clients::Transaction;
use fred::interfaces::ClientLike;
use fred::types::Value;
use serde::Serialize;

use crate::error::Result;
use crate::messages::Envelope;
use crate::streams::encode_entry;

/// KEYS: marker, then one stream per append. ARGV: marker TTL ms, number of publishes, then
/// (channel, payload) pairs, then per append: MAXLEN, number of fields, field/value pairs.
const APPLY_ONCE: &str = r"
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  return 0
end
local i = 3
for _ = 1, tonumber(ARGV[2]) do
  redis.call('PUBLISH', ARGV[i], ARGV[i + 1])
  i = i + 2
end
for k = 2, #KEYS do
  local command = {'XADD', KEYS[k], 'MAXLEN', '~', ARGV[i], '*'}
  local fields = tonumber(ARGV[i + 1])
  i = i + 2
  for j = 0, fields * 2 - 1 do
    command[#command + 1] = ARGV[i + j]
  end
  i = i + fields * 2
  redis.call(unpack(command))
end
return 1
";

/// One stream append: the stream key, its `MAXLEN ~`, and the entry's fields.
type Append = (String, usize, Vec<(&'static str, String)>);

/// A set of publishes and stream appends applied at most once per marker; see the module doc.
#[derive(Debug, Clone)]
pub struct OnceEffects {
    marker: String,
    ttl: Duration,
    publishes: Vec<(String, String)>,
    appends: Vec<Append>,
}

impl OnceEffects {
    /// Effects guarded by `marker` (built with [`crate::keys::Keys::effects_marker`]), which
    /// lives `ttl` once set.
    pub fn new(marker: String, ttl: Duration) -> Self {
        Self { marker, ttl, publishes: Vec::new(), appends: Vec::new() }
    }

    /// Publishes `body` in an [`Envelope`] on `channel`, as [`crate::pubsub::publish`] would.
    pub fn publish<T: Serialize>(&mut self, channel: String, body: &T) -> Result<&mut Self> {
        let text = serde_json::to_string(&Envelope::new(body))?;
        self.publishes.push((channel, text));
        Ok(self)
    }

    /// Appends `body` to the stream at `stream_key` (`MAXLEN ~ max_len`), with the fields
    /// [`crate::streams::StreamProducer`] writes, so consumers read it like any other entry.
    pub fn append<T: Serialize>(
        &mut self,
        stream_key: String,
        max_len: usize,
        body: &T,
    ) -> Result<&mut Self> {
        self.appends.push((stream_key, max_len, encode_entry(body)?));
        Ok(self)
    }

    /// Queues the script on `tx` (it runs at `EXEC`, with whatever else the transaction holds).
    pub async fn queue(&self, tx: &Transaction) -> Result<()> {
        let () = tx.custom(crate::lua::eval(&self.marker), self.arguments()).await?;
        Ok(())
    }

    /// Runs the script now; true when the effects were applied, false when the marker was set.
    pub async fn apply<C: ClientLike>(&self, client: &C) -> Result<bool> {
        let applied: i64 = client.custom(crate::lua::eval(&self.marker), self.arguments()).await?;
        Ok(applied == 1)
    }

    fn arguments(&self) -> Vec<Value> {
        let mut args: Vec<Value> = vec![
            APPLY_ONCE.into(),
            i64::try_from(1 + self.appends.len()).unwrap_or(i64::MAX).into(),
            self.marker.clone().into(),
        ];
        args.extend(self.appends.iter().map(|(key, _, _)| Value::from(key.clone())));
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        args.push(ttl_ms.into());
        args.push(i64::try_from(self.publishes.len()).unwrap_or(i64::MAX).into());
        for (channel, payload) in &self.publishes {
            args.push(channel.clone().into());
            args.push(payload.clone().into());
        }
        for (_, max_len, fields) in &self.appends {
            args.push(i64::try_from(*max_len).unwrap_or(i64::MAX).into());
            args.push(i64::try_from(fields.len()).unwrap_or(i64::MAX).into());
            for (name, value) in fields {
                args.push((*name).into());
                args.push(value.clone().into());
            }
        }
        args
    }
}
