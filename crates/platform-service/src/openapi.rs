//! The OpenAPI 3.1 document each service serves at `GET /openapi.json`, generated from the
//! handlers' `#[utoipa::path]` annotations.
//!
//! A service describes its own routes (`routes::ApiDoc`); [`document`] adds what every service
//! shares: the common routes of [`crate::health`], the error body, the security schemes its
//! operations name, and the answers the HTTP edge gives any route (400 / 408 / 413 / 415 for a
//! body, 500), so a status code a client can meet is always documented. The committed copies in
//! `docs/openapi/` are this document, checked by the e2e suite. The document's methods per path
//! also give a 405 its `Allow` header ([`crate::error::no_route`]).

use std::collections::{BTreeMap, BTreeSet};

use actix_web::dev::ResourceDef;
use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use actix_web::web::{self, Bytes};
use actix_web::{HttpResponse, http::StatusCode};
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::info::InfoBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ObjectBuilder, RefOr, Type};
use utoipa::{IntoResponses, OpenApi, PartialSchema};

use crate::error::ErrorBody;

// Operations name these in `security(("serviceToken" = []))` (the macro takes literals only); the
// e2e suite checks every name an operation gives is defined.

/// The service token (`auth.admin_token`): internal callers and operators.
pub const SERVICE_TOKEN: &str = "serviceToken";
/// A tenant token: a JWT naming one organisation (`platform_service::tenant`).
pub const TENANT_TOKEN: &str = "tenantToken";
/// checkout-api's session cookie.
pub const SESSION_COOKIE: &str = "sessionCookie";

/// The session cookie's name in the document (checkout-api's `user_sessions.cookie_name` default).
const SESSION_COOKIE_NAME: &str = "checkout_sid";

#[derive(OpenApi)]
#[openapi(
    paths(
        crate::health::healthz,
        crate::health::readyz,
        crate::health::metrics,
        crate::health::redis_health,
        openapi_json
    ),
    components(schemas(ErrorBody))
)]
struct CommonApi;

/// The whole document of `service`: its own routes (`api`) and what every service shares.
pub fn document(service: &str, api: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    let mut doc = CommonApi::openapi();
    doc.merge(api);
    doc.info = InfoBuilder::new()
        .title(service)
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Errors answer `{\"error\": \"<sentence>\", \"code\": \"<snake_case>\"}` \
             (ErrorBody); 5xx bodies never carry the cause.",
        ))
        .build();
    let mut used = BTreeSet::new();
    for item in doc.paths.paths.values_mut() {
        for operation in
            [&mut item.get, &mut item.post, &mut item.put, &mut item.patch, &mut item.delete]
                .into_iter()
                .flatten()
        {
            add_edge_responses(operation);
            // A requirement keeps its scheme names private; its JSON is `{"<name>": []}`.
            for requirement in operation.security.iter().flatten() {
                if let Ok(serde_json::Value::Object(names)) = serde_json::to_value(requirement) {
                    used.extend(names.into_iter().map(|(name, _)| name));
                }
            }
        }
    }
    let components = doc.components.get_or_insert_with(Default::default);
    for name in &used {
        if let Some(scheme) = security_scheme(name) {
            components.add_security_scheme(name, scheme);
        }
    }
    doc
}

fn security_scheme(name: &str) -> Option<SecurityScheme> {
    let bearer = |format: Option<&str>, description: &str| {
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.bearer_format = format.map(str::to_owned);
        http.description = Some(description.to_owned());
        SecurityScheme::Http(http)
    };
    Some(match name {
        SERVICE_TOKEN => bearer(None, "The service token (`auth.admin_token`)."),
        TENANT_TOKEN => bearer(
            Some("JWT"),
            "A tenant token naming the organisation of the route (HS256 / RS256 / ES256).",
        ),
        SESSION_COOKIE => SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
            SESSION_COOKIE_NAME,
            "The session cookie `POST /api/sessions/guest` or `/api/sessions/login` sets.",
        ))),
        _ => return None,
    })
}

