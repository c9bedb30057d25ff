//! The routes and contracts every service inherits, served by a real Application on a free port
//! against real Redis and Postgres.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use actix_web::{HttpResponse, web};
use platform_redis::Role;
use platform_redis::fred::prelude::*;
use platform_redis::ratelimit::RateLimit;
use platform_service::settings::{CommonSettings, DatabaseSettings, load_from};
use platform_service::{AppContext, Application, RequireAdmin, connect_context};
use platform_testing::{PostgresServer, RedisServer, unique_prefix};
use secrecy::SecretString;
use serde_json::Value;

const TOKEN: &str = "test-admin-token";

struct TestApp {
    base: String,
    shutdown: platform_service::Shutdown,
    client: reqwest::Client,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

#[derive(serde::Deserialize)]
struct Echo {
    #[allow(dead_code)]
    name: String,
}

async fn spawn_app(redis_url: &str, with_database: bool) -> TestApp {
    spawn_app_requiring(redis_url, with_database, "redis,postgres").await
}

async fn spawn_app_requiring(
    redis_url: &str,
    with_database: bool,
    ready_requires: &str,
) -> TestApp {
    spawn_app_with(redis_url, with_database, ready_requires, "").await
}

/// A service with a 1 s body deadline and CORS for `https://shop.example` on `/public/` and `/echo`.
async fn spawn_edge_app() -> TestApp {
    let http = r#"
            body_timeout_ms = 1000
            cors_allowed_origins = ["https://shop.example"]
            cors_paths = ["/public/", "/echo"]
    "#;
    spawn_app_with(&RedisServer::shared().url(), false, "redis,postgres", http).await
}

/// `http_extra`: further `[http]` keys.
async fn spawn_app_with(
    redis_url: &str,
    with_database: bool,
    ready_requires: &str,
    http_extra: &str,
) -> TestApp {
    let prefix = unique_prefix("routes");
    let common: CommonSettings = load_from(
        &format!(
            r#"
            [http]
            host = "127.0.0.1"
            port = 0
            workers = 1
            shutdown_timeout_secs = 5
            body_limit_bytes = 64
            ready_requires = "{ready_requires}"
            {http_extra}
            [redis]
            url = "{redis_url}"
            key_prefix = "{prefix}"
            reconnect_max_delay_ms = 500
            [auth]
            admin_token = "{TOKEN}"
            [telemetry]
            [rate_limit.policies.tight]
            limit = 2
            window_secs = 3600
            "#
        ),
        None,
        None,
    )
    .unwrap();
    common.validate().unwrap();
    let database = if with_database {
        let db = PostgresServer::shared().create_database().await.unwrap();
        Some(DatabaseSettings {
            url: SecretString::from(db.url),
            max_connections: 2,
            acquire_timeout_ms: 1_000,
        })
    } else {
        None
    };
    let context = connect_context("test-service", &common, database.as_ref()).await.unwrap();
    let limiter = context.rate_limiter.clone();
    let app =
        Application::build(&common.http, common.auth.admin_token.clone(), context, move |cfg| {
            cfg.route(
                "/admin/ping",
                web::post().to(|_: RequireAdmin| async { HttpResponse::Ok().json("pong") }),
            )
            .route(
                "/echo",
                web::post().to(|_: web::Json<Echo>| async { HttpResponse::Ok().finish() }),
            )
            .route(
                "/upload",
                web::post()
                    .to(|body: web::Bytes| async move { HttpResponse::Ok().json(body.len()) }),
            )
            .route("/items/{id}", web::get().to(item))
            .route("/public/items", web::get().to(|| async { HttpResponse::Ok().json("items") }))
            .route("/redis-connection", web::get().to(redis_connection))
            .service(
                web::resource("/limited")
                    .wrap(RateLimit::new(limiter.clone(), "tight"))
                    .route(web::get().to(|| async { HttpResponse::Ok().json("ok") })),
            );
        })
        .unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let shutdown = app.context().shutdown.clone();
    let server = tokio::spawn(app.run_until_stopped());
    TestApp { base, shutdown, client: reqwest::Client::new(), server }
}

#[derive(serde::Deserialize)]
struct Page {
    #[allow(dead_code)]
    limit: u32,
}

async fn item(id: web::Path<u32>, _page: web::Query<Page>) -> HttpResponse {
    HttpResponse::Ok().json(id.into_inner())
}

/// Whether the worker serving this request sends Redis commands on a connection of its own, and
/// whether a `PING` on it answers.
async fn redis_connection(ctx: web::Data<AppContext>) -> HttpResponse {
    let pool = ctx.redis.primary();
    let client = pool.next_connected();
    let shared =
        ctx.redis.role(Role::Primary).shared().clients().iter().any(|c| c.id() == client.id());
    let pong: Result<String, _> = client.ping(None).await;
    HttpResponse::Ok().json(serde_json::json!({ "own": !shared, "ping": pong.is_ok() }))
}

impl TestApp {
    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(format!("{}{path}", self.base)).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn readiness_reports_redis_and_postgres_when_both_answer() {
    // Arrange
    let app = spawn_app(&RedisServer::shared().url(), true).await;

    // Act
    let (live, live_body) = app.get("/healthz").await;
    let (ready, ready_body) = app.get("/readyz").await;

    // Assert
    assert_eq!(live, 200);
    assert_eq!(live_body["service"], "test-service");
    assert_eq!(ready, 200, "{ready_body}");
    assert_eq!(ready_body["checks"]["redis"]["ok"], true);
    assert_eq!(ready_body["checks"]["postgres"]["ok"], true);
}

#[tokio::test]
async fn redis_health_says_fallback_while_redis_is_down_and_redis_once_back() {
    // Arrange
    let redis = RedisServer::start().unwrap();
    let app = spawn_app(&redis.url(), false).await;
    let (_, up) = app.get("/api/health/redis").await;

    // Act
    redis.stop();
    let (down_status, down) = app.get("/api/health/redis").await;
    let (ready_while_down, _) = app.get("/readyz").await;
    let (live_while_down, _) = app.get("/healthz").await;
    redis.restart().unwrap();
    let mut back = Value::Null;
    for _ in 0..100 {
        back = app.get("/api/health/redis").await.1;
        if back["connected"] == true {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Assert
    assert_eq!(up["connected"], true);
    assert_eq!(up["mode"], "redis");
    assert!(up["latency"].as_f64().is_some());
    assert!(up["memory"]["usedBytes"].as_u64().unwrap() > 0);
    assert_eq!(down_status, 200, "the report itself must answer while Redis is down");
    assert_eq!(down["connected"], false);
    assert_eq!(down["mode"], "fallback");
    assert_eq!(ready_while_down, 503);
    assert_eq!(live_while_down, 200, "liveness must not depend on Redis");
    assert_eq!(back["connected"], true);
    assert_eq!(back["mode"], "redis");
    assert_eq!(up["fallbacks"]["rateLimiter"], false);
}

#[tokio::test]
async fn a_service_serving_on_its_fallback_stays_ready_while_redis_is_down_and_says_degraded() {
    // Arrange: this service declares it can serve without Redis.
    let redis = RedisServer::start().unwrap();
    let app = spawn_app_requiring(&redis.url(), true, "postgres").await;
    let (ready_up, ready_up_body) = app.get("/readyz").await;

    // Act
    redis.stop();
    let (ready_down, ready_down_body) = app.get("/readyz").await;

    // Assert
    assert_eq!(ready_up, 200, "{ready_up_body}");
    assert_eq!(ready_up_body["status"], "ready");
    assert_eq!(ready_down, 200, "{ready_down_body}");
    assert_eq!(ready_down_body["status"], "degraded");
    assert_eq!(ready_down_body["checks"]["redis"]["ok"], false);
    assert_eq!(ready_down_body["checks"]["postgres"]["ok"], true);
    assert_eq!(ready_down_body["requires"], serde_json::json!(["postgres"]));
}

#[tokio::test]
async fn a_rate_limited_route_carries_headers_and_answers_429_past_its_policy() {
    // Arrange
    let app = spawn_app(&RedisServer::shared().url(), false).await;
    let url = format!("{}/limited", app.base);

    // Act
    let first = app.client.get(&url).send().await.unwrap();
    let second = app.client.get(&url).send().await.unwrap();
    let third = app.client.get(&url).send().await.unwrap();

    // Assert
    assert_eq!(first.status().as_u16(), 200);
    assert_eq!(first.headers()["x-ratelimit-limit"], "2");
    assert_eq!(first.headers()["x-ratelimit-remaining"], "1");
    assert_eq!(second.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(third.status().as_u16(), 429);
    assert!(third.headers().contains_key("retry-after"));
    let body: Value = third.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited");
}

#[tokio::test]
async fn metrics_count_requests_by_route_pattern() {
    // Arrange
    let app = spawn_app(&RedisServer::shared().url(), false).await;
    app.get("/healthz").await;
    app.get("/healthz").await;

    // Act
    let response = app.client.get(format!("{}/metrics", app.base)).send().await.unwrap();
    let text = response.text().await.unwrap();

    // Assert
    let expected = r#"http_requests_total{service="test-service",method="GET",route="/healthz",status="200"} 2"#;
    assert!(text.contains(expected), "{text}");
    assert!(text.contains("http_request_duration_seconds_bucket"));
}

#[tokio::test]
async fn metrics_count_rate_limit_decisions_by_source_and_denials() {
    // Arrange: the limited route allows 2 per window; the third is denied by Redis, the fourth
    // from the blocked cache.
    let app = spawn_app(&RedisServer::shared().url(), false).await;
    for _ in 0..4 {
        app.client.get(format!("{}/limited", app.base)).send().await.unwrap();
    }

    // Act
    let response = app.client.get(format!("{}/metrics", app.base)).send().await.unwrap();
    let text = response.text().await.unwrap();

    // Assert
    for line in [
        r#"rate_limit_decisions_total{service="test-service",source="redis"} 3"#,
        r#"rate_limit_decisions_total{service="test-service",source="blocked_cache"} 1"#,
        r#"rate_limit_decisions_total{service="test-service",source="lease"} 0"#,
        r#"rate_limit_denied_total{service="test-service"} 2"#,
        r#"rate_limit_lease_refills_ahead_total{service="test-service"} 0"#,
    ] {
        assert!(text.contains(line), "{line} not in\n{text}");
    }
}

#[tokio::test]
async fn errors_follow_the_json_contract() {
    // Arrange
    let app = spawn_app(&RedisServer::shared().url(), false).await;
    let post = |path: &str, body: &'static str| {
        app.client
            .post(format!("{}{path}", app.base))
            .header("content-type", "application/json")
            .body(body)
    };
    let oversized =
        r#"{"name":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#;

    // Act
    let (unknown, unknown_body) = app.get("/no/such/route").await;
    let bad_json = post("/echo", "{not json").send().await.unwrap();
    let too_big = post("/echo", oversized).send().await.unwrap();

    // Assert
    assert_eq!(unknown, 404);
    assert_eq!(unknown_body["code"], "not_found");
    assert_eq!(bad_json.status().as_u16(), 400);
    let body: Value = bad_json.json().await.unwrap();
    assert_eq!(body["code"], "invalid_json");
    assert!(body["error"].as_str().unwrap().starts_with("Invalid JSON body"));
    assert_eq!(too_big.status().as_u16(), 413);
    let body: Value = too_big.json().await.unwrap();
    assert_eq!(body["code"], "payload_too_large");
}

#[tokio::test]
async fn admin_routes_need_the_bearer_token() {
    // Arrange
    let app = spawn_app(&RedisServer::shared().url(), false).await;
    let url = format!("{}/admin/ping", app.base);

    // Act
    let missing = app.client.post(&url).send().await.unwrap();
    let wrong = app.client.post(&url).bearer_auth("nope").send().await.unwrap();
    let right = app.client.post(&url).bearer_auth(TOKEN).send().await.unwrap();

    // Assert
    assert_eq!(missing.status().as_u16(), 401);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"error": "Missing bearer token", "code": "unauthorized"}));
    assert_eq!(wrong.status().as_u16(), 401);
    assert_eq!(right.status().as_u16(), 200);
}

#[tokio::test]
async fn a_stop_request_drains_and_ends_the_server() {
    // Arrange
    let app = spawn_app(&RedisServer::shared().url(), false).await;
    assert_eq!(app.get("/healthz").await.0, 200);

    // Act
    app.shutdown.trigger();
    let finished = tokio::time::timeout(std::time::Duration::from_secs(10), app.server).await;

    // Assert
    assert!(matches!(finished, Ok(Ok(Ok(())))), "server did not stop cleanly: {finished:?}");
    assert!(app.shutdown.is_draining());
}

#[tokio::test]
async fn http_workers_send_redis_commands_on_connections_of_their_own() {
    // Arrange
    let app = spawn_app(&RedisServer::shared().url(), false).await;

    // Act: the worker's pool connects in the background; until then the shared pool serves.
    let mut answer = Value::Null;
    for _ in 0..100 {
        answer = app.get("/redis-connection").await.1;
        if answer["own"] == true {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Assert
    assert_eq!(answer["own"], true, "{answer}");
    assert_eq!(answer["ping"], true, "{answer}");
}

/// A POST head declaring a 100000-byte body (`chunked`: a chunked one of unknown length).
fn slow_upload_head(base: &str, path: &str, chunked: bool) -> String {
    slow_head(base, "POST", path, chunked)
}

fn slow_head(base: &str, method: &str, path: &str, chunked: bool) -> String {
    let host = base.trim_start_matches("http://");
    let length = if chunked { "Transfer-Encoding: chunked" } else { "Content-Length: 100000" };
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n\
         {length}\r\n\r\n"
    )
}

/// Sends `head`, then `piece` every 300 ms, and collects what the server answers until it closes
/// the connection (or 10 s pass): the bytes, when the first arrived, and whether it closed.
async fn trickle_body(
    base: String,
    head: String,
    piece: &'static [u8],
) -> (Vec<u8>, std::time::Duration, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(base.trim_start_matches("http://")).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let trickle = tokio::spawn(async move {
        for _ in 0..40 {
            if writer.write_all(piece).await.is_err() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
    });
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut closed = false;
    let mut answered_after = None;
    while started.elapsed() < std::time::Duration::from_secs(10) {
        match tokio::time::timeout(std::time::Duration::from_millis(200), reader.read(&mut chunk))
            .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => {
                received.extend_from_slice(&chunk[..n]);
                answered_after.get_or_insert(started.elapsed());
            }
            Err(_) => {}
        }
    }
    trickle.abort();
    (received, answered_after.unwrap_or(started.elapsed()), closed)
}

#[tokio::test]
async fn a_trickled_body_gets_408_json_within_the_body_timeout_while_healthz_keeps_answering() {
    // Arrange: one worker, a 1 s body deadline.
    let app = spawn_edge_app().await;

    // Act: trickle a body; half-way to the deadline, ask for /healthz on the same worker.
    let head = slow_upload_head(&app.base, "/upload", false);
    let trickled = tokio::spawn(trickle_body(app.base.clone(), head, b"a"));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (health_during_trickle, _) = app.get("/healthz").await;
    let (received, answered_after, closed) = trickled.await.unwrap();

    // Assert
    let text = String::from_utf8_lossy(&received).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    assert!(head.starts_with("HTTP/1.1 408"), "{text}");
    assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{head}");
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["code"], "request_timeout");
    assert!(body["error"].as_str().unwrap().contains("1000 ms"), "{body}");
    assert!(
        answered_after < std::time::Duration::from_secs(5),
        "answered after {answered_after:?}"
    );
    assert!(closed, "the connection stays open after the 408");
    assert_eq!(health_during_trickle, 200);
    assert_eq!(app.get("/healthz").await.0, 200);
}

#[tokio::test]
async fn a_trickled_chunked_body_gets_408_and_the_connection_closed() {
    // Arrange
    let app = spawn_edge_app().await;

    // Act
    let head = slow_upload_head(&app.base, "/upload", true);
    let (received, _, closed) = trickle_body(app.base.clone(), head, b"1\r\na\r\n").await;

    // Assert
    let text = String::from_utf8_lossy(&received).to_string();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"code\":\"request_timeout\""), "{text}");
    assert!(closed, "the connection drains the trickle instead of closing");
}

