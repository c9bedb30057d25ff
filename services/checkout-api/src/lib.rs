//! checkout-api
