//! Pricing of a cart as rules: coupon discounts and delivery charges by distance band. The
//! definitions live in Postgres (`db::pricing`), read through the shared two-tier cache (coupon
//! lookups 10 min, delivery bands 5 min by default) and invalidated when an admin changes them.
//!
//! What is cached is the *definition* (a coupon by code, unknown codes included; the whole band
//! table), not the per-cart outcome: expiry and minimum order depend on the moment and the cart,
//! so they are checked on every use, while the Postgres read is what the cache saves. One cached
//! band table also serves every distance, where caching per distance (a
//! `delivery:cache:{distance}` key) would let arbitrary client input create entries.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::catalog::MAX_UNIT_AMOUNT_CENTS as MAX_AMOUNT_CENTS;
use crate::error::CheckoutError;

/// Percent or fixed amount off the subtotal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CouponKind {
    Percent,
    Amount,
}

impl CouponKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CouponKind::Percent => "percent",
            CouponKind::Amount => "amount",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "percent" => Some(CouponKind::Percent),
            "amount" => Some(CouponKind::Amount),
            _ => None,
        }
    }
}

/// A coupon as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Coupon {
    pub code: String,
    pub kind: CouponKind,
    /// Percent (1..=100) or cents off.
    pub value: i64,
    pub min_order_cents: i64,
    pub expires_at: Option<DateTime<Utc>>,
    pub active: bool,
}

impl Coupon {
    /// The discount on `subtotal_cents` at `now`, or why the coupon does not apply.
    pub fn discount(&self, subtotal_cents: i64, now: DateTime<Utc>) -> Result<i64, CheckoutError> {
        if !self.active {
            return Err(CheckoutError::CouponInactive);
        }
        if self.expires_at.is_some_and(|at| at <= now) {
            return Err(CheckoutError::CouponExpired);
        }
        if subtotal_cents < self.min_order_cents {
            return Err(CheckoutError::CouponMinimumNotMet {
                min_order_cents: self.min_order_cents,
            });
        }
        let discount = match self.kind {
            // Rounded down: the customer never gets more than the percentage.
            CouponKind::Percent => {
                i64::try_from(i128::from(subtotal_cents) * i128::from(self.value) / 100)
                    .unwrap_or(subtotal_cents)
            }
            CouponKind::Amount => self.value,
        };
        Ok(discount.clamp(0, subtotal_cents))
    }
}

/// Normalises a coupon code (trimmed, upper case) and checks its shape.
pub fn normalise_code(raw: &str) -> Result<String, CheckoutError> {
    let code = raw.trim().to_ascii_uppercase();
    let valid = !code.is_empty()
        && code.len() <= 32
        && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(code)
    } else {
        Err(CheckoutError::invalid(
            "invalid_coupon_code",
            "couponCode must be 1 to 32 letters, digits, `_` or `-`",
        ))
    }
}

/// One delivery band: distances up to `up_to_km` (inclusive) cost `charge_cents`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeliveryBand {
    #[schema(exclusive_minimum = 0)]
    pub up_to_km: f64,
    #[schema(minimum = 0, maximum = 99_999_999)]
    pub charge_cents: i64,
}

/// The delivery charge of `distance_km` under `bands` (sorted by `up_to_km`).
pub fn delivery_charge(bands: &[DeliveryBand], distance_km: f64) -> Result<i64, CheckoutError> {
    bands.iter().find(|band| distance_km <= band.up_to_km).map(|band| band.charge_cents).ok_or(
        CheckoutError::DeliveryOutOfRange {
            distance_km,
            max_km: bands.last().map_or(0.0, |band| band.up_to_km),
        },
    )
}

