//! Public keys of tenant tokens from JWKS documents (files read at start, URLs fetched on use and
//! again on an unknown `kid`).

use std::sync::RwLock;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use super::TenantAuthError;

/// A public key of a JWKS, with what it may verify.
#[derive(Clone)]
pub(super) struct PublicKey {
    pub(super) kid: Option<String>,
    pub(super) alg: Algorithm,
    pub(super) key: DecodingKey,
}

pub(super) fn matching(keys: &[PublicKey], kid: Option<&str>, alg: Algorithm) -> Vec<PublicKey> {
    keys.iter()
        .filter(|k| k.alg == alg && (kid.is_none() || k.kid.as_deref() == kid))
        .cloned()
        .collect()
}

/// The RS256 / ES256 signing keys of a JWKS document; keys of other kinds or uses are skipped
/// (one the crate cannot read does not hide the others).
pub(super) fn parse_jwks(text: &str) -> Result<Vec<PublicKey>, String> {
    let document: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Some(entries) = document.get("keys").and_then(Value::as_array) else {
        return Err("not a JWKS document (no \"keys\" array)".to_owned());
    };
    let mut keys = Vec::new();
    for entry in entries {
        let Ok(jwk) = serde_json::from_value::<Jwk>(entry.clone()) else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
            (Some(KeyAlgorithm::RS256), AlgorithmParameters::RSA(_))
            | (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
            (Some(KeyAlgorithm::ES256), AlgorithmParameters::EllipticCurve(ec))
            | (None, AlgorithmParameters::EllipticCurve(ec))
                if ec.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            _ => continue,
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        keys.push(PublicKey { kid: jwk.common.key_id.clone(), alg, key });
    }
    Ok(keys)
}

#[derive(Debug, Default)]
pub(super) struct FetchState {
    /// Last attempt, successful or not: unknown `kid`s refetch at most every `min_interval`.
    pub(super) attempted: Option<Instant>,
    /// Last time every URL answered: keys older than `max_age` are fetched again.
    pub(super) succeeded: Option<Instant>,
}

/// Keys from JWKS URLs, one list per URL (a URL that fails keeps its last keys).
pub(super) struct RemoteKeys {
    pub(super) urls: Vec<String>,
    pub(super) http: reqwest::Client,
    pub(super) keys: RwLock<Vec<Vec<PublicKey>>>,
    pub(super) state: std::sync::Mutex<FetchState>,
    /// Held while fetching: one fetch at a time.
    pub(super) fetching: tokio::sync::Mutex<()>,
    pub(super) min_interval: Duration,
    pub(super) max_age: Duration,
}

impl RemoteKeys {
    pub(super) fn fresh_copy(&self) -> Self {
        Self {
            urls: self.urls.clone(),
            http: self.http.clone(),
            keys: RwLock::new(vec![Vec::new(); self.urls.len()]),
            state: std::sync::Mutex::new(FetchState::default()),
            fetching: tokio::sync::Mutex::new(()),
            min_interval: self.min_interval,
            max_age: self.max_age,
        }
    }

    pub(super) fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Vec<PublicKey> {
        let keys = self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        keys.iter().flat_map(|list| matching(list, kid, alg)).collect()
    }

    /// Matching keys; fetches first when never fetched, when the keys are older than `max_age`,
    /// or when nothing matches a named `kid` (`known_elsewhere`: a file key does). One fetch at
    /// a time; a request that waited for it looks again before fetching itself.
    pub(super) async fn matching(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        known_elsewhere: bool,
    ) -> Result<Vec<PublicKey>, TenantAuthError> {
        let keys = self.lookup(kid, alg);
        let unknown_kid = kid.is_some() && keys.is_empty() && !known_elsewhere;
        if !self.should_fetch(unknown_kid) {
            return Ok(keys);
        }
        let _one_fetch = self.fetching.lock().await;
        let keys = self.lookup(kid, alg);
        let unknown_kid = kid.is_some() && keys.is_empty() && !known_elsewhere;
        if !self.should_fetch(unknown_kid) {
            return Ok(keys);
        }
        let now = Instant::now();
        self.state().attempted = Some(now);
        let mut first_error = None;
        for (index, url) in self.urls.iter().enumerate() {
            match self.fetch(url).await {
                Ok(fetched) => {
                    let mut keys =
                        self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if let Some(slot) = keys.get_mut(index) {
                        *slot = fetched;
                    }
                }
                Err(error) => {
                    let chain = crate::error::error_chain(error.as_ref());
                    tracing::warn!(url = %url, error = %chain, "JWKS fetch failed; keeping its last keys");
                    first_error.get_or_insert(error);
                }
            }
        }
        if first_error.is_none() {
            self.state().succeeded = Some(now);
        }
        let keys = self.lookup(kid, alg);
        let have_any = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .any(|list| !list.is_empty());
        match first_error {
            // No key at all to judge the token by: a retry may succeed, so not a 401.
            Some(error) if !have_any && !known_elsewhere => {
                Err(TenantAuthError::Unavailable(anyhow::anyhow!(error)))
            }
            _ => Ok(keys),
        }
    }

    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, FetchState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Never fetched, older than `max_age`, or an unknown `kid`; and not attempted within
    /// `min_interval` (so tokens with made-up `kid`s cannot make this service hammer the URL).
    pub(super) fn should_fetch(&self, unknown_kid: bool) -> bool {
        let state = self.state();
        let now = Instant::now();
        let stale = state.succeeded.is_none_or(|at| now.duration_since(at) >= self.max_age);
        let may_retry =
            state.attempted.is_none_or(|at| now.duration_since(at) >= self.min_interval);
        (stale || unknown_kid) && may_retry
    }

    #[tracing::instrument(name = "jwks.fetch", skip(self))]
    pub(super) async fn fetch(
        &self,
        url: &str,
    ) -> Result<Vec<PublicKey>, Box<dyn std::error::Error + Send + Sync + 'static>> {
        let response = self.http.get(url).send().await?.error_for_status()?;
        let text = response.text().await?;
        let keys = parse_jwks(&text)?;
        tracing::info!(keys = keys.len(), "JWKS fetched");
        Ok(keys)
    }
}
