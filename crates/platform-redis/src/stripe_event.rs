//! The contract of a Stripe event: one parser, with its limits, for the producer and every consumer.
//!
//! webhook-ingest parses each verified delivery with [`parse`] before acknowledging it, and the
//! consumers of the Stripe stream parse the same raw bytes with the same function, so an event
//! that reaches the stream is one every consumer can read. What fails here is authentic but can
//! never be processed: the producer settles it at once (recorded as `unprocessable` with
//! [`Unprocessable::code`]) instead of letting a consumer dead-letter it later.
//!
//! Stripe changes object shapes between API versions and adds event types over time, so nothing
//! here is a closed enum: only the envelope fields every version has (`id`, `type`, `created`)
//! are required, and an optional field of an unexpected JSON type reads as absent. The limits:
//! valid UTF-8 JSON within `serde_json`'s nesting limit (128) and without lone surrogates, no
//! key given twice in the parts read here (parsers disagree on which one wins), no NUL in the
//! text fields consumers store (Postgres `text` cannot hold it), and amounts within
//! `0..=`[`MAX_AMOUNT`].

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

/// Largest amount accepted, in the currency's minor unit: twelve digits, above any amount
/// Stripe can charge, far below where sums of many such amounts overflow `i64`.
pub const MAX_AMOUNT: i64 = 999_999_999_999;

/// Longest accepted event id or type (Stripe's ids are ~30 characters).
const MAX_ID_LEN: usize = 255;

/// Why an authentic body can never be processed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unprocessable {
    #[error("body is not valid UTF-8 JSON within the parser's limits: {0}")]
    InvalidJson(String),
    #[error("body is JSON but not a Stripe event: {0}")]
    NotAnEvent(String),
    #[error("`{0}` contains a NUL character")]
    NulInText(&'static str),
    #[error("`{0}` is not an integer amount in 0..={MAX_AMOUNT}")]
    AmountOutOfRange(&'static str),
}

impl Unprocessable {
    /// Stable snake_case reason (ledger column, metric label).
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "invalid_json",
            Self::NotAnEvent(_) => "not_an_event",
            Self::NulInText(_) => "nul_in_text",
            Self::AmountOutOfRange(_) => "amount_out_of_range",
        }
    }
}

/// A parsed, valid Stripe event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeEvent {
    pub id: String,
    pub event_type: String,
    /// Unix seconds.
    pub created: i64,
    pub livemode: bool,
    pub api_version: Option<String>,
    /// `data.object`, the fields consumers use.
    pub object: EventObject,
}

/// The parts of `data.object` the consumers read; absent when the object has no such field (or
/// one of another JSON type).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventObject {
    pub id: Option<String>,
    /// The object's own `object` field (`payment_intent`, `invoice`, …).
    pub kind: Option<String>,
    /// `customer`: an id, or an expanded customer object's `id`.
    pub customer: Option<String>,
    pub amount: Option<i64>,
    pub amount_received: Option<i64>,
    pub currency: Option<String>,
    /// String-valued metadata entries (others are dropped).
    pub metadata: BTreeMap<String, String>,
    pub payment_method_types: Vec<String>,
}

/// A body that failed [`parse`], with what could still be read of its envelope (to record it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub id: Option<String>,
    pub event_type: Option<String>,
    pub created: Option<i64>,
    pub reason: Unprocessable,
}

/// Parses and checks a raw event body against the contract (module doc).
pub fn parse(body: &[u8]) -> Result<StripeEvent, Rejected> {
    let rejected = |reason| Rejected { id: None, event_type: None, created: None, reason };
    let text = std::str::from_utf8(body)
        .map_err(|e| rejected(Unprocessable::InvalidJson(format!("not UTF-8 ({e})"))))?;
    let ObjectOr(root) = serde_json::from_str::<ObjectOr<RawEvent>>(text).map_err(|e| {
        rejected(match e.classify() {
            serde_json::error::Category::Data => Unprocessable::NotAnEvent(e.to_string()),
            _ => Unprocessable::InvalidJson(e.to_string()),
        })
    })?;
    let root = root.ok_or_else(|| {
        rejected(Unprocessable::NotAnEvent("the body is not a JSON object".into()))
    })?;
    let beyond = beyond_limits(text).map(|problem| Unprocessable::InvalidJson(problem.to_owned()));
    root.validate(beyond)
}

