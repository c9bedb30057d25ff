//! The public active-campaigns route: two-tier caching, invalidation across instances, errors,
//! per-organisation rate limits, reads while Redis is down, and cached reads while Postgres is down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Backends, TestApp, usage_events};
use platform_redis::fred::prelude::*;
use platform_testing::{PostgresServer, RedisServer, holds_within};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Connection;

async fn read(app: &TestApp, slug: &str) -> (u16, String, Value) {
    let response = app.get(&format!("/api/public/campaigns/{slug}/active")).await;
    let status = response.status().as_u16();
    let cache = response
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, cache, response.json().await.unwrap())
}

#[tokio::test]
async fn first_read_misses_second_hits_and_an_update_is_seen_fresh_by_both_instances() {
    // Arrange: two instances sharing one Redis and one database.
    let backends = Backends::new(RedisServer::shared().url(), "campaign-two").await;
    let one = TestApp::spawn(&backends, &[]).await;
    let two = TestApp::spawn(&backends, &[]).await;
    one.create_org("grace").await;
    let campaign = one.create_campaign("grace", "Roof", 10_000).await;

    // Act + Assert: MISS then HIT (L1) on each instance.
    let (status, first, body) = read(&one, "grace").await;
    assert_eq!((status, first.as_str()), (200, "MISS"), "{body}");
    assert_eq!(body[0]["name"], "Roof");
    let (_, second, _) = read(&one, "grace").await;
    assert_eq!(second, "HIT");
    let (_, on_two, _) = read(&two, "grace").await;
    assert_eq!(on_two, "HIT", "instance two is served from Redis (L2) written by instance one");
    let (_, again_two, _) = read(&two, "grace").await;
    assert_eq!(again_two, "HIT");
    let response = one.get("/api/public/campaigns/grace/active").await;
    assert_eq!(response.headers()["cache-control"], "public, max-age=300");

    // Act: an admin update through instance one.
    let updated = one
        .admin(
            Method::PATCH,
            &format!("/api/admin/campaigns/{campaign}"),
            Some(json!({"name": "New Roof", "goalCents": 20_000})),
        )
        .await;
    assert_eq!(updated.status(), 200);

    // Assert: both instances miss next and show the change (instance two's L1 was dropped
    // by the pub/sub broadcast, which is applied asynchronously: poll briefly).
    let (_, after_one, body_one) = read(&one, "grace").await;
    assert_eq!(after_one, "MISS");
    assert_eq!(body_one[0]["name"], "New Roof");
    assert_eq!(body_one[0]["goalCents"], 20_000);
    let seen_on_two = holds_within(Duration::from_secs(5), || async {
        let (_, _, body) = read(&two, "grace").await;
        body[0]["name"] == "New Roof"
    })
    .await;
    assert!(seen_on_two, "instance two still serves the old campaign");
    one.stop().await;
    two.stop().await;
}

#[tokio::test]
async fn instance_two_misses_after_instance_one_invalidates_its_l1_copy() {
    // Arrange: both instances have the page in L1.
    let backends = Backends::new(RedisServer::shared().url(), "campaign-l1").await;
    let one = TestApp::spawn(&backends, &[]).await;
    let two = TestApp::spawn(&backends, &[]).await;
    one.create_org("hope").await;
    one.create_campaign("hope", "Organ", 5_000).await;
    read(&one, "hope").await;
    read(&two, "hope").await;
    assert_eq!(read(&two, "hope").await.1, "HIT");

    // Act: a write on instance one.
    one.create_campaign("hope", "Choir", 7_000).await;

    // Assert: instance two's next read is a MISS with both campaigns.
    let missed = holds_within(Duration::from_secs(5), || async {
        let (_, cache, body) = read(&two, "hope").await;
        cache == "MISS" && body.as_array().map(Vec::len) == Some(2)
    })
    .await;
    assert!(missed, "instance two kept its L1 copy after the broadcast");
    one.stop().await;
    two.stop().await;
}

