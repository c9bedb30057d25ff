//! The product catalog's types and rules: every unit price a checkout charges. Products (sku,
//! name, unit price in cents, optionally the Stripe price they are sold as) live in Postgres
//! (`db::catalog`, read through the shared cache).
//!
//! Clients name a product and a quantity; the server sets the price. A client may still send
//! `unitAmountCents` (what its page showed): a value other than the catalog's is refused with
//! `price_mismatch`, so a stale or forged price never reaches a total. A `name` sent along is
//! ignored (the catalog's name is used).

use std::collections::HashMap;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::CheckoutError;

/// Largest unit price, in cents (Stripe's own limit for most currencies).
pub const MAX_UNIT_AMOUNT_CENTS: i64 = 99_999_999;
/// Largest quantity of one line.
pub const MAX_QUANTITY: i64 = 10_000;
/// Longest sku.
const MAX_SKU: usize = 64;
/// Longest product name.
const MAX_NAME: usize = 200;

/// A product as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Product {
    pub sku: String,
    pub name: String,
    pub unit_amount_cents: i64,
    /// The Stripe price (`price_…`) `priceId` checkouts of this product use.
    pub price_id: Option<String>,
    /// Inactive products are listed for admins but cannot be bought.
    pub active: bool,
}

/// One line as a client names it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ItemRequest {
    /// An active product of the catalog (else 400 `unknown_product`).
    pub sku: String,
    #[schema(minimum = 1, maximum = 10_000)]
    pub quantity: i64,
    /// Optional; must equal the catalog price when present.
    #[serde(default)]
    pub unit_amount_cents: Option<i64>,
    /// Accepted so existing clients keep working; the catalog's name is used.
    #[serde(default)]
    #[schema(value_type = Value)]
    pub name: Option<IgnoredAny>,
}

impl ItemRequest {
    /// A line naming `sku` without a client price (repricing a stored cart).
    pub fn of(sku: &str, quantity: i64) -> Self {
        Self { sku: sku.to_owned(), quantity, unit_amount_cents: None, name: None }
    }
}

/// A line priced by the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedItem {
    pub sku: String,
    pub name: String,
    pub unit_amount_cents: i64,
    pub quantity: i64,
}

/// Whether `sku` has the shape the catalog accepts (the table's CHECK): 1–64 of
/// `A-Z a-z 0-9 _ . : -`, starting with a letter or digit.
pub fn valid_sku(sku: &str) -> bool {
    !sku.is_empty()
        && sku.len() <= MAX_SKU
        && sku.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && sku.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
}

