//! Payments with Stripe: the operations the Stripe routes and the event worker call. Customers
//! are cached per user, checkout requests become Stripe Checkout sessions, and a customer's
//! subscription and payment state is synced from Stripe into Redis by one function.
//!
//! The rule: Stripe is the source of truth,
//! Redis holds one record per customer, and that record is only ever written by the sync, which
//! re-fetches from Stripe. Webhook payloads only say *which* customer to sync.
//!
//! - **Customers.** Concurrent checkouts of a new user must create one customer, so the miss path
//!   takes the per-user lock, looks in Redis again (a peer may have just written it), and only
//!   then creates. The create also carries an idempotency key derived from the user id, so a lost
//!   lock (lease expired during a slow Stripe call) or a retried attempt still gets the same
//!   customer back from Stripe for the 24 hours Stripe keeps keys.
//! - **Sync ordering.** Two syncs of one customer may run at once (the success page and an event,
//!   two events, two replicas). Whichever *fetched* last must be the one whose record stays. So a
//!   sync holds the customer's lock from before the fetch to after the write, and the write is
//!   fenced by that lock (`store::stripe`).
//! - **Checkouts.** The user is the caller's ([`Caller`]): a service caller's `userId`, a
//!   signed-in user's session, else a guest (no Stripe customer of ours).

use std::sync::Arc;
use std::time::Duration;

use platform_redis::RedisClients;
use stripe_checkout::CheckoutSession;

use crate::domain::caller::Caller;
use crate::domain::stripe::{
    Cart, CartLine, CartSource, CheckoutCreated, CheckoutRequest, Mode, StripeState, SyncOutcome,
    checkout_session_of, parse_mode, validate_email, validate_price_id, validate_quantity,
    validate_user_id,
};
use crate::error::CheckoutError;
use crate::store::stripe::{LockTimes, StripeStore};
use crate::upstream::stripe::StripeApi;
use crate::upstream::stripe::StripeSettings;

/// What the Stripe routes and the event worker share. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StripeService {
    /// `None` when no secret key is configured.
    api: Option<StripeApi>,
    redis: RedisClients,
    store: StripeStore,
    settings: Arc<StripeSettings>,
    carts: Arc<dyn CartSource>,
}

