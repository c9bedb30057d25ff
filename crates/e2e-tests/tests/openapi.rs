//! Each service's OpenAPI 3.1 document, judged by tools nobody here wrote: the committed copy in
//! `docs/openapi/` is what the code generates and what the running service serves,
//! openapi-spec-validator accepts it, and schemathesis, driven by the served document, finds no
//! 5xx, no undocumented status code, no response off its schema, content type or headers, with and
//! without the service token.
//!
//! `UPDATE_OPENAPI=1 cargo test -p e2e-tests --test openapi` rewrites the committed copies. The
//! checkers come from `OPENAPI_TOOLS` (set by `make test`), else `scripts/openapi-tools.sh`
//! installs them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::{ADMIN_TOKEN, CampaignApi, CheckoutApi, Refresher, UsageMeter, WebhookIngest};
use platform_testing::{
    FakeSimpro, FakeSimproConfig, FakeStripe, FakeStripeConfig, TestApp, TestService,
};
use serde_json::Value;
use utoipa::OpenApi;

/// A service's description of its own routes.
type Routes = fn() -> utoipa::openapi::OpenApi;

/// Each service's name and its routes' description.
const SERVICES: [(&str, Routes); 5] = [
    ("campaign-api", campaign_api::routes::ApiDoc::openapi),
    ("checkout-api", checkout_api::routes::ApiDoc::openapi),
    ("customer-count-refresher", customer_count_refresher::routes::ApiDoc::openapi),
    ("usage-meter", usage_meter::routes::ApiDoc::openapi),
    ("webhook-ingest", webhook_ingest::routes::ApiDoc::openapi),
];

/// What schemathesis checks: conformance to the document (status codes, bodies, content types,
/// headers), no 5xx, every request the document calls invalid refused with a 4xx, operations that
/// declare security refuse requests without it, 405 with `Allow` for an undeclared method, and
/// (stateful) nothing still readable after a delete. Not `positive_data_acceptance`: the
/// documents describe rules across fields and limits from settings in words, not schema.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance,ignored_auth,\
                      unsupported_method,missing_required_header,use_after_free,\
                      ensure_resource_availability,negative_data_rejection";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The document of `service` as the code generates it, pretty-printed as committed.
fn generated(service: &str) -> String {
    let (name, api) = SERVICES.iter().find(|(name, _)| *name == service).unwrap();
    let mut json = platform_service::openapi::document(name, api()).to_pretty_json().unwrap();
    json.push('\n');
    json
}

fn committed_path(service: &str) -> PathBuf {
    workspace().join("docs/openapi").join(format!("{service}.json"))
}

