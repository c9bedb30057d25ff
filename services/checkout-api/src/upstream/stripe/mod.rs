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
mod settings;

use std::fmt;
use std::future::Future;
use std::time::Duration;

use std::sync::atomic::{AtomicU32, Ordering};

use backon::{ExponentialBuilder, Retryable};
use secrecy::ExposeSecret as _;
use stripe::{Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeError};
use tracing::Instrument as _;

pub use settings::StripeSettings;

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
        let attempts = AtomicU32::new(0);
        // Before try n: random in [half, full] of backoff * 2^(n-1), capped at 64x.
        // backon's jitter adds up to one more delay to each, so it is given the halves.
        let backoff = ExponentialBuilder::new()
            .with_min_delay(self.backoff / 2)
            .with_max_delay(self.backoff.saturating_mul(32))
            .with_jitter()
            .with_max_times(usize::try_from(self.max_attempts.saturating_sub(1)).unwrap_or(0));
        let sent = (|| {
            attempts.fetch_add(1, Ordering::Relaxed);
            send(self.client.clone(), strategy.clone())
        })
        .retry(backoff)
        .when(is_retryable)
        .notify(|error, pause| {
            let attempt = attempts.load(Ordering::Relaxed);
            tracing::warn!(operation, attempt, pause_ms = pause.as_millis() as u64, %error, "stripe request failed; retrying");
        })
        .instrument(span.clone())
        .await;
        let attempts = attempts.load(Ordering::Relaxed);
        span.record("attempts", attempts);
        sent.map_err(|source| StripeCallError { operation, attempts, source })
    }
}
