//! The Stripe customer of a user: Redis first (`user → customer`), created in Stripe only when missing.
//!
//! Concurrent checkouts of a new user must create one customer, so the miss path takes the per-user
//! lock ([`platform_redis::keys::stripe_customer_lock`]), looks in Redis again (a peer may have
//! just written it), and only then creates. The create also carries an idempotency key derived
//! from the user id, so a lost lock (lease expired during a slow Stripe call) or a retried attempt
//! still gets the same customer back from Stripe for the 24 hours Stripe keeps keys.

use std::collections::HashMap;
use std::time::Duration;

use platform_redis::fred::prelude::*;
use platform_redis::keys::stripe_customer_lock;
use platform_redis::lock::Lock;
use stripe::StripeRequest as _;
use stripe_core::customer::CreateCustomer;

use crate::error::CheckoutError;
use crate::stripe::StripeService;

/// Longest accepted user id.
pub const MAX_USER_ID_LEN: usize = 128;

/// Checks a user id from a request: 1–128 characters of `A–Z a–z 0–9 _ - . : @`.
pub fn validate_user_id(user_id: &str) -> Result<(), CheckoutError> {
    let ok = !user_id.is_empty()
        && user_id.len() <= MAX_USER_ID_LEN
        && user_id.chars().all(|c| c.is_ascii_alphanumeric() || "_-.:@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(CheckoutError::invalid_field(
            "userId",
            format!("must be 1–{MAX_USER_ID_LEN} characters of letters, digits, _ - . : @"),
        ))
    }
}

/// Checks a Stripe customer id from a request path.
pub fn validate_customer_id(customer_id: &str) -> Result<(), CheckoutError> {
    let ok = customer_id.len() <= 255
        && customer_id.strip_prefix("cus_").is_some_and(|rest| {
            !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
    if ok {
        Ok(())
    } else {
        Err(CheckoutError::invalid_field("customerId", "must be a Stripe customer id (cus_…)"))
    }
}

impl StripeService {
    /// The customer id recorded for `user_id`, if any (no Stripe call).
    pub async fn cached_customer_id(&self, user_id: &str) -> Result<Option<String>, CheckoutError> {
        let key = self.redis.keys().stripe_customer_of_user(user_id);
        Ok(self.redis.primary().get(&key).await?)
    }

    /// The user's Stripe customer id: from Redis, or created in Stripe (with `metadata.userId`)
    /// exactly once however many requests ask at the same time.
    #[tracing::instrument(name = "stripe.customer_for_user", skip(self, email))]
    pub async fn customer_for_user(
        &self,
        user_id: &str,
        email: Option<&str>,
    ) -> Result<String, CheckoutError> {
        if let Some(id) = self.cached_customer_id(user_id).await? {
            return Ok(id);
        }
        let api = self.api()?;
        let settings = &self.settings;
        let guard = Lock::acquire_with_wait(
            &self.redis,
            &stripe_customer_lock(user_id),
            Duration::from_millis(settings.customer_lock_ttl_ms),
            Duration::from_millis(settings.customer_lock_wait_ms),
        )
        .await?;
        let Some(guard) = guard else {
            // Another request holds the lock for longer than we wait (Stripe is slow): do not
            // create a second customer, let the caller retry.
            tracing::warn!(user_id, "customer lock not acquired in time");
            return Err(CheckoutError::SyncBusy);
        };
        if let Some(id) = self.cached_customer_id(user_id).await? {
            return Ok(id);
        }
        let mut create = CreateCustomer::new()
            .metadata(HashMap::from([("userId".to_owned(), user_id.to_owned())]));
        if let Some(email) = email {
            create = create.email(email);
        }
        let idempotency_key = format!("{}-customer-{user_id}", crate::SERVICE);
        let customer = api
            .call("create customer", Some(&idempotency_key), |client, strategy| {
                let request = create.customize().request_strategy(strategy);
                async move { request.send(&client).await }
            })
            .await?;
        let customer_id = customer.id.as_str().to_owned();
        let key = self.redis.keys().stripe_customer_of_user(user_id);
        let () = self.redis.primary().set(&key, customer_id.as_str(), None, None, false).await?;
        tracing::info!(user_id, customer_id, "stripe customer created");
        let _ = guard.release().await;
        Ok(customer_id)
    }
}