#[tokio::test]
async fn a_route_that_answers_before_reading_a_trickled_body_closes_the_connection() {
    // Arrange: /admin/ping refuses a request without a token before reading its body.
    let app = spawn_edge_app().await;

    // Act
    let head = slow_upload_head(&app.base, "/admin/ping", true);
    let (received, _, closed) = trickle_body(app.base.clone(), head, b"1\r\na\r\n").await;

    // Assert
    let text = String::from_utf8_lossy(&received).to_string();
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(closed, "the connection drains the trickle instead of closing");
}

#[tokio::test]
async fn a_wrong_method_with_a_trickled_body_gets_405_json_and_the_connection_closed() {
    // Arrange: /limited is a GET resource; actix answers its 405 before any body is read and the
    // JSON error layer replaces that answer's body.
    let app = spawn_edge_app().await;

    // Act
    let head = slow_head(&app.base, "PUT", "/limited", true);
    let (received, _, closed) = trickle_body(app.base.clone(), head, b"1\r\na\r\n").await;

    // Assert
    let text = String::from_utf8_lossy(&received).to_string();
    assert!(text.starts_with("HTTP/1.1 405"), "{text}");
    assert!(text.contains("\"code\":\"method_not_allowed\""), "{text}");
    assert!(closed, "the connection drains the trickle instead of closing");
}

