//! The usage recorder and its middleware against a real Redis: requests of an organisation
//! become `api_request` entries on the usage stream in batches (or, aggregated, one counted entry
//! per organisation), and a recorder that cannot reach Redis drops (and counts) events beyond its
//! bound instead of growing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use actix_web::{App, HttpResponse, test, web};
use platform_redis::fred::prelude::*;
use platform_redis::messages::UsageEvent;
use platform_redis::ratelimit::{PolicySettings, RateLimit, RateLimitSettings, RateLimiter};
use platform_redis::usage::{TrackUsage, UsageOrg, UsageRecorder, UsageRecorderSettings};
use platform_redis::{RedisClients, RedisSettings, StreamName};
use platform_testing::{RedisServer, free_port, unique_prefix};
use tokio_util::sync::CancellationToken;

#[actix_web::test]
async fn requests_of_an_organisation_are_recorded_as_api_request_usage_events() {
    // Arrange
    let url = RedisServer::shared().url();
    let clients = RedisClients::connect(&RedisSettings::for_url(&url, &unique_prefix("usage-mw")))
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let (recorder, task) =
        UsageRecorder::start(&clients, UsageRecorderSettings::default(), cancel.clone());
    let app = test::init_service(
        App::new()
            .service(
                web::resource("/orgs/{org}/things")
                    .wrap(TrackUsage::new(recorder.clone(), |req| {
                        req.match_info().get("org").map(str::to_owned)
                    }))
                    .route(web::get().to(HttpResponse::Ok)),
            )
            .route("/plain", web::get().to(HttpResponse::Ok)),
    )
    .await;

    // Act
    for path in ["/orgs/acme/things", "/orgs/acme/things", "/orgs/zeta/things", "/plain"] {
        let response =
            test::call_service(&app, test::TestRequest::get().uri(path).to_request()).await;
        assert!(response.status().is_success());
    }
    cancel.cancel();
    task.await.unwrap();

    // Assert
    let key = clients.keys().stream(StreamName::UsageEvents);
    let entries: Vec<(String, HashMap<String, String>)> =
        clients.primary().xrange(key, "-", "+", None).await.unwrap();
    let events: Vec<UsageEvent> =
        entries.iter().map(|(_, f)| serde_json::from_str(&f["data"]).unwrap()).collect();
    let orgs: Vec<&str> = events.iter().map(|e| e.org_id.as_str()).collect();
    assert_eq!(orgs, vec!["acme", "acme", "zeta"]);
    assert!(
        events
            .iter()
            .all(|e| e.metric == "api_request" && e.value == 1 && e.idempotency_key.is_some())
    );
    assert_eq!(events[0].metadata.as_ref().unwrap()["path"], "/orgs/{org}/things");
    assert_eq!(recorder.dropped(), 0);
}

#[tokio::test]
async fn a_recorder_without_redis_drops_events_beyond_its_bound_instead_of_growing() {
    // Arrange: nothing listens on this port.
    let mut settings =
        RedisSettings::for_url(&format!("redis://127.0.0.1:{}", free_port()), "t-usage-down");
    settings.connect_timeout_ms = 100;
    settings.command_timeout_ms = 100;
    let clients = RedisClients::connect(&settings).await.unwrap();
    let cancel = CancellationToken::new();
    let bounded = UsageRecorderSettings {
        capacity: 4,
        batch_size: 2,
        linger: Duration::from_millis(1),
        ..Default::default()
    };
    let (recorder, task) = UsageRecorder::start(&clients, bounded, cancel.clone());
    let event = UsageEvent {
        org_id: "o".into(),
        metric: "sms_sent".into(),
        value: 1,
        occurred_at: None,
        idempotency_key: None,
        metadata: None,
    };

    // Act
    let accepted = (0..50).filter(|_| recorder.record(event.clone())).count();
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap();

    // Assert: at most the queue plus one batch in hand were taken.
    assert!(accepted <= 4 + 2, "accepted {accepted}");
    assert_eq!(recorder.dropped() as usize, 50 - accepted);
}

