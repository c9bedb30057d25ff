//! The one route of the fake simPRO, the invoice list: authorization, paging, latency, injected
//! faults (a connection cut halfway through the body included) and the per-page counters.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use actix_web::body::SizedStream;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use futures::StreamExt as _;

use super::invoices::{Columns, page_body};
use super::{Fault, State, clamp_size};

/// Answers any request: the invoice list of the configured company, or 404.
pub(super) async fn invoices(request: HttpRequest, state: web::Data<State>) -> HttpResponse {
    // Latency counts from the request's arrival, not from when the page was generated.
    let arrived = tokio::time::Instant::now();
    let config = &state.config;
    let expected_path = format!("/api/v1.0/companies/{}/invoices", config.company_id);
    if request.path().trim_end_matches('/') != expected_path {
        return json(StatusCode::NOT_FOUND, r#"{"errors":[{"message":"Not found"}]}"#);
    }
    let authorization = request.headers().get("authorization").and_then(|v| v.to_str().ok());
    if let Some(token) = &config.token
        && authorization != Some(format!("Bearer {token}").as_str())
    {
        return json(StatusCode::UNAUTHORIZED, r#"{"errors":[{"message":"Unauthorized"}]}"#);
    }
    let query = web::Query::<HashMap<String, String>>::from_query(request.query_string())
        .map(web::Query::into_inner)
        .unwrap_or_default();
    let number = |name: &str, default: u64| {
        query.get(name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(default)
    };
    let page = number("page", 1).max(1);
    let page_size = clamp_size(number("pageSize", 30));
    count(&state, page, |counters| &mut counters.requests);
    let fault = state
        .faults
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_mut(&page)
        .and_then(VecDeque::pop_front);
    let respond_at = arrived + config.latency;
    match fault {
        Some(Fault::Status(status)) => {
            tokio::time::sleep_until(respond_at).await;
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return json(status, r#"{"errors":[{"message":"Injected upstream failure"}]}"#);
        }
        Some(Fault::TooManyRequests { retry_after_secs }) => {
            tokio::time::sleep_until(respond_at).await;
            let mut response = json(
                StatusCode::TOO_MANY_REQUESTS,
                r#"{"errors":[{"message":"Too many requests"}]}"#,
            );
            if let Ok(value) = retry_after_secs.to_string().parse() {
                response.headers_mut().insert(actix_web::http::header::RETRY_AFTER, value);
            }
            return response;
        }
        Some(Fault::Delay(_) | Fault::DropConnection) | None => {}
    }
    let columns = query.get("columns").map(|c| Columns::parse(c)).unwrap_or_default();
    let (body, total, pages) = page_body(config, page, page_size, columns);
    let extra = match fault {
        Some(Fault::Delay(extra)) => extra,
        _ => Duration::ZERO,
    };
    tokio::time::sleep_until(respond_at + extra).await;
    let mut response = HttpResponse::Ok();
    response
        .content_type(JSON)
        .insert_header(("Result-Total", total.to_string()))
        .insert_header(("Result-Pages", pages.to_string()));
    if fault == Some(Fault::DropConnection) {
        return response.body(half_then_cut(body));
    }
    count(&state, page, |counters| &mut counters.complete);
    response.body(body)
}

const JSON: &str = "application/json; charset=utf-8";

fn json(status: StatusCode, body: &'static str) -> HttpResponse {
    HttpResponse::build(status).content_type(JSON).body(body)
}

fn count(
    state: &State,
    page: u64,
    which: impl FnOnce(&mut super::Counters) -> &mut HashMap<u64, u64>,
) {
    let mut counters = state.counters.lock().unwrap_or_else(|p| p.into_inner());
    *which(&mut counters).entry(page).or_insert(0) += 1;
}

/// A body announcing its full length that sends half of it and then fails, which makes actix-web
/// close the connection: the client sees a response cut short.
fn half_then_cut(
    body: String,
) -> SizedStream<impl futures::Stream<Item = std::io::Result<web::Bytes>>> {
    let length = body.len() as u64;
    let half = web::Bytes::from(body).slice(..(length / 2) as usize);
    let chunks = futures::stream::iter([Ok(half)]).chain(futures::stream::once(async {
        // The pause lets the half body leave before the connection is cut.
        tokio::time::sleep(Duration::from_millis(20)).await;
        Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "injected drop"))
    }));
    SizedStream::new(length, chunks)
}
