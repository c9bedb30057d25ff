//! HTTP routes of checkout-api: checkout sessions and pricing lookups ([`checkout`]), admin
//! pricing and catalog writes ([`admin`]), the Redis health and management routes
//! ([`redis_admin`]), user/guest sessions ([`user_sessions`]) and the Stripe flow ([`stripe`]).
//! Handlers parse input, call the domain modules and shape responses.
//!
//! Every route is wrapped in a rate-limit policy (`api`, guest creation `guest_checkout`, the
//! Stripe writes `payment`).
//! Resources are registered one by one, never as a shared `/api/...` scope, so other modules can
//! add routes next to them.

pub mod admin;
pub mod checkout;
pub mod redis_admin;
pub mod stripe;
pub mod user_sessions;

use actix_web::web;
use platform_redis::RedisClients;
use platform_redis::ratelimit::{RateLimit, RateLimiter};
use sqlx::PgPool;
use utoipa::OpenApi;

use crate::domain::checkout::Checkout;
use crate::domain::payments::StripeService;
use crate::store::user_sessions::UserSessions;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct State {
    pub checkout: Checkout,
    pub user_sessions: UserSessions,
    pub redis: RedisClients,
    pub db: PgPool,
}

/// The rate-limit policies the routes use.
#[derive(Debug, Clone)]
pub struct Policies {
    pub limiter: RateLimiter,
    /// General API routes (`checkout.rate_limit_policy`, default `api`).
    pub api: String,
    /// Guest session creation (`user_sessions.guest_rate_limit_policy`).
    pub guest: String,
}

impl Policies {
    fn api(&self) -> RateLimit {
        RateLimit::new(self.limiter.clone(), self.api.clone())
    }
    fn guest(&self) -> RateLimit {
        RateLimit::new(self.limiter.clone(), self.guest.clone())
    }
}

/// The routes' OpenAPI description (`platform_service::openapi` adds the common ones).
///
/// `security(...)` takes only string literals in utoipa 5.5, so the operations spell
/// `platform_service::openapi::SERVICE_TOKEN` (`"serviceToken"`) and `SESSION_COOKIE`
/// (`"sessionCookie"`) out; a test below checks that every name used is a known scheme.
#[derive(Debug, OpenApi)]
#[openapi(paths(
    checkout::create_session,
    checkout::get_session,
    checkout::update_session,
    checkout::replace_session,
    checkout::complete_session,
    checkout::fail_session,
    checkout::validate_coupon,
    checkout::delivery_quote,
    admin::list_coupons,
    admin::create_coupon,
    admin::get_coupon,
    admin::put_coupon,
    admin::delete_coupon,
    admin::get_bands,
    admin::put_bands,
    admin::list_products,
    admin::create_product,
    admin::get_product,
    admin::put_product,
    admin::delete_product,
    redis_admin::health,
    redis_admin::cleanup,
    user_sessions::create_guest,
    user_sessions::login,
    user_sessions::current,
    user_sessions::logout,
    stripe::create_checkout,
    stripe::checkout_success,
    stripe::customer_state,
    stripe::user_subscription,
))]
pub struct ApiDoc;

/// Registers the state and every route group of this module.
pub fn configure(
    cfg: &mut web::ServiceConfig,
    state: web::Data<State>,
    stripe: web::Data<StripeService>,
    policies: &Policies,
) {
    cfg.app_data(state);
    checkout::configure(cfg, policies);
    admin::configure(cfg, policies);
    redis_admin::configure(cfg, policies);
    user_sessions::configure(cfg, policies);
    stripe::configure(cfg, stripe, &policies.limiter);
}
