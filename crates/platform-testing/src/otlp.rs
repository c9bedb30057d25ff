//! A local OTLP/HTTP trace receiver: what an OpenTelemetry collector's `otlphttp` receiver accepts
//! on `POST /v1/traces` (protobuf `ExportTraceServiceRequest`), kept in memory for assertions.
//!
//! Point a service's `telemetry.otlp_endpoint` at [`OtlpReceiver::endpoint`]; every exported span
//! becomes a [`ReceivedSpan`] with its ids as lowercase hex (as in a `traceparent`), its resource's
//! `service.name`, its attributes as text and its links. Only uncompressed protobuf is accepted
//! (the workspace's exporter sends nothing else); JSON or gzip bodies get 415 so a change of
//! exporter settings fails loudly instead of losing spans.
//!
//! It serves with actix-web on its own thread and actix system ([`crate::serve`]): the SDK's batch
//! exporter posts from a thread of its own with a blocking client, and must be answered whatever the
//! test's runtime does. The body is read raw (not decompressed by the framework), so what is
//! decoded is exactly what the exporter sent.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use actix_web::{HttpRequest, HttpResponse, web};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::{AnyValue as AnyValueBox, KeyValue};
use prost::Message;

use crate::serve::Served;

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
    served: Served,
    state: Arc<Mutex<State>>,
}

impl OtlpReceiver {
    /// Binds a free port on `127.0.0.1` and serves on a thread of its own until dropped.
    pub fn start() -> anyhow::Result<Self> {
        let state = Arc::new(Mutex::new(State::default()));
        let data = web::Data::from(state.clone());
        let served = Served::start("otlp-receiver", 0, 1, move |config| {
            config
                .app_data(data.clone())
                .route("/v1/traces", web::post().to(export))
                .default_service(web::to(|| async { protobuf(404, Vec::new()) }));
        })?;
        Ok(Self { served, state })
    }

    /// `http://127.0.0.1:<port>`: the value of `telemetry.otlp_endpoint` (the exporter appends
    /// `/v1/traces`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.served.addr())
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

/// The parts of a request the receiver looks at.
struct Request {
    content_type: String,
    content_encoding: Option<String>,
    body: web::Bytes,
}

async fn export(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<Mutex<State>>,
) -> HttpResponse {
    let header = |name: &str| {
        request.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_ascii_lowercase)
    };
    let Ok(Ok(body)) = payload.to_bytes_limited(MAX_BODY).await else {
        return protobuf(413, Vec::new());
    };
    let request = Request {
        content_type: header("content-type").unwrap_or_default(),
        content_encoding: header("content-encoding"),
        body,
    };
    let (status, body) = handle(&request, &state);
    protobuf(status, body)
}

fn protobuf(status: u16, body: Vec<u8>) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(status)
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status).content_type("application/x-protobuf").body(body)
}

/// Status and protobuf body of the answer to `request`.
fn handle(request: &Request, state: &Mutex<State>) -> (u16, Vec<u8>) {
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
    match ExportTraceServiceRequest::decode(request.body.as_ref()) {
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
