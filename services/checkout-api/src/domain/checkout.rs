//! The checkout-session operations the routes and the Stripe flow call: create, read, update,
//! reprice, complete and fail, over the Redis-first session store.
//!
//! Every unit price comes from the [`Catalog`]: a cart names products and quantities, and every
//! write reprices all its lines from the catalog (a client-sent price that differs is refused).
//! Who may finish a session (complete / fail) is the routes' concern: the payment result or a
//! service-token caller, never an anonymous request.
//!
//! Updates are optimistic: read (which also extends the TTL), apply, reprice, then write only if
//! the stored version is still the one read; a lost race retries a few times and then answers
//! 409 `conflict`, so concurrent writers never lose each other's changes silently.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db::catalog::Catalog;
use crate::db::pricing::Pricing;
use crate::db::sessions::PgSessions;
use crate::domain::catalog::ItemRequest;
use crate::domain::session_store::{Replaced, StatField};
use crate::domain::sessions::{
    Amounts, Cart, CreateSessionRequest, Limits, PricedCart, SessionRecord, SessionView, Status,
    Tier, UpdateSessionRequest, view_json,
};
use crate::domain::stripe::{Cart as StripeCart, CartLine, CartSource, Mode};
use crate::error::CheckoutError;
use crate::metrics::CheckoutMetrics;
use crate::store::sessions::{RedisSessions, SessionStore};

/// How often an update retries after losing a race before answering 409.
const MAX_UPDATE_ATTEMPTS: usize = 8;

/// The session store of this service: Redis, then Postgres.
pub type Sessions = SessionStore<RedisSessions, PgSessions>;

/// The checkout-session operations. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Checkout {
    pub store: Sessions,
    pub pricing: Pricing,
    pub catalog: Catalog,
    pub limits: Limits,
    metrics: CheckoutMetrics,
}

/// What one write does to the record it read.
enum Change {
    Status(Status),
    Reprice(Cart),
    /// Reprice, but leave the record alone when nothing changed.
    Refresh(Cart),
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}

impl Checkout {
    pub fn new(
        store: Sessions,
        pricing: Pricing,
        catalog: Catalog,
        limits: Limits,
        metrics: CheckoutMetrics,
    ) -> Self {
        Self { store, pricing, catalog, limits, metrics }
    }

    /// Validates `cart` and prices it from the catalog (unknown products, bad quantities and
    /// differing client prices are refused there), then its coupon and delivery.
    async fn price(&self, cart: Cart) -> Result<(PricedCart, Amounts), CheckoutError> {
        let cart = cart.validate(&self.limits)?;
        let items = self.catalog.price_items(&cart.items).await?;
        let cart = cart.priced(items);
        let subtotal = cart.subtotal_cents();
        let discount = match &cart.coupon_code {
            Some(code) => self.pricing.discount(code, subtotal).await?,
            None => 0,
        };
        let delivery = match cart.delivery_distance_km {
            Some(distance) => self.pricing.delivery(distance).await?,
            None => 0,
        };
        Ok((cart, Amounts { subtotal, discount, delivery }))
    }

    fn view(&self, record: SessionRecord, tier: Tier) -> SessionView {
        SessionView { record, expires_at: self.view_expiry(), store: tier }
    }

    /// When a session touched now expires if left idle.
    fn view_expiry(&self) -> DateTime<Utc> {
        let ttl = chrono::Duration::from_std(self.store.ttl()).unwrap_or(chrono::Duration::zero());
        Utc::now() + ttl
    }

    /// Validates, prices and stores a new open session for `user_id` (the acting user the route
    /// resolved; the request's own `userId` is not read here).
    #[tracing::instrument(name = "checkout.create", skip_all)]
    pub async fn create(
        &self,
        request: CreateSessionRequest,
        user_id: Option<String>,
    ) -> Result<SessionView, CheckoutError> {
        let started = Instant::now();
        let (cart, amounts) = self
            .price(Cart {
                user_id,
                items: request.items,
                coupon_code: request.coupon_code,
                delivery_distance_km: request.delivery_distance_km,
            })
            .await?;
        let record = SessionRecord::open(cart, amounts, Utc::now());
        let tier = self.store.create(&record, micros(started.elapsed())).await?;
        self.metrics.created(tier);
        tracing::info!(session_id = %record.id, store = tier.as_str(), total_cents = record.total_cents, "checkout session created");
        Ok(self.view(record, tier))
    }

