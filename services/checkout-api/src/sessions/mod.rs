//! Checkout sessions: the validated cart, its prices, the status machine (open → completed |
//! failed; expired = the sliding TTL ran out) and the operations the routes call. Storage (Redis
//! first, Postgres when Redis is unreachable) is in [`store`].
//!
//! Every unit price comes from the [`Catalog`]: a cart names products and quantities, and every
//! write reprices all its lines from the catalog (a client-sent price that differs is refused).
//! Who may finish a session (complete / fail) is the routes' concern: the payment result or a
//! service-token caller, never an anonymous request.
//!
//! Updates are optimistic: read (which also extends the TTL), apply, reprice, then write only if
//! the stored version is still the one read; a lost race retries a few times and then answers
//! 409 `conflict`, so concurrent writers never lose each other's changes silently.

pub mod store;

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

use crate::catalog::{Catalog, ItemRequest};
use crate::error::CheckoutError;
use crate::metrics::CheckoutMetrics;
use crate::pricing::{Pricing, normalise_code};
use crate::stripe::checkout::{Cart as StripeCart, CartLine, CartSource, Mode};
use store::{Replaced, SessionStore, StatField, Tier};

/// How often an update retries after losing a race before answering 409.
const MAX_UPDATE_ATTEMPTS: usize = 8;
/// Longest userId (bytes).
const MAX_TEXT: usize = 200;

/// Bounds from `[checkout]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_items: usize,
    pub max_distance_km: f64,
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Open,
    Completed,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Completed => "completed",
            Status::Failed => "failed",
        }
    }
}

/// One line of the cart as stored: the catalog's name and unit price at the last write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CartItem {
    pub sku: String,
    pub name: String,
    pub unit_amount_cents: i64,
    pub quantity: i64,
}

/// `POST /api/checkout/sessions`. `userId` counts only for service-token callers (the route
/// decides and passes the acting user to [`Checkout::create`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateSessionRequest {
    #[serde(default)]
    pub user_id: Option<String>,
    pub items: Vec<ItemRequest>,
    #[serde(default)]
    pub coupon_code: Option<String>,
    #[serde(default)]
    pub delivery_distance_km: Option<f64>,
}

/// `PATCH /api/checkout/sessions/{id}`: absent fields stay; `null` removes the coupon or the
/// distance.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateSessionRequest {
    #[serde(default)]
    pub items: Option<Vec<ItemRequest>>,
    #[serde(default, deserialize_with = "present")]
    pub coupon_code: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub delivery_distance_km: Option<Option<f64>>,
}

/// `Some(value)` for a present field, `null` included (as `Some(None)`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// What is stored in Redis (JSON) and in Postgres (`record`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionRecord {
    pub id: Uuid,
    /// Bumped by every write; updates compare it.
    pub version: u64,
    pub status: Status,
    pub user_id: Option<String>,
    pub items: Vec<CartItem>,
    pub coupon_code: Option<String>,
    pub delivery_distance_km: Option<f64>,
    pub subtotal_cents: i64,
    pub discount_cents: i64,
    pub delivery_cents: i64,
    pub total_cents: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The response body: the record, when it expires if left idle, and which tier holds it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    #[serde(flatten)]
    pub record: SessionRecord,
    pub expires_at: DateTime<Utc>,
    pub store: Tier,
}

/// A cart as requested: products and quantities, not yet priced.
#[derive(Debug, Clone)]
struct Cart {
    user_id: Option<String>,
    items: Vec<ItemRequest>,
    coupon_code: Option<String>,
    delivery_distance_km: Option<f64>,
}

/// A cart priced from the catalog.
#[derive(Debug, Clone)]
struct PricedCart {
    user_id: Option<String>,
    items: Vec<CartItem>,
    coupon_code: Option<String>,
    delivery_distance_km: Option<f64>,
}

impl Cart {
    /// The lines of a stored cart, to be priced again.
    fn lines_of(items: &[CartItem]) -> Vec<ItemRequest> {
        items.iter().map(|item| ItemRequest::of(&item.sku, item.quantity)).collect()
    }

    fn validate(self, limits: &Limits) -> Result<Cart, CheckoutError> {
        if let Some(user_id) = &self.user_id {
            check_text("userId", user_id)?;
        }
        if self.items.is_empty() {
            return Err(CheckoutError::invalid("empty_cart", "items must hold at least one item"));
        }
        if self.items.len() > limits.max_items {
            return Err(CheckoutError::invalid(
                "too_many_items",
                format!("items may hold at most {} entries", limits.max_items),
            ));
        }
        let coupon_code = self.coupon_code.as_deref().map(normalise_code).transpose()?;
        if let Some(distance) = self.delivery_distance_km {
            check_distance(distance, limits)?;
        }
        Ok(Cart { coupon_code, ..self })
    }