/// Deepest nesting accepted, as `serde_json` allows when it builds a value.
const MAX_DEPTH: usize = 128;

/// What serde_json checks only in the values it decodes, not in those it skips, although a
/// consumer decoding the whole event (or Postgres `jsonb`) would refuse it: nesting deeper than
/// [`MAX_DEPTH`] and lone UTF-16 surrogate escapes. One pass over JSON already known to be valid.
fn beyond_limits(text: &str) -> Option<&'static str> {
    let bytes = text.as_bytes();
    let unit = |at: usize| -> Option<u16> {
        let hex = bytes.get(at + 2..at + 6)?;
        (bytes.get(at + 1) == Some(&b'u'))
            .then(|| u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok())?
    };
    let (mut depth, mut in_string, mut i) = (0usize, false, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'"' => in_string = !in_string,
            b'[' | b'{' if !in_string => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some("nested deeper than 128 levels");
                }
            }
            b']' | b'}' if !in_string => depth = depth.saturating_sub(1),
            b'\\' => {
                // Escapes occur only inside strings; each is skipped whole.
                match unit(i) {
                    Some(0xD800..=0xDBFF) => match unit(i + 6) {
                        Some(0xDC00..=0xDFFF) => i += 12,
                        _ => return Some("a lone UTF-16 surrogate escape"),
                    },
                    Some(0xDC00..=0xDFFF) => return Some("a lone UTF-16 surrogate escape"),
                    Some(_) => i += 6,
                    None => i += 2,
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

// --- the derived shape, and the two lenient readers it uses ---------------------------------------

#[derive(Deserialize)]
struct RawEvent {
    #[serde(default)]
    id: Lenient<String>,
    #[serde(default)]
    object: Lenient<String>,
    #[serde(default, rename = "type")]
    event_type: Lenient<String>,
    #[serde(default)]
    created: Lenient<i64>,
    #[serde(default)]
    livemode: Lenient<bool>,
    #[serde(default)]
    api_version: Lenient<String>,
    #[serde(default)]
    data: ObjectOr<RawData>,
}

#[derive(Deserialize)]
struct RawData {
    #[serde(default)]
    object: ObjectOr<RawObject>,
}

#[derive(Deserialize)]
struct RawObject {
    #[serde(default)]
    id: Lenient<String>,
    #[serde(default)]
    object: Lenient<String>,
    #[serde(default)]
    customer: Lenient<CustomerRef>,
    #[serde(default)]
    amount: Lenient<serde_json::Number>,
    #[serde(default)]
    amount_received: Lenient<serde_json::Number>,
    #[serde(default)]
    currency: Lenient<String>,
    #[serde(default)]
    metadata: Lenient<BTreeMap<String, Value>>,
    #[serde(default)]
    payment_method_types: Lenient<Vec<Value>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum CustomerRef {
    Id(String),
    Expanded { id: String },
}

/// `T` when the value has `T`'s shape, otherwise absent (the value is still read, so malformed
/// JSON stays an error). For small fields: the value is read into a [`Value`] first.
struct Lenient<T>(Option<T>);

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Ok(Self(T::deserialize(value).ok()))
    }
}

/// A JSON object read as `T`, anything else skipped as absent: for `data` and `data.object`,
/// which are large, so they are read in place rather than through a [`Value`].
struct ObjectOr<T>(Option<T>);

impl<T> Default for ObjectOr<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOr<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(std::marker::PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = ObjectOr<T>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ObjectOr<T>, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|t| ObjectOr(Some(t)))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ObjectOr<T>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(ObjectOr(None))
            }

            fn visit_str<E>(self, _: &str) -> Result<ObjectOr<T>, E> {
                Ok(ObjectOr(None))
            }

            fn visit_i64<E>(self, _: i64) -> Result<ObjectOr<T>, E> {
                Ok(ObjectOr(None))
            }

            fn visit_u64<E>(self, _: u64) -> Result<ObjectOr<T>, E> {
                Ok(ObjectOr(None))
            }

            fn visit_f64<E>(self, _: f64) -> Result<ObjectOr<T>, E> {
                Ok(ObjectOr(None))
            }

            fn visit_bool<E>(self, _: bool) -> Result<ObjectOr<T>, E> {
                Ok(ObjectOr(None))
            }

            fn visit_unit<E>(self) -> Result<ObjectOr<T>, E> {
                Ok(ObjectOr(None))
            }
        }

        deserializer.deserialize_any(ObjectVisitor(std::marker::PhantomData))
    }
}

