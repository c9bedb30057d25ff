//! Test tenant tokens: HS256 with a secret, RS256 / ES256 with the PEM fixtures, and JWKS
//! documents of the fixtures' public keys.

use chrono::Utc;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The HS256 secret of `config/default.toml` (what `make run` and campaign-api use).
pub const DEV_SECRET: &str = "dev-tenant-token-secret-change-me-in-production";
pub const OLD_SECRET: &str = "old-tenant-secret-0123456789abcdefghijklmnop";
pub const NEW_SECRET: &str = "new-tenant-secret-0123456789abcdefghijklmnop";

pub const RSA_OLD: &[u8] = include_bytes!("../fixtures/tenant-rsa-old.pem");
pub const RSA_NEW: &[u8] = include_bytes!("../fixtures/tenant-rsa-new.pem");
pub const EC: &[u8] = include_bytes!("../fixtures/tenant-ec.pem");

/// Claims naming `org` at `/org_id`, expiring `exp_in_secs` from now (negative: expired).
pub fn claims(org: &str, exp_in_secs: i64) -> Value {
    let now = Utc::now().timestamp();
    json!({ "org_id": org, "iat": now, "exp": now + exp_in_secs })
}

pub fn hs256(secret: &str, claims: &Value) -> String {
    let key = EncodingKey::from_secret(secret.as_bytes()).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).unwrap()
}

/// Signed by the RSA fixture `pem`, with `kid` in the header.
pub fn rs256(pem: &[u8], kid: &str, claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(pem).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

pub fn es256(pem: &[u8], kid: &str, claims: &Value) -> String {
    let key = EncodingKey::from_ec_pem(pem).unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// A JWKS of the public halves of the fixtures: (PEM, kid, RS256 or ES256).
pub fn jwks(keys: &[(&[u8], &str, Algorithm)]) -> Value {
    let keys = keys
        .iter()
        .map(|(pem, kid, alg)| {
            let private = match alg {
                Algorithm::ES256 => EncodingKey::from_ec_pem(pem).unwrap(),
                _ => EncodingKey::from_rsa_pem(pem).unwrap(),
            };
            let mut jwk = Jwk::from_encoding_key(&private, *alg).unwrap();
            jwk.common.key_id = Some((*kid).to_owned());
            jwk.common.public_key_use = Some(PublicKeyUse::Signature);
            jwk.common.key_algorithm = Some(match alg {
                Algorithm::ES256 => KeyAlgorithm::ES256,
                _ => KeyAlgorithm::RS256,
            });
            jwk
        })
        .collect();
    serde_json::to_value(JwkSet { keys }).unwrap()
}

/// `jwks` written to a file (kept until the returned handle drops).
pub fn jwks_file(keys: &[(&[u8], &str, Algorithm)]) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(&jwks(keys)).unwrap()).unwrap();
    file
}
