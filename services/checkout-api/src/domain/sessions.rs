//! Checkout sessions as data: the validated cart, its prices, the status machine (open →
//! completed | failed; expired = the sliding TTL ran out), the record both storage tiers hold and
//! the response body built from it. The operations that read and write them are in
//! [`crate::domain::checkout`]; the tiers in `store::sessions` and `db::sessions`.

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::catalog::{ItemRequest, PricedItem};
use crate::domain::pricing::normalise_code;
use crate::error::CheckoutError;

/// Longest userId (bytes).
const MAX_TEXT: usize = 200;

/// Bounds from `[checkout]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_items: usize,
    pub max_distance_km: f64,
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = SessionStatus)]
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

/// The tier that holds a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Redis,
    Postgres,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Redis => "redis",
            Tier::Postgres => "postgres",
        }
    }
}

/// Label of the session counters: the tier that took the write.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabel {
    pub store: &'static str,
}

/// One line of the cart as stored: the catalog's name and unit price at the last write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CartItem {
    pub sku: String,
    pub name: String,
    pub unit_amount_cents: i64,
    pub quantity: i64,
}

/// `POST /api/checkout/sessions`. `userId` counts only for service-token callers (the route
/// decides and passes the acting user to `Checkout::create`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateSessionRequest {
    /// The user the session is for; read only from a service-token caller (1–200 bytes without
    /// control characters), ignored otherwise.
    #[serde(default)]
    pub user_id: Option<String>,
    /// At most `checkout.max_items` lines.
    #[schema(min_items = 1)]
    pub items: Vec<ItemRequest>,
    /// 1 to 32 letters, digits, `_` or `-` (trimmed, case-insensitive).
    #[serde(default)]
    pub coupon_code: Option<String>,
    /// At most `checkout.max_distance_km`.
    #[serde(default)]
    #[schema(minimum = 0)]
    pub delivery_distance_km: Option<f64>,
}

/// `PATCH /api/checkout/sessions/{id}`: absent fields stay; `null` removes the coupon or the
/// distance. A body naming no field is refused (400 `empty_update`).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateSessionRequest {
    /// Replaces the lines (as on create); `null` keeps them.
    #[serde(default)]
    pub items: Option<Vec<ItemRequest>>,
    /// `null` removes the coupon.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub coupon_code: Option<Option<String>>,
    /// `null` removes the delivery.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<f64>, minimum = 0)]
    pub delivery_distance_km: Option<Option<f64>>,
}

impl UpdateSessionRequest {
    /// True when the body names no field.
    pub fn is_empty(&self) -> bool {
        self.items.is_none() && self.coupon_code.is_none() && self.delivery_distance_km.is_none()
    }

    /// The cart `current` becomes under this update (not yet validated or priced).
    pub fn apply_to(&self, current: &SessionRecord) -> Cart {
        Cart {
            user_id: current.user_id.clone(),
            items: self.items.clone().unwrap_or_else(|| Cart::lines_of(&current.items)),
            coupon_code: self.coupon_code.clone().unwrap_or_else(|| current.coupon_code.clone()),
            delivery_distance_km: self.delivery_distance_km.unwrap_or(current.delivery_distance_km),
        }
    }
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
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

impl SessionRecord {
    /// A new open session (version 1) holding `cart` at `amounts`.
    pub fn open(cart: PricedCart, amounts: Amounts, now: DateTime<Utc>) -> Self {
        let mut record = SessionRecord {
            id: Uuid::new_v4(),
            version: 1,
            status: Status::Open,
            user_id: cart.user_id.clone(),
            items: Vec::new(),
            coupon_code: None,
            delivery_distance_km: None,
            subtotal_cents: 0,
            discount_cents: 0,
            delivery_cents: 0,
            total_cents: 0,
            created_at: now,
            updated_at: now,
        };
        record.set_cart(cart, amounts);
        record
    }

    /// Replaces the cart's lines, coupon, distance and amounts (the user stays).
    pub fn set_cart(&mut self, cart: PricedCart, amounts: Amounts) {
        self.items = cart.items;
        self.coupon_code = cart.coupon_code;
        self.delivery_distance_km = cart.delivery_distance_km;
        self.subtotal_cents = amounts.subtotal;
        self.discount_cents = amounts.discount;
        self.delivery_cents = amounts.delivery;
        self.total_cents = amounts.total();
    }

    /// The cart this record holds, to be validated and priced again.
    pub fn cart(&self) -> Cart {
        Cart {
            user_id: self.user_id.clone(),
            items: Cart::lines_of(&self.items),
            coupon_code: self.coupon_code.clone(),
            delivery_distance_km: self.delivery_distance_km,
        }
    }
}

/// The response body: the record, when it expires if left idle, and which tier holds it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    #[serde(flatten)]
    pub record: SessionRecord,
    pub expires_at: DateTime<Utc>,
    pub store: Tier,
}

/// A cart: its lines (as requested, products and quantities not yet priced; or as priced by the
/// catalog, [`PricedCart`]), coupon and delivery distance.
#[derive(Debug, Clone)]
pub struct Cart<Line = ItemRequest> {
    pub user_id: Option<String>,
    pub items: Vec<Line>,
    pub coupon_code: Option<String>,
    pub delivery_distance_km: Option<f64>,
}

/// A cart priced from the catalog.
pub type PricedCart = Cart<CartItem>;

impl Cart {
    /// The lines of a stored cart, to be priced again.
    fn lines_of(items: &[CartItem]) -> Vec<ItemRequest> {
        items.iter().map(|item| ItemRequest::of(&item.sku, item.quantity)).collect()
    }

    pub fn validate(self, limits: &Limits) -> Result<Cart, CheckoutError> {
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

    /// This cart with its lines as the catalog priced them (`items`, in the same order).
    pub fn priced(self, items: Vec<PricedItem>) -> PricedCart {
        let items = items
            .into_iter()
            .map(|item| CartItem {
                sku: item.sku,
                name: item.name,
                unit_amount_cents: item.unit_amount_cents,
                quantity: item.quantity,
            })
            .collect();
        Cart {
            user_id: self.user_id,
            items,
            coupon_code: self.coupon_code,
            delivery_distance_km: self.delivery_distance_km,
        }
    }
}

impl PricedCart {
    pub fn subtotal_cents(&self) -> i64 {
        // Bounded by max_items × MAX_QUANTITY × MAX_UNIT_AMOUNT_CENTS, far below i64::MAX for
        // any sane `max_items`; saturate rather than wrap if someone configures an absurd one.
        self.items
            .iter()
            .fold(0i64, |sum, item| sum.saturating_add(item.unit_amount_cents * item.quantity))
    }
}

/// Subtotal, discount and delivery of a cart, in cents.
#[derive(Debug, Clone, Copy)]
pub struct Amounts {
    pub subtotal: i64,
    pub discount: i64,
    pub delivery: i64,
}

impl Amounts {
    /// Saturating: each part is bounded at the door, so this never saturates; a stored value from
    /// before those bounds must not panic a request.
    pub fn total(self) -> i64 {
        self.subtotal.saturating_sub(self.discount).saturating_add(self.delivery)
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

/// The JSON of a [`SessionView`] from the stored JSON of its record.
///
/// Reads are the hot path: a record from Redis is passed through as stored (serde_json wrote it
/// from a [`SessionRecord`]) with the two read-time fields appended, the same bytes that decoding
/// and serialising the view would give, without the decode and re-encode.
pub fn view_json(
    json: String,
    tier: Tier,
    expires_at: DateTime<Utc>,
) -> Result<String, CheckoutError> {
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