    /// Prices the lines from the catalog (unknown products, bad quantities and differing client
    /// prices are refused there).
    async fn priced(self, catalog: &Catalog) -> Result<PricedCart, CheckoutError> {
        let items = catalog
            .price_items(&self.items)
            .await?
            .into_iter()
            .map(|item| CartItem {
                sku: item.sku,
                name: item.name,
                unit_amount_cents: item.unit_amount_cents,
                quantity: item.quantity,
            })
            .collect();
        Ok(PricedCart {
            user_id: self.user_id,
            items,
            coupon_code: self.coupon_code,
            delivery_distance_km: self.delivery_distance_km,
        })
    }
}

impl PricedCart {
    fn subtotal_cents(&self) -> i64 {
        // Bounded by max_items × MAX_QUANTITY × MAX_UNIT_AMOUNT_CENTS, far below i64::MAX for
        // any sane `max_items`; saturate rather than wrap if someone configures an absurd one.
        self.items
            .iter()
            .fold(0i64, |sum, item| sum.saturating_add(item.unit_amount_cents * item.quantity))
    }
}

/// Distances must be finite, ≥ 0 and within `checkout.max_distance_km`.
pub fn check_distance(distance_km: f64, limits: &Limits) -> Result<(), CheckoutError> {
    if !distance_km.is_finite() || distance_km < 0.0 {
        return Err(CheckoutError::invalid(
            "invalid_distance",
            "deliveryDistanceKm must be a finite number >= 0",
        ));
    }
    if distance_km > limits.max_distance_km {
        return Err(CheckoutError::invalid(
            "invalid_distance",
            format!("deliveryDistanceKm must be at most {}", limits.max_distance_km),
        ));
    }
    Ok(())
}

fn check_text(field: &str, value: &str) -> Result<(), CheckoutError> {
    if value.trim().is_empty() {
        return Err(CheckoutError::invalid("invalid_item", format!("{field} must not be empty")));
    }
    if value.len() > MAX_TEXT || value.chars().any(char::is_control) {
        return Err(CheckoutError::invalid(
            "invalid_item",
            format!("{field} must be at most {MAX_TEXT} bytes without control characters"),
        ));
    }
    Ok(())
}

/// Parses a session id from the path.
pub fn parse_id(raw: &str) -> Result<Uuid, CheckoutError> {
    Uuid::parse_str(raw).map_err(|_| CheckoutError::InvalidSessionId)
}

/// Subtotal, discount, delivery and total of a cart, in cents.
#[derive(Debug, Clone, Copy)]
struct Amounts {
    subtotal: i64,
    discount: i64,
    delivery: i64,
}

/// The checkout-session operations. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Checkout {
    pub store: SessionStore,
    pub pricing: Pricing,
    pub catalog: Catalog,
    pub limits: Limits,
    metrics: CheckoutMetrics,
}

impl Checkout {
    pub fn new(
        store: SessionStore,
        pricing: Pricing,
        catalog: Catalog,
        limits: Limits,
        metrics: CheckoutMetrics,
    ) -> Self {
        Self { store, pricing, catalog, limits, metrics }
    }

    async fn price(&self, cart: &PricedCart) -> Result<Amounts, CheckoutError> {
        let subtotal = cart.subtotal_cents();
        let discount = match &cart.coupon_code {
            Some(code) => self.pricing.discount(code, subtotal).await?,
            None => 0,
        };
        let delivery = match cart.delivery_distance_km {
            Some(distance) => self.pricing.delivery(distance).await?,
            None => 0,
        };
        Ok(Amounts { subtotal, discount, delivery })
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
        let cart = Cart {
            user_id,
            items: request.items,
            coupon_code: request.coupon_code,
            delivery_distance_km: request.delivery_distance_km,
        }
        .validate(&self.limits)?
        .priced(&self.catalog)
        .await?;
        let amounts = self.price(&cart).await?;
        let now = Utc::now();
        let record = SessionRecord {
            id: Uuid::new_v4(),
            version: 1,
            status: Status::Open,
            user_id: cart.user_id,
            items: cart.items,
            coupon_code: cart.coupon_code,
            delivery_distance_km: cart.delivery_distance_km,
            subtotal_cents: amounts.subtotal,
            discount_cents: amounts.discount,
            delivery_cents: amounts.delivery,
            total_cents: amounts.subtotal - amounts.discount + amounts.delivery,
            created_at: now,
            updated_at: now,
        };
        let tier = self.store.create(&record, micros(started.elapsed())).await?;
        self.metrics.created(tier);
        tracing::info!(session_id = %record.id, store = tier.as_str(), total_cents = record.total_cents, "checkout session created");
        Ok(self.view(record, tier))
    }

