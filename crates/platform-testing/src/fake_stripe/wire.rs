//! Stripe's wire format as the fake needs it: error and list bodies, form and query pairs, nested
//! form keys, and the Basic credentials of Stripe's curl examples.

use actix_web::web;
use serde_json::{Map, Value, json};

/// Standard base64 with padding (for the Basic credentials of `curl -u key:`).
pub(super) fn base64(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let bytes = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(bytes[0]) << 16) | (u32::from(bytes[1]) << 8) | u32::from(bytes[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A Stripe error response.
pub(super) fn stripe_error(status: u16, kind: &str, message: &str) -> (u16, String) {
    let body = json!({"error": {"type": kind, "message": message}});
    (status, body.to_string())
}

pub(super) fn not_found(what: &str, id: &str) -> (u16, String) {
    let body = json!({"error": {
        "type": "invalid_request_error",
        "code": "resource_missing",
        "message": format!("No such {what}: '{id}'"),
        "param": "id",
    }});
    (404, body.to_string())
}

pub(super) fn ok(value: &Value) -> (u16, String) {
    (200, value.to_string())
}

pub(super) fn list(url: &str, data: Vec<Value>, has_more: bool) -> (u16, String) {
    ok(&json!({"object": "list", "data": data, "has_more": has_more, "url": url}))
}

/// Form pairs (`a[b][0][c]=v`, `expand[]=x`) as nested JSON: objects whose keys are all indices
/// become arrays; values stay strings, as Stripe receives them.
pub fn nest_form(pairs: &[(String, String)]) -> Value {
    let mut root = Value::Object(Map::new());
    for (key, value) in pairs {
        insert_path(&mut root, &key_segments(key), value);
    }
    arrays_from_indices(root)
}

/// `a[b][0][]` → `["a", "b", "0", ""]`.
pub(super) fn key_segments(key: &str) -> Vec<String> {
    let (head, mut rest) = match key.find('[') {
        Some(i) => (&key[..i], &key[i..]),
        None => (key, ""),
    };
    let mut segments = vec![head.to_owned()];
    while let Some(open) = rest.strip_prefix('[') {
        let Some(end) = open.find(']') else { break };
        segments.push(open[..end].to_owned());
        rest = &open[end + 1..];
    }
    segments
}

pub(super) fn insert_path(node: &mut Value, segments: &[String], value: &str) {
    let Some((first, rest)) = segments.split_first() else { return };
    let Value::Object(map) = node else { return };
    if first.is_empty() {
        // `x[]=v`: append under the next free index.
        let index = map.len().to_string();
        map.insert(index, json!(value));
        return;
    }
    if rest.is_empty() {
        map.insert(first.clone(), json!(value));
        return;
    }
    let child = map.entry(first.clone()).or_insert_with(|| Value::Object(Map::new()));
    if !child.is_object() {
        *child = Value::Object(Map::new());
    }
    insert_path(child, rest, value);
}

pub(super) fn arrays_from_indices(node: Value) -> Value {
    match node {
        Value::Object(map) => {
            let all_indices = !map.is_empty() && map.keys().all(|k| k.parse::<usize>().is_ok());
            if all_indices {
                let mut items: Vec<(usize, Value)> = map
                    .into_iter()
                    .filter_map(|(k, v)| k.parse().ok().map(|i| (i, arrays_from_indices(v))))
                    .collect();
                items.sort_by_key(|(i, _)| *i);
                Value::Array(items.into_iter().map(|(_, v)| v).collect())
            } else {
                Value::Object(map.into_iter().map(|(k, v)| (k, arrays_from_indices(v))).collect())
            }
        }
        other => other,
    }
}

pub(super) fn pairs(text: &str) -> Vec<(String, String)> {
    web::Query::<Vec<(String, String)>>::from_query(text)
        .map(|q| q.into_inner())
        .unwrap_or_default()
}

pub(super) fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

pub(super) fn expands(pairs: &[(String, String)]) -> Vec<&str> {
    pairs
        .iter()
        .filter(|(k, _)| k == "expand[]" || k.starts_with("expand["))
        .map(|(_, v)| v.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(k: &str, v: &str) -> (String, String) {
        (k.to_owned(), v.to_owned())
    }

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64("sk_test_x:"), "c2tfdGVzdF94Og==");
        assert_eq!(base64("abc"), "YWJj");
        assert_eq!(base64("ab"), "YWI=");
    }

    #[test]
    fn nested_form_keys_become_objects_and_arrays() {
        let form = [
            pair("metadata[userId]", "u1"),
            pair("line_items[0][price_data][unit_amount]", "500"),
            pair("line_items[0][quantity]", "2"),
            pair("line_items[1][price]", "price_1"),
            pair("expand[]", "a"),
            pair("expand[]", "b"),
            pair("mode", "payment"),
        ];
        let nested = nest_form(&form);
        assert_eq!(nested["metadata"]["userId"], "u1");
        assert_eq!(nested["line_items"][0]["price_data"]["unit_amount"], "500");
        assert_eq!(nested["line_items"][0]["quantity"], "2");
        assert_eq!(nested["line_items"][1]["price"], "price_1");
        assert_eq!(nested["expand"], json!(["a", "b"]));
        assert_eq!(nested["mode"], "payment");
    }
}
