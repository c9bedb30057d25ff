//! The Stripe API: the async-stripe client with this service's retry policy and error
//! classification; the calls checkout-api makes are in `calls` (customers, Checkout sessions,
//! the subscription and payments a customer's state is read from).
//!
//! Every call goes through [`StripeApi::call`]: one attempt is bounded by `request_timeout_ms`;
//! timeouts, connection errors, 409/429 and 5xx are retried up to `max_attempts` with exponential
//! backoff and jitter. Writes carry an `Idempotency-Key` that stays the same across the attempts,
//! so a retried create whose first answer was lost does not create twice. The library's own
//! strategies are not used because without its `uuid` feature they send no idempotency key.

mod calls;

use std::fmt;
use std::future::Future;
use std::time::Duration;

use rand::Rng as _;
use secrecy::ExposeSecret as _;
use stripe::{Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeError};
use tracing::Instrument as _;

use crate::stripe::settings::StripeSettings;

/// A failed Stripe call after its retries. Its text never contains the secret key.
#[derive(Debug, thiserror::Error)]
pub struct StripeCallError {
    /// What was attempted (`list subscriptions`, …).
    pub operation: &'static str,
    pub attempts: u32,
    #[source]
    pub source: StripeError,
}

impl fmt::Display for StripeCallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stripe {} failed after {} attempt(s)", self.operation, self.attempts)
    }
}

impl StripeCallError {
    /// The HTTP status Stripe answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        match &self.source {
            StripeError::Stripe(_, status) => Some(*status),
            _ => None,
        }
    }

    /// Worth trying again later: Stripe was unreachable, slow, overloaded or failing.
    pub fn is_transient(&self) -> bool {
        is_retryable(&self.source)
    }

    /// Stripe said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}

fn is_retryable(error: &StripeError) -> bool {
    match error {
        StripeError::Stripe(_, status) => matches!(status, 409 | 429 | 500..=599),
        StripeError::ClientError(_) | StripeError::Timeout => true,
        StripeError::JSONDeserialize(_) | StripeError::ConfigError(_) => false,
    }
}

/// A configured client. Cheap to clone.
#[derive(Clone)]
pub struct StripeApi {
    client: Client,
    max_attempts: u32,
    backoff: Duration,
}

impl fmt::Debug for StripeApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The client holds the secret; show only the policy.
        f.debug_struct("StripeApi")
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl StripeApi {
    /// `None` when no secret key is configured.
    pub fn from_settings(settings: &StripeSettings) -> anyhow::Result<Option<Self>> {
        let Some(secret) = settings.secret() else { return Ok(None) };
        let client = ClientBuilder::new(secret.expose_secret())
            .url(settings.api_base_url.as_str())
            .timeout(Duration::from_millis(settings.request_timeout_ms))
            .app_info(crate::SERVICE, None, None)
            .build()
            .map_err(|error| anyhow::anyhow!("stripe client configuration: {error}"))?;
        Ok(Some(Self {
            client,
            max_attempts: settings.max_attempts.max(1),
            backoff: Duration::from_millis(settings.retry_backoff_ms),
        }))
    }

    /// Sends the request `send` builds (given the client and the attempt's strategy), retrying
    /// transient failures; `idempotency_key` for writes. Typical use:
    /// `api.call("list subscriptions", None, |c, s| async move { req.customize().request_strategy(s).send(&c).await })`.
    pub async fn call<T, F, Fut>(
        &self,
        operation: &'static str,
        idempotency_key: Option<&str>,
        send: F,
    ) -> Result<T, StripeCallError>
    where
        F: Fn(Client, RequestStrategy) -> Fut,
        Fut: Future<Output = Result<T, StripeError>>,
    {
        let strategy = match idempotency_key.map(IdempotencyKey::new) {
            Some(Ok(key)) => RequestStrategy::Idempotent(key),
            _ => RequestStrategy::Once,
        };
        let span = tracing::info_span!("stripe.call", operation, attempts = tracing::field::Empty);
        async {
            let mut attempt: u32 = 0;
            loop {
                attempt += 1;
                match send(self.client.clone(), strategy.clone()).await {
                    Ok(output) => {
                        tracing::Span::current().record("attempts", attempt);
                        return Ok(output);
                    }
                    Err(error) if attempt < self.max_attempts && is_retryable(&error) => {
                        let pause = self.pause(attempt);
                        tracing::warn!(operation, attempt, pause_ms = pause.as_millis() as u64, %error, "stripe request failed; retrying");
                        tokio::time::sleep(pause).await;
                    }
                    Err(source) => {
                        tracing::Span::current().record("attempts", attempt);
                        return Err(StripeCallError { operation, attempts: attempt, source });
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    fn pause(&self, attempt: u32) -> Duration {
        let base = self.backoff.saturating_mul(1 << attempt.saturating_sub(1).min(6));
        let millis = u64::try_from(base.as_millis()).unwrap_or(u64::MAX).max(1);
        Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
    }
}