    /// The session (extending its TTL) as the JSON of its [`SessionView`], or 404 once expired.
    ///
    /// Reads are the hot path: a record from Redis is passed through as stored (serde_json wrote
    /// it from a [`SessionRecord`]) with the two read-time fields appended, the same bytes that
    /// decoding and serialising the view would give, without the decode and re-encode.
    #[tracing::instrument(name = "checkout.get", skip(self))]
    pub async fn get_json(&self, id: Uuid) -> Result<String, CheckoutError> {
        let (json, tier) = self.store.get_json(id).await?.ok_or(CheckoutError::SessionNotFound)?;
        let expires_at = self.view_expiry();
        match tier {
            Tier::Redis if json.starts_with("{\"id\":") && json.ends_with('}') => {
                let mut body = json;
                body.pop();
                body.push_str(",\"expiresAt\":\"");
                push_rfc3339(&mut body, expires_at);
                body.push_str("\",\"store\":\"redis\"}");
                Ok(body)
            }
            // Postgres' jsonb text has its own key order and spacing: decode for one shape.
            _ => {
                let record: SessionRecord = serde_json::from_str(&json)?;
                Ok(serde_json::to_string(&SessionView { record, expires_at, store: tier })?)
            }
        }
    }

    /// Applies `request` to an open session and reprices it.
    #[tracing::instrument(name = "checkout.update", skip(self, request))]
    pub async fn update(
        &self,
        id: Uuid,
        request: UpdateSessionRequest,
    ) -> Result<SessionView, CheckoutError> {
        if request.items.is_none()
            && request.coupon_code.is_none()
            && request.delivery_distance_km.is_none()
        {
            return Err(CheckoutError::invalid(
                "empty_update",
                "Nothing to update: the body names no field",
            ));
        }
        self.write(id, "updated", None, |current| {
            let cart = Cart {
                user_id: current.user_id.clone(),
                items: request.items.clone().unwrap_or_else(|| Cart::lines_of(&current.items)),
                coupon_code: request
                    .coupon_code
                    .clone()
                    .unwrap_or_else(|| current.coupon_code.clone()),
                delivery_distance_km: request
                    .delivery_distance_km
                    .unwrap_or(current.delivery_distance_km),
            };
            Ok(Change::Reprice(cart))
        })
        .await
    }

