//! Stripe-Signature verification against every vector in `fixtures/stripe/signature_vectors`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::Value;
use webhook_ingest::domain::signature::{sign_header, verify};
use webhook_ingest::error::SignatureError;

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stripe/signature_vectors")
}

fn vectors() -> Value {
    let text = std::fs::read_to_string(vectors_dir().join("vectors.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `"<file>"` or `"<file> + b'x'"` (the derived cases' notation) to bytes.
fn payload(spec: &str) -> Vec<u8> {
    let (file, suffix) = match spec.split_once(" + ") {
        Some((file, suffix)) => {
            let inner = suffix.trim().trim_start_matches("b'").trim_end_matches('\'');
            (file.trim(), inner.as_bytes().to_vec())
        }
        None => (spec.trim(), Vec::new()),
    };
    let mut bytes = std::fs::read(vectors_dir().join(file)).unwrap();
    bytes.extend(suffix);
    bytes
}

fn check(
    secret: &str,
    payload: &[u8],
    header: &str,
    now: i64,
    tolerance: u64,
) -> Result<i64, SignatureError> {
    let secrets = vec![SecretString::from(secret.to_owned())];
    verify(Some(header), payload, &secrets, Duration::from_secs(tolerance), now)
}

/// The error a derived case's `expect` text names.
fn expected_error(expect: &str) -> SignatureError {
    if expect.contains("no matching v1") {
        SignatureError::Mismatch
    } else if expect.contains("outside tolerance") {
        SignatureError::OutsideTolerance
    } else if expect.contains("no v1 signatures") {
        SignatureError::NoV1Signature
    } else if expect.contains("no timestamp") {
        SignatureError::NoTimestamp
    } else {
        panic!("unknown expectation {expect:?}")
    }
}

#[test]
fn both_published_vectors_verify_at_their_stated_time() {
    // Arrange
    let all = vectors();
    let published = all["vectors"].as_array().unwrap();
    assert_eq!(published.len(), 2);
    for vector in published {
        let bytes = payload(vector["payload_file"].as_str().unwrap());
        assert_eq!(bytes.len() as u64, vector["payload_bytes"].as_u64().unwrap());
        let secret = vector["secret"].as_str().unwrap();
        let timestamp = vector["timestamp"].as_i64().unwrap();

        // Act
        let verified = check(
            secret,
            &bytes,
            vector["stripe_signature_header"].as_str().unwrap(),
            vector["verify_at_unix"].as_i64().unwrap(),
            300,
        );
        let signed = sign_header(secret, timestamp, &bytes);

        // Assert
        assert_eq!(vector["expect"], "valid");
        assert_eq!(verified, Ok(timestamp), "{}", vector["name"]);
        let expected_v1 = vector["expected_v1"].as_str().unwrap();
        assert_eq!(signed, format!("t={timestamp},v1={expected_v1}"), "{}", vector["name"]);
    }
}

#[test]
fn every_derived_case_passes_or_fails_as_stated() {
    // Arrange
    let all = vectors();
    let cases = all["derived_cases"].as_array().unwrap();
    assert_eq!(cases.len(), 8);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let expect = case["expect"].as_str().unwrap();
        let tolerance = case["tolerance_s"].as_u64().unwrap_or(300);

        // Act
        let outcome = check(
            case["secret"].as_str().unwrap(),
            &payload(case["payload"].as_str().unwrap()),
            case["header"].as_str().unwrap(),
            case["verify_at_unix"].as_i64().unwrap(),
            tolerance,
        );

        // Assert
        if expect.starts_with("valid") {
            assert_eq!(outcome, Ok(1_533_204_620), "{name}");
        } else {
            assert_eq!(outcome, Err(expected_error(expect)), "{name}");
        }
    }
}

#[test]
fn the_dotnet_vector_fails_at_t_plus_400_and_without_its_trailing_newline() {
    // Arrange
    let bytes = payload("stripe_dotnet_event_test_signature.json");
    let header = "t=1533204620,v1=2220f87ef101a04665f11cdf770523143f875572008577fa0f20882ddb9cc3c7";

    // Act
    let stale = check("webhook_secret", &bytes, header, 1_533_204_620 + 400, 300);
    let trimmed = check("webhook_secret", &bytes[..bytes.len() - 1], header, 1_533_204_720, 300);
    let rotated = verify(
        Some(header),
        &bytes,
        &[
            SecretString::from("whsec_new".to_owned()),
            SecretString::from("webhook_secret".to_owned()),
        ],
        Duration::from_secs(300),
        1_533_204_720,
    );

    // Assert
    assert_eq!(stale, Err(SignatureError::OutsideTolerance));
    assert_eq!(trimmed, Err(SignatureError::Mismatch));
    assert_eq!(rotated, Ok(1_533_204_620));
}