#[tokio::test]
async fn a_body_that_arrives_in_time_is_served_as_usual() {
    // Arrange
    let app = spawn_edge_app().await;

    // Act
    let response = app
        .client
        .post(format!("{}/upload", app.base))
        .body(vec![b'a'; 100_000])
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), 100_000);
}

#[tokio::test]
async fn a_wrong_method_gets_405_json_and_an_unknown_path_404_json() {
    // Arrange: /echo is registered with `cfg.route`, /limited as a `web::resource`.
    let app = spawn_app(&RedisServer::shared().url(), false).await;

    // Act
    let put_route = app.client.put(format!("{}/echo", app.base)).send().await.unwrap();
    let put_resource = app.client.put(format!("{}/limited", app.base)).send().await.unwrap();
    let (unknown, unknown_body) = app.get("/echo/deeper").await;

    // Assert
    assert_eq!(put_route.status().as_u16(), 405);
    let body: Value = put_route.json().await.unwrap();
    assert_eq!(body["code"], "method_not_allowed", "{body}");
    assert_eq!(put_resource.status().as_u16(), 405);
    assert_eq!(put_resource.headers()["allow"], "GET");
    assert_eq!(put_resource.headers()["content-type"], "application/json");
    let body: Value = put_resource.json().await.unwrap();
    assert_eq!(body["code"], "method_not_allowed", "{body}");
    assert!(body["error"].as_str().unwrap().contains("PUT"), "{body}");
    assert_eq!(unknown, 404);
    assert_eq!(unknown_body["code"], "not_found");
}