    /// Prices an open session's lines from the catalog as it is now, writing only when something
    /// changed; the session's record afterwards. Run before a payment, so it charges what the
    /// catalog says today rather than what it said when the cart was filled.
    #[tracing::instrument(name = "checkout.refresh_prices", skip(self))]
    pub async fn refresh_prices(&self, id: Uuid) -> Result<SessionRecord, CheckoutError> {
        let view = self
            .write(id, "paid", None, |current| {
                Ok(Change::Refresh(Cart {
                    user_id: current.user_id.clone(),
                    items: Cart::lines_of(&current.items),
                    coupon_code: current.coupon_code.clone(),
                    delivery_distance_km: current.delivery_distance_km,
                }))
            })
            .await?;
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
        let view = self.write(id, action, Some(stat), |_| Ok(Change::Status(target))).await?;
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
        F: Fn(&SessionRecord) -> Result<Change, CheckoutError>,
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
            let change = change(&current)?;
            let refresh = matches!(change, Change::Refresh(_));
            match change {
                Change::Status(status) => next.status = status,
                Change::Reprice(cart) | Change::Refresh(cart) => {
                    let cart = cart.validate(&self.limits)?.priced(&self.catalog).await?;
                    let amounts = self.price(&cart).await?;
                    next.items = cart.items;
                    next.coupon_code = cart.coupon_code;
                    next.delivery_distance_km = cart.delivery_distance_km;
                    next.subtotal_cents = amounts.subtotal;
                    next.discount_cents = amounts.discount;
                    next.delivery_cents = amounts.delivery;
                    next.total_cents = amounts.subtotal - amounts.discount + amounts.delivery;
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
                let items = record.items.iter().map(|item| CartLine::Inline {
                    name: item.name.clone(),
                    unit_amount_cents: item.unit_amount_cents,
                    quantity: u64::try_from(item.quantity).unwrap_or(1),
                });
                let delivery = (record.delivery_cents > 0).then(|| CartLine::Inline {
                    name: "Delivery".to_owned(),
                    unit_amount_cents: record.delivery_cents,
                    quantity: 1,
                });
                items.chain(delivery).collect()
            } else {
                vec![CartLine::Inline {
                    name: format!("Order {id}"),
                    unit_amount_cents: record.total_cents,
                    quantity: 1,
                }]
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
                .map(|item| CartLine::Inline {
                    name: item.name,
                    unit_amount_cents: item.unit_amount_cents,
                    // 1..=MAX_QUANTITY, checked by the catalog.
                    quantity: u64::try_from(item.quantity).unwrap_or(1),
                })
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

/// Appends `time` exactly as chrono's serde writes it (RFC 3339 in UTC with `Z`, the fraction in 0,
/// 3, 6 or 9 digits as needed), without the `fmt` machinery, which cost a session read more than
/// the rest of its body building. Years past 9999 and leap seconds go through serde.
fn push_rfc3339(out: &mut String, time: DateTime<Utc>) {
    use chrono::{Datelike, Timelike};
    let year = u32::try_from(time.year()).ok().filter(|year| *year <= 9999);
    let nanos = time.nanosecond();
    let Some(year) = year.filter(|_| nanos < 1_000_000_000) else {
        let quoted = serde_json::to_string(&time).unwrap_or_default();
        return out.push_str(quoted.trim_matches('"'));
    };
    push_digits(out, year, 4);
    for (separator, value) in [
        ('-', time.month()),
        ('-', time.day()),
        ('T', time.hour()),
        (':', time.minute()),
        (':', time.second()),
    ] {
        out.push(separator);
        push_digits(out, value, 2);
    }
    if nanos > 0 {
        out.push('.');
        if nanos.is_multiple_of(1_000_000) {
            push_digits(out, nanos / 1_000_000, 3);
        } else if nanos.is_multiple_of(1_000) {
            push_digits(out, nanos / 1_000, 6);
        } else {
            push_digits(out, nanos, 9);
        }
    }
    out.push('Z');
}

/// The last `digits` decimal digits of `value`, zero-padded.
fn push_digits(out: &mut String, value: u32, digits: u32) {
    let mut divisor = 10u32.pow(digits - 1);
    while divisor > 0 {
        out.push(char::from(b'0' + (value / divisor % 10) as u8));
        divisor /= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_times_are_written_exactly_as_serde_writes_them() {
        let times = [
            "2026-11-23T01:29:07.882864463Z",
            "2026-11-23T01:29:07.882864Z",
            "2026-11-23T01:29:07.882Z",
            "2026-11-23T01:29:07Z",
            "0999-01-02T03:04:05.000000006Z",
            "9999-12-31T23:59:59.999999999Z",
            "+10000-01-01T00:00:00Z",
        ];
        for text in times {
            let time: DateTime<Utc> = text.parse().unwrap_or_default();
            let mut ours = String::new();
            push_rfc3339(&mut ours, time);
            let serde = serde_json::to_string(&time).unwrap_or_default();
            assert_eq!(format!("\"{ours}\""), serde, "{text}");
        }
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .and_then(|d| d.and_hms_nano_opt(23, 59, 59, 1_500_000_000))
            .map(|t| t.and_utc())
            .unwrap_or_default();
        let mut ours = String::new();
        push_rfc3339(&mut ours, leap);
        assert_eq!(format!("\"{ours}\""), serde_json::to_string(&leap).unwrap_or_default());
    }

    fn item(quantity: i64) -> ItemRequest {
        ItemRequest::of("tea", quantity)
    }

    fn cart(items: Vec<ItemRequest>) -> Cart {
        Cart { user_id: None, items, coupon_code: None, delivery_distance_km: None }
    }

    const LIMITS: Limits = Limits { max_items: 3, max_distance_km: 100.0 };

    #[test]
    fn cart_rules_reject_empty_and_oversized_carts_and_bad_distances_with_their_codes() {
        let code = |c: Cart| c.validate(&LIMITS).err().map(|e| e.code());
        assert_eq!(code(cart(vec![])), Some("empty_cart"));
        assert_eq!(code(cart(vec![item(1); 4])), Some("too_many_items"));
        let mut negative = cart(vec![item(1)]);
        negative.delivery_distance_km = Some(-0.5);
        assert_eq!(code(negative), Some("invalid_distance"));
    }

    #[test]
    fn subtotal_is_the_sum_of_unit_price_times_quantity() {
        let line = |quantity: i64, unit_amount_cents: i64| CartItem {
            sku: "tea".into(),
            name: "Tea".into(),
            unit_amount_cents,
            quantity,
        };
        let priced = PricedCart {
            user_id: None,
            items: vec![line(2, 250), line(1, 99)],
            coupon_code: None,
            delivery_distance_km: None,
        };
        assert_eq!(priced.subtotal_cents(), 599);
    }
}