    /// The session (extending its TTL) as the JSON of its [`SessionView`], or 404 once expired.
    #[tracing::instrument(name = "checkout.get", skip(self))]
    pub async fn get_json(&self, id: Uuid) -> Result<String, CheckoutError> {
        let (json, tier) = self.store.get_json(id).await?.ok_or(CheckoutError::SessionNotFound)?;
        view_json(json, tier, self.view_expiry())
    }

    /// Applies `request` to an open session and reprices it.
    #[tracing::instrument(name = "checkout.update", skip(self, request))]
    pub async fn update(
        &self,
        id: Uuid,
        request: UpdateSessionRequest,
    ) -> Result<SessionView, CheckoutError> {
        if request.is_empty() {
            return Err(CheckoutError::invalid(
                "empty_update",
                "Nothing to update: the body names no field",
            ));
        }
        self.write(id, "updated", None, |current| Change::Reprice(request.apply_to(current))).await
    }

    /// Prices an open session's lines from the catalog as it is now, writing only when something
    /// changed; the session's record afterwards. Run before a payment, so it charges what the
    /// catalog says today rather than what it said when the cart was filled.
    #[tracing::instrument(name = "checkout.refresh_prices", skip(self))]
    pub async fn refresh_prices(&self, id: Uuid) -> Result<SessionRecord, CheckoutError> {
        let view = self.write(id, "paid", None, |current| Change::Refresh(current.cart())).await?;
        Ok(view.record)
    }

