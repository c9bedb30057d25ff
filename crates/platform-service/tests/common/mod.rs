//! The test application of the platform-service tests: a real Application with a few routes of
//! its own (admin, JSON echo, upload, paths and queries, a rate-limited route) on a free port.
#![allow(dead_code)]

use actix_web::{HttpResponse, web};
use platform_redis::Role;
use platform_redis::fred::prelude::*;
use platform_redis::ratelimit::RateLimit;
use platform_service::settings::{CommonSettings, DatabaseSettings, load_from};
use platform_service::{AppContext, Application, RequireAdmin, connect_context};
use platform_testing::{PostgresServer, RedisServer, unique_prefix};
use secrecy::SecretString;
use serde_json::Value;

pub const TOKEN: &str = "test-admin-token";

pub struct TestApp {
    pub base: String,
    pub shutdown: platform_service::Shutdown,
    pub client: reqwest::Client,
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
}

#[derive(serde::Deserialize)]
pub struct Echo {
    #[allow(dead_code)]
    name: String,
}

pub async fn spawn_app(redis_url: &str, with_database: bool) -> TestApp {
    spawn_app_requiring(redis_url, with_database, "redis,postgres").await
}

pub async fn spawn_app_requiring(
    redis_url: &str,
    with_database: bool,
    ready_requires: &str,
) -> TestApp {
    spawn_app_with(redis_url, with_database, ready_requires, "").await
}

/// A service with a 1 s body deadline and CORS for `https://shop.example` on `/public/` and `/echo`.
pub async fn spawn_edge_app() -> TestApp {
    let http = r#"
            body_timeout_ms = 1000
            cors_allowed_origins = ["https://shop.example"]
            cors_paths = ["/public/", "/echo"]
    "#;
    spawn_app_with(&RedisServer::shared().url(), false, "redis,postgres", http).await
}

/// `http_extra`: further `[http]` keys.
pub async fn spawn_app_with(
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
    let api = utoipa::openapi::OpenApi::default();
    let app = Application::build(
        &common.http,
        common.auth.admin_token.clone(),
        context,
        api,
        move |cfg| {
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
        },
    )
    .unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let shutdown = app.context().shutdown.clone();
    let server = tokio::spawn(app.run_until_stopped());
    TestApp { base, shutdown, client: reqwest::Client::new(), server }
}

#[derive(serde::Deserialize)]
pub struct Page {
    #[allow(dead_code)]
    limit: u32,
}

pub async fn item(id: web::Path<u32>, _page: web::Query<Page>) -> HttpResponse {
    HttpResponse::Ok().json(id.into_inner())
}

/// Whether the worker serving this request sends Redis commands on a connection of its own, and
/// whether a `PING` on it answers.
pub async fn redis_connection(ctx: web::Data<AppContext>) -> HttpResponse {
    let pool = ctx.redis.primary();
    let client = pool.next_connected();
    let shared =
        ctx.redis.role(Role::Primary).shared().clients().iter().any(|c| c.id() == client.id());
    let pong: Result<String, _> = client.ping(None).await;
    HttpResponse::Ok().json(serde_json::json!({ "own": !shared, "ping": pong.is_ok() }))
}

impl TestApp {
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(format!("{}{path}", self.base)).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}