#[actix_web::test]
async fn aggregated_requests_named_by_the_handler_become_one_counted_event_per_organisation() {
    // Arrange: the handler names the organisation (as after a cache lookup); "nobody" is unnamed.
    let url = RedisServer::shared().url();
    let clients =
        RedisClients::connect(&RedisSettings::for_url(&url, &unique_prefix("usage-counted")))
            .await
            .unwrap();
    let cancel = CancellationToken::new();
    let settings =
        UsageRecorderSettings { linger: Duration::from_secs(3600), ..Default::default() };
    let (recorder, task) = UsageRecorder::start(&clients, settings, cancel.clone());
    let app = test::init_service(
        App::new().service(
            web::resource("/pages/{name}")
                .wrap(TrackUsage::from_response(recorder.clone()).aggregated())
                .route(web::get().to(|path: web::Path<String>| async move {
                    let mut response = HttpResponse::Ok().finish();
                    if path.as_str() != "nobody" {
                        response.extensions_mut().insert(UsageOrg(format!("org-{path}")));
                    }
                    response
                })),
        ),
    )
    .await;

    // Act: 5 + 2 + 1 requests; the long linger means only the final drain sends them.
    for name in ["a", "a", "b", "a", "nobody", "a", "b", "a"] {
        let request = test::TestRequest::get().uri(&format!("/pages/{name}")).to_request();
        assert!(test::call_service(&app, request).await.status().is_success());
    }
    cancel.cancel();
    task.await.unwrap();

    // Assert: one event per organisation carrying its count, each with an idempotency key.
    let key = clients.keys().stream(StreamName::UsageEvents);
    let entries: Vec<(String, HashMap<String, String>)> =
        clients.primary().xrange(key, "-", "+", None).await.unwrap();
    let mut counts: Vec<(String, i64)> = entries
        .iter()
        .map(|(_, f)| serde_json::from_str::<UsageEvent>(&f["data"]).unwrap())
        .inspect(|e| assert!(e.metric == "api_request" && e.idempotency_key.is_some()))
        .map(|e| (e.org_id, e.value))
        .collect();
    counts.sort();
    assert_eq!(counts, vec![("org-a".to_owned(), 5), ("org-b".to_owned(), 2)]);
    assert_eq!(recorder.dropped(), 0);
}

#[tokio::test]
async fn requests_the_rate_limiter_refuses_count_as_rate_limited_for_their_organisation() {
    // Arrange: 2 requests per hour per organisation; the handler names the organisation, and for
    // refused requests (the handler never runs) `org_when_denied` does, from the path.
    let url = RedisServer::shared().url();
    let clients =
        RedisClients::connect(&RedisSettings::for_url(&url, &unique_prefix("usage-denied")))
            .await
            .unwrap();
    let limits = RateLimitSettings {
        policies: HashMap::from([("tight".to_owned(), PolicySettings::new(2, 3_600))]),
        ..RateLimitSettings::default()
    };
    let limiter = RateLimiter::new(&clients, &limits).unwrap();
    let cancel = CancellationToken::new();
    let settings =
        UsageRecorderSettings { linger: Duration::from_secs(3600), ..Default::default() };
    let (recorder, task) = UsageRecorder::start(&clients, settings, cancel.clone());
    let per_org = RateLimit::new(limiter, "tight")
        .with_key(|req| req.match_info().get("org").map(|org| format!("org:{org}")));
    let metered = TrackUsage::from_response(recorder.clone())
        .aggregated()
        .org_when_denied(|req| req.match_info().get("org").map(|org| format!("org-{org}")));
    let app = test::init_service(App::new().service(
        web::resource("/orgs/{org}").wrap(per_org).wrap(metered).route(web::get().to(
            |path: web::Path<String>| async move {
                let mut response = HttpResponse::Ok().finish();
                response.extensions_mut().insert(UsageOrg(format!("org-{path}")));
                response
            },
        )),
    ))
    .await;

    // Act: 5 requests of one organisation; the long linger means only the final drain sends.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let request = test::TestRequest::get().uri("/orgs/a").to_request();
        statuses.push(test::call_service(&app, request).await.status().as_u16());
    }
    cancel.cancel();
    task.await.unwrap();

    // Assert: 2 served and billed as api_request, 3 refused and counted as rate_limited.
    assert_eq!(statuses, [200, 200, 429, 429, 429]);
    let key = clients.keys().stream(StreamName::UsageEvents);
    let entries: Vec<(String, HashMap<String, String>)> =
        clients.primary().xrange(key, "-", "+", None).await.unwrap();
    let mut counts: Vec<(String, String, i64)> = entries
        .iter()
        .map(|(_, f)| serde_json::from_str::<UsageEvent>(&f["data"]).unwrap())
        .map(|e| (e.org_id, e.metric, e.value))
        .collect();
    counts.sort();
    assert_eq!(
        counts,
        vec![
            ("org-a".to_owned(), "api_request".to_owned(), 2),
            ("org-a".to_owned(), "rate_limited".to_owned(), 3),
        ]
    );
}
