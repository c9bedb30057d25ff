//! The domain type of a verified delivery: the fields routing needs, read leniently, plus the raw JSON.
//!
//! Stripe changes object shapes between API versions and adds event types over time, so nothing
//! here is a closed enum or a typed object: only the envelope fields every version has (`id`,
//! `type`, `created`, `livemode`) are required; `api_version`, `data.object.id` and
//! `data.object.customer` (an id, or an expanded customer object whose `id` is taken) are optional.
//! The raw text is kept byte for byte for the ledger and the stream.

use platform_redis::messages::StripeEventMessage;
use serde_json::Value;

/// Why a verified body is not an event we can take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("Body is not valid UTF-8 JSON: {0}")]
    InvalidJson(String),
    #[error("Body is JSON but not a Stripe event: {0}")]
    NotAnEvent(&'static str),
}

impl EventError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "invalid_json",
            Self::NotAnEvent(_) => "not_an_event",
        }
    }
}

/// A Stripe event as received.
#[derive(Debug, Clone, PartialEq)]
pub struct StripeEvent {
    pub id: String,
    pub event_type: String,
    /// Unix seconds.
    pub created: i64,
    pub livemode: bool,
    pub api_version: Option<String>,
    pub object_id: Option<String>,
    pub customer_id: Option<String>,
    /// The body exactly as delivered.
    pub raw: String,
}

/// Longest accepted event id (Stripe's are ~30 characters); bounds the Redis key and ledger row.
const MAX_ID_LEN: usize = 255;

impl StripeEvent {
    /// Parses a (verified) raw body.
    pub fn parse(body: &[u8]) -> Result<Self, EventError> {
        let raw = std::str::from_utf8(body)
            .map_err(|e| EventError::InvalidJson(format!("not UTF-8 ({e})")))?;
        let value: Value =
            serde_json::from_str(raw).map_err(|e| EventError::InvalidJson(e.to_string()))?;
        let Value::Object(root) = &value else {
            return Err(EventError::NotAnEvent("the body is not a JSON object"));
        };
        if root.get("object").and_then(Value::as_str).is_some_and(|o| o != "event") {
            return Err(EventError::NotAnEvent("`object` is not \"event\""));
        }
        let id = root
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty() && id.len() <= MAX_ID_LEN)
            .filter(|id| id.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or(EventError::NotAnEvent("`id` is missing or not a printable string"))?;
        let event_type = root
            .get("type")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty() && t.len() <= MAX_ID_LEN)
            .ok_or(EventError::NotAnEvent("`type` is missing or not a string"))?;
        let created = root
            .get("created")
            .and_then(Value::as_i64)
            .ok_or(EventError::NotAnEvent("`created` is missing or not an integer"))?;
        let livemode = root.get("livemode").and_then(Value::as_bool).unwrap_or(false);
        let api_version = root.get("api_version").and_then(Value::as_str).map(str::to_owned);
        let object = root.get("data").and_then(|d| d.get("object"));
        let object_id = object.and_then(|o| o.get("id")).and_then(Value::as_str).map(str::to_owned);
        let customer_id = object.and_then(|o| o.get("customer")).and_then(|c| match c {
            Value::String(id) => Some(id.clone()),
            Value::Object(expanded) => {
                expanded.get("id").and_then(Value::as_str).map(str::to_owned)
            }
            _ => None,
        });
        Ok(Self {
            id: id.to_owned(),
            event_type: event_type.to_owned(),
            created,
            livemode,
            api_version,
            object_id,
            customer_id,
            raw: raw.to_owned(),
        })
    }

    /// The stream message body.
    pub fn to_message(&self) -> StripeEventMessage {
        StripeEventMessage {
            event_id: self.id.clone(),
            event_type: self.event_type.clone(),
            created: self.created,
            livemode: self.livemode,
            api_version: self.api_version.clone(),
            object_id: self.object_id.clone(),
            customer_id: self.customer_id.clone(),
            raw: self.raw.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_type_of_a_future_api_version_with_an_expanded_customer_parses() {
        let body = br#"{"id":"evt_1","object":"event","type":"brand_new.thing","created":5,
            "api_version":"2031-01-01.preview","livemode":true,
            "data":{"object":{"id":"obj_1","customer":{"id":"cus_9","object":"customer"}}}}"#;
        let event = StripeEvent::parse(body).ok();
        let event = event.as_ref();
        assert_eq!(event.map(|e| e.event_type.as_str()), Some("brand_new.thing"));
        assert_eq!(event.and_then(|e| e.customer_id.as_deref()), Some("cus_9"));
        assert_eq!(event.and_then(|e| e.object_id.as_deref()), Some("obj_1"));
        assert_eq!(event.map(|e| e.livemode), Some(true));
    }

    #[test]
    fn non_json_and_non_events_are_told_apart() {
        assert_eq!(StripeEvent::parse(b"{nope").err().map(|e| e.code()), Some("invalid_json"));
        assert_eq!(StripeEvent::parse(&[0xff, 0xfe]).err().map(|e| e.code()), Some("invalid_json"));
        assert_eq!(StripeEvent::parse(b"[1]").err().map(|e| e.code()), Some("not_an_event"));
        assert_eq!(
            StripeEvent::parse(br#"{"id":"evt_1","type":"x"}"#).err().map(|e| e.code()),
            Some("not_an_event")
        );
        assert_eq!(
            StripeEvent::parse(br#"{"id":"cus_1","object":"customer","type":"x","created":1}"#)
                .err()
                .map(|e| e.code()),
            Some("not_an_event")
        );
    }
}
