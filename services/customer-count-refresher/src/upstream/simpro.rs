//! The simPRO invoice-list client: one page per call, classified errors, and retries with backoff.
//!
//! Only `Customer.ID` of each invoice is decoded (serde skips every other field), so a page costs
//! its bytes while it is parsed and eight bytes per invoice afterwards.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use rand::Rng;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::time::Instant;

use crate::config::SimproSettings;

/// What one page holds, reduced to what the count needs.
#[derive(Debug, Clone, Default)]
pub struct PageData {
    /// `Customer.ID` of each invoice that has a customer.
    pub customer_ids: Vec<u64>,
    /// Invoices on the page (with or without customer).
    pub invoices: u64,
    /// `Result-Pages`, when sent.
    pub result_pages: Option<u64>,
    /// `Result-Total`, when sent.
    pub result_total: Option<u64>,
}

/// Why one request for a page failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("simPRO answered HTTP {status}")]
    Status { status: u16, retry_after: Option<Duration> },
    #[error("the request failed (connect, timeout or dropped connection)")]
    Transport(#[source] reqwest::Error),
    #[error("the body is not a JSON array of invoices")]
    Decode(#[source] serde_json::Error),
}

impl FetchError {
    /// 5xx, 408, 429 and transport failures may succeed on a retry; other 4xx and bad bodies not.
    pub fn is_retryable(&self) -> bool {
        match self {
            FetchError::Status { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            FetchError::Transport(_) => true,
            FetchError::Decode(_) => false,
        }
    }
}

/// Why a page could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("page {page} failed after {attempts} attempts")]
    Exhausted {
        page: u64,
        attempts: u32,
        #[source]
        source: FetchError,
    },
    #[error("page {page} failed and is not retryable")]
    Fatal {
        page: u64,
        #[source]
        source: FetchError,
    },
    #[error("page {page} could not be retried before the run deadline")]
    Deadline {
        page: u64,
        #[source]
        source: FetchError,
    },
}

#[derive(Deserialize)]
struct InvoiceRow {
    #[serde(rename = "Customer", default)]
    customer: Option<CustomerRef>,
}

#[derive(Deserialize)]
struct CustomerRef {
    #[serde(rename = "ID")]
    id: u64,
}

/// A client for one tenant and company.
#[derive(Debug, Clone)]
pub struct SimproClient {
    http: reqwest::Client,
    invoices_url: String,
    /// `&columns=…`, or empty.
    columns: String,
    token: SecretString,
    page_size: u64,
    max_attempts: u32,
    backoff_base: Duration,
    backoff_max: Duration,
    max_retry_after: Duration,
}

impl SimproClient {
    /// Builds the HTTP client. The process crypto provider must be installed first (see
    /// `platform_service::telemetry::install_crypto_provider`).
    pub fn new(settings: &SimproSettings) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout())
            .connect_timeout(settings.connect_timeout())
            .pool_max_idle_per_host(settings.concurrency)
            .user_agent(concat!("customer-count-refresher/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            invoices_url: format!(
                "{}/api/v1.0/companies/{}/invoices/",
                settings.base_url.trim_end_matches('/'),
                settings.company_id
            ),
            columns: if settings.columns.is_empty() {
                String::new()
            } else {
                format!("&columns={}", settings.columns)
            },
            token: settings.token.clone(),
            page_size: settings.page_size,
            max_attempts: settings.max_attempts,
            backoff_base: Duration::from_millis(settings.backoff_base_ms),
            backoff_max: Duration::from_millis(settings.backoff_max_ms),
            max_retry_after: Duration::from_secs(settings.max_retry_after_secs),
        })
    }

    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// One request for `page` (1-based), no retry.
    #[tracing::instrument(name = "simpro.fetch_page", skip(self), level = "debug")]
    pub async fn fetch_page(&self, page: u64) -> Result<PageData, FetchError> {
        let response = self
            .http
            .get(format!(
                "{}?page={page}&pageSize={}{}",
                self.invoices_url, self.page_size, self.columns
            ))
            .header(AUTHORIZATION, format!("Bearer {}", self.token.expose_secret()))
            .header(ACCEPT, "application/json")
            .send()
            .await
            .map_err(FetchError::Transport)?;
        let status = response.status();
        if status != StatusCode::OK {
            let retry_after = retry_after(response.headers());
            return Err(FetchError::Status { status: status.as_u16(), retry_after });
        }
        let result_pages = header_number(response.headers(), "Result-Pages");
        let result_total = header_number(response.headers(), "Result-Total");
        let body = response.bytes().await.map_err(FetchError::Transport)?;
        let rows: Vec<InvoiceRow> = serde_json::from_slice(&body).map_err(FetchError::Decode)?;
        let invoices = rows.len() as u64;
        let customer_ids = rows.into_iter().filter_map(|r| r.customer.map(|c| c.id)).collect();
        Ok(PageData { customer_ids, invoices, result_pages, result_total })
    }

    /// [`SimproClient::fetch_page`] with retries: exponential backoff with jitter, `Retry-After`
    /// honoured on 429/503, never sleeping past `deadline`. Each retry bumps `retries`.
    pub async fn fetch_with_retry(
        &self,
        page: u64,
        deadline: Instant,
        retries: &AtomicU64,
    ) -> Result<PageData, PageError> {
        let attempts = AtomicU32::new(0);
        let past_deadline = AtomicBool::new(false);
        // Before try n: random in [half, full] of min(backoff_max, backoff_base * 2^(n-1)).
        // backon's jitter adds up to one more delay to each, so it is given the halves.
        let backoff = ExponentialBuilder::new()
            .with_min_delay(self.backoff_base / 2)
            .with_max_delay(self.backoff_max / 2)
            .with_jitter()
            .with_max_times(usize::try_from(self.max_attempts.saturating_sub(1)).unwrap_or(0));
        let fetched = (|| {
            attempts.fetch_add(1, Ordering::Relaxed);
            self.fetch_page(page)
        })
        .retry(backoff)
        .when(FetchError::is_retryable)
        .adjust(|error, backoff| {
            let wait = self.wait_before_retry(backoff?, error);
            if Instant::now() + wait >= deadline {
                past_deadline.store(true, Ordering::Relaxed);
                return None;
            }
            Some(wait)
        })
        .notify(|error, wait| {
            let attempt = attempts.load(Ordering::Relaxed);
            tracing::warn!(page, attempt, wait_ms = wait.as_millis() as u64, error = %error, "simPRO page failed; retrying");
            retries.fetch_add(1, Ordering::Relaxed);
        })
        .await;
        fetched.map_err(|source| {
            if !source.is_retryable() {
                PageError::Fatal { page, source }
            } else if past_deadline.load(Ordering::Relaxed) {
                PageError::Deadline { page, source }
            } else {
                PageError::Exhausted { page, attempts: attempts.load(Ordering::Relaxed), source }
            }
        })
    }

    /// The jittered `backoff`, or a server's `Retry-After` when longer, plus a little jitter so
    /// throttled pages do not return together.
    fn wait_before_retry(&self, backoff: Duration, error: &FetchError) -> Duration {
        match error {
            FetchError::Status { retry_after: Some(after), .. } => {
                let spread = u64::try_from(self.backoff_base.as_millis()).unwrap_or(0).max(1);
                let after = (*after).min(self.max_retry_after)
                    + Duration::from_millis(rand::rng().random_range(0..=spread));
                after.max(backoff)
            }
            _ => backoff,
        }
    }
}

fn header_number(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// `Retry-After` as delta-seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"));
        assert_eq!(retry_after(&headers), None, "a date in the past means no wait");
    }

    #[test]
    fn only_transient_failures_are_retried() {
        let status = |status| FetchError::Status { status, retry_after: None };
        assert!(status(500).is_retryable());
        assert!(status(503).is_retryable());
        assert!(status(429).is_retryable());
        assert!(!status(401).is_retryable());
        assert!(!status(404).is_retryable());
    }
}