#[tokio::test]
async fn unknown_slug_is_404_and_malformed_slug_is_400_with_json_errors() {
    // Arrange
    let backends = Backends::new(RedisServer::shared().url(), "campaign-404").await;
    let app = TestApp::spawn(&backends, &[]).await;

    // Act
    let (missing, _, missing_body) = read(&app, "nobody").await;
    let (bad, _, bad_body) = read(&app, "Not_A_Slug").await;

    // Assert
    assert_eq!(missing, 404);
    assert_eq!(missing_body["error"], "Organization not found");
    assert_eq!(missing_body["code"], "organization_not_found");
    assert_eq!(bad, 400);
    assert_eq!(bad_body["code"], "invalid_slug");

    // And: creating the organisation replaces the cached "not found".
    app.create_org("nobody").await;
    let (now, _, body) = read(&app, "nobody").await;
    assert_eq!(now, 200, "{body}");
    app.stop().await;
}

#[tokio::test]
async fn admin_writes_validate_input_and_answer_400_401_404_409() {
    // Arrange
    let backends = Backends::new(RedisServer::shared().url(), "campaign-admin").await;
    let app = TestApp::spawn(&backends, &[]).await;
    app.create_org("faith").await;
    let campaign = app.create_campaign("faith", "Bells", 1_000).await;
    let now = chrono::Utc::now();
    let valid = json!({
        "name": "X", "goalCents": 100,
        "startsAt": now.to_rfc3339(), "endsAt": (now + chrono::Duration::days(1)).to_rfc3339(),
    });

    // Act + Assert
    let duplicate = app
        .admin(
            Method::POST,
            "/api/admin/organisations",
            Some(json!({"slug": "faith", "name": "Again"})),
        )
        .await;
    assert_eq!(duplicate.status(), 409);
    assert_eq!(duplicate.json::<Value>().await.unwrap()["code"], "slug_taken");

    let cases = [
        json!({"name": "X", "goalCents": 0, "startsAt": valid["startsAt"], "endsAt": valid["endsAt"]}),
        json!({"name": "X", "goalCents": 100, "startsAt": valid["endsAt"], "endsAt": valid["startsAt"]}),
        json!({"name": "", "goalCents": 100, "startsAt": valid["startsAt"], "endsAt": valid["endsAt"]}),
        json!({"name": "x".repeat(201), "goalCents": 100, "startsAt": valid["startsAt"], "endsAt": valid["endsAt"]}),
        json!({"name": "a\u{0}b", "goalCents": 100, "startsAt": valid["startsAt"], "endsAt": valid["endsAt"]}),
        json!({"name": "X", "goalCents": 100, "startsAt": "yesterday", "endsAt": valid["endsAt"]}),
    ];
    for body in cases {
        let response = app
            .admin(Method::POST, "/api/admin/organisations/faith/campaigns", Some(body.clone()))
            .await;
        let status = response.status();
        let error: Value = response.json().await.unwrap();
        assert_eq!(status, 400, "{body} -> {error}");
        assert!(error["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let invalid_utf8 = app
        .http
        .post(format!("{}/api/admin/organisations", app.base))
        .bearer_auth(common::TOKEN)
        .header("content-type", "application/json")
        .body(b"{\"slug\": \"x\xff\", \"name\": \"y\"}".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(invalid_utf8.status(), 400);

    let no_org = app
        .admin(Method::POST, "/api/admin/organisations/ghost/campaigns", Some(valid.clone()))
        .await;
    assert_eq!(no_org.status(), 404);
    let end_before_start = app
        .admin(
            Method::PATCH,
            &format!("/api/admin/campaigns/{campaign}"),
            Some(json!({"endsAt": (now - chrono::Duration::days(30)).to_rfc3339()})),
        )
        .await;
    assert_eq!(end_before_start.status(), 400);
    let no_campaign = app
        .admin(Method::DELETE, &format!("/api/admin/campaigns/{}", uuid::Uuid::new_v4()), None)
        .await;
    assert_eq!(no_campaign.status(), 404);
    let unauthorised = app
        .http
        .post(format!("{}/api/admin/organisations/faith/campaigns", app.base))
        .json(&valid)
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorised.status(), 401);

    // And: a delete removes the campaign from the public list at once.
    read(&app, "faith").await;
    let deleted =
        app.admin(Method::DELETE, &format!("/api/admin/campaigns/{campaign}"), None).await;
    assert_eq!(deleted.status(), 204);
    let (_, cache, body) = read(&app, "faith").await;
    assert_eq!(cache, "MISS");
    assert_eq!(body, json!([]));
    app.stop().await;
}

#[tokio::test]
async fn the_101st_request_in_a_minute_for_one_org_is_429_and_other_orgs_are_unaffected() {
    // Arrange
    let backends = Backends::new(RedisServer::shared().url(), "campaign-rl").await;
    let app = TestApp::spawn(&backends, &[]).await;
    app.create_org("busy").await;
    app.create_org("quiet").await;

    // Act
    let mut statuses = Vec::new();
    for _ in 0..100 {
        statuses.push(app.get("/api/public/campaigns/busy/active").await.status().as_u16());
    }
    let blocked = app.get("/api/public/campaigns/busy/active").await;
    let other = app.get("/api/public/campaigns/quiet/active").await;

    // Assert
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(blocked.status(), 429);
    assert_eq!(blocked.headers()["x-ratelimit-limit"], "100");
    assert_eq!(blocked.headers()["x-ratelimit-remaining"], "0");
    assert!(blocked.headers().contains_key("x-ratelimit-reset"));
    assert!(blocked.headers().contains_key("retry-after"));
    let body: Value = blocked.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited");
    assert_eq!(other.status(), 200);
    assert_eq!(other.headers()["x-ratelimit-remaining"], "99");
    app.stop().await;
}

#[tokio::test]
async fn refused_requests_count_as_rate_limited_usage_of_their_organisation_not_as_api_requests() {
    // Arrange: 3 requests per minute per organisation, known or not.
    let backends = Backends::new(RedisServer::shared().url(), "campaign-rl-usage").await;
    let app = TestApp::spawn(
        &backends,
        &[
            ("APP__RATE_LIMIT__POLICIES__API__LIMIT", "3"),
            ("APP__RATE_LIMIT__POLICIES__API__LEASE", "0"),
            ("APP__RATE_LIMIT__TIERS__FREE", "3"),
        ],
    )
    .await;
    let redis = backends.redis().await;
    let org = app.create_org("thrifty").await;

    // Act: 3 served, 2 refused.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(app.get("/api/public/campaigns/thrifty/active").await.status().as_u16());
    }
    let total = |metric: &'static str, events: &[Value]| -> i64 {
        events
            .iter()
            .filter(|e| e["orgId"] == org.as_str() && e["metric"] == metric)
            .map(|e| e["value"].as_i64().unwrap())
            .sum()
    };
    let counted = holds_within(Duration::from_secs(5), || async {
        let events = usage_events(&redis).await;
        total("api_request", &events) == 3 && total("rate_limited", &events) == 2
    })
    .await;

    // Assert
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let events = usage_events(&redis).await;
    assert!(
        counted,
        "api_request {} rate_limited {}",
        total("api_request", &events),
        total("rate_limited", &events)
    );
    app.stop().await;
}

#[tokio::test]
async fn reads_are_served_from_postgres_while_redis_is_down_and_caching_resumes_when_it_returns() {
    // Arrange: a private Redis this test may stop.
    let redis = RedisServer::start().unwrap();
    let backends = Backends::new(redis.url(), "campaign-down").await;
    let app = TestApp::spawn(&backends, &[("APP__REDIS__COMMAND_TIMEOUT_MS", "300")]).await;
    app.create_org("mercy").await;
    app.create_campaign("mercy", "Well", 3_000).await;
    assert_eq!(read(&app, "mercy").await.1, "MISS");

    // Act: Redis goes away; an admin write lands meanwhile.
    redis.stop();
    let fell_back = holds_within(Duration::from_secs(10), || async {
        let health: Value = app.get("/api/health/redis").await.json().await.unwrap();
        health["mode"] == "fallback"
    })
    .await;
    assert!(fell_back, "health never reported fallback");
    app.create_campaign("mercy", "School", 4_000).await;

    // Assert: still 200, computed from Postgres, with the write visible (later reads may be
    // served from this process's L1, which works without Redis).
    let (status, cache, body) = read(&app, "mercy").await;
    assert_eq!((status, cache.as_str()), (200, "MISS"), "{body}");
    assert_eq!(body.as_array().map(Vec::len), Some(2));
    for _ in 0..3 {
        let (status, _, body) = read(&app, "mercy").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body.as_array().map(Vec::len), Some(2));
    }

    // Act: Redis comes back (empty: a restarted process without persistence).
    redis.restart().unwrap();

    // Assert: caching resumes without a restart of the app: the page is written to Redis again.
    let direct = backends.redis().await;
    let entry = direct.keys().cache_entry("org:mercy", "active");
    let resumed = holds_within(Duration::from_secs(10), || async {
        let (status, _, _) = read(&app, "mercy").await;
        let stored: i64 = direct.primary().exists(&entry).await.unwrap_or(0);
        status == 200 && stored == 1
    })
    .await;
    assert!(resumed, "caching did not resume");
    // The rate limiter returns to Redis at its next probe; health follows.
    let healthy = holds_within(Duration::from_secs(10), || async {
        let _ = read(&app, "mercy").await;
        let health: Value = app.get("/api/health/redis").await.json().await.unwrap();
        health["mode"] == "redis"
    })
    .await;
    assert!(healthy, "health still reports fallback");
    app.stop().await;
}

