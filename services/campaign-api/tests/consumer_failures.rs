//! How the Stripe consumer fails: data errors are dead-lettered at once with their reason while
//! their neighbours are recorded, an amount that would overflow the totals is refused, a Postgres
//! outage is retried until Postgres is back, a killed process finishes the entry it held as soon
//! as it is restarted, and the group's backlog shows in `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{
    Backends, ProcessApp, TestApp, dead_letters, donation_event, pending_stripe_entries,
    usage_events,
};
use platform_redis::messages::StripeEventMessage;
use platform_testing::{PostgresServer, RedisServer, holds_within, put_on_stripe_stream};
use serde_json::{Value, json};
use sqlx::Connection;

/// `event` with `currency` in its payment intent.
fn with_currency(mut event: StripeEventMessage, currency: &str) -> StripeEventMessage {
    let mut raw: Value = serde_json::from_str(&event.raw).unwrap();
    raw["data"]["object"]["currency"] = json!(currency);
    event.raw = raw.to_string();
    event
}

async fn stats(app: &common::Api, campaign: &str) -> Value {
    app.get(&format!("/api/campaigns/{campaign}/stats")).await.json().await.unwrap()
}

/// The value of `metric` for the campaign-api group in a `/metrics` scrape.
async fn group_metric(app: &common::Api, metric: &str) -> Option<f64> {
    let text = app.get("/metrics").await.text().await.unwrap();
    text.lines()
        .filter(|line| line.starts_with(&format!("{metric}{{")))
        .filter(|line| line.contains(r#"group="campaign-api""#))
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn a_donation_postgres_refuses_is_dead_lettered_at_once_with_its_reason_and_its_neighbour_is_recorded()
 {
    // Arrange: claim_idle and max_deliveries far above the test, so only an immediate
    // dead-letter can get the bad entry out of the way.
    let backends = Backends::new(RedisServer::shared().url(), "campaign-nul").await;
    let app = TestApp::spawn(
        &backends,
        &[
            ("APP__STRIPE_EVENTS__CLAIM_IDLE_MS", "600000"),
            ("APP__STRIPE_EVENTS__MAX_DELIVERIES", "10"),
        ],
    )
    .await;
    let redis = backends.redis().await;
    let org = app.create_org("ruth").await;
    let campaign = app.create_campaign("ruth", "Organ", 100_000).await;
    assert_eq!(group_metric(&app, "stream_group_dead_letter_entries").await, Some(0.0));
    // A rule of this database the event contract knows nothing about, so Postgres itself refuses.
    let db = sqlx::PgPool::connect(&backends.database_url).await.unwrap();
    sqlx::query("ALTER TABLE donations ADD CONSTRAINT three_letters CHECK (length(currency) = 3)")
        .execute(&db)
        .await
        .unwrap();

    // Act: a payment intent whose currency Postgres refuses, then a good one.
    put_on_stripe_stream(
        &redis,
        &[
            with_currency(donation_event("evt_bad", "pi_bad", &org, &campaign, 900), "usdx"),
            donation_event("evt_ok", "pi_ok", &org, &campaign, 1_200),
        ],
    )
    .await;
    let settled = holds_within(Duration::from_secs(30), || async {
        dead_letters(&redis).await.len() == 1
            && stats(&app, &campaign).await["raisedCents"] == 1_200
    })
    .await;

    // Assert: dead-lettered on its first delivery, with the reason; the neighbour recorded.
    assert!(settled, "dead letters {:?}", dead_letters(&redis).await);
    let dead = &dead_letters(&redis).await[0];
    assert_eq!(dead["deliveries"], "1", "{dead:?}");
    assert!(dead["reason"].contains("postgres refused it (23514)"), "{dead:?}");
    assert!(dead["data"].contains("pi_bad"), "{dead:?}");
    assert_eq!(stats(&app, &campaign).await["donationCount"], 1);
    assert!(pending_stripe_entries(&redis).await.is_empty());
    assert_eq!(group_metric(&app, "stream_group_dead_letter_entries").await, Some(1.0));
    assert_eq!(group_metric(&app, "stream_group_pending_entries").await, Some(0.0));
    assert_eq!(group_metric(&app, "stream_group_lag_entries").await, Some(0.0));
    app.stop().await;
}

#[tokio::test]
async fn an_amount_that_would_overflow_the_total_is_dead_lettered_and_the_total_still_equals_the_donations()
 {
    // Arrange: a campaign whose total is near the top of i64 (no amount the event contract lets
    // through gets there in a test's lifetime, so it starts there, as its own first donation).
    let backends = Backends::new(RedisServer::shared().url(), "campaign-overflow").await;
    let app = TestApp::spawn(&backends, &[]).await;
    let redis = backends.redis().await;
    let org = app.create_org("boaz").await;
    let campaign = app.create_campaign("boaz", "Barn", 1_000).await;
    let pool = sqlx::PgPool::connect(&backends.database_url).await.unwrap();
    let start = i64::MAX - 1_000;
    for statement in [
        "INSERT INTO donations (payment_intent_id, campaign_id, amount_cents, currency,
             raised_after_cents, count_after, goal_crossed, stripe_event_id)
         VALUES ('pi_start', $1::uuid, $2, 'usd', $2, 1, true, 'evt_start')",
        "UPDATE campaigns SET raised_cents = $2, donation_count = 1 WHERE id = $1::uuid",
    ] {
        sqlx::query(statement).bind(&campaign).bind(start).execute(&pool).await.unwrap();
    }

    // Act: one that fits, one that would overflow, and one the contract refuses (2^63 − 1).
    put_on_stripe_stream(
        &redis,
        &[
            donation_event("evt_fits", "pi_fits", &org, &campaign, 500),
            donation_event("evt_over", "pi_over", &org, &campaign, 600),
            donation_event("evt_max", "pi_max", &org, &campaign, i64::MAX),
        ],
    )
    .await;
    let settled = holds_within(Duration::from_secs(30), || async {
        dead_letters(&redis).await.len() == 2 && pending_stripe_entries(&redis).await.is_empty()
    })
    .await;

    // Assert: refused with their reasons, never saturated into the total.
    assert!(settled, "dead letters {:?}", dead_letters(&redis).await);
    let dead = dead_letters(&redis).await;
    assert!(dead[0]["reason"].contains("would overflow the total"), "{dead:?}");
    assert!(dead[0]["data"].contains("pi_over"), "{dead:?}");
    assert!(dead[1]["reason"].contains("amount"), "{dead:?}");
    assert!(dead[1]["data"].contains("pi_max"), "{dead:?}");
    let stats = stats(&app, &campaign).await;
    assert_eq!(stats["raisedCents"], start + 500, "{stats}");
    assert_eq!(stats["donationCount"], 2, "{stats}");
    let (sum, raised): (String, String) = sqlx::query_as(
        "SELECT (SELECT sum(amount_cents) FROM donations WHERE campaign_id = $1::uuid)::text, \
           (SELECT raised_cents FROM campaigns WHERE id = $1::uuid)::text",
    )
    .bind(&campaign)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(sum, raised, "the total equals the donations");
    let usage = usage_events(&redis).await;
    assert_eq!(usage.iter().filter(|e| e["metric"] == "donation_processed").count(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_donation_arriving_while_postgres_is_down_is_retried_and_recorded_once_it_is_back() {
    // Arrange: a private Postgres this test stops; retries every second (well above the pool's
    // acquire timeout, so a failed attempt ends inside its lease) and only two deliveries
    // allowed, so the outage outlasts them twice over.
    let postgres = PostgresServer::start().unwrap();
    let database = postgres.create_database().await.unwrap();
    let backends = Backends {
        redis_url: RedisServer::shared().url(),
        prefix: platform_testing::unique_prefix("campaign-pg-outage"),
        database_url: database.url,
    };
    let app = TestApp::spawn(
        &backends,
        &[
            ("APP__DATABASE__ACQUIRE_TIMEOUT_MS", "200"),
            ("APP__STRIPE_EVENTS__CLAIM_IDLE_MS", "1000"),
            ("APP__STRIPE_EVENTS__MAX_DELIVERIES", "2"),
        ],
    )
    .await;
    let redis = backends.redis().await;
    let org = app.create_org("lydia").await;
    let campaign = app.create_campaign("lydia", "Loom", 10_000).await;
    // Commits survive the immediate stop only once checkpointed (synchronous_commit=off).
    let mut admin = sqlx::PgConnection::connect(&backends.database_url).await.unwrap();
    sqlx::query("CHECKPOINT").execute(&mut admin).await.unwrap();
    drop(admin);

    // Act: Postgres goes away, two donations arrive and wait through several retries.
    postgres.stop();
    put_on_stripe_stream(
        &redis,
        &[
            donation_event("evt_1", "pi_down_1", &org, &campaign, 400),
            donation_event("evt_2", "pi_down_2", &org, &campaign, 600),
        ],
    )
    .await;
    let delivered = holds_within(Duration::from_secs(30), || async {
        pending_stripe_entries(&redis).await.len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let pending = pending_stripe_entries(&redis).await;
    let dead_during_outage = dead_letters(&redis).await;
    postgres.restart().unwrap();

    // Assert: still pending and never counted towards max_deliveries, nothing dead-lettered;
    // both recorded once Postgres is back.
    assert!(delivered, "the donations were never delivered");
    assert_eq!(pending.len(), 2, "{pending:?}");
    assert!(pending.iter().all(|(_, _, deliveries)| *deliveries <= 1), "{pending:?}");
    assert!(dead_during_outage.is_empty(), "{dead_during_outage:?}");
    let recorded = holds_within(Duration::from_secs(30), || async {
        let response = app.get(&format!("/api/campaigns/{campaign}/stats")).await;
        response.status() == 200
            && response.json::<Value>().await.unwrap()["raisedCents"] == 1_000
            && pending_stripe_entries(&redis).await.is_empty()
    })
    .await;
    assert!(recorded, "pending {:?}", pending_stripe_entries(&redis).await);
    assert!(dead_letters(&redis).await.is_empty());
    assert_eq!(stats(&app, &campaign).await["donationCount"], 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_while_it_holds_an_entry_records_it_within_seconds_of_its_restart() {
    // Arrange: the real binary, named as a deployment names it, with a claim idle of ten
    // minutes: no peer and no reclaim pass can finish the entry during this test.
    let backends = Backends::new(RedisServer::shared().url(), "campaign-kill").await;
    let settings = [
        ("APP__STRIPE_EVENTS__CONSUMER", "campaign-api-0"),
        ("APP__STRIPE_EVENTS__CLAIM_IDLE_MS", "600000"),
    ];
    let first = ProcessApp::start(&backends, &settings).await;
    let redis = backends.redis().await;
    let org = first.create_org("hannah").await;
    let campaign = first.create_campaign("hannah", "Lamp", 100_000).await;
    // The campaign row stays locked, so the consumer blocks inside the donation's transaction.
    let mut lock = sqlx::PgConnection::connect(&backends.database_url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut lock).await.unwrap();
    sqlx::query("SELECT 1 FROM campaigns WHERE id = $1::uuid FOR UPDATE")
        .bind(&campaign)
        .execute(&mut lock)
        .await
        .unwrap();
    put_on_stripe_stream(&redis, &[donation_event("evt_k", "pi_kill", &org, &campaign, 1_500)])
        .await;
    let held = holds_within(Duration::from_secs(30), || async {
        pending_stripe_entries(&redis)
            .await
            .iter()
            .any(|(_, consumer, _)| consumer == "campaign-api-0")
    })
    .await;
    assert!(held, "the process never took the entry");

    // Act: kill -9 while it holds the entry, free the row, start the binary again.
    first.kill();
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    let restarted_at = Instant::now();
    let second = ProcessApp::start(&backends, &settings).await;
    let recorded = holds_within(Duration::from_secs(20), || async {
        stats(&second, &campaign).await["raisedCents"] == 1_500
            && pending_stripe_entries(&redis).await.is_empty()
    })
    .await;

    // Assert: recorded within seconds of the restart (the bound is a twentieth of claim_idle),
    // once, with its effects once.
    assert!(recorded, "pending {:?}", pending_stripe_entries(&redis).await);
    assert!(restarted_at.elapsed() < Duration::from_secs(30), "{:?}", restarted_at.elapsed());
    let stats = stats(&second, &campaign).await;
    assert_eq!(stats["donationCount"], 1, "{stats}");
    assert!(dead_letters(&redis).await.is_empty());
    let usage = holds_within(Duration::from_secs(10), || async {
        usage_events(&redis).await.iter().any(|e| e["idempotencyKey"] == "donation:pi_kill")
    })
    .await;
    assert!(usage);
    assert_eq!(
        usage_events(&redis)
            .await
            .iter()
            .filter(|e| e["idempotencyKey"] == "donation:pi_kill")
            .count(),
        1
    );
    second.kill();
}

#[tokio::test]
async fn an_entry_against_the_event_contract_is_dead_lettered_at_once_without_touching_postgres() {
    // Arrange: webhook-ingest never streams such an event; an entry appended by hand could.
    let backends = Backends::new(RedisServer::shared().url(), "campaign-contract").await;
    let app = TestApp::spawn(&backends, &[]).await;
    let redis = backends.redis().await;
    let org = app.create_org("naomi").await;
    let campaign = app.create_campaign("naomi", "Roof", 100_000).await;

    // Act
    put_on_stripe_stream(
        &redis,
        &[with_currency(donation_event("evt_nul", "pi_nul", &org, &campaign, 900), "us\u{0}d")],
    )
    .await;
    let settled =
        holds_within(Duration::from_secs(30), || async { dead_letters(&redis).await.len() == 1 })
            .await;

    // Assert
    assert!(settled);
    let dead = &dead_letters(&redis).await[0];
    assert_eq!(dead["deliveries"], "1", "{dead:?}");
    assert!(dead["reason"].contains("NUL"), "{dead:?}");
    assert_eq!(stats(&app, &campaign).await["donationCount"], 0);
    app.stop().await;
}
