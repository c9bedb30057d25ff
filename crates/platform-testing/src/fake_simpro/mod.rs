//! A local fake of simPRO's invoice list (`GET /api/v1.0/companies/{id}/invoices/`) with fault injection.
//!
//! It speaks simPRO's wire format: a bare JSON array per page, 1-based
//! `page`, `pageSize` capped at 250, and the `Result-Total` / `Result-Pages` headers that public
//! clients read. Invoices are either generated (N invoices over M customers, deterministic, so a
//! test knows the exact answer) or given page by page (the assembled fixture scenario).
//!
//! The `columns` query parameter of simPRO's list routes ("specify which columns to be displayed")
//! is honoured for generated invoices: `columns=ID,Customer` sends only those top-level fields.
//!
//! Latency is measured from the request's arrival: the page is generated while the fake waits, so
//! a response leaves `latency` after the request came in (or later, if generating took longer),
//! not `latency` plus the fake's own CPU time.
//!
//! Faults are queued per page and consumed one per request: a status (5xx), a 429 with
//! `Retry-After`, an extra delay (to trip client timeouts), or a connection dropped in the middle of
//! the body. Every request is counted per page, and so is every complete 200 answer, so a test can
//! assert that no page was missed or served twice.
//!
//! It serves with actix-web on its own thread and actix system ([`crate::serve`]), so it keeps
//! serving whatever the test's runtime is doing, and [`FakeSimpro::stop`] makes the upstream
//! disappear (connections refused) as an outage would. The routes are in `routes`, the page bodies
//! in `invoices`.

mod invoices;
mod routes;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::web;

pub use invoices::customer_of;

use crate::serve::Served;

/// simPRO's largest page size (as public clients cap it).
pub const MAX_PAGE_SIZE: u64 = 250;

/// One injected misbehaviour, consumed by one request for its page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer this status with a small JSON error body (e.g. 500, 502, 503).
    Status(u16),
    /// Answer 429 with `Retry-After: <secs>`.
    TooManyRequests { retry_after_secs: u64 },
    /// Wait this long (on top of the configured latency), then answer normally.
    Delay(Duration),
    /// Send the headers and half of the body, then close the connection.
    DropConnection,
}

/// Where the invoices come from.
#[derive(Debug, Clone)]
pub enum Invoices {
    /// `invoices` invoices over customers `1..=customers`; every customer appears once
    /// `invoices >= customers` (see [`FakeSimpro::expected_unique_customers`]).
    Generated { invoices: u64, customers: u64 },
    /// Fixed page bodies (bare JSON arrays), page 1 first, served whatever `pageSize` asks,
    /// with `Result-Total: total`.
    Pages { bodies: Vec<String>, total: u64 },
}

/// How the fake behaves.
#[derive(Debug, Clone)]
pub struct FakeSimproConfig {
    /// 0 picks a free port.
    pub port: u16,
    pub company_id: u64,
    /// When set, requests without `Authorization: Bearer <token>` get 401.
    pub token: Option<String>,
    pub invoices: Invoices,
    /// Added to every response (the upstream's own latency).
    pub latency: Duration,
    /// Worker threads of the fake's server.
    pub threads: usize,
}

impl FakeSimproConfig {
    /// Generated invoices, company 0, token `test-simpro-token`, no latency, free port.
    pub fn generated(invoices: u64, customers: u64) -> Self {
        Self {
            port: 0,
            company_id: 0,
            token: Some("test-simpro-token".to_owned()),
            invoices: Invoices::Generated { invoices, customers },
            latency: Duration::ZERO,
            threads: 1,
        }
    }

    /// Fixed page bodies (see [`Invoices::Pages`]).
    pub fn pages(bodies: Vec<String>, total: u64) -> Self {
        Self { invoices: Invoices::Pages { bodies, total }, ..Self::generated(0, 0) }
    }

    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }
}

