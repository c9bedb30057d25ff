//! Stripe-Signature verification (v1 scheme), as a pure function of header, body, secrets and `now`.
//!
//! Exactly what `fixtures/stripe/SIGNATURE.md` states from the SDK sources: the header is
//! comma-separated `key=value` pairs in any order; `t` is the Unix timestamp as it appears; every
//! `v1` is a candidate lowercase-hex HMAC-SHA256 of `"<t>.<raw body>"` keyed with the whole secret
//! string (`whsec_` included, not decoded); any `v1` matching any configured secret passes (rotation
//! on either side); `v0` and unknown keys are ignored; comparison is constant time; a timestamp is
//! rejected only when `now - t > tolerance` (exactly `tolerance` old passes, future ones pass, as
//! stripe-go and stripe-node do). Nothing here reads a clock, so the vectors test it at fixed times.

use std::time::Duration;

use ring::hmac;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use crate::error::SignatureError;

/// The parts of a `Stripe-Signature` header this scheme uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeader<'a> {
    /// `t` exactly as it appears (it is part of the signed payload).
    pub timestamp_text: &'a str,
    /// `t` as Unix seconds.
    pub timestamp: i64,
    /// Every `v1` value, in header order.
    pub v1: Vec<&'a str>,
}

/// Parses the header; `v0` and unknown keys are skipped.
pub fn parse_header(header: &str) -> Result<SignatureHeader<'_>, SignatureError> {
    let mut timestamp = None;
    let mut v1 = Vec::new();
    for item in header.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (key, value) = item.split_once('=').ok_or(SignatureError::Malformed)?;
        match key.trim() {
            "t" => {
                let text = value.trim();
                let parsed = text.parse::<i64>().map_err(|_| SignatureError::NoTimestamp)?;
                timestamp = Some((text, parsed));
            }
            "v1" => v1.push(value.trim()),
            _ => {}
        }
    }
    let (timestamp_text, timestamp) = timestamp.ok_or(SignatureError::NoTimestamp)?;
    if v1.is_empty() {
        return Err(SignatureError::NoV1Signature);
    }
    Ok(SignatureHeader { timestamp_text, timestamp, v1 })
}

/// Verifies `header` over the raw `payload` against every secret at time `now` (Unix seconds).
/// Returns the header's timestamp. The MAC is checked before the age, so a stale but authentic
/// delivery says "out of tolerance" and a forged one says "mismatch".
pub fn verify(
    header: Option<&str>,
    payload: &[u8],
    secrets: &[SecretString],
    tolerance: Duration,
    now: i64,
) -> Result<i64, SignatureError> {
    let header = header.map(str::trim).filter(|h| !h.is_empty()).ok_or(SignatureError::Missing)?;
    let parsed = parse_header(header)?;
    let candidates: Vec<Vec<u8>> = parsed.v1.iter().filter_map(|hex| decode_hex(hex)).collect();
    let mut matched = false;
    for secret in secrets {
        let expected = mac(secret.expose_secret(), parsed.timestamp_text, payload);
        for candidate in &candidates {
            // Not short-circuited: every pair is compared, in constant time each.
            matched |= bool::from(expected.as_ref().ct_eq(candidate.as_slice()));
        }
    }
    if !matched {
        return Err(SignatureError::Mismatch);
    }
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if now.saturating_sub(parsed.timestamp) > tolerance {
        return Err(SignatureError::OutsideTolerance);
    }
    Ok(parsed.timestamp)
}

/// The `Stripe-Signature` header Stripe would send for `payload` at `timestamp` (tests, benchmarks,
/// local tools).
pub fn sign_header(secret: &str, timestamp: i64, payload: &[u8]) -> String {
    let text = timestamp.to_string();
    format!("t={text},v1={}", encode_hex(mac(secret, &text, payload).as_ref()))
}

fn mac(secret: &str, timestamp: &str, payload: &[u8]) -> hmac::Tag {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut context = hmac::Context::with_key(&key);
    context.update(timestamp.as_bytes());
    context.update(b".");
    context.update(payload);
    context.sign()
}

/// Lowercase or uppercase hex to bytes; `None` for anything else (such a `v1` never matches).
fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    text.as_bytes().chunks(2).map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?)).collect()
}

fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCS_HEADER: &str = "t=1492774577,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd,v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39";

    #[test]
    fn the_stripe_docs_header_parses_into_its_timestamp_and_v1() {
        let parsed = parse_header(DOCS_HEADER).ok();
        assert_eq!(
            parsed,
            Some(SignatureHeader {
                timestamp_text: "1492774577",
                timestamp: 1_492_774_577,
                v1: vec!["5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd"],
            })
        );
    }

    #[test]
    fn headers_without_t_or_v1_or_pairs_are_malformed() {
        assert_eq!(parse_header("v1=00").err(), Some(SignatureError::NoTimestamp));
        assert_eq!(parse_header("t=abc,v1=00").err(), Some(SignatureError::NoTimestamp));
        assert_eq!(parse_header("t=1,v0=00").err(), Some(SignatureError::NoV1Signature));
        assert_eq!(parse_header("garbage").err(), Some(SignatureError::Malformed));
    }

    #[test]
    fn a_signed_header_verifies_with_any_of_several_secrets_and_not_with_others() {
        let secrets = |names: &[&str]| -> Vec<SecretString> {
            names.iter().map(|s| SecretString::from((*s).to_owned())).collect()
        };
        let header = sign_header("whsec_new", 100, b"{}");
        let ok = verify(
            Some(&header),
            b"{}",
            &secrets(&["whsec_old", "whsec_new"]),
            Duration::from_secs(300),
            150,
        );
        assert_eq!(ok, Ok(100));
        let wrong =
            verify(Some(&header), b"{}", &secrets(&["whsec_old"]), Duration::from_secs(300), 150);
        assert_eq!(wrong, Err(SignatureError::Mismatch));
        let missing = verify(None, b"{}", &secrets(&["whsec_new"]), Duration::from_secs(300), 150);
        assert_eq!(missing, Err(SignatureError::Missing));
    }

    #[test]
    fn hex_round_trips_and_rejects_non_hex() {
        assert_eq!(decode_hex(&encode_hex(&[0, 1, 0xab, 0xff])), Some(vec![0, 1, 0xab, 0xff]));
        assert_eq!(decode_hex("zz"), None);
        assert_eq!(decode_hex("abc"), None);
    }
}