#[tokio::test]
async fn cached_pages_are_served_while_postgres_is_down_and_writes_answer_503_until_it_returns() {
    // Arrange: a private Postgres this test may stop, and a warm cache.
    let postgres = PostgresServer::start().unwrap();
    let database = postgres.create_database().await.unwrap();
    let backends = Backends {
        redis_url: RedisServer::shared().url(),
        prefix: platform_testing::unique_prefix("campaign-pg-down"),
        database_url: database.url,
    };
    let app = TestApp::spawn(&backends, &[("APP__DATABASE__ACQUIRE_TIMEOUT_MS", "500")]).await;
    app.create_org("nadia").await;
    let campaign = app.create_campaign("nadia", "Library", 5_000).await;
    assert_eq!(read(&app, "nadia").await.1, "MISS");
    assert_eq!(read(&app, "nadia").await.1, "HIT");
    let patch = |goal: i64| json!({ "goalCents": goal });

    // The harness runs Postgres with synchronous_commit=off, so an immediate stop may lose the
    // last few hundred ms of commits; a checkpoint makes the arranged rows survive the outage.
    let mut admin = sqlx::PgConnection::connect(&backends.database_url).await.unwrap();
    sqlx::query("CHECKPOINT").execute(&mut admin).await.unwrap();
    drop(admin);

    // Act: Postgres goes away.
    postgres.stop();
    let (status, cache, body) = read(&app, "nadia").await;
    let create = app
        .admin(
            Method::POST,
            "/api/admin/organisations/nadia/campaigns",
            Some(json!({
                "name": "Roof",
                "goalCents": 1_000,
                "startsAt": "2020-01-01T00:00:00Z",
                "endsAt": "2100-01-01T00:00:00Z",
            })),
        )
        .await;
    let create_status = create.status().as_u16();
    let create_body: Value = create.json().await.unwrap();
    let update = app
        .admin(Method::PATCH, &format!("/api/admin/campaigns/{campaign}"), Some(patch(6_000)))
        .await;
    let update_status = update.status().as_u16();
    let update_body: Value = update.json().await.unwrap();

    // Assert: the cached page is still served; writes fail fast with an opaque 503 JSON error.
    assert_eq!(status, 200, "{body}");
    assert!(cache == "HIT" || cache == "STALE", "X-Cache {cache}");
    assert_eq!(body[0]["name"], "Library");
    for (status, body) in [(create_status, &create_body), (update_status, &update_body)] {
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["code"], "unavailable", "{body}");
        assert!(body["error"].is_string(), "{body}");
    }

    // Act: Postgres comes back (same port, data kept).
    postgres.restart().unwrap();
    let mut updated = None;
    for _ in 0..100 {
        let response = app
            .admin(Method::PATCH, &format!("/api/admin/campaigns/{campaign}"), Some(patch(7_000)))
            .await;
        if response.status() == 200 {
            updated = Some(response.json::<Value>().await.unwrap());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Assert: writes work again without a restart, and the page shows them.
    let updated = updated.expect("writes never succeeded after Postgres returned");
    assert_eq!(updated["goalCents"], 7_000);
    let (status, cache, body) = read(&app, "nadia").await;
    assert_eq!((status, cache.as_str()), (200, "MISS"), "{body}");
    assert_eq!(body[0]["goalCents"], 7_000);
    app.stop().await;
}
