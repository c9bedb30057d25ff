//! The fakes answer on the wire as their upstreams would, faults and outages included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use platform_testing::{FakeSimpro, FakeSimproConfig, FakeStripe, FakeStripeConfig, Fault};
use platform_testing::{OtlpReceiver, fake_stripe::route};

/// Sends one HTTP/1.1 request with `Connection: close` and reads until the server closes.
fn exchange(port: u16, head: &str, body: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = format!(
        "{head}\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn content_length(answer: &str) -> usize {
    let line = answer
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("content-length:"))
        .expect("a Content-Length header");
    line.split(':').nth(1).unwrap().trim().parse().unwrap()
}

#[test]
fn a_simpro_page_carries_its_paging_headers_and_counts_as_complete() {
    // Arrange
    let fake = FakeSimpro::start(FakeSimproConfig::generated(45, 10)).unwrap();

    // Act
    let answer = exchange(
        fake.port(),
        "GET /api/v1.0/companies/0/invoices/?page=2&pageSize=20&columns=ID%2CCustomer HTTP/1.1\r\nAuthorization: Bearer test-simpro-token",
        "",
    );

    // Assert
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let lower = head.to_ascii_lowercase();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(lower.contains("result-total: 45") && lower.contains("result-pages: 3"), "{head}");
    let page: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(page.as_array().unwrap().len(), 20);
    assert_eq!(page[0].as_object().unwrap().len(), 2);
    assert_eq!(fake.complete_responses_for(2), 1);
}

#[test]
fn a_simpro_request_without_the_token_gets_401() {
    // Arrange
    let fake = FakeSimpro::start(FakeSimproConfig::generated(10, 5)).unwrap();

    // Act
    let answer = exchange(fake.port(), "GET /api/v1.0/companies/0/invoices/ HTTP/1.1", "");

    // Assert
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert_eq!(fake.total_requests(), 0);
}

#[test]
fn an_injected_429_carries_retry_after() {
    // Arrange
    let fake = FakeSimpro::start(FakeSimproConfig::generated(10, 5)).unwrap();
    fake.inject(1, [Fault::TooManyRequests { retry_after_secs: 3 }]);

    // Act
    let answer = exchange(
        fake.port(),
        "GET /api/v1.0/companies/0/invoices/?page=1 HTTP/1.1\r\nAuthorization: Bearer test-simpro-token",
        "",
    );

    // Assert
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after: 3"), "{answer}");
    assert_eq!((fake.requests_for(1), fake.pending_faults()), (1, 0));
}

#[test]
fn a_dropped_connection_sends_half_the_announced_body_then_closes() {
    // Arrange
    let fake = FakeSimpro::start(FakeSimproConfig::generated(100, 40)).unwrap();
    fake.inject(1, [Fault::DropConnection]);

    // Act
    let answer = exchange(
        fake.port(),
        "GET /api/v1.0/companies/0/invoices/?page=1&pageSize=100 HTTP/1.1\r\nAuthorization: Bearer test-simpro-token",
        "",
    );

    // Assert
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let announced = content_length(head);
    assert!(!body.is_empty() && body.len() < announced, "{} of {announced}", body.len());
    assert_eq!(fake.requests_for(1), 1);
    assert_eq!(fake.complete_responses_for(1), 0, "a cut answer is not complete");
}

#[test]
fn a_stopped_fake_refuses_connections() {
    // Arrange
    let mut simpro = FakeSimpro::start(FakeSimproConfig::generated(10, 5)).unwrap();
    let mut stripe = FakeStripe::start(FakeStripeConfig::default()).unwrap();
    let ports = [simpro.port(), stripe.port()];

    // Act
    simpro.stop();
    stripe.stop();

    // Assert
    for port in ports {
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "port {port} still answers");
    }
}

#[test]
fn the_fake_stripe_creates_a_customer_for_the_right_key_only() {
    // Arrange
    let fake = FakeStripe::start(FakeStripeConfig::default()).unwrap();
    let form = "email=a%40example.com&metadata[userId]=u1";
    let key = fake.secret_key().to_owned();

    // Act
    let refused =
        exchange(fake.port(), "POST /v1/customers HTTP/1.1\r\nAuthorization: Bearer nope", form);
    let created = exchange(
        fake.port(),
        &format!(
            "POST /v1/customers HTTP/1.1\r\nAuthorization: Bearer {key}\r\nContent-Type: application/x-www-form-urlencoded"
        ),
        form,
    );

    // Assert
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    assert!(created.starts_with("HTTP/1.1 200"), "{created}");
    let customer: serde_json::Value =
        serde_json::from_str(created.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(customer["metadata"]["userId"], "u1");
    assert_eq!(fake.customers_created(), 1);
    assert_eq!(fake.requests(route::CREATE_CUSTOMER), 2);
}

#[test]
fn the_otlp_receiver_refuses_bodies_it_cannot_decode() {
    // Arrange
    let receiver = OtlpReceiver::start().unwrap();
    let port: u16 = receiver.endpoint().rsplit(':').next().unwrap().parse().unwrap();

    // Act
    let json = exchange(port, "POST /v1/traces HTTP/1.1\r\nContent-Type: application/json", "{}");
    let garbage =
        exchange(port, "POST /v1/traces HTTP/1.1\r\nContent-Type: application/x-protobuf", "\u{1}");
    let empty =
        exchange(port, "POST /v1/traces HTTP/1.1\r\nContent-Type: application/x-protobuf", "");

    // Assert
    assert!(json.starts_with("HTTP/1.1 415"), "{json}");
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    assert!(empty.starts_with("HTTP/1.1 200"), "{empty}");
    assert_eq!(receiver.requests(), 3);
    assert!(receiver.spans().is_empty());
}