#[tokio::test]
async fn path_query_and_payload_extractor_errors_are_json() {
    // Arrange
    let app = spawn_app(&RedisServer::shared().url(), false).await;

    // Act
    let (bad_path, bad_path_body) = app.get("/items/abc?limit=1").await;
    let (bad_query, bad_query_body) = app.get("/items/1?limit=many").await;
    let too_big = app
        .client
        .post(format!("{}/upload", app.base))
        .body(vec![b'a'; 300 * 1024])
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(bad_path, 400);
    assert_eq!(bad_path_body["code"], "invalid_path");
    assert_eq!(bad_query, 400);
    assert_eq!(bad_query_body["code"], "invalid_query");
    assert_eq!(too_big.status().as_u16(), 413);
    let body: Value = too_big.json().await.unwrap();
    assert_eq!(body["code"], "payload_too_large", "{body}");
}

#[tokio::test]
async fn a_preflight_from_a_listed_origin_gets_the_allow_headers_and_from_others_none() {
    // Arrange
    let app = spawn_edge_app().await;
    let preflight = |origin: &'static str, path: &str| {
        app.client
            .request(reqwest::Method::OPTIONS, format!("{}{path}", app.base))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };

    // Act
    let listed = preflight("https://shop.example", "/echo").await.unwrap();
    let unlisted = preflight("https://evil.example", "/echo").await.unwrap();
    let listed_on_admin = preflight("https://shop.example", "/admin/ping").await.unwrap();

    // Assert
    assert_eq!(listed.status().as_u16(), 200);
    let headers = listed.headers();
    assert_eq!(headers["access-control-allow-origin"], "https://shop.example");
    assert_eq!(headers["access-control-allow-credentials"], "true");
    assert!(headers["access-control-allow-methods"].to_str().unwrap().contains("POST"));
    assert!(headers["access-control-allow-headers"].to_str().unwrap().contains("content-type"));
    for refused in [unlisted, listed_on_admin] {
        assert_eq!(refused.status().as_u16(), 400);
        assert!(!refused.headers().contains_key("access-control-allow-origin"));
        assert!(!refused.headers().contains_key("access-control-allow-credentials"));
        let body: Value = refused.json().await.unwrap();
        assert!(body["code"].is_string(), "{body}");
    }
}

