//! The domain type of a verified delivery: the fields routing needs, read leniently, plus the raw JSON.
//!
//! Stripe changes object shapes between API versions and adds event types over time, so nothing
//! here is a closed enum or a typed object: only the envelope fields every version has (`id`,
//! `type`, `created`, `livemode`) are required; `api_version`, `data.object.id` and
//! `data.object.customer` (an id, or an expanded customer object whose `id` is taken) are optional.
//! The raw text is kept byte for byte for the ledger and the stream.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use platform_redis::messages::StripeEventMessage;
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

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
    /// The body exactly as delivered, shared (not copied) by the ledger row and the stream
    /// message that carry it.
    pub raw: Arc<str>,
}

/// Longest accepted event id (Stripe's are ~30 characters); bounds the Redis key and ledger row.
const MAX_ID_LEN: usize = 255;

impl StripeEvent {
    /// Parses a (verified) raw body.
    ///
    /// The body is read once, straight into the few fields above (strings borrowed from it, every
    /// other value skipped while still checked for valid JSON), instead of into a
    /// `serde_json::Value` tree of the whole ~6 KB event: that tree was one allocation per key and
    /// value, thrown away right after (docs/services/webhook-ingest.md, benchmark). As with a
    /// `Value`, a key given twice counts with its last value.
    pub fn parse(body: &[u8]) -> Result<Self, EventError> {
        let raw = std::str::from_utf8(body)
            .map_err(|e| EventError::InvalidJson(format!("not UTF-8 ({e})")))?;
        let Object(root) = serde_json::from_str::<Object<Envelope<'_>>>(raw)
            .map_err(|e| EventError::InvalidJson(e.to_string()))?;
        let root = root.ok_or(EventError::NotAnEvent("the body is not a JSON object"))?;
        if let Some(Field::Str(object)) = &root.object
            && object != "event"
        {
            return Err(EventError::NotAnEvent("`object` is not \"event\""));
        }
        let id = root
            .id
            .as_ref()
            .and_then(Field::as_str)
            .filter(|id| !id.is_empty() && id.len() <= MAX_ID_LEN)
            .filter(|id| id.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or(EventError::NotAnEvent("`id` is missing or not a printable string"))?;
        let event_type = root
            .event_type
            .as_ref()
            .and_then(Field::as_str)
            .filter(|t| !t.is_empty() && t.len() <= MAX_ID_LEN)
            .ok_or(EventError::NotAnEvent("`type` is missing or not a string"))?;
        let created = match root.created {
            Some(Field::Int(created)) => created,
            _ => return Err(EventError::NotAnEvent("`created` is missing or not an integer")),
        };
        let livemode = matches!(root.livemode, Some(Field::Bool(true)));
        let object = root.data.and_then(|data| data.object.0);
        let (object_id, customer_id) = match object {
            Some(object) => (
                object.id.as_ref().and_then(Field::as_str).map(str::to_owned),
                object.customer.and_then(|customer| customer.0).map(Cow::into_owned),
            ),
            None => (None, None),
        };
        Ok(Self {
            id: id.to_owned(),
            event_type: event_type.to_owned(),
            created,
            livemode,
            api_version: root.api_version.as_ref().and_then(Field::as_str).map(str::to_owned),
            object_id,
            customer_id,
            raw: Arc::from(raw),
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
            raw: self.raw.to_string(),
        }
    }
}

// --- the lenient, allocation-free reader behind `parse` ------------------------------------------
// Stripe's shapes vary by API version, so a field of the wrong JSON type is read as "not there"
// (the checks above then decide), never as a parse error; only malformed JSON is one.

/// One JSON value where only a scalar is of interest: strings borrowed from the body (owned only
/// when they contain escapes), integers that fit `i64`, booleans; anything else is skipped.
#[derive(Debug)]
enum Field<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    Bool(bool),
    Other,
}

impl Field<'_> {
    fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(text) => Some(text),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Field<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl<'de> Visitor<'de> for FieldVisitor {
            type Value = Field<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Field<'de>, E> {
                Ok(Field::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Field<'de>, E> {
                Ok(Field::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Field<'de>, E> {
                Ok(Field::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Field<'de>, E> {
                Ok(i64::try_from(v).map_or(Field::Other, Field::Int))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Field<'de>, E> {
                Ok(Field::Other)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Field<'de>, E> {
                Ok(Field::Bool(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Field<'de>, E> {
                Ok(Field::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Field<'de>, A::Error> {
                skip_seq(seq).map(|()| Field::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Field<'de>, A::Error> {
                skip_map(map).map(|()| Field::Other)
            }
        }
        deserializer.deserialize_any(FieldVisitor)
    }
}

fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// The keys one JSON object is read for; every other key's value is skipped.
trait Keys<'de>: Default {
    fn read<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error>;
}

fn read_object<'de, T: Keys<'de>, A: MapAccess<'de>>(mut map: A) -> Result<T, A::Error> {
    let mut keys = T::default();
    // JSON keys are always strings: `Field` borrows them like any other string.
    while let Some(key) = map.next_key::<Field<'de>>()? {
        match key.as_str() {
            Some(key) => keys.read(key, &mut map)?,
            None => {
                map.next_value::<IgnoredAny>()?;
            }
        }
    }
    Ok(keys)
}

/// A JSON object read through `T`, or `None` for any other JSON value.
struct Object<T>(Option<T>);

impl<'de, T: Keys<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);
        impl<'de, T: Keys<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Object<T>, A::Error> {
                read_object(map).map(|keys| Object(Some(keys)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Object<T>, A::Error> {
                skip_seq(seq).map(|()| Object(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Object<T>, E> {
                Ok(Object(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Object<T>, E> {
                Ok(Object(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Object<T>, E> {
                Ok(Object(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Object<T>, E> {
                Ok(Object(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Object<T>, E> {
                Ok(Object(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Object<T>, E> {
                Ok(Object(None))
            }
        }
        deserializer.deserialize_any(ObjectVisitor(PhantomData))
    }
}

/// The event envelope's keys.
#[derive(Default)]
struct Envelope<'a> {
    id: Option<Field<'a>>,
    event_type: Option<Field<'a>>,
    object: Option<Field<'a>>,
    created: Option<Field<'a>>,
    livemode: Option<Field<'a>>,
    api_version: Option<Field<'a>>,
    data: Option<Data<'a>>,
}

impl<'de> Keys<'de> for Envelope<'de> {
    fn read<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        let slot = match key {
            "id" => &mut self.id,
            "type" => &mut self.event_type,
            "object" => &mut self.object,
            "created" => &mut self.created,
            "livemode" => &mut self.livemode,
            "api_version" => &mut self.api_version,
            "data" => {
                self.data = map.next_value::<Object<Data<'de>>>()?.0;
                return Ok(());
            }
            _ => {
                map.next_value::<IgnoredAny>()?;
                return Ok(());
            }
        };
        *slot = Some(map.next_value()?);
        Ok(())
    }
}

/// `data`: only its `object` matters.
#[derive(Default)]
struct Data<'a> {
    object: Object<DataObject<'a>>,
}

impl<T> Default for Object<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<'de> Keys<'de> for Data<'de> {
    fn read<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        if key == "object" {
            self.object = map.next_value()?;
        } else {
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

/// `data.object`: its `id` and `customer`.
#[derive(Default)]
struct DataObject<'a> {
    id: Option<Field<'a>>,
    customer: Option<CustomerId<'a>>,
}

impl<'de> Keys<'de> for DataObject<'de> {
    fn read<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "id" => self.id = Some(map.next_value()?),
            "customer" => self.customer = Some(map.next_value()?),
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// `data.object.customer`: an id, or an expanded customer object whose `id` is taken.
struct CustomerId<'a>(Option<Cow<'a, str>>);

/// An expanded customer object: its `id`.
#[derive(Default)]
struct Customer<'a> {
    id: Option<Field<'a>>,
}

impl<'de> Keys<'de> for Customer<'de> {
    fn read<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        if key == "id" {
            self.id = Some(map.next_value()?);
        } else {
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for CustomerId<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CustomerVisitor;
        impl<'de> Visitor<'de> for CustomerVisitor {
            type Value = CustomerId<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<CustomerId<'de>, E> {
                Ok(CustomerId(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CustomerId<'de>, E> {
                Ok(CustomerId(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<CustomerId<'de>, A::Error> {
                let customer: Customer<'de> = read_object(map)?;
                Ok(CustomerId(match customer.id {
                    Some(Field::Str(id)) => Some(id),
                    _ => None,
                }))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<CustomerId<'de>, A::Error> {
                skip_seq(seq).map(|()| CustomerId(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<CustomerId<'de>, E> {
                Ok(CustomerId(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<CustomerId<'de>, E> {
                Ok(CustomerId(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<CustomerId<'de>, E> {
                Ok(CustomerId(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<CustomerId<'de>, E> {
                Ok(CustomerId(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<CustomerId<'de>, E> {
                Ok(CustomerId(None))
            }
        }
        deserializer.deserialize_any(CustomerVisitor)
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
    fn escaped_strings_are_unescaped_and_odd_shapes_of_optional_fields_read_as_absent() {
        let body = br#"{"id":"evt_\u0031","object":"event","type":"a\/b","created":5,
            "livemode":"yes","api_version":7,"extra":[{"deep":[1,2.5,null,{"x":"y"}]}],
            "data":{"object":{"id":["not","a","string"],"customer":{"object":"customer"}}}}"#;
        let event = StripeEvent::parse(body).ok();
        let event = event.as_ref();
        assert_eq!(event.map(|e| e.id.as_str()), Some("evt_1"));
        assert_eq!(event.map(|e| e.event_type.as_str()), Some("a/b"));
        assert_eq!(event.map(|e| e.livemode), Some(false));
        assert_eq!(event.and_then(|e| e.api_version.as_deref()), None);
        assert_eq!(event.and_then(|e| e.object_id.as_deref()), None);
        assert_eq!(event.and_then(|e| e.customer_id.as_deref()), None);
        assert_eq!(event.map(|e| &*e.raw), std::str::from_utf8(body).ok());
    }

    #[test]
    fn data_that_is_not_an_object_and_a_customer_id_string_are_both_taken_as_they_come() {
        let scalar_data = br#"{"id":"evt_1","type":"x","created":1,"data":5}"#;
        assert_eq!(
            StripeEvent::parse(scalar_data).ok().map(|e| (e.object_id, e.customer_id)),
            Some((None, None))
        );
        let string_customer =
            br#"{"id":"evt_1","type":"x","created":1,"data":{"object":{"customer":"cus_1"}}}"#;
        assert_eq!(
            StripeEvent::parse(string_customer).ok().and_then(|e| e.customer_id),
            Some("cus_1".to_owned())
        );
    }

    #[test]
    fn a_key_given_twice_counts_with_its_last_value() {
        let body = br#"{"id":"evt_first","type":"x","created":1,"id":"evt_last"}"#;
        assert_eq!(StripeEvent::parse(body).ok().map(|e| e.id), Some("evt_last".to_owned()));
    }

    #[test]
    fn malformed_json_anywhere_even_in_skipped_values_is_invalid_json() {
        for body in [
            &br#"{"id":"evt_1","type":"x","created":1,"extra":[1,}"#[..],
            br#"{"id":"evt_1","type":"x","created":1,"extra":"\q"}"#,
            br#"{"id":"evt_1","type":"x","created":1} trailing"#,
        ] {
            assert_eq!(StripeEvent::parse(body).err().map(|e| e.code()), Some("invalid_json"));
        }
    }

    #[test]
    fn created_must_be_an_integer_that_fits_in_64_bits() {
        for created in ["1.5", "\"1\"", "18446744073709551615", "null"] {
            let body = format!(r#"{{"id":"evt_1","type":"x","created":{created}}}"#);
            assert_eq!(
                StripeEvent::parse(body.as_bytes()).err().map(|e| e.code()),
                Some("not_an_event"),
                "created = {created}"
            );
        }
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
