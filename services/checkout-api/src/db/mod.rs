//! Postgres access: the product catalog ([`catalog`]) and pricing definitions ([`pricing`]), both
//! read through the shared cache, and the Postgres tier of checkout sessions ([`sessions`]).

pub mod catalog;
pub mod pricing;
pub mod sessions;
