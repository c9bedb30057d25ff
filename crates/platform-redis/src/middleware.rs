//! Actix middleware written as async functions ([`from_fn`]) behind a type that a builder's
//! `Transform` can name: the plumbing of [`crate::ratelimit::RateLimit`] and
//! [`crate::usage::TrackUsage`].

use actix_web::Error;
use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::middleware::{Next, from_fn};
use futures::future::LocalBoxFuture;

/// What one call of a middleware function returns.
pub(crate) type Reply<B> = LocalBoxFuture<'static, Result<ServiceResponse<B>, Error>>;

/// The per-worker service [`from_fn`] builds, its type erased: actix does not export that type,
/// and `Transform::Transform` must name one.
pub(crate) type FnService<B> = Box<
    dyn Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error, Future = Reply<B>>,
>;

/// `service` behind `middleware`, which gets each request and the rest of the chain.
pub(crate) fn wrap<S, B, B2, F>(service: S, middleware: F) -> Result<FnService<B2>, ()>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: 'static,
    B2: MessageBody + 'static,
    F: Fn(ServiceRequest, Next<B>) -> Reply<B2> + 'static,
{
    let built = from_fn(middleware).new_transform(service).into_inner()?;
    Ok(Box::new(built))
}