/// The answers the edge gives whatever the handler: extractor and body failures where there is a
/// body, the body deadline, and the opaque 500.
fn add_edge_responses(operation: &mut Operation) {
    let mut edge = vec![(StatusCode::INTERNAL_SERVER_ERROR, "Internal error (opaque body)")];
    if operation.request_body.is_some() {
        edge.extend([
            (StatusCode::BAD_REQUEST, "The body is not valid JSON or not the expected shape"),
            (StatusCode::REQUEST_TIMEOUT, "The body did not arrive within `http.body_timeout_ms`"),
            (StatusCode::PAYLOAD_TOO_LARGE, "The body is larger than `http.body_limit_bytes`"),
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "The body is not `application/json`"),
        ]);
    }
    if operation.parameters.iter().flatten().next().is_some() {
        edge.push((StatusCode::BAD_REQUEST, "A path or query parameter is invalid"));
    }
    for (status, description) in edge {
        operation
            .responses
            .responses
            .entry(status.as_str().to_owned())
            .or_insert_with(|| error(description).into());
    }
}

/// A response whose body is the [`ErrorBody`].
pub fn error(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name("ErrorBody"))))
                .build(),
        )
        .build()
}

/// The 429 of a rate-limited route, with the limiter's headers.
#[derive(Debug)]
pub struct RateLimited;

impl IntoResponses for RateLimited {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let integer = |description: &str| {
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)))
                .description(Some(description))
                .build()
        };
        let mut response = error("Rate limited: retry after `Retry-After` seconds");
        response.headers.insert("Retry-After".into(), integer("Seconds until a retry may pass"));
        response.headers.insert("X-RateLimit-Limit".into(), integer("Requests allowed per window"));
        response.headers.insert("X-RateLimit-Remaining".into(), integer("Requests left"));
        BTreeMap::from([("429".to_owned(), response.into())])
    }
}

/// The 503 of a route that needs a dependency (Redis, Postgres) that does not answer.
#[derive(Debug)]
pub struct Unavailable;

impl IntoResponses for Unavailable {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        BTreeMap::from([(
            "503".to_owned(),
            error("A dependency is unavailable; retry later (`code: unavailable`)").into(),
        )])
    }
}

/// The 401 of a route that needs a token: missing, invalid or expired.
#[derive(Debug)]
pub struct Unauthorized;

impl IntoResponses for Unauthorized {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let mut response = error("The token is missing, invalid or expired");
        response.headers.insert(
            "WWW-Authenticate".into(),
            HeaderBuilder::new()
                .schema(String::schema())
                .description(Some("The scheme to retry with (tenant-token routes)"))
                .build(),
        );
        BTreeMap::from([("401".to_owned(), response.into())])
    }
}

/// The served document: its JSON, written once at start, and each path's methods, which the
/// `Allow` header of a 405 lists ([`crate::error::no_route`]).
#[derive(Debug, Clone)]
pub(crate) struct ServedDocument {
    json: Bytes,
    methods: Vec<(ResourceDef, HeaderValue)>,
}

impl ServedDocument {
    pub(crate) fn new(service: &str, api: utoipa::openapi::OpenApi) -> serde_json::Result<Self> {
        let doc = document(service, api);
        let methods = doc
            .paths
            .paths
            .iter()
            .filter_map(|(path, item)| {
                let named = [
                    ("GET", &item.get),
                    ("POST", &item.post),
                    ("PUT", &item.put),
                    ("PATCH", &item.patch),
                    ("DELETE", &item.delete),
                ];
                let allow: Vec<&str> =
                    named.iter().filter(|(_, op)| op.is_some()).map(|(name, _)| *name).collect();
                let allow = HeaderValue::from_str(&allow.join(", ")).ok()?;
                Some((ResourceDef::new(path.as_str()), allow))
            })
            .collect();
        Ok(Self { json: Bytes::from(doc.to_json()?), methods })
    }

    /// The methods of the documented path `path` matches (templates such as `{id}` included).
    pub(crate) fn allow(&self, path: &str) -> Option<&HeaderValue> {
        self.methods.iter().find(|(def, _)| def.is_match(path)).map(|(_, allow)| allow)
    }
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "This OpenAPI 3.1 document", content_type = "application/json", body = Object))
)]
pub(crate) async fn openapi_json(doc: web::Data<ServedDocument>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "application/json"))
        .insert_header((CACHE_CONTROL, "no-cache"))
        .body(doc.json.clone())
}
