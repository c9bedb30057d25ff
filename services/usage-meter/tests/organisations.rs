//! The organisation stream's consumer through a Postgres outage: a change that arrives while
//! Postgres is down stays pending (retried, never dead-lettered) and is applied once it is back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use common::{Meter, TOKEN};
use platform_redis::StreamName;
use platform_redis::fred::prelude::*;
use platform_redis::messages::{OrganisationEvent, OrganisationOverrides, OrganisationState};
use platform_redis::streams::StreamProducer;
use platform_testing::{PostgresServer, RedisServer, TestApp, found_within, unique_prefix};
use serde_json::Value;
use sqlx::Connection as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_organisation_change_received_while_postgres_is_down_is_applied_once_it_is_back() {
    // Arrange: usage-meter on a Postgres of its own, retrying pending entries every second.
    let postgres = PostgresServer::start().unwrap();
    let database = postgres.create_database().await.unwrap();
    let app = TestApp::builder("usage-org-pg-outage")
        .redis_url(RedisServer::shared().url())
        .prefix(unique_prefix("usage-org-pg-outage"))
        .database_url(&database.url)
        .vars(&[
            ("APP__DATABASE__ACQUIRE_TIMEOUT_MS", "200"),
            ("APP__ORGANISATION_EVENTS__BLOCK_MS", "100"),
            ("APP__ORGANISATION_EVENTS__CLAIM_IDLE_MS", "1000"),
            ("APP__ORGANISATION_EVENTS__MAX_DELIVERIES", "2"),
        ])
        .spawn::<Meter>()
        .await;
    let mut admin = sqlx::PgConnection::connect(&database.url).await.unwrap();
    sqlx::query("CHECKPOINT").execute(&mut admin).await.unwrap();
    drop(admin);
    let change = OrganisationEvent::OrganisationChanged(OrganisationState {
        org_id: "outage-church".into(),
        slug: "outage-church".into(),
        name: "Outage Church".into(),
        tier: "growth".into(),
        version: 1,
        changed_at: Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
        overrides: OrganisationOverrides::default(),
    });
    let dead_key =
        app.redis.keys().dead_letter_stream(StreamName::OrganisationEvents, "usage-meter");

    // Act: Postgres goes away, the change arrives and waits through several retries.
    postgres.stop();
    StreamProducer::new(&app.redis, StreamName::OrganisationEvents, 1_000)
        .append(&change)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let dead_during_outage: u64 = app.redis.primary().xlen(&dead_key).await.unwrap();
    postgres.restart().unwrap();
    let bill = found_within(Duration::from_secs(30), || async {
        let url = app.url("/api/billing/outage-church");
        let response = app.http.get(url).bearer_auth(TOKEN).send().await.ok()?;
        let bill: Value = response.json().await.ok()?;
        (bill["tier"] == "growth").then_some(bill)
    })
    .await;
    let dead_after: u64 = app.redis.primary().xlen(&dead_key).await.unwrap();
    app.stop().await;

    // Assert
    assert_eq!(dead_during_outage, 0, "an outage dead-lettered the change");
    assert!(bill.is_some(), "the change was never applied after Postgres came back");
    assert_eq!(dead_after, 0);
}