/// The bin directory of the pinned schemathesis and openapi-spec-validator.
fn tools() -> &'static Path {
    static TOOLS: OnceLock<PathBuf> = OnceLock::new();
    TOOLS.get_or_init(|| {
        if let Some(dir) = std::env::var_os("OPENAPI_TOOLS").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        let script = workspace().join("scripts/openapi-tools.sh");
        let out = Command::new("bash").arg(script).output().expect("run scripts/openapi-tools.sh");
        assert!(out.status.success(), "openapi-tools.sh: {}", String::from_utf8_lossy(&out.stderr));
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_committed_documents_are_the_ones_the_code_generates() {
    let update = std::env::var("UPDATE_OPENAPI").is_ok_and(|v| v == "1");
    let mut stale = Vec::new();
    for (service, _) in SERVICES {
        // Arrange
        let path = committed_path(service);
        let expected = generated(service);

        // Act
        let committed = std::fs::read_to_string(&path).unwrap_or_default();

        // Assert (or rewrite)
        if committed != expected {
            if update {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, expected).unwrap();
            } else {
                stale.push(path.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "stale OpenAPI documents {stale:?}: run `UPDATE_OPENAPI=1 cargo test -p e2e-tests --test openapi` and commit them"
    );
}

#[test]
fn every_document_passes_openapi_spec_validator() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = SERVICES
        .iter()
        .map(|(service, _)| {
            let file = dir.path().join(format!("{service}.json"));
            std::fs::write(&file, generated(service)).unwrap();
            file
        })
        .collect();

    // Act
    let out = Command::new(tools().join("openapi-spec-validator")).args(&files).output().unwrap();

    // Assert
    assert!(out.status.success(), "openapi-spec-validator: {}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches(": OK").count(), files.len(), "{stdout}");
}

#[test]
fn every_admin_and_internal_operation_names_a_security_scheme_the_document_defines() {
    for (service, _) in SERVICES {
        // Arrange
        let doc: Value = serde_json::from_str(&generated(service)).unwrap();
        let schemes = doc["components"]["securitySchemes"].as_object().cloned().unwrap_or_default();

        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                // Act
                let named: Vec<&String> = operation["security"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_object)
                    .flat_map(|requirement| requirement.keys())
                    .collect();

                // Assert
                let operation = format!("{service}: {method} {path}");
                for name in &named {
                    assert!(schemes.contains_key(*name), "{operation} names undefined {name}");
                }
                if path.contains("/admin/") || path.starts_with("/internal/") {
                    assert!(!named.is_empty(), "{operation} has no security");
                }
            }
        }
    }
}

#[test]
fn no_schema_of_a_service_is_shadowed_by_a_common_one() {
    for (service, api) in SERVICES {
        // Arrange: `document` merges onto the common part, which keeps its own schema on a clash.
        let own = api().components.unwrap_or_default().schemas;

        // Act
        let merged = serde_json::from_str::<Value>(&generated(service)).unwrap();

        // Assert
        for (name, schema) in own {
            let schema = serde_json::to_value(schema).unwrap();
            let kept = &merged["components"]["schemas"][&name];
            assert_eq!(kept, &schema, "{service}: schema {name} replaced by a common one");
        }
    }
}

/// Starts `S` with `vars`, checks it serves the generated document, then runs schemathesis against
/// it twice: without a token and with the service token.
async fn fuzz<S: TestService>(service: &str, vars: &[(&str, String)]) {
    // Arrange
    // Rate limits off: the fuzzer's burst would otherwise mostly meet 429 (documented on every
    // limited route) and reach little of the handlers.
    let mut builder =
        TestApp::builder(&format!("openapi-{service}")).var("APP__RATE_LIMIT__ENABLED", "false");
    for (key, value) in vars {
        builder = builder.var(key, value.clone());
    }
    let app = builder.spawn::<S>().await;
    let served: Value =
        app.http.get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    let expected: Value = serde_json::from_str(&generated(service)).unwrap();
    assert_eq!(served, expected, "{service} serves the document its code generates");
    let authorization = format!("Authorization: Bearer {ADMIN_TOKEN}");
    // schemathesis keeps a cache in its working directory: a throwaway one, not the source tree.
    let workdir = tempfile::tempdir().unwrap();

    for header in [None, Some(authorization.as_str())] {
        // Act
        let mut st = Command::new(tools().join("st"));
        st.current_dir(workdir.path())
            .arg("run")
            .arg(app.url("/openapi.json"))
            .args(["--checks", CHECKS])
            .args(["--max-examples", "12", "--seed", "20261203", "--workers", "1"])
            .args(["--request-timeout", "5"])
            .env("NO_COLOR", "1");
        if let Some(header) = header {
            st.args(["--header", header]);
        }
        let out = tokio::task::spawn_blocking(move || st.output()).await.unwrap().unwrap();

        // Assert
        let with = if header.is_some() { "with" } else { "without" };
        assert!(
            out.status.success(),
            "schemathesis against {service} {with} the service token: {}",
            describe(&out)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let generated = stdout
            .lines()
            .find_map(|line| line.trim().split_once(" generated, "))
            .and_then(|(count, _)| count.parse::<u32>().ok());
        assert!(
            generated.is_some_and(|n| n > 100),
            "schemathesis ran too few cases against {service} {with} the token: {stdout}"
        );
    }
    app.stop_and_join().await.unwrap();
}

#[tokio::test]
async fn schemathesis_finds_campaign_api_true_to_its_document() {
    // Live updates end after a second, so the SSE route answers whole within the request timeout;
    // the demo organisation and its campaigns give the fuzzer something to find.
    let vars = [("APP__LIVE__MAX_STREAM_SECS", "1".into()), ("APP__DEMO__SEED", "true".into())];
    fuzz::<CampaignApi>("campaign-api", &vars).await;
}

#[tokio::test]
async fn schemathesis_finds_checkout_api_true_to_its_document() {
    let stripe = FakeStripe::start(FakeStripeConfig::default()).unwrap();
    let vars = [
        ("APP__STRIPE__SECRET_KEY", stripe.secret_key().to_owned()),
        ("APP__STRIPE__API_BASE_URL", stripe.base_url()),
        ("APP__DEMO__SEED", "true".into()),
    ];
    fuzz::<CheckoutApi>("checkout-api", &vars).await;
}

#[tokio::test]
async fn schemathesis_finds_customer_count_refresher_true_to_its_document() {
    let simpro = FakeSimpro::start(FakeSimproConfig::generated(300, 40)).unwrap();
    let vars = [
        ("APP__SIMPRO__BASE_URL", simpro.base_url()),
        ("APP__SIMPRO__TOKEN", simpro.token().unwrap().to_owned()),
        ("APP__SIMPRO__COMPANY_ID", simpro.company_id().to_string()),
    ];
    fuzz::<Refresher>("customer-count-refresher", &vars).await;
}

#[tokio::test]
async fn schemathesis_finds_usage_meter_true_to_its_document() {
    fuzz::<UsageMeter>("usage-meter", &[]).await;
}

#[tokio::test]
async fn schemathesis_finds_webhook_ingest_true_to_its_document() {
    fuzz::<WebhookIngest>("webhook-ingest", &[]).await;
}
