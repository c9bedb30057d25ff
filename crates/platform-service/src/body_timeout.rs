//! The request-body deadline (`http.body_timeout_ms`): a body that has not arrived in time is
//! answered 408 `request_timeout` and its connection closed.
//!
//! actix-http times out request heads (`client_request_timeout`) but not bodies, so a client that
//! declares a large `Content-Length` and trickles bytes would hold a connection forever.
//! [`BodyTimeout`] wraps the request's payload stream: once the deadline has passed while a reader
//! waits for more bytes, the stream fails (readers stop) and the answer is replaced by the 408.
//! Bytes already received are still delivered, so a slow handler does not turn a complete body
//! into a timeout.
//!
//! actix closes a connection after the answer when the request body is unfinished, but only while
//! the body is still held; a dropped chunked body is drained instead, with no deadline.
//! [`close_unfinished`], the outermost layer, therefore ties an unfinished body to the final
//! answer's body until it has been sent, whatever the layers in between did to the answer.

use std::cell::{Cell, RefCell};
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BodySize, BoxBody, EitherBody, MessageBody};
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::error::PayloadError;
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::{Error, HttpMessage, HttpResponse};
use futures::Stream;
use futures::future::LocalBoxFuture;
use tokio::time::Sleep;

use crate::error::ErrorBody;

/// Middleware enforcing the body deadline on every request that has a body.
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout {
    timeout: Duration,
}

impl BodyTimeout {
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S, B> Transform<S, ServiceRequest> for BodyTimeout
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Transform = BodyTimeoutMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(BodyTimeoutMiddleware { service: Rc::new(service), timeout: self.timeout }))
    }
}

#[derive(Debug)]
pub struct BodyTimeoutMiddleware<S> {
    service: Rc<S>,
    timeout: Duration,
}

impl<S, B> Service<ServiceRequest> for BodyTimeoutMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        let payload = req.take_payload();
        if matches!(payload, Payload::None) {
            // No body, nothing to wait for.
            let fut = self.service.call(req);
            return Box::pin(async move { fut.await.map(ServiceResponse::map_into_left_body) });
        }
        let body =
            Rc::new(Body { payload: RefCell::new(payload), state: Cell::new(State::Reading) });
        let deadline =
            Deadline { body: body.clone(), sleep: Box::pin(tokio::time::sleep(self.timeout)) };
        req.set_payload(Payload::Stream { payload: Box::pin(deadline) });
        req.extensions_mut().insert(PendingBody(body.clone()));
        let timeout = self.timeout;
        let fut = self.service.call(req);
        Box::pin(async move {
            let response = fut.await?;
            if body.state.get() != State::Expired {
                return Ok(response.map_into_left_body());
            }
            let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            tracing::warn!(
                timeout_ms,
                path = response.request().path(),
                "request body did not arrive in time; answered 408 and closed the connection"
            );
            let (request, _) = response.into_parts();
            let answer =
                HttpResponse::build(StatusCode::REQUEST_TIMEOUT).force_close().json(ErrorBody {
                    error: format!("Request body did not arrive within {timeout_ms} ms"),
                    code: "request_timeout".to_owned(),
                });
            Ok(ServiceResponse::new(request, answer).map_into_right_body())
        })
    }
}

/// Outermost middleware: when the request body has not been read to its end, the answer's body
/// holds it until sent, so actix closes the connection rather than draining the rest.
pub async fn close_unfinished(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let response = next.call(req).await?;
    let pending = response.request().extensions_mut().remove::<PendingBody>();
    Ok(match pending {
        Some(PendingBody(body)) if body.state.get() != State::Complete => {
            response.map_body(|_, inner| {
                EitherBody::right(BoxBody::new(Holding { inner: BoxBody::new(inner), body }))
            })
        }
        _ => response.map_into_left_body(),
    })
}

/// An answer's body that holds the unfinished request body until it has been sent.
struct Holding {
    inner: BoxBody,
    #[allow(dead_code)]
    body: Rc<Body>,
}

impl MessageBody for Holding {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.inner.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_next(cx)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Bytes may still come.
    Reading,
    /// The whole body was read.
    Complete,
    /// The deadline passed while a reader waited.
    Expired,
}

/// The request's payload and how far reading it got, shared by the stream handed to the handler
/// and the middleware that answers.
struct Body {
    payload: RefCell<Payload>,
    state: Cell<State>,
}

/// The request's body, left in its extensions for [`close_unfinished`].
struct PendingBody(Rc<Body>);

/// The payload with a deadline: fails once, then ends, when the deadline passes while the reader
/// waits for bytes; bytes already received are delivered first.
struct Deadline {
    body: Rc<Body>,
    sleep: Pin<Box<Sleep>>,
}

impl Stream for Deadline {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.body.state.get() != State::Reading {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut *self.body.payload.borrow_mut()).poll_next(cx);
        match polled {
            Poll::Ready(None) => {
                self.body.state.set(State::Complete);
                Poll::Ready(None)
            }
            Poll::Ready(Some(item)) => Poll::Ready(Some(item)),
            Poll::Pending => {
                if self.sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.body.state.set(State::Expired);
                Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "request body did not arrive in time",
                )))))
            }
        }
    }
}