// --- the checks ---------------------------------------------------------------------------------

impl RawEvent {
    /// The checks, in order; `beyond` is a failed limit found before (the envelope is still read
    /// for the record).
    fn validate(self, beyond: Option<Unprocessable>) -> Result<StripeEvent, Rejected> {
        let id = self.id.0.filter(|id| {
            !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
        });
        let event_type = self.event_type.0.filter(|t| {
            !t.is_empty() && t.len() <= MAX_ID_LEN && t.bytes().all(|b| b.is_ascii_graphic())
        });
        let created = self.created.0;
        let mut rejected = Rejected {
            id: id.clone(),
            event_type: event_type.clone(),
            created,
            reason: Unprocessable::NotAnEvent(String::new()),
        };
        let fail = |mut rejected: Rejected, reason| {
            rejected.reason = reason;
            Err(rejected)
        };
        let not_an_event = |why: &str| Unprocessable::NotAnEvent(why.to_owned());
        if let Some(reason) = beyond {
            return fail(rejected, reason);
        }
        if self.object.0.as_deref().is_some_and(|object| object != "event") {
            return fail(rejected, not_an_event("`object` is not \"event\""));
        }
        let (Some(id), Some(event_type), Some(created)) = (id, event_type, created) else {
            let why = "`id`, `type` (printable strings) and `created` (an integer) are required";
            rejected.reason = not_an_event(why);
            return Err(rejected);
        };
        let raw_object = self.data.0.and_then(|data| data.object.0);
        let event = StripeEvent {
            id,
            event_type,
            created,
            livemode: self.livemode.0.unwrap_or(false),
            api_version: self.api_version.0,
            object: match raw_object {
                Some(object) => match object.into_checked() {
                    Ok(object) => object,
                    Err(reason) => return fail(rejected, reason),
                },
                None => EventObject::default(),
            },
        };
        match event.nul_field() {
            Some(field) => fail(rejected, Unprocessable::NulInText(field)),
            None => Ok(event),
        }
    }
}

impl RawObject {
    fn into_checked(self) -> Result<EventObject, Unprocessable> {
        Ok(EventObject {
            id: self.id.0,
            kind: self.object.0,
            customer: self.customer.0.map(|c| match c {
                CustomerRef::Id(id) | CustomerRef::Expanded { id } => id,
            }),
            amount: amount(self.amount.0, "data.object.amount")?,
            amount_received: amount(self.amount_received.0, "data.object.amount_received")?,
            currency: self.currency.0,
            metadata: self
                .metadata
                .0
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(k, v)| match v {
                    Value::String(v) => Some((k, v)),
                    _ => None,
                })
                .collect(),
            payment_method_types: self
                .payment_method_types
                .0
                .unwrap_or_default()
                .into_iter()
                .filter_map(|v| match v {
                    Value::String(v) => Some(v),
                    _ => None,
                })
                .collect(),
        })
    }
}