#[tokio::test]
async fn a_request_from_a_listed_origin_carries_cors_headers_and_from_others_none() {
    // Arrange
    let app = spawn_edge_app().await;
    let get = |origin: &'static str| {
        app.client.get(format!("{}/public/items", app.base)).header("origin", origin).send()
    };

    // Act
    let listed = get("https://shop.example").await.unwrap();
    let unlisted = get("https://evil.example").await.unwrap();

    // Assert
    assert_eq!(listed.status().as_u16(), 200);
    assert_eq!(listed.headers()["access-control-allow-origin"], "https://shop.example");
    assert_eq!(listed.headers()["access-control-allow-credentials"], "true");
    assert!(listed.headers().contains_key("access-control-expose-headers"));
    assert_eq!(unlisted.status().as_u16(), 200, "a non-browser caller is served as usual");
    for name in [
        "access-control-allow-origin",
        "access-control-allow-credentials",
        "access-control-expose-headers",
    ] {
        assert!(!unlisted.headers().contains_key(name), "{name} sent to an unlisted origin");
    }
}

#[tokio::test]
async fn without_listed_origins_no_cors_headers_are_sent() {
    // Arrange
    let app = spawn_app(&RedisServer::shared().url(), false).await;

    // Act
    let preflight = app
        .client
        .request(reqwest::Method::OPTIONS, format!("{}/public/items", app.base))
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    let get = app
        .client
        .get(format!("{}/public/items", app.base))
        .header("origin", "https://shop.example")
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(preflight.status().as_u16(), 405);
    for response in [&preflight, &get] {
        assert!(
            !response.headers().keys().any(|name| name.as_str().starts_with("access-control-")),
            "{:?}",
            response.headers()
        );
    }
    assert_eq!(get.status().as_u16(), 200);
}