    /// Moves the session to `target` because Stripe settled its payment; a session already
    /// settled (an earlier event or the success page), expired or unknown is left as it is.
    async fn settle_by_payment(
        &self,
        checkout_session_id: &str,
        target: Status,
    ) -> Result<(), CheckoutError> {
        let Ok(id) = Uuid::parse_str(checkout_session_id) else { return Ok(()) };
        match self.transition(id, target).await {
            Ok(_) => {
                tracing::info!(session_id = %id, status = ?target, "checkout session settled by its stripe payment");
                Ok(())
            }
            Err(CheckoutError::InvalidTransition { .. } | CheckoutError::SessionNotFound) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Moves an open session to `target` (completed or failed).
    #[tracing::instrument(name = "checkout.transition", skip(self))]
    pub async fn transition(&self, id: Uuid, target: Status) -> Result<SessionView, CheckoutError> {
        let (action, stat) = match target {
            Status::Completed => ("completed", StatField::Completed),
            Status::Failed => ("failed", StatField::Failed),
            Status::Open => {
                return Err(CheckoutError::invalid(
                    "invalid_transition",
                    "cannot reopen a session",
                ));
            }
        };
        let view = self.write(id, action, Some(stat), |_| Change::Status(target)).await?;
        self.metrics.finished(target);
        tracing::info!(session_id = %id, status = target.as_str(), "checkout session finished");
        Ok(view)
    }

    /// The optimistic read-modify-write loop shared by update and the transitions.
    async fn write<F>(
        &self,
        id: Uuid,
        action: &'static str,
        stat: Option<StatField>,
        change: F,
    ) -> Result<SessionView, CheckoutError>
    where
        F: Fn(&SessionRecord) -> Change,
    {
        let started = Instant::now();
        for _ in 0..MAX_UPDATE_ATTEMPTS {
            let (current, tier) =
                self.store.get(id).await?.ok_or(CheckoutError::SessionNotFound)?;
            if current.status != Status::Open {
                return Err(CheckoutError::InvalidTransition {
                    status: current.status.as_str(),
                    action,
                });
            }
            let mut next = current.clone();
            let change = change(&current);
            let refresh = matches!(change, Change::Refresh(_));
            match change {
                Change::Status(status) => next.status = status,
                Change::Reprice(cart) | Change::Refresh(cart) => {
                    let (cart, amounts) = self.price(cart).await?;
                    next.set_cart(cart, amounts);
                }
            }
            if refresh && next == current {
                return Ok(self.view(current, tier));
            }
            next.version = current.version + 1;
            next.updated_at = Utc::now();
            match self
                .store
                .replace(tier, &next, current.version, stat, micros(started.elapsed()))
                .await?
            {
                Replaced::Done => return Ok(self.view(next, tier)),
                Replaced::Gone => return Err(CheckoutError::SessionNotFound),
                Replaced::Conflict => {
                    tracing::debug!(session_id = %id, "lost an update race; retrying");
                    tokio::task::yield_now().await;
                }
            }
        }
        Err(CheckoutError::Conflict)
    }
}

/// One Stripe line of a catalog-priced item (quantity 1..=MAX_QUANTITY, checked by the catalog).
fn inline_line(name: String, unit_amount_cents: i64, quantity: i64) -> CartLine {
    CartLine::Inline { name, unit_amount_cents, quantity: u64::try_from(quantity).unwrap_or(1) }
}

/// The Stripe checkout's carts are open checkout sessions (`checkoutSessionId`), repriced from the
/// catalog first. Each item is one Stripe line at its catalog price, plus a delivery line; when a
/// coupon discounts the order, one line for the session's total instead, so Stripe charges
/// exactly what the session shows. A paid Stripe Checkout completes the session. Direct checkouts
/// price their items from the same catalog.
impl CartSource for Checkout {
    fn load<'a>(
        &'a self,
        checkout_session_id: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<StripeCart>, CheckoutError>> + Send + 'a>> {
        Box::pin(async move {
            let Ok(id) = Uuid::parse_str(checkout_session_id) else { return Ok(None) };
            let record = match self.refresh_prices(id).await {
                Ok(record) => record,
                Err(CheckoutError::SessionNotFound) => return Ok(None),
                Err(error) => return Err(error),
            };
            let lines = if record.discount_cents == 0 {
                let items = record.items.iter().map(|item| {
                    inline_line(item.name.clone(), item.unit_amount_cents, item.quantity)
                });
                let delivery = (record.delivery_cents > 0)
                    .then(|| inline_line("Delivery".to_owned(), record.delivery_cents, 1));
                items.chain(delivery).collect()
            } else {
                vec![inline_line(format!("Order {id}"), record.total_cents, 1)]
            };
            Ok(Some(StripeCart {
                user_id: record.user_id,
                email: None,
                lines,
                mode: Mode::Payment,
                checkout_session_id: Some(id.to_string()),
            }))
        })
    }

    fn paid<'a>(
        &'a self,
        checkout_session_id: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), CheckoutError>> + Send + 'a>> {
        Box::pin(self.settle_by_payment(checkout_session_id, Status::Completed))
    }

    fn payment_failed<'a>(
        &'a self,
        checkout_session_id: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), CheckoutError>> + Send + 'a>> {
        Box::pin(self.settle_by_payment(checkout_session_id, Status::Failed))
    }

    fn price_items<'a>(
        &'a self,
        items: &'a [ItemRequest],
    ) -> Pin<Box<dyn Future<Output = Result<Vec<CartLine>, CheckoutError>> + Send + 'a>> {
        Box::pin(async move {
            let priced = self.catalog.price_items(items).await?;
            Ok(priced
                .into_iter()
                .map(|item| inline_line(item.name, item.unit_amount_cents, item.quantity))
                .collect())
        })
    }

    fn listed_price<'a>(
        &'a self,
        price_id: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), CheckoutError>> + Send + 'a>> {
        Box::pin(async move { self.catalog.listed_price(price_id).await.map(drop) })
    }
}
