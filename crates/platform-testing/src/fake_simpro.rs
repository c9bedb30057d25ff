//! A local fake of simPRO's invoice list (`GET /api/v1.0/companies/{id}/invoices/`) with fault injection.
//!
//! It speaks the wire format of `shared/fixtures/simpro/`: a bare JSON array per page, 1-based
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
//! The server is a small hand-written HTTP/1.1 loop (keep-alive, `Content-Length` bodies): a
//! framework would not let it cut a connection halfway through a response. It runs on its own
//! thread and runtime, so it keeps serving whatever the test's runtime is doing, and
//! [`FakeSimpro::stop`] makes the upstream disappear (connections refused) as an outage would.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// simPRO's largest page size (from public clients; see the fixture README).
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
    /// Worker threads of the fake's runtime.
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
    addr: SocketAddr,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeSimpro {
    /// Binds `127.0.0.1:<port>` and serves on a thread of its own until [`FakeSimpro::stop`].
    pub fn start(config: FakeSimproConfig) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", config.port))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads.max(1))
            .thread_name("fake-simpro")
            .enable_all()
            .build()?;
        let state = Arc::new(State {
            config,
            faults: Mutex::new(HashMap::new()),
            counters: Mutex::new(Counters::default()),
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let served = state.clone();
        let thread = std::thread::Builder::new().name("fake-simpro".into()).spawn(move || {
            runtime.block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::error!(%error, "fake simPRO cannot listen");
                        return;
                    }
                };
                tokio::select! {
                    _ = stop_rx => {}
                    () = accept_loop(listener, served) => {}
                }
            });
            // Dropping the runtime cancels every connection task: the upstream is gone.
            runtime.shutdown_background();
        })?;
        Ok(Self { addr, state, stop: Some(stop_tx), thread: Some(thread) })
    }

    /// `http://127.0.0.1:<port>`: the base URL a client is configured with.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
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
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.state.counters.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for FakeSimpro {
    fn drop(&mut self) {
        self.stop();
    }
}

fn clamp_size(page_size: u64) -> u64 {
    page_size.clamp(1, MAX_PAGE_SIZE)
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(stream, state.clone()));
            }
            Err(error) => {
                tracing::warn!(%error, "fake simPRO accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// What one request asked for.
struct Request {
    /// When the request line was read: latency counts from here.
    arrived: tokio::time::Instant,
    path: String,
    query: HashMap<String, String>,
    authorization: Option<String>,
    close: bool,
}

async fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let arrived = tokio::time::Instant::now();
    let mut parts = line.split_whitespace();
    let _method = parts.next()?;
    let target = parts.next()?.to_owned();
    let (mut authorization, mut close) = (None, false);
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).await.ok()? == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.to_owned());
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Some(Request { arrived, path: path.to_owned(), query, authorization, close })
}

async fn serve_connection(stream: TcpStream, state: Arc<State>) {
    let mut reader = BufReader::new(stream);
    while let Some(request) = read_request(&mut reader).await {
        let keep_open = respond(&mut reader, &state, &request).await;
        if !keep_open || request.close {
            break;
        }
    }
}