/// A JSON number must be an integer in range; it never saturates or reads as absent.
fn amount(
    number: Option<serde_json::Number>,
    field: &'static str,
) -> Result<Option<i64>, Unprocessable> {
    match number {
        None => Ok(None),
        Some(n) => match n.as_i64() {
            Some(v) if (0..=MAX_AMOUNT).contains(&v) => Ok(Some(v)),
            _ => Err(Unprocessable::AmountOutOfRange(field)),
        },
    }
}

impl StripeEvent {
    /// The first text field consumers store that holds a NUL.
    fn nul_field(&self) -> Option<&'static str> {
        let has_nul = |s: &Option<String>| s.as_deref().is_some_and(|s| s.contains('\0'));
        let o = &self.object;
        if has_nul(&self.api_version) {
            Some("api_version")
        } else if has_nul(&o.id) {
            Some("data.object.id")
        } else if has_nul(&o.kind) {
            Some("data.object.object")
        } else if has_nul(&o.customer) {
            Some("data.object.customer")
        } else if has_nul(&o.currency) {
            Some("data.object.currency")
        } else if o.metadata.iter().any(|(k, v)| k.contains('\0') || v.contains('\0')) {
            Some("data.object.metadata")
        } else if o.payment_method_types.iter().any(|t| t.contains('\0')) {
            Some("data.object.payment_method_types")
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(body: &[u8]) -> Option<&'static str> {
        parse(body).err().map(|r| r.reason.code())
    }