/// Whether `price_id` looks like a Stripe price id (`price_` + letters, digits, `_`).
pub fn valid_price_id(price_id: &str) -> bool {
    price_id.len() <= 255
        && price_id.strip_prefix("price_").is_some_and(|rest| {
            !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// Body of the admin product routes (`sku` comes from the path on PUT).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProductRequest {
    /// Required on create; on replace, if present, must equal the path's.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]
    pub sku: Option<String>,
    /// 1 to 200 characters once trimmed, without control characters.
    pub name: String,
    #[schema(minimum = 0, maximum = 99_999_999)]
    pub unit_amount_cents: i64,
    #[serde(default)]
    #[schema(pattern = "^price_[A-Za-z0-9_]+$", max_length = 255)]
    pub price_id: Option<String>,
    #[serde(default = "yes")]
    #[schema(default = true)]
    pub active: bool,
}

fn yes() -> bool {
    true
}

impl ProductRequest {
    /// The validated product named `sku`.
    pub fn into_product(self, sku: &str) -> Result<Product, CheckoutError> {
        let invalid = |message: String| CheckoutError::invalid("invalid_product", message);
        if !valid_sku(sku) {
            return Err(invalid(format!(
                "sku must be 1 to {MAX_SKU} letters, digits, `_`, `.`, `:` or `-`, starting with a letter or digit"
            )));
        }
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control)
        {
            return Err(invalid(format!(
                "name must be 1 to {MAX_NAME} characters without control characters"
            )));
        }
        if !(0..=MAX_UNIT_AMOUNT_CENTS).contains(&self.unit_amount_cents) {
            return Err(invalid(format!(
                "unitAmountCents must be between 0 and {MAX_UNIT_AMOUNT_CENTS}"
            )));
        }
        if let Some(price_id) = &self.price_id
            && !valid_price_id(price_id)
        {
            return Err(invalid("priceId must be a Stripe price id (price_…)".to_owned()));
        }
        Ok(Product {
            sku: sku.to_owned(),
            name: name.to_owned(),
            unit_amount_cents: self.unit_amount_cents,
            price_id: self.price_id,
            active: self.active,
        })
    }
}

/// Checks every line's quantity (1–10 000), then the distinct well-formed skus to look up.
pub fn skus_to_price(items: &[ItemRequest]) -> Result<Vec<&str>, CheckoutError> {
    for (index, item) in items.iter().enumerate() {
        if !(1..=MAX_QUANTITY).contains(&item.quantity) {
            return Err(CheckoutError::invalid(
                "invalid_quantity",
                format!("items[{index}].quantity must be between 1 and {MAX_QUANTITY}"),
            ));
        }
    }
    let mut skus: Vec<&str> = items.iter().map(|item| item.sku.as_str()).collect();
    skus.sort_unstable();
    skus.dedup();
    skus.retain(|sku| valid_sku(sku));
    Ok(skus)
}

/// Prices `items` from `products` (by sku): each sku must name an active product, and a
/// client-sent `unitAmountCents` must equal the catalog's price.
pub fn price_lines(
    items: &[ItemRequest],
    products: &HashMap<&str, Product>,
) -> Result<Vec<PricedItem>, CheckoutError> {
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let product =
                products.get(item.sku.as_str()).filter(|product| product.active).ok_or_else(
                    || {
                        CheckoutError::invalid(
                            "unknown_product",
                            format!(
                                "items[{index}].sku `{}` is not a product of the catalog",
                                item.sku.chars().take(MAX_SKU).collect::<String>()
                            ),
                        )
                    },
                )?;
            if let Some(claimed) = item.unit_amount_cents
                && claimed != product.unit_amount_cents
            {
                return Err(CheckoutError::invalid(
                    "price_mismatch",
                    format!(
                        "items[{index}].unitAmountCents is {claimed} but the catalog price of `{}` is {}",
                        product.sku, product.unit_amount_cents
                    ),
                ));
            }
            Ok(PricedItem {
                sku: product.sku.clone(),
                name: product.name.clone(),
                unit_amount_cents: product.unit_amount_cents,
                quantity: item.quantity,
            })
        })
        .collect()
}

/// `product` (sold as `price_id`) when it is active, else 400 `unknown_price`.
pub fn listed(price_id: &str, product: Option<Product>) -> Result<Product, CheckoutError> {
    match product {
        Some(product) if product.active => Ok(product),
        _ => Err(CheckoutError::invalid(
            "unknown_price",
            format!("priceId `{price_id}` is not a price of the catalog"),
        )),
    }
}

/// 400 `unknown_price` unless `price_id` has the shape of a Stripe price id.
pub fn check_price_id(price_id: &str) -> Result<(), CheckoutError> {
    if valid_price_id(price_id) {
        Ok(())
    } else {
        Err(CheckoutError::invalid("unknown_price", "priceId must be a Stripe price id (price_…)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(sku: &str, amount: i64, price_id: Option<&str>) -> ProductRequest {
        ProductRequest {
            sku: None,
            name: format!(" {sku} "),
            unit_amount_cents: amount,
            price_id: price_id.map(str::to_owned),
            active: true,
        }
    }

    #[test]
    fn sku_and_price_id_shapes_follow_the_table_checks() {
        assert!(valid_sku("tea") && valid_sku("sku-0") && valid_sku("A1_b.c:d-e"));
        assert!(
            !valid_sku("") && !valid_sku("-a") && !valid_sku("a b") && !valid_sku(&"a".repeat(65))
        );
        assert!(
            valid_price_id("price_pro") && !valid_price_id("price_") && !valid_price_id("prod_x")
        );
    }

    #[test]
    fn product_requests_are_trimmed_and_checked_with_invalid_product() {
        let ok = request("tea", 1250, Some("price_tea")).into_product("tea").ok();
        assert_eq!(ok.map(|p| p.name), Some("tea".to_owned()));
        let code = |r: ProductRequest, sku: &str| r.into_product(sku).err().map(|e| e.code());
        assert_eq!(code(request("tea", -1, None), "tea"), Some("invalid_product"));
        assert_eq!(code(request("tea", 100_000_000, None), "tea"), Some("invalid_product"));
        assert_eq!(code(request("tea", 1, Some("nope")), "tea"), Some("invalid_product"));
        assert_eq!(code(request("tea", 1, None), "bad sku"), Some("invalid_product"));
    }
}