impl StripeService {
    /// A service for `settings`; `carts` resolves `checkoutSessionId` of checkout requests.
    pub fn new(
        settings: &StripeSettings,
        redis: RedisClients,
        carts: Arc<dyn CartSource>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            api: StripeApi::from_settings(settings)?,
            store: StripeStore::new(redis.clone()),
            redis,
            settings: Arc::new(settings.clone()),
            carts,
        })
    }

    /// True when a secret key is configured.
    pub fn is_configured(&self) -> bool {
        self.api.is_some()
    }

    fn api(&self) -> Result<&StripeApi, CheckoutError> {
        self.api.as_ref().ok_or(CheckoutError::StripeNotConfigured)
    }

    pub fn settings(&self) -> &StripeSettings {
        &self.settings
    }

    pub fn redis(&self) -> &RedisClients {
        &self.redis
    }

    /// The customer id recorded for `user_id`, if any (no Stripe call).
    pub async fn cached_customer_id(&self, user_id: &str) -> Result<Option<String>, CheckoutError> {
        self.store.customer_of_user(user_id).await
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
        let times = LockTimes {
            ttl: Duration::from_millis(self.settings.customer_lock_ttl_ms),
            wait: Duration::from_millis(self.settings.customer_lock_wait_ms),
        };
        let Some(guard) = self.store.customer_lock(user_id, times).await? else {
            // Another request holds the lock for longer than we wait (Stripe is slow): do not
            // create a second customer, let the caller retry.
            tracing::warn!(user_id, "customer lock not acquired in time");
            return Err(CheckoutError::SyncBusy);
        };
        if let Some(id) = self.cached_customer_id(user_id).await? {
            return Ok(id);
        }
        let customer_id = api.create_customer(user_id, email).await?;
        self.store.set_customer_of_user(user_id, &customer_id).await?;
        tracing::info!(user_id, customer_id, "stripe customer created");
        let _ = guard.release().await;
        Ok(customer_id)
    }

    /// The recorded state of `customer_id`, if any (no Stripe call).
    pub async fn stored_state(
        &self,
        customer_id: &str,
    ) -> Result<Option<StripeState>, CheckoutError> {
        self.store.state(customer_id).await
    }

    /// Fetches the customer's current state from Stripe and writes it to Redis (see the module
    /// doc for the ordering guarantee). The one way the record is ever written.
    #[tracing::instrument(name = "stripe.sync", skip(self))]
    pub async fn sync_stripe_data_to_redis(
        &self,
        customer_id: &str,
    ) -> Result<SyncOutcome, CheckoutError> {
        let api = self.api()?;
        let times = LockTimes {
            ttl: Duration::from_millis(self.settings.sync_lock_ttl_ms),
            wait: Duration::from_millis(self.settings.sync_lock_wait_ms),
        };
        let guard =
            self.store.sync_lock(customer_id, times).await?.ok_or(CheckoutError::SyncBusy)?;
        let state = api.fetch_state(customer_id, self.settings.recent_payments).await?;
        let fence = guard.fence();
        let written = self.store.write_state(&state, fence).await?;
        let _ = guard.release().await;
        if written {
            tracing::info!(customer_id, status = %state.status, "stripe state synced");
            Ok(SyncOutcome::Written(state))
        } else {
            tracing::warn!(
                customer_id,
                fence,
                "stripe sync overtaken by a newer one; its older data dropped"
            );
            Ok(SyncOutcome::Superseded(self.stored_state(customer_id).await?))
        }
    }

    /// Validates a direct checkout request (the `items` or `priceId` form) for `user_id` into a
    /// cart priced by the catalog.
    async fn cart_from_request(
        &self,
        request: &CheckoutRequest,
        user_id: Option<String>,
    ) -> Result<Cart, CheckoutError> {
        let max_line_items = self.settings.max_line_items;
        let (lines, default_mode) = match (&request.items, request.price_id.as_deref()) {
            (Some(_), Some(_)) => {
                return Err(CheckoutError::invalid_field(
                    "items",
                    "give either items or priceId, not both",
                ));
            }
            (Some(items), None) => {
                if items.is_empty() {
                    return Err(CheckoutError::invalid_field("items", "must not be empty"));
                }
                if items.len() > max_line_items {
                    return Err(CheckoutError::invalid_field(
                        "items",
                        format!("at most {max_line_items} items per checkout"),
                    ));
                }
                (self.carts.price_items(items).await?, Mode::Payment)
            }
            (None, price_id) => {
                let price_id = match price_id {
                    Some(price_id) => {
                        validate_price_id(price_id)?;
                        self.carts.listed_price(price_id).await?;
                        price_id
                    }
                    // The configured default is the operator's choice, not a client's.
                    None => self.settings.default_price_id.as_deref().ok_or_else(|| {
                        CheckoutError::invalid_field("items", "give items or priceId")
                    })?,
                };
                let quantity = validate_quantity("quantity", request.quantity.unwrap_or(1))?;
                (
                    vec![CartLine::Price { price_id: price_id.to_owned(), quantity }],
                    Mode::Subscription,
                )
            }
        };
        Ok(Cart {
            user_id,
            email: request.email.clone(),
            lines,
            mode: parse_mode(request.mode.as_deref(), default_mode)?,
            checkout_session_id: None,
        })
    }

    /// The cart a checkout request describes for `caller`: loaded by `checkoutSessionId`, or
    /// built from its items or price. A non-service caller may pay only a session that is theirs
    /// (no user, or their own); its body `userId` is ignored.
    pub async fn cart_for(
        &self,
        request: &CheckoutRequest,
        caller: &Caller,
    ) -> Result<Cart, CheckoutError> {
        if let Some(email) = &request.email {
            validate_email(email)?;
        }
        let body_user = if caller.is_service() {
            if let Some(user_id) = &request.user_id {
                validate_user_id(user_id)?;
            }
            request.user_id.as_deref()
        } else {
            if request.user_id.is_some() {
                tracing::debug!("userId in the body of a non-service caller ignored");
            }
            None
        };
        let user_id = caller.acting_user(body_user);
        let Some(id) = request.checkout_session_id.as_deref() else {
            return self.cart_from_request(request, user_id).await;
        };
        if request.items.is_some() || request.price_id.is_some() {
            return Err(CheckoutError::invalid_field(
                "checkoutSessionId",
                "give either checkoutSessionId or items/priceId, not both",
            ));
        }
        if id.is_empty() || id.len() > 128 {
            return Err(CheckoutError::invalid_field(
                "checkoutSessionId",
                "must be 1–128 characters",
            ));
        }
        let mut cart = self.carts.load(id).await?.ok_or(CheckoutError::CheckoutSessionNotFound)?;
        if caller.is_service() {
            if user_id.is_some() {
                cart.user_id = user_id;
            }
        } else {
            if cart.user_id.is_some() && cart.user_id != user_id {
                return Err(CheckoutError::Forbidden(
                    "This checkout session belongs to another user",
                ));
            }
            cart.user_id = user_id;
        }
        cart.checkout_session_id = Some(id.to_owned());
        if cart.email.is_none() {
            cart.email.clone_from(&request.email);
        }
        cart.mode = parse_mode(request.mode.as_deref(), cart.mode)?;
        Ok(cart)
    }

    /// The Stripe Checkout session `session_id` as Stripe has it now (404
    /// `stripe_session_not_found`).
    pub async fn retrieve_checkout(
        &self,
        session_id: &str,
    ) -> Result<CheckoutSession, CheckoutError> {
        self.api()?.retrieve_checkout_session(session_id).await.map_err(|error| {
            if error.is_not_found() { CheckoutError::StripeSessionNotFound } else { error.into() }
        })
    }

    /// Settles the checkout session a Stripe Checkout session was created from, as Stripe says
    /// (a session fetched from Stripe, never a webhook payload): completed when paid, failed when
    /// the Checkout session expired or finished unpaid (a delayed payment that failed); left
    /// open otherwise. Safe to repeat.
    pub async fn settle_checkout(&self, session: &CheckoutSession) -> Result<(), CheckoutError> {
        let Some(id) = checkout_session_of(session) else { return Ok(()) };
        let status = session.status.as_ref().map(|s| s.as_str());
        match (status, session.payment_status.as_str()) {
            (_, "paid") => self.carts.paid(&id).await,
            (Some("expired"), _) | (Some("complete"), "unpaid") => {
                self.carts.payment_failed(&id).await
            }
            _ => Ok(()),
        }
    }

    /// Finds or creates the user's customer, then creates the Stripe Checkout session.
    /// A guest cart gets no customer of ours (Stripe collects the buyer's details; `email`
    /// prefills them).
    #[tracing::instrument(name = "stripe.create_checkout", skip(self, cart), fields(user_id = cart.user_id.as_deref().unwrap_or("guest"), lines = cart.lines.len()))]
    pub async fn create_checkout(&self, cart: &Cart) -> Result<CheckoutCreated, CheckoutError> {
        let api = self.api()?;
        let customer_id = match &cart.user_id {
            Some(user_id) => Some(self.customer_for_user(user_id, cart.email.as_deref()).await?),
            None => None,
        };
        let session =
            api.create_checkout_session(cart, customer_id.as_deref(), &self.settings).await?;
        let url = session.url.clone().ok_or_else(|| {
            CheckoutError::Internal(anyhow::anyhow!(
                "stripe returned a checkout session without url"
            ))
        })?;
        tracing::info!(session_id = %session.id.as_str(), customer_id = customer_id.as_deref().unwrap_or("none"), "stripe checkout session created");
        Ok(CheckoutCreated { url, session_id: session.id.as_str().to_owned(), customer_id })
    }
}