    #[test]
    fn an_unknown_type_of_a_future_api_version_with_an_expanded_customer_parses() {
        let body = br#"{"id":"evt_1","object":"event","type":"brand_new.thing","created":5,
            "api_version":"2031-01-01.preview","livemode":true,
            "data":{"object":{"id":"obj_1","customer":{"id":"cus_9","object":"customer"}}}}"#;
        let event = parse(body).ok();
        let event = event.as_ref();
        assert_eq!(event.map(|e| e.event_type.as_str()), Some("brand_new.thing"));
        assert_eq!(event.and_then(|e| e.object.customer.as_deref()), Some("cus_9"));
        assert_eq!(event.and_then(|e| e.object.id.as_deref()), Some("obj_1"));
        assert_eq!(event.map(|e| e.livemode), Some(true));
    }

    #[test]
    fn escaped_strings_are_unescaped_and_odd_shapes_of_optional_fields_read_as_absent() {
        let body = br#"{"id":"evt_\u0031","object":"event","type":"a\/b","created":5,
            "livemode":"yes","api_version":7,"extra":[{"deep":[1,2.5,null,{"x":"y"}]}],
            "data":{"object":{"id":["not","a","string"],"customer":{"object":"customer"},
            "amount":"12","metadata":{"org_id":"o","n":5}}}}"#;
        let event = parse(body).ok();
        let event = event.as_ref();
        assert_eq!(event.map(|e| e.id.as_str()), Some("evt_1"));
        assert_eq!(event.map(|e| e.event_type.as_str()), Some("a/b"));
        assert_eq!(event.map(|e| e.livemode), Some(false));
        assert_eq!(event.and_then(|e| e.api_version.as_deref()), None);
        assert_eq!(event.and_then(|e| e.object.id.as_deref()), None);
        assert_eq!(event.and_then(|e| e.object.customer.as_deref()), None);
        assert_eq!(event.and_then(|e| e.object.amount), None);
        assert_eq!(event.map(|e| e.object.metadata.len()), Some(1));
    }

    #[test]
    fn data_that_is_not_an_object_and_a_customer_id_string_are_both_taken_as_they_come() {
        let scalar_data = br#"{"id":"evt_1","type":"x","created":1,"data":5}"#;
        assert_eq!(parse(scalar_data).ok().map(|e| e.object), Some(EventObject::default()));
        let string_customer =
            br#"{"id":"evt_1","type":"x","created":1,"data":{"object":{"customer":"cus_1"}}}"#;
        assert_eq!(
            parse(string_customer).ok().and_then(|e| e.object.customer),
            Some("cus_1".to_owned())
        );
    }

    #[test]
    fn a_key_given_twice_is_not_an_event() {
        let body = br#"{"id":"evt_first","type":"x","created":1,"id":"evt_last"}"#;
        assert_eq!(reason(body), Some("not_an_event"));
    }

    #[test]
    fn malformed_json_anywhere_even_in_skipped_values_is_invalid_json() {
        let deep = format!(
            r#"{{"id":"evt_1","type":"x","created":1,"extra":{}{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        for body in [
            &br#"{"id":"evt_1","type":"x","created":1,"extra":[1,}"#[..],
            br#"{"id":"evt_1","type":"x","created":1,"extra":"\q"}"#,
            br#"{"id":"evt_1","type":"x","created":1} trailing"#,
            br#"{"id":"evt_1","type":"x","created":1,"extra":"\ud800"}"#,
            br#"{"id":"evt_1","type":"x","created":1,"extra":["\udc00x"]}"#,
            br#"{"id":"evt_1","type":"x","created":1,"extra":{"k\ud83dx":1}}"#,
            br#"{"id":"evt_1","type":"x","created":1,"data":{"object":{"currency":"\ud800"}}}"#,
            deep.as_bytes(),
            b"{nope",
            &[0xff, 0xfe],
        ] {
            let shown: String = String::from_utf8_lossy(body).chars().take(80).collect();
            assert_eq!(reason(body), Some("invalid_json"), "{shown}");
        }
    }

    #[test]
    fn surrogate_pairs_and_escaped_backslashes_are_fine() {
        let body =
            br#"{"id":"evt_1","type":"x","created":1,"extra":["\ud83d\ude00","\\ud800","\u00e9"]}"#;
        assert_eq!(reason(body), None);
    }

    #[test]
    fn created_must_be_an_integer_that_fits_in_64_bits() {
        for created in ["1.5", "\"1\"", "18446744073709551615", "null"] {
            let body = format!(r#"{{"id":"evt_1","type":"x","created":{created}}}"#);
            assert_eq!(reason(body.as_bytes()), Some("not_an_event"), "created = {created}");
        }
    }

    #[test]
    fn non_events_are_told_apart_and_keep_what_envelope_could_be_read() {
        assert_eq!(reason(b"[1]"), Some("not_an_event"));
        assert_eq!(reason(br#"{"id":"evt_1","type":"x"}"#), Some("not_an_event"));
        let customer = parse(br#"{"id":"cus_1","object":"customer","type":"x","created":1}"#);
        assert_eq!(customer.as_ref().err().map(|r| r.reason.code()), Some("not_an_event"));
        assert_eq!(customer.err().and_then(|r| r.id), Some("cus_1".to_owned()));
    }

    #[test]
    fn nul_in_a_stored_text_field_is_unprocessable_but_the_id_is_kept() {
        let body =
            br#"{"id":"evt_1","type":"x","created":1,"data":{"object":{"customer":"cus_\u0000"}}}"#;
        let rejected = parse(body).err();
        assert_eq!(rejected.as_ref().map(|r| r.reason.code()), Some("nul_in_text"));
        assert_eq!(rejected.and_then(|r| r.id), Some("evt_1".to_owned()));
        let body = br#"{"id":"evt_1","type":"x","created":1,"api_version":"\u0000"}"#;
        assert_eq!(reason(body), Some("nul_in_text"));
    }

    #[test]
    fn amounts_outside_the_range_are_unprocessable_never_saturated() {
        for amount in ["9223372036854775807", "-1", "18446744073709551616", "1.5", "1000000000000"]
        {
            let body = format!(
                r#"{{"id":"evt_1","type":"x","created":1,"data":{{"object":{{"amount":{amount}}}}}}}"#
            );
            assert_eq!(reason(body.as_bytes()), Some("amount_out_of_range"), "amount {amount}");
        }
        let body =
            br#"{"id":"evt_1","type":"x","created":1,"data":{"object":{"amount":999999999999}}}"#;
        assert_eq!(parse(body).ok().and_then(|e| e.object.amount), Some(MAX_AMOUNT));
    }
}