#[derive(Debug, Default)]
struct Counters {
    requests: HashMap<u64, u64>,
    complete: HashMap<u64, u64>,
}

#[derive(Debug)]
struct State {
    config: FakeSimproConfig,
    faults: Mutex<HashMap<u64, VecDeque<Fault>>>,
    counters: Mutex<Counters>,
}

/// A running fake simPRO. Dropping it stops the server.
#[derive(Debug)]
pub struct FakeSimpro {
    served: Served,
    state: Arc<State>,
}

impl FakeSimpro {
    /// Binds `127.0.0.1:<port>` and serves on a thread of its own until [`FakeSimpro::stop`].
    pub fn start(config: FakeSimproConfig) -> anyhow::Result<Self> {
        let (port, workers) = (config.port, config.threads);
        let state = Arc::new(State {
            config,
            faults: Mutex::new(HashMap::new()),
            counters: Mutex::new(Counters::default()),
        });
        let data = web::Data::from(state.clone());
        let served = Served::start("fake-simpro", port, workers, move |config| {
            config.app_data(data.clone()).default_service(web::to(routes::invoices));
        })?;
        Ok(Self { served, state })
    }

    /// `http://127.0.0.1:<port>`: the base URL a client is configured with.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.served.addr())
    }

    pub fn port(&self) -> u16 {
        self.served.addr().port()
    }

    /// The configured company id and token, for the client under test.
    pub fn company_id(&self) -> u64 {
        self.state.config.company_id
    }
    pub fn token(&self) -> Option<&str> {
        self.state.config.token.as_deref()
    }

    /// Queues `faults` for `page`; each request for that page consumes the next one.
    pub fn inject(&self, page: u64, faults: impl IntoIterator<Item = Fault>) {
        let mut all = self.state.faults.lock().unwrap_or_else(|p| p.into_inner());
        all.entry(page).or_default().extend(faults);
    }

    /// Faults not consumed yet (0 once every injected fault was hit).
    pub fn pending_faults(&self) -> usize {
        self.state
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(VecDeque::len)
            .sum()
    }

    /// Requests received for `page` (faulty ones included).
    pub fn requests_for(&self, page: u64) -> u64 {
        self.counters().requests.get(&page).copied().unwrap_or(0)
    }

    /// Complete 200 answers sent for `page`.
    pub fn complete_responses_for(&self, page: u64) -> u64 {
        self.counters().complete.get(&page).copied().unwrap_or(0)
    }

    /// Complete 200 answers per page, for every page that got at least one.
    pub fn complete_responses(&self) -> HashMap<u64, u64> {
        self.counters().complete.clone()
    }

    /// All requests received.
    pub fn total_requests(&self) -> u64 {
        self.counters().requests.values().sum()
    }

    /// Total invoices served across all pages.
    pub fn total_invoices(&self) -> u64 {
        match &self.state.config.invoices {
            Invoices::Generated { invoices, .. } => *invoices,
            Invoices::Pages { total, .. } => *total,
        }
    }

    /// Pages at `page_size` (capped at [`MAX_PAGE_SIZE`]), as `Result-Pages` says.
    pub fn pages_at(&self, page_size: u64) -> u64 {
        match &self.state.config.invoices {
            Invoices::Generated { invoices, .. } => invoices.div_ceil(clamp_size(page_size)),
            Invoices::Pages { bodies, .. } => bodies.len() as u64,
        }
    }

    /// The exact answer for generated invoices: distinct customers among them.
    pub fn expected_unique_customers(&self) -> u64 {
        match &self.state.config.invoices {
            Invoices::Generated { invoices, customers } => (*invoices).min(*customers),
            Invoices::Pages { .. } => 0,
        }
    }

    /// Stops serving: from now on connections are refused. Idempotent.
    pub fn stop(&mut self) {
        self.served.stop();
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.state.counters.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) fn clamp_size(page_size: u64) -> u64 {
    page_size.clamp(1, MAX_PAGE_SIZE)
}
