//! The edge every service inherits: body deadlines (a trickled body gets 408 and the connection
//! closed while other requests go on) and CORS for listed origins on listed paths.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use platform_testing::RedisServer;
use serde_json::Value;

use common::*;

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
