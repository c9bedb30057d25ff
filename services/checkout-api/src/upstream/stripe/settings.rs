//! `[stripe]`: how checkout-api talks to Stripe, builds Checkout sessions and consumes Stripe events.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use platform_redis::streams::GroupSettings;
use platform_service::settings::{SettingsError, require_positive};

/// The placeholder Stripe replaces with the Checkout session id in a success URL.
pub const SESSION_ID_PLACEHOLDER: &str = "{CHECKOUT_SESSION_ID}";

/// `[stripe]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StripeSettings {
    /// Secret API key (`sk_…` or restricted `rk_…`). Unset: the Stripe routes answer 503
    /// `stripe_not_configured` and no Stripe events are consumed.
    pub secret_key: Option<SecretString>,
    /// Stripe's API base; the local fake's URL in development and tests.
    pub api_base_url: String,
    /// Where Stripe sends the buyer after paying; must contain `{CHECKOUT_SESSION_ID}`.
    pub success_url: String,
    /// Where Stripe sends the buyer who cancels.
    pub cancel_url: String,
    /// Currency of line items given in cents.
    pub currency: String,
    /// Price used in `subscription` mode when a request names neither items nor a price.
    pub default_price_id: Option<String>,
    /// Bound of one attempt of a Stripe request.
    pub request_timeout_ms: u64,
    /// Attempts per Stripe request (1 = no retry); retried on timeouts, connection errors, 429, 5xx.
    pub max_attempts: u32,
    /// First retry pause; doubles per attempt, with jitter.
    pub retry_backoff_ms: u64,
    /// Lease of the per-user lock while its customer is looked up or created.
    pub customer_lock_ttl_ms: u64,
    /// How long a checkout waits for that lock.
    pub customer_lock_wait_ms: u64,
    /// Lease of the per-customer lock around one sync (fetch + write). A sync slower than this
    /// loses its fence and its write is refused.
    pub sync_lock_ttl_ms: u64,
    /// How long a sync waits for another sync of the same customer.
    pub sync_lock_wait_ms: u64,
    /// Payment intents fetched per sync (the newest is recorded as `lastPayment`).
    pub recent_payments: u32,
    /// Most line items accepted in one checkout.
    pub max_line_items: usize,
    /// The consumer of the Stripe event stream.
    pub events: GroupSettings,
}

impl StripeSettings {
    /// The secret key, unless unset or empty (an empty `APP__STRIPE__SECRET_KEY` means unset, so
    /// deployment files can pass an optional secret through).
    pub fn secret(&self) -> Option<&SecretString> {
        self.secret_key.as_ref().filter(|key| !key.expose_secret().is_empty())
    }

    /// Whether a secret key is set.
    pub fn is_configured(&self) -> bool {
        self.secret().is_some()
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        if let Some(key) = self.secret() {
            let key = key.expose_secret();
            if !(key.starts_with("sk_") || key.starts_with("rk_")) {
                // The key itself is never echoed.
                return Err(SettingsError::invalid(
                    "stripe.secret_key",
                    "must be a Stripe secret (sk_…) or restricted (rk_…) key",
                ));
            }
        }
        if !(self.api_base_url.starts_with("https://") || self.api_base_url.starts_with("http://"))
        {
            return Err(SettingsError::invalid("stripe.api_base_url", "must be an http(s) URL"));
        }
        if !self.success_url.contains(SESSION_ID_PLACEHOLDER) {
            return Err(SettingsError::invalid(
                "stripe.success_url",
                format!("must contain {SESSION_ID_PLACEHOLDER}"),
            ));
        }
        if !(self.success_url.starts_with("http") && self.cancel_url.starts_with("http")) {
            return Err(SettingsError::invalid(
                "stripe.success_url",
                "success_url and cancel_url must be absolute http(s) URLs",
            ));
        }
        if self.currency.len() != 3 || !self.currency.chars().all(|c| c.is_ascii_lowercase()) {
            return Err(SettingsError::invalid(
                "stripe.currency",
                "must be a lowercase ISO 4217 code",
            ));
        }
        require_positive(&[
            ("stripe.request_timeout_ms", self.request_timeout_ms),
            ("stripe.max_attempts", u64::from(self.max_attempts)),
            ("stripe.customer_lock_ttl_ms", self.customer_lock_ttl_ms),
            ("stripe.sync_lock_ttl_ms", self.sync_lock_ttl_ms),
            ("stripe.recent_payments", u64::from(self.recent_payments)),
            ("stripe.max_line_items", self.max_line_items as u64),
            ("stripe.events.batch_size", self.events.batch_size as u64),
            ("stripe.events.block_ms", self.events.block_ms),
            ("stripe.events.claim_idle_ms", self.events.claim_idle_ms),
            ("stripe.events.max_deliveries", self.events.max_deliveries),
        ])?;
        if self.recent_payments > 100 {
            return Err(SettingsError::invalid("stripe.recent_payments", "must be ≤ 100"));
        }
        if self.events.group.is_empty() {
            return Err(SettingsError::invalid("stripe.events.group", "must not be empty"));
        }
        Ok(())
    }
}
