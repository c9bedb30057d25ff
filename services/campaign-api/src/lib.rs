//! campaign-api
