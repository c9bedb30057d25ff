//! A local OTLP/HTTP trace receiver: what an OpenTelemetry collector's `otlphttp` receiver accepts
//! on `POST /v1/traces` (protobuf `ExportTraceServiceRequest`), kept in memory for assertions.
//!
//! Point a service's `telemetry.otlp_endpoint` at [`OtlpReceiver::endpoint`]; every exported span
//! becomes a [`ReceivedSpan`] with its ids as lowercase hex (as in a `traceparent`), its resource's
//! `service.name`, its attributes as text and its links. Only uncompressed protobuf is accepted
//! (the workspace's exporter sends nothing else); JSON or gzip bodies get 415 so a change of
//! exporter settings fails loudly instead of losing spans.
//!
//! Like [`crate::fake_simpro`], it is a small hand-written HTTP/1.1 loop (keep-alive,
//! `Content-Length` bodies) on its own thread and runtime: the SDK's batch exporter posts from a
//! thread of its own with a blocking client, and must be answered whatever the test's runtime does.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::{AnyValue as AnyValueBox, KeyValue};
use prost::Message;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Largest request body accepted (the SDK's batches of 512 spans stay far below).
const MAX_BODY: usize = 32 * 1024 * 1024;

/// One exported span, flattened for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSpan {
    /// `service.name` of the resource that exported it.
    pub service_name: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits; `None` for a root span.
    pub parent_span_id: Option<String>,
    pub name: String,
    /// Span attributes, values as text (numbers and booleans formatted, arrays as debug text).
    pub attributes: HashMap<String, String>,
    /// `(trace id, span id)` of every link.
    pub links: Vec<(String, String)>,
}

impl ReceivedSpan {
    /// The attribute `key` as text.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Debug, Default)]
struct State {
    spans: Vec<ReceivedSpan>,
    requests: u64,
}

/// A running receiver. Dropping it stops the server.
#[derive(Debug)]
pub struct OtlpReceiver {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Binds a free port on `127.0.0.1` and serves on a thread of its own until dropped.
    pub fn start() -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let state = Arc::new(Mutex::new(State::default()));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let served = state.clone();
        let thread = std::thread::Builder::new().name("otlp-receiver".into()).spawn(move || {
            runtime.block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::error!(%error, "OTLP receiver cannot listen");
                        return;
                    }
                };
                tokio::select! {
                    _ = stop_rx => {}
                    () = accept_loop(listener, served) => {}
                }
            });
            runtime.shutdown_background();
        })?;
        Ok(Self { addr, state, stop: Some(stop_tx), thread: Some(thread) })
    }

    /// `http://127.0.0.1:<port>`: the value of `telemetry.otlp_endpoint` (the exporter appends
    /// `/v1/traces`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.lock().spans.clone()
    }

    /// Export requests received (accepted or not).
    pub fn requests(&self) -> u64 {
        self.lock().requests
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<Mutex<State>>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(stream, state.clone()));
            }
            Err(error) => {
                tracing::warn!(%error, "OTLP receiver accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// The parts of a request the receiver looks at.
struct Request {
    method: String,
    path: String,
    content_type: String,
    content_encoding: Option<String>,
    body: Vec<u8>,
    close: bool,
}

async fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let (mut length, mut content_type, mut content_encoding, mut close) =
        (0usize, String::new(), None, false);
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
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().ok()?;
            } else if name.eq_ignore_ascii_case("content-type") {
                content_type = value.to_ascii_lowercase();
            } else if name.eq_ignore_ascii_case("content-encoding") {
                content_encoding = Some(value.to_ascii_lowercase());
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                // Chunked bodies are not supported; the exporter sends a Content-Length.
                return None;
            }
        }
    }
    if length > MAX_BODY {
        return None;
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.ok()?;
    Some(Request { method, path, content_type, content_encoding, body, close })
}

async fn serve_connection(stream: TcpStream, state: Arc<Mutex<State>>) {
    let mut reader = BufReader::new(stream);
    while let Some(request) = read_request(&mut reader).await {
        let (status, body) = handle(&request, &state);
        let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
        let _ = write!(
            head,
            "Content-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let stream = reader.get_mut();
        let written = stream.write_all(head.as_bytes()).await.is_ok()
            && stream.write_all(&body).await.is_ok()
            && stream.flush().await.is_ok();
        if !written || request.close {
            break;
        }
    }
}

/// Status and protobuf body of the answer to `request`.
fn handle(request: &Request, state: &Mutex<State>) -> (u16, Vec<u8>) {
    if request.method != "POST" || request.path.split('?').next() != Some("/v1/traces") {
        return (404, Vec::new());
    }
    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
    state.requests += 1;
    if !request.content_type.starts_with("application/x-protobuf")
        || request.content_encoding.as_deref().is_some_and(|e| e != "identity")
    {
        tracing::warn!(
            content_type = %request.content_type,
            content_encoding = ?request.content_encoding,
            "OTLP receiver got a body it does not decode"
        );
        return (415, Vec::new());
    }
    match ExportTraceServiceRequest::decode(request.body.as_slice()) {
        Ok(export) => {
            state.spans.extend(flatten(export));
            // An empty ExportTraceServiceResponse: full success.
            (200, Vec::new())
        }
        Err(error) => {
            tracing::warn!(%error, "OTLP receiver got an undecodable body");
            (400, Vec::new())
        }
    }
}

fn flatten(export: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in export.resource_spans {
        let resource =
            resource_spans.resource.map(|r| attributes(r.attributes)).unwrap_or_default();
        let service_name = resource.get("service.name").cloned().unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                out.push(ReceivedSpan {
                    service_name: service_name.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: (!span.parent_span_id.is_empty())
                        .then(|| hex(&span.parent_span_id)),
                    name: span.name,
                    attributes: attributes(span.attributes),
                    links: span.links.iter().map(|l| (hex(&l.trace_id), hex(&l.span_id))).collect(),
                });
            }
        }
    }
    out
}

fn attributes(pairs: Vec<KeyValue>) -> HashMap<String, String> {
    pairs.into_iter().map(|kv| (kv.key, kv.value.map(text).unwrap_or_default())).collect()
}

fn text(value: AnyValueBox) -> String {
    match value.value {
        Some(AnyValue::StringValue(s)) => s,
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        415 => "Unsupported Media Type",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    use super::*;

    fn string(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValueBox { value: Some(AnyValue::StringValue(value.to_owned())) }),
            ..KeyValue::default()
        }
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn an_export_request_flattens_to_spans_with_hex_ids_and_their_service() {
        let export = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![string("service.name", "svc")],
                    ..Resource::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope::default()),
                    spans: vec![Span {
                        trace_id: vec![0xab; 16],
                        span_id: vec![0x01; 8],
                        parent_span_id: Vec::new(),
                        name: "root".to_owned(),
                        attributes: vec![string("service", "webhook-ingest")],
                        ..Span::default()
                    }],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };

        let spans = flatten(ExportTraceServiceRequest::decode(&*export.encode_to_vec()).unwrap());

        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].service_name, "svc");
        assert_eq!(spans[0].trace_id, "ab".repeat(16));
        assert_eq!(spans[0].span_id, "0101010101010101");
        assert_eq!(spans[0].parent_span_id, None);
        assert_eq!(spans[0].attribute("service"), Some("webhook-ingest"));
    }
}
