//! The Stripe secret key never reaches the logs, on success or when Stripe rejects it. Its own
//! test binary: it installs a global log subscriber that captures everything at TRACE.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{Backends, TestApp, subscription_checkout};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_stripe_secret_key_never_appears_in_logs_even_when_stripe_rejects_it() {
    // Arrange: everything at TRACE into a buffer; one app with the right key, one with a wrong one.
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    let backends = Backends::new("stripe-logs").await;
    let app = TestApp::spawn(&backends, &[]).await;
    let wrong_key = "sk_test_wrong_secret_0123456789";
    let rejected = TestApp::spawn(&backends, &[("APP__STRIPE__SECRET_KEY", wrong_key)]).await;

    // Act
    let (ok_status, created) = app.checkout(&subscription_checkout("user-l", "price_pro")).await;
    backends.stripe.complete_checkout_session(created["sessionId"].as_str().unwrap());
    let success = app
        .get(&format!(
            "/store/checkout/success?session_id={}",
            created["sessionId"].as_str().unwrap()
        ))
        .await;
    let (bad_status, bad) = rejected.checkout(&subscription_checkout("user-l2", "price_pro")).await;

    // Assert
    assert_eq!(ok_status, 200, "{created}");
    assert_eq!(success.status, 200, "{}", success.body);
    assert_eq!(bad_status, 502, "{bad}");
    assert_eq!(bad["code"], "stripe_error");
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(text.contains("stripe request failed"), "the rejection was not logged");
    assert!(text.contains("stripe state synced"), "the sync was not logged");
    assert!(!text.contains(backends.stripe.secret_key()), "the secret key was logged");
    assert!(!text.contains(wrong_key), "the wrong secret key was logged");
    app.stop().await;
    rejected.stop().await;
}
