//! The dashboard in a real headless browser: Debian's Chromium driven through its chromedriver by
//! fantoccini (WebDriver). With the organisation's token in the URL fragment the page renders the
//! bill; without a token, or with another organisation's, it shows an error and no bill.
//!
//! The browser is a requirement of `make test` (scripts/deps.sh installs `chromium` and
//! `chromium-driver`): when it is missing this test fails and says so, it does not skip.
//! `CHROMIUM` and `CHROMEDRIVER` override the binaries' paths.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::tokens::{DEV_SECRET, claims, hs256};
use common::{TestApp, event};
use fantoccini::{Client, ClientBuilder};
use serde_json::json;
use tokio::process::{Child, Command};

/// A binary from `var`, else `default`; panics with the fix when it is not there.
fn required_binary(var: &str, default: &str, package: &str) -> PathBuf {
    let path = std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.is_file(),
        "{} not found: the dashboard test needs a real headless browser. Install Debian's \
         `chromium` and `chromium-driver` with `make deps` (scripts/deps.sh; as root) or \
         `apt-get install -y chromium chromium-driver`, or set {var} to the binary \
         (missing package: {package})",
        path.display()
    );
    path
}

/// chromedriver on a free loopback port, and a WebDriver session of a headless Chromium with a
/// fresh profile.
struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Self {
        let chromium = required_binary("CHROMIUM", "/usr/bin/chromium", "chromium");
        let chromedriver =
            required_binary("CHROMEDRIVER", "/usr/bin/chromedriver", "chromium-driver");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let webdriver = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let mut up = false;
        for _ in 0..200 {
            if http.get(format!("{webdriver}/status")).send().await.is_ok() {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(up, "chromedriver did not answer on {webdriver} within 20 s");
        let profile = tempfile::tempdir().unwrap();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&webdriver)
            .await
            .unwrap_or_else(|e| panic!("no Chromium session through chromedriver: {e}"));
        Self { client, driver, _profile: profile }
    }

    /// The bill total and the error line once the page shows either (or after 15 s).
    async fn shown(&self) -> Shown {
        let mut shown = Shown { total: String::new(), error: String::new() };
        for _ in 0..150 {
            let value = self
                .client
                .execute(
                    "const text = (id) => document.getElementById(id)?.textContent ?? ''; \
                     return [text('total'), text('error')];",
                    vec![],
                )
                .await
                .unwrap();
            let text = |i: usize| value[i].as_str().unwrap_or_default().to_owned();
            shown = Shown { total: text(0), error: text(1) };
            if !shown.total.is_empty() || !shown.error.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        shown
    }

    async fn stop(mut self) {
        let _ = self.client.close().await;
        let _ = self.driver.kill().await;
    }
}

/// What the page shows: the bill total and the error line.
#[derive(Debug)]
struct Shown {
    total: String,
    error: String,
}

async fn open(browser: &Browser, url: &str) -> Shown {
    // A blank page in between, so each address loads the page afresh.
    browser.client.goto("about:blank").await.unwrap();
    browser.client.goto(url).await.unwrap();
    browser.shown().await
}

#[tokio::test]
async fn the_dashboard_renders_the_bill_with_a_fragment_token_and_an_error_without_one() {
    // Arrange: the growth-tier example (a $124.00 bill), a token of the
    // organisation and one of another, signed with the configured (default) secret.
    let app =
        TestApp::spawn("usage-dashboard", &[("APP__BILLING__ORG_TIERS__DASH1", "growth")]).await;
    let (status, body) = app
        .post(
            "/internal/usage/events",
            json!({ "events": [
                event("dash1", "email_sent", 6000),
                event("dash1", "sms_sent", 700),
                event("dash1", "api_request", 250_000),
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let own = hs256(DEV_SECRET, &claims("dash1", 600));
    let other = hs256(DEV_SECRET, &claims("dash2", 600));
    let page = format!("{}/dashboard/dash1", app.base);
    let browser = Browser::start().await;

    // Act
    let with_token = open(&browser, &format!("{page}#token={own}")).await;
    let without_token = open(&browser, &page).await;
    let other_org = open(&browser, &format!("{page}#token={other}")).await;
    browser.stop().await;

    // Assert
    assert_eq!(with_token.total, "$124.00", "{with_token:?}");
    assert_eq!(with_token.error, "", "{with_token:?}");
    assert!(without_token.error.contains("no access token"), "{without_token:?}");
    assert_eq!(without_token.total, "", "{without_token:?}");
    assert!(other_org.error.contains("does not give access"), "{other_org:?}");
    assert_eq!(other_org.total, "", "{other_org:?}");
    app.stop().await;
}