/// Answers one request; false when the connection must be closed.
async fn respond(reader: &mut BufReader<TcpStream>, state: &State, request: &Request) -> bool {
    let config = &state.config;
    let stream = reader.get_mut();
    let expected_path = format!("/api/v1.0/companies/{}/invoices", config.company_id);
    if request.path.trim_end_matches('/') != expected_path {
        return write_json(stream, 404, &[], r#"{"errors":[{"message":"Not found"}]}"#).await;
    }
    if let Some(token) = &config.token
        && request.authorization.as_deref() != Some(format!("Bearer {token}").as_str())
    {
        return write_json(stream, 401, &[], r#"{"errors":[{"message":"Unauthorized"}]}"#).await;
    }
    let number = |name: &str, default: u64| {
        request.query.get(name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(default)
    };
    let page = number("page", 1).max(1);
    let page_size = clamp_size(number("pageSize", 30));
    state
        .counters
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .requests
        .entry(page)
        .and_modify(|n| *n += 1)
        .or_insert(1);
    let fault = state
        .faults
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_mut(&page)
        .and_then(VecDeque::pop_front);
    let respond_at = request.arrived + config.latency;
    match fault {
        Some(Fault::Status(status)) => {
            tokio::time::sleep_until(respond_at).await;
            let body = r#"{"errors":[{"message":"Injected upstream failure"}]}"#;
            return write_json(stream, status, &[], body).await;
        }
        Some(Fault::TooManyRequests { retry_after_secs }) => {
            tokio::time::sleep_until(respond_at).await;
            let retry_after = retry_after_secs.to_string();
            let body = r#"{"errors":[{"message":"Too many requests"}]}"#;
            return write_json(stream, 429, &[("Retry-After", &retry_after)], body).await;
        }
        Some(Fault::Delay(_) | Fault::DropConnection) | None => {}
    }
    let columns = request.query.get("columns").map(|c| Columns::parse(c)).unwrap_or_default();
    let (body, total, pages) = page_body(config, page, page_size, columns);
    let extra = match fault {
        Some(Fault::Delay(extra)) => extra,
        _ => Duration::ZERO,
    };
    tokio::time::sleep_until(respond_at + extra).await;
    let (total, pages) = (total.to_string(), pages.to_string());
    let headers = [("Result-Total", total.as_str()), ("Result-Pages", pages.as_str())];
    if fault == Some(Fault::DropConnection) {
        let head = response_head(200, &headers, body.len());
        let half = &body.as_bytes()[..body.len() / 2];
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(half).await;
        let _ = stream.flush().await;
        return false;
    }
    let ok = write_json(stream, 200, &headers, &body).await;
    if ok {
        state
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .complete
            .entry(page)
            .and_modify(|n| *n += 1)
            .or_insert(1);
    }
    ok
}

/// Top-level invoice fields to send (`columns=`); all by default.
#[derive(Debug, Clone, Copy)]
struct Columns(u8);

impl Columns {
    const NAMES: [&'static str; 7] =
        ["ID", "Type", "Customer", "Jobs", "RecurringInvoice", "Total", "IsPaid"];

    /// `ID,Customer` (comma-separated, URL-encoded commas accepted); unknown names are ignored.
    fn parse(list: &str) -> Self {
        let list = list.replace("%2C", ",").replace("%2c", ",");
        let mut bits = 0u8;
        for name in list.split(',').map(str::trim) {
            if let Some(i) = Self::NAMES.iter().position(|n| n.eq_ignore_ascii_case(name)) {
                bits |= 1 << i;
            }
        }
        if bits == 0 { Self::default() } else { Self(bits) }
    }

    fn has(self, name: &str) -> bool {
        Self::NAMES.iter().position(|n| *n == name).is_some_and(|i| self.0 & (1 << i) != 0)
    }
}

impl Default for Columns {
    fn default() -> Self {
        Self(u8::MAX)
    }
}

/// The body of `page`, with `Result-Total` and `Result-Pages`.
fn page_body(
    config: &FakeSimproConfig,
    page: u64,
    page_size: u64,
    columns: Columns,
) -> (String, u64, u64) {
    match &config.invoices {
        Invoices::Pages { bodies, total } => {
            let index = usize::try_from(page - 1).unwrap_or(usize::MAX);
            let body = bodies.get(index).cloned().unwrap_or_else(|| "[]".to_owned());
            (body, *total, bodies.len() as u64)
        }
        Invoices::Generated { invoices, customers } => {
            let pages = invoices.div_ceil(page_size);
            let start = (page - 1).saturating_mul(page_size).min(*invoices);
            let end = (start + page_size).min(*invoices);
            let mut body = String::with_capacity(((end - start) as usize) * 420 + 2);
            body.push('[');
            for index in start..end {
                if index > start {
                    body.push(',');
                }
                write_invoice(&mut body, index, *customers, columns);
            }
            body.push(']');
            (body, *invoices, pages)
        }
    }
}

/// Customer of the invoice at 0-based `index`: a stride walk over `1..=customers` that visits
/// every customer once in the first `customers` invoices (the stride is coprime with the count),
/// so repeats are spread over all pages rather than bunched.
pub fn customer_of(index: u64, customers: u64) -> u64 {
    const STRIDE: u64 = 7919;
    let customers = customers.max(1);
    let stride = if customers.is_multiple_of(STRIDE) { 1 } else { STRIDE };
    1 + (index.wrapping_mul(stride)) % customers
}

fn write_invoice(out: &mut String, index: u64, customers: u64, columns: Columns) {
    let customer = customer_of(index, customers);
    let id = 100_000 + index;
    let cents = 10_000 + (index * 37) % 90_000;
    let (ex, tax) = (cents as f64 / 100.0, cents as f64 / 1000.0);
    let inc = ex + tax;
    let recurring = index % 10 == 9;
    let paid = index.is_multiple_of(3);
    out.push('{');
    let mut first = true;
    let mut field = |out: &mut String, name: &str| {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, r#""{name}":"#);
    };
    if columns.has("ID") {
        field(out, "ID");
        let _ = write!(out, "{id}");
    }
    if columns.has("Type") {
        field(out, "Type");
        let kind = if !recurring && index % 7 == 3 { "Deposit" } else { "TaxInvoice" };
        let _ = write!(out, r#""{kind}""#);
    }
    if columns.has("Customer") {
        field(out, "Customer");
        // Odd customers are companies, even ones individuals, as in the fixtures.
        let _ = if customer % 2 == 1 {
            write!(
                out,
                r#"{{"ID":{customer},"CompanyName":"Customer {customer} Pty Ltd","GivenName":"","FamilyName":""}}"#
            )
        } else {
            write!(
                out,
                r#"{{"ID":{customer},"CompanyName":"","GivenName":"Given{customer}","FamilyName":"Family{customer}"}}"#
            )
        };
    }
    if columns.has("Jobs") {
        field(out, "Jobs");
        let _ = if recurring {
            write!(out, "[]")
        } else {
            write!(
                out,
                r#"[{{"ID":{},"Description":"Job {index}","Total":{{"ExTax":{ex:.2},"Tax":{tax:.2},"IncTax":{inc:.2}}}}}]"#,
                5000 + index
            )
        };
    }
    if columns.has("RecurringInvoice") {
        field(out, "RecurringInvoice");
        let _ = if recurring {
            write!(
                out,
                r#"{{"ID":{},"Description":"Monthly service","Total":{{"ExTax":{ex:.2},"Tax":{tax:.2},"IncTax":{inc:.2}}}}}"#,
                7000 + index % 100
            )
        } else {
            write!(out, "null")
        };
    }
    if columns.has("Total") {
        field(out, "Total");
        let _ = write!(
            out,
            r#"{{"ExTax":{ex:.2},"IncTax":{inc:.2},"Tax":{tax:.2},"ReverseChargeTax":0.0,"AmountApplied":{applied:.2},"BalanceDue":{due:.2}}}"#,
            applied = if paid { inc } else { 0.0 },
            due = if paid { 0.0 } else { inc },
        );
    }
    if columns.has("IsPaid") {
        field(out, "IsPaid");
        let _ = write!(out, "{paid}");
    }
    out.push('}');
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn response_head(status: u16, headers: &[(&str, &str)], length: usize) -> String {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {length}\r\n",
        reason(status)
    );
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str("\r\n");
    head
}

async fn write_json(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(&str, &str)],
    body: &str,
) -> bool {
    let head = response_head(status, headers, body.len());
    stream.write_all(head.as_bytes()).await.is_ok()
        && stream.write_all(body.as_bytes()).await.is_ok()
        && stream.flush().await.is_ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn columns_limit_the_fields_of_generated_invoices() {
        let config = FakeSimproConfig::generated(3, 2);
        let (all, _, _) = page_body(&config, 1, 250, Columns::default());
        let (narrow, total, pages) = page_body(&config, 1, 250, Columns::parse("ID,Customer"));
        let narrow: serde_json::Value = serde_json::from_str(&narrow).unwrap();
        let all: serde_json::Value = serde_json::from_str(&all).unwrap();
        assert_eq!((total, pages), (3, 1));
        assert_eq!(narrow[0].as_object().unwrap().len(), 2);
        assert_eq!(narrow[0]["Customer"], all[0]["Customer"]);
        assert_eq!(narrow[1]["ID"], all[1]["ID"]);
        assert_eq!(all[0].as_object().unwrap().len(), 7);
    }

    #[test]
    fn the_stride_walk_visits_every_customer_in_the_first_m_invoices() {
        let customers = 37_123;
        let seen: std::collections::HashSet<u64> =
            (0..customers).map(|i| customer_of(i, customers)).collect();
        assert_eq!(seen.len() as u64, customers);
        assert!(seen.iter().all(|c| (1..=customers).contains(c)));
    }
}