/// Checks a band table an admin submits: 1..=100 bands, finite positive distances without
/// duplicates, charges within 0..=[`MAX_AMOUNT_CENTS`]. Returns it sorted.
pub fn validate_bands(mut bands: Vec<DeliveryBand>) -> Result<Vec<DeliveryBand>, CheckoutError> {
    if bands.is_empty() || bands.len() > 100 {
        return Err(CheckoutError::invalid("invalid_bands", "bands must hold 1 to 100 entries"));
    }
    for band in &bands {
        if !band.up_to_km.is_finite() || band.up_to_km <= 0.0 {
            return Err(CheckoutError::invalid(
                "invalid_bands",
                "upToKm must be a finite number above 0",
            ));
        }
        if !(0..=MAX_AMOUNT_CENTS).contains(&band.charge_cents) {
            return Err(CheckoutError::invalid(
                "invalid_bands",
                format!("chargeCents must be between 0 and {MAX_AMOUNT_CENTS}"),
            ));
        }
    }
    bands.sort_by(|a, b| a.up_to_km.total_cmp(&b.up_to_km));
    if bands.windows(2).any(|pair| pair[0].up_to_km == pair[1].up_to_km) {
        return Err(CheckoutError::invalid("invalid_bands", "upToKm values must be distinct"));
    }
    Ok(bands)
}

/// The body of the admin coupon routes (`code` comes from the path on PUT).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CouponRequest {
    /// Required on create; on replace, if present, must name the path's code. 1 to 32 letters,
    /// digits, `_` or `-` (trimmed, stored upper case).
    #[serde(default)]
    pub code: Option<String>,
    pub kind: CouponKind,
    /// Percent 1..=100, or cents 1..=99 999 999.
    #[schema(minimum = 1, maximum = 99_999_999)]
    pub value: i64,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 99_999_999, default = 0)]
    pub min_order_cents: i64,
    /// In the years 1970 to 9999.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default = "yes")]
    #[schema(default = true)]
    pub active: bool,
}

fn yes() -> bool {
    true
}

impl CouponRequest {
    /// The validated coupon named `code`.
    pub fn into_coupon(self, code: &str) -> Result<Coupon, CheckoutError> {
        let code = normalise_code(code)?;
        match self.kind {
            CouponKind::Percent if !(1..=100).contains(&self.value) => {
                return Err(CheckoutError::invalid(
                    "invalid_coupon",
                    "value of a percent coupon must be between 1 and 100",
                ));
            }
            CouponKind::Amount if self.value <= 0 => {
                return Err(CheckoutError::invalid(
                    "invalid_coupon",
                    "value of an amount coupon must be > 0 cents",
                ));
            }
            _ => {}
        }
        if self.value > MAX_AMOUNT_CENTS || !(0..=MAX_AMOUNT_CENTS).contains(&self.min_order_cents)
        {
            return Err(CheckoutError::invalid(
                "invalid_coupon",
                format!("value and minOrderCents must be at most {MAX_AMOUNT_CENTS}"),
            ));
        }
        // Stored and answered as RFC 3339, which has four-digit years.
        if self.expires_at.is_some_and(|at| !(1970..=9999).contains(&chrono::Datelike::year(&at))) {
            return Err(CheckoutError::invalid(
                "invalid_coupon",
                "expiresAt must lie in the years 1970 to 9999",
            ));
        }
        Ok(Coupon {
            code,
            kind: self.kind,
            value: self.value,
            min_order_cents: self.min_order_cents,
            expires_at: self.expires_at,
            active: self.active,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coupon(kind: CouponKind, value: i64) -> Coupon {
        Coupon { code: "C".into(), kind, value, min_order_cents: 0, expires_at: None, active: true }
    }

    #[test]
    fn percent_discount_rounds_down_and_amount_never_exceeds_the_subtotal() {
        let now = Utc::now();
        assert_eq!(coupon(CouponKind::Percent, 10).discount(999, now).ok(), Some(99));
        assert_eq!(coupon(CouponKind::Amount, 500).discount(300, now).ok(), Some(300));
    }

    #[test]
    fn distance_is_charged_by_the_first_band_that_reaches_it() {
        let bands = [
            DeliveryBand { up_to_km: 5.0, charge_cents: 0 },
            DeliveryBand { up_to_km: 10.0, charge_cents: 299 },
        ];
        assert_eq!(delivery_charge(&bands, 5.0).ok(), Some(0));
        assert_eq!(delivery_charge(&bands, 5.1).ok(), Some(299));
        assert!(delivery_charge(&bands, 10.5).is_err());
    }
}
