//! The routes and contracts every service inherits, served by a real Application on a free port
//! against real Redis and Postgres.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use platform_testing::RedisServer;
use serde_json::Value;

use common::*;

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

#[tokio::test]
async fn a_wrong_method_gets_405_json_and_an_unknown_path_404_json() {
    // Arrange: /echo and /healthz are registered with `cfg.route`, /limited as a `web::resource`;
    // only /healthz is in the OpenAPI document.
    let app = spawn_app(&RedisServer::shared().url(), false).await;

    // Act
    let put_route = app.client.put(format!("{}/echo", app.base)).send().await.unwrap();
    let put_resource = app.client.put(format!("{}/limited", app.base)).send().await.unwrap();
    let post_documented = app.client.post(format!("{}/healthz", app.base)).send().await.unwrap();
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
    // A `cfg.route` path the OpenAPI document describes lists its methods (RFC 9110).
    assert_eq!(post_documented.status().as_u16(), 405);
    assert_eq!(post_documented.headers()["allow"], "GET");
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
