//! Minting of short-lived HS256 tenant tokens (operators, local runs).

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::ExposeSecret;
use serde_json::{Map, Value};

use super::TenantAuthSetupError;
use crate::settings::TenantAuthSettings;

/// Mints HS256 tenant tokens with the first configured secret, the organisation at the
/// configured claim pointer, and `iss` / `aud` when configured.
#[derive(Clone)]
pub struct TenantTokenSigner {
    key: EncodingKey,
    org_claim: String,
    issuer: Option<String>,
    audience: Option<String>,
    ttl_secs: i64,
}

impl std::fmt::Debug for TenantTokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantTokenSigner")
            .field("org_claim", &self.org_claim)
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

/// A minted token and when it expires.
#[derive(Clone)]
pub struct MintedToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for MintedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedToken")
            .field("token", &"[REDACTED]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl TenantTokenSigner {
    /// `None` when no HS256 secret is configured (this service then mints nothing).
    pub fn from_settings(
        settings: &TenantAuthSettings,
    ) -> Result<Option<Self>, TenantAuthSetupError> {
        let Some(secret) = settings.hs256_secrets.first() else {
            return Ok(None);
        };
        let key = EncodingKey::from_secret(secret.expose_secret().as_bytes())
            .map_err(TenantAuthSetupError::Secret)?;
        Ok(Some(Self {
            key,
            org_claim: settings.org_claim.clone(),
            issuer: settings.issuers.first().cloned(),
            audience: settings.audiences.first().cloned(),
            // Validated to 1..=86400.
            ttl_secs: i64::try_from(settings.mint_ttl_secs).unwrap_or(900),
        }))
    }

    /// A token for `org_id`, valid for `tenant_auth.mint_ttl_secs` from now.
    pub fn mint(&self, org_id: &str) -> Result<MintedToken, jsonwebtoken::errors::Error> {
        let now = Utc::now().timestamp();
        let exp = now.saturating_add(self.ttl_secs);
        let mut claims = Map::new();
        claims.insert("iat".to_owned(), now.into());
        claims.insert("exp".to_owned(), exp.into());
        if let Some(issuer) = &self.issuer {
            claims.insert("iss".to_owned(), issuer.clone().into());
        }
        if let Some(audience) = &self.audience {
            claims.insert("aud".to_owned(), audience.clone().into());
        }
        insert_at_pointer(&mut claims, &self.org_claim, Value::String(org_id.to_owned()));
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)?;
        let expires_at = DateTime::from_timestamp(exp, 0).unwrap_or_else(Utc::now);
        Ok(MintedToken { token, expires_at })
    }
}

/// Puts `value` at a JSON pointer, creating the objects on the way (`/o/id` → `{"o":{"id":…}}`).
fn insert_at_pointer(claims: &mut Map<String, Value>, pointer: &str, value: Value) {
    let parts: Vec<String> =
        pointer.split('/').skip(1).map(|p| p.replace("~1", "/").replace("~0", "~")).collect();
    let Some((last, path)) = parts.split_last() else {
        return;
    };
    let mut node = claims;
    for part in path {
        let entry = node.entry(part.clone()).or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(next) = entry else {
            return;
        };
        node = next;
    }
    node.insert(last.clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_claim_lands_at_its_pointer_with_escapes() {
        let mut claims = Map::new();
        insert_at_pointer(&mut claims, "/o/id", "a".into());
        insert_at_pointer(&mut claims, "/https:~1~1example.com~1org", "b".into());
        let claims = Value::Object(claims);
        assert_eq!(claims.pointer("/o/id"), Some(&Value::from("a")));
        assert_eq!(claims["https://example.com/org"], "b");
    }
}
