//! The rate limiter against a real redis-server: exact limits, recovery after the window, the
//! actix middleware's 429 and headers, the blocked cache costing no Redis command, the
//! in-process fallback while Redis is down, and leased policies (tokens taken in batches and spent
//! locally) across two replicas.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::dev::{ServiceFactory, ServiceRequest, Transform, fn_service};
use actix_web::http::StatusCode;
use actix_web::{App, HttpResponse, test, web};
use platform_redis::fred::prelude::*;
use platform_redis::fred::types::InfoKind;
use platform_redis::ratelimit::{
    DecisionSource, LimiterMode, PolicySettings, RateLimit, RateLimitSettings, RateLimiter,
    UnknownPolicy,
};
use platform_redis::{RedisClients, RedisSettings};
use platform_testing::{RedisServer, eventually, unique_prefix};

fn settings_with(policies: &[(&str, u32, u64)]) -> RateLimitSettings {
    RateLimitSettings {
        policies: policies
            .iter()
            .map(|(name, limit, window)| ((*name).to_owned(), PolicySettings::new(*limit, *window)))
            .collect::<HashMap<_, _>>(),
        ..RateLimitSettings::default()
    }
}

async fn limiter_on(
    server: &RedisServer,
    test: &str,
    settings: &RateLimitSettings,
) -> (RedisClients, RateLimiter) {
    let clients =
        RedisClients::connect(&RedisSettings::for_url(&server.url(), &unique_prefix(test)))
            .await
            .expect("connect");
    let limiter = RateLimiter::new(&clients, settings).expect("valid settings");
    (clients, limiter)
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Keeps a test's requests inside one fixed window, so the previous window plays no part.
async fn avoid_window_end(window_ms: u64, margin_ms: u64) {
    let left = window_ms - unix_ms() % window_ms;
    if left < margin_ms {
        tokio::time::sleep(Duration::from_millis(left + 10)).await;
    }
}

/// `calls` of `cmdstat_evalsha` in `INFO commandstats` (0 before the first one).
async fn evalsha_calls(clients: &RedisClients) -> u64 {
    let info: String = clients.primary().info(Some(InfoKind::CommandStats)).await.expect("INFO");
    info.lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().expect("numeric calls"))
}

#[tokio::test]
async fn exactly_limit_requests_pass_then_the_next_is_denied_with_limit_remaining_and_reset() {
    // Arrange: 5 per hour, so the test's requests fall in one fixed window.
    let hour_ms = 3_600_000;
    let (_clients, limiter) =
        limiter_on(RedisServer::shared(), "exact", &settings_with(&[("burst", 5, 3_600)])).await;
    avoid_window_end(hour_ms, 5_000).await;

    // Act
    let mut passed = Vec::new();
    for _ in 0..5 {
        passed.push(limiter.check("burst", "alice").await.unwrap());
    }
    let before = unix_ms();
    let denied = limiter.check("burst", "alice").await.unwrap();
    let after = unix_ms();

    // Assert
    for (n, decision) in passed.iter().enumerate() {
        assert!(decision.allowed, "request {} should pass", n + 1);
        assert_eq!(decision.limit, 5);
        assert_eq!(decision.remaining, 4 - n as u32);
        assert_eq!(decision.source, DecisionSource::Redis);
        assert_eq!(decision.retry_after, None);
    }
    assert!(!denied.allowed);
    assert_eq!((denied.limit, denied.remaining, denied.source), (5, 0, DecisionSource::Redis));
    // The rest of this hour, then the 12 minutes it takes 5 weighted requests to lose one.
    let expected = |now: u64| hour_ms - now % hour_ms + hour_ms / 5;
    let reset_ms = denied.reset_after.as_millis() as u64;
    assert!(
        (expected(after)..=expected(before)).contains(&reset_ms),
        "reset {reset_ms} ms outside {}..={}",
        expected(after),
        expected(before)
    );
    assert_eq!(denied.retry_after, Some(denied.reset_after));
}

#[tokio::test]
async fn different_identifiers_are_counted_independently() {
    // Arrange
    let (_clients, limiter) =
        limiter_on(RedisServer::shared(), "independent", &settings_with(&[("burst", 2, 3_600)]))
            .await;
    avoid_window_end(3_600_000, 5_000).await;
    for _ in 0..3 {
        limiter.check("burst", "alice").await.unwrap();
    }

    // Act
    let alice = limiter.check("burst", "alice").await.unwrap();
    let bob = limiter.check("burst", "bob").await.unwrap();

    // Assert
    assert!(!alice.allowed);
    assert!(bob.allowed);
    assert_eq!(bob.remaining, 1);
}

#[tokio::test]
async fn after_the_window_requests_pass_again() {
    // Arrange: 3 per second, exhausted.
    let (_clients, limiter) =
        limiter_on(RedisServer::shared(), "recover", &settings_with(&[("tick", 3, 1)])).await;
    let mut denied = None;
    for _ in 0..10 {
        let decision = limiter.check("tick", "carol").await.unwrap();
        if !decision.allowed {
            denied = Some(decision);
            break;
        }
    }
    let denied = denied.expect("denied within 10 requests");
    let retry_after = denied.retry_after.expect("a denial says when to retry");
    assert!(retry_after <= Duration::from_secs(2), "{retry_after:?}");

    // Act: wait as long as the denial said, then two full windows of quiet.
    tokio::time::sleep(retry_after + Duration::from_millis(20)).await;
    let after_retry = limiter.check("tick", "carol").await.unwrap();
    tokio::time::sleep(Duration::from_millis(2_050)).await;
    let mut fresh = Vec::new();
    for _ in 0..3 {
        fresh.push(limiter.check("tick", "carol").await.unwrap());
    }

    // Assert
    assert!(after_retry.allowed, "{after_retry:?}");
    assert_eq!(after_retry.source, DecisionSource::Redis);
    assert!(fresh.iter().all(|d| d.allowed), "{fresh:?}");
}

#[tokio::test]
async fn an_unknown_policy_is_an_error_not_a_panic() {
    // Arrange
    let (_clients, limiter) =
        limiter_on(RedisServer::shared(), "unknown", &RateLimitSettings::default()).await;

    // Act
    let result = limiter.check("no-such-policy", "dave").await;

    // Assert
    assert_eq!(result, Err(UnknownPolicy("no-such-policy".into())));
    assert_eq!(limiter.policy("guest_checkout"), Some(PolicySettings::new(3, 300)));
}

#[tokio::test]
async fn a_blocked_identifier_costs_no_redis_command() {
    // Arrange: a private server, so no other test's EVALSHA shows in its command stats.
    let server = RedisServer::start().expect("private redis");
    let (clients, limiter) =
        limiter_on(&server, "blocked", &settings_with(&[("once", 1, 3_600)])).await;
    avoid_window_end(3_600_000, 5_000).await;
    assert!(limiter.check("once", "erin").await.unwrap().allowed);
    let first_denial = limiter.check("once", "erin").await.unwrap();
    assert_eq!(first_denial.source, DecisionSource::Redis);
    let calls_before = evalsha_calls(&clients).await;

    // Act
    let mut later = Vec::new();
    for _ in 0..20 {
        later.push(limiter.check("once", "erin").await.unwrap());
    }
    let calls_after = evalsha_calls(&clients).await;

    // Assert
    assert!(calls_before >= 2, "the first two checks ran the script ({calls_before})");
    assert_eq!(calls_after, calls_before, "blocked checks sent EVALSHA");
    assert!(later.iter().all(|d| !d.allowed && d.source == DecisionSource::BlockedCache));
    assert!(later.iter().all(|d| d.retry_after.is_some_and(|r| r <= first_denial.reset_after)));
    let stats = limiter.stats();
    assert_eq!(stats.redis_decisions, 2);
    assert_eq!(stats.blocked_cache_hits, 20);
    assert_eq!(stats.denied, 21);
}

#[tokio::test]
async fn stopping_redis_switches_to_the_fallback_which_still_limits_and_back_after_restart() {
    // Arrange
    let server = RedisServer::start().expect("private redis");
    let (_clients, limiter) =
        limiter_on(&server, "fallback", &settings_with(&[("trio", 3, 3_600)])).await;
    avoid_window_end(3_600_000, 30_000).await;
    assert_eq!(limiter.check("trio", "warmup").await.unwrap().source, DecisionSource::Redis);
    assert_eq!(limiter.mode(), LimiterMode::Redis);

    // Act: Redis dies.
    server.stop();
    let mut during = Vec::new();
    for _ in 0..4 {
        during.push(limiter.check("trio", "frank").await.unwrap());
    }
    let mode_during = limiter.mode();

    // Assert: decided in process, still limiting.
    assert_eq!(mode_during, LimiterMode::Fallback);
    assert!(
        during[..3].iter().all(|d| d.allowed && d.source == DecisionSource::Fallback),
        "{during:?}"
    );
    assert!(!during[3].allowed);
    assert_eq!(during[3].source, DecisionSource::Fallback);
    assert!(limiter.stats().fallback_decisions >= 4);

    // Act: Redis comes back (empty, so the script must be loaded again).
    server.restart().expect("restart redis");
    let mut back = None;
    for n in 0..300 {
        let decision = limiter.check("trio", &format!("probe-{n}")).await.unwrap();
        if decision.source == DecisionSource::Redis {
            back = Some(decision);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Assert: by itself, without a restart of the limiter.
    assert!(back.is_some_and(|d| d.allowed), "never went back to redis");
    assert_eq!(limiter.mode(), LimiterMode::Redis);
}

fn peer(ip: &str) -> SocketAddr {
    format!("{ip}:40000").parse().unwrap()
}

fn header(
    response: &actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
    name: &str,
) -> Option<String> {
    response.headers().get(name).map(|v| v.to_str().unwrap().to_owned())
}

#[actix_web::test]
async fn the_middleware_answers_429_with_retry_after_headers_and_json_and_heads_every_response() {
    // Arrange: 2 per hour per client IP.
    let (_clients, limiter) =
        limiter_on(RedisServer::shared(), "middleware", &settings_with(&[("page", 2, 3_600)]))
            .await;
    avoid_window_end(3_600_000, 5_000).await;
    let app = test::init_service(
        App::new()
            .wrap(RateLimit::new(limiter, "page"))
            .route("/", web::get().to(|| async { HttpResponse::Ok().body("ok") })),
    )
    .await;
    let get = |ip: &str| test::TestRequest::get().uri("/").peer_addr(peer(ip)).to_request();

    // Act
    let first = test::call_service(&app, get("10.0.0.1")).await;
    let second = test::call_service(&app, get("10.0.0.1")).await;
    let third = test::call_service(&app, get("10.0.0.1")).await;
    let other_ip = test::call_service(&app, get("10.0.0.2")).await;

    // Assert
    for (response, remaining) in [(&first, "1"), (&second, "0")] {
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(response, "x-ratelimit-limit").as_deref(), Some("2"));
        assert_eq!(header(response, "x-ratelimit-remaining").as_deref(), Some(remaining));
        assert!(header(response, "x-ratelimit-reset").is_some());
        assert_eq!(header(response, "retry-after"), None);
    }
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&third, "x-ratelimit-limit").as_deref(), Some("2"));
    assert_eq!(header(&third, "x-ratelimit-remaining").as_deref(), Some("0"));
    let retry_after: u64 = header(&third, "retry-after").unwrap().parse().unwrap();
    let reset: u64 = header(&third, "x-ratelimit-reset").unwrap().parse().unwrap();
    // Rest of the hour plus half an hour (2 weighted requests lose one in 30 min), in whole seconds.
    assert!((1_800..=5_400).contains(&retry_after), "{retry_after}");
    assert_eq!(reset, retry_after);
    let body: serde_json::Value = test::read_body_json(third).await;
    assert_eq!(
        body,
        serde_json::json!({"error": "Too many requests: limit of 2 per hour exceeded", "code": "rate_limited"})
    );
    assert_eq!(other_ip.status(), StatusCode::OK);
    assert_eq!(header(&other_ip, "x-ratelimit-remaining").as_deref(), Some("1"));
}

#[actix_web::test]
async fn a_custom_key_limits_per_organisation_from_the_path() {
    // Arrange: 1 per hour per org slug, whatever the caller's IP.
    let (_clients, limiter) =
        limiter_on(RedisServer::shared(), "custom-key", &settings_with(&[("org", 1, 3_600)])).await;
    avoid_window_end(3_600_000, 5_000).await;
    let app = test::init_service(
        App::new().service(
            web::resource("/orgs/{slug}/active")
                .wrap(
                    RateLimit::new(limiter, "org")
                        .with_key(|req| req.match_info().get("slug").map(str::to_owned)),
                )
                .route(web::get().to(|| async { HttpResponse::Ok().finish() })),
        ),
    )
    .await;
    let get = |slug: &str, ip: &str| {
        test::TestRequest::get()
            .uri(&format!("/orgs/{slug}/active"))
            .peer_addr(peer(ip))
            .to_request()
    };

    // Act
    let acme = test::call_service(&app, get("acme", "10.0.0.1")).await.status();
    let acme_again = test::call_service(&app, get("acme", "10.0.0.2")).await.status();
    let globex = test::call_service(&app, get("globex", "10.0.0.1")).await.status();

    // Assert
    assert_eq!(acme, StatusCode::OK);
    assert_eq!(acme_again, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(globex, StatusCode::OK);
}

#[actix_web::test]
async fn the_first_forwarded_hop_is_the_client_only_when_trusted() {
    // Arrange: 1 per hour; two clients behind one proxy address.
    let (_clients, limiter) =
        limiter_on(RedisServer::shared(), "forwarded", &settings_with(&[("one", 1, 3_600)])).await;
    avoid_window_end(3_600_000, 5_000).await;
    let handler = || async { HttpResponse::Ok().finish() };
    let trusting = test::init_service(
        App::new()
            .wrap(RateLimit::new(limiter.clone(), "one").trust_x_forwarded_for(true))
            .route("/", web::get().to(handler)),
    )
    .await;
    let via_proxy = |client: &str| {
        test::TestRequest::get()
            .uri("/")
            .peer_addr(peer("192.168.0.1"))
            .insert_header(("x-forwarded-for", format!("{client}, 192.168.0.1")))
            .to_request()
    };

    // Act
    let first_client = test::call_service(&trusting, via_proxy("203.0.113.1")).await.status();
    let second_client = test::call_service(&trusting, via_proxy("203.0.113.2")).await.status();
    let first_again = test::call_service(&trusting, via_proxy("203.0.113.1")).await.status();

    // Assert
    assert_eq!(
        (first_client, second_client, first_again),
        (StatusCode::OK, StatusCode::OK, StatusCode::TOO_MANY_REQUESTS)
    );
}

#[actix_web::test]
async fn a_disabled_limiter_passes_requests_through_without_headers() {
    // Arrange
    let settings = RateLimitSettings { enabled: false, ..settings_with(&[("one", 1, 3_600)]) };
    let (_clients, limiter) = limiter_on(RedisServer::shared(), "disabled", &settings).await;
    let app = test::init_service(
        App::new()
            .wrap(RateLimit::new(limiter.clone(), "one"))
            .route("/", web::get().to(|| async { "ok" })),
    )
    .await;

    // Act
    let mut responses = Vec::new();
    for _ in 0..3 {
        responses.push(
            test::call_service(
                &app,
                test::TestRequest::get().uri("/").peer_addr(peer("10.0.0.9")).to_request(),
            )
            .await,
        );
    }

    // Assert
    assert!(responses.iter().all(|r| r.status() == StatusCode::OK));
    assert!(responses.iter().all(|r| header(r, "x-ratelimit-limit").is_none()));
    assert_eq!(limiter.check("one", "x").await.unwrap().source, DecisionSource::Disabled);
}

#[actix_web::test]
async fn a_middleware_naming_an_unknown_policy_fails_app_start_instead_of_panicking() {
    // Arrange
    let (_clients, limiter) =
        limiter_on(RedisServer::shared(), "bad-policy", &RateLimitSettings::default()).await;
    let inner = fn_service(|req: ServiceRequest| async {
        Ok::<_, actix_web::Error>(req.into_response(HttpResponse::Ok().finish()))
    })
    .new_service(())
    .await
    .unwrap();

    // Act
    let started = RateLimit::new(limiter, "typo").new_transform(inner).await;

    // Assert
    assert!(started.is_err());
}

/// Two limiters ("replicas") on one Redis under one prefix.
async fn replicas_on(
    server: &RedisServer,
    test: &str,
    settings: &RateLimitSettings,
) -> (RedisClients, RateLimiter, RateLimiter) {
    let prefix = unique_prefix(test);
    let mut limiters = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..2 {
        let connected =
            RedisClients::connect(&RedisSettings::for_url(&server.url(), &prefix)).await.unwrap();
        limiters.push(RateLimiter::new(&connected, settings).unwrap());
        clients.push(connected);
    }
    let two = limiters.pop().unwrap();
    let one = limiters.pop().unwrap();
    (clients.remove(0), one, two)
}

fn leased(limit: u32, lease: u32) -> RateLimitSettings {
    let mut settings = settings_with(&[]);
    settings.policies.insert("leased".into(), PolicySettings::new(limit, 3_600).with_lease(lease));
    settings
}

#[tokio::test]
async fn two_leasing_replicas_never_admit_more_than_the_limit_and_need_few_round_trips() {
    // Arrange: a private server (to count EVALSHA), 50 per hour, leases of up to 10 tokens.
    let server = RedisServer::start().expect("private redis");
    let (clients, one, two) = replicas_on(&server, "lease-two", &leased(50, 10)).await;
    avoid_window_end(3_600_000, 30_000).await;

    // Act: both replicas hammer one identifier concurrently, far past the limit.
    let hammer = |limiter: RateLimiter| async move {
        let mut decisions = Vec::new();
        for _ in 0..100 {
            decisions.push(limiter.check("leased", "org:acme").await.unwrap());
        }
        decisions
    };
    let (first, second) = tokio::join!(hammer(one.clone()), hammer(two.clone()));
    let calls = evalsha_calls(&clients).await;

    // Assert: never above the limit; at most the tokens one replica may still hold below it.
    let allowed = first.iter().chain(&second).filter(|d| d.allowed).count();
    assert!(allowed <= 50, "admitted {allowed} > limit 50");
    assert!(allowed >= 50 - 10, "admitted only {allowed}");
    let local = one.stats().lease_decisions + two.stats().lease_decisions;
    assert!(local > 0, "no request was answered from a lease");
    let from_leases = first.iter().chain(&second).filter(|d| d.source == DecisionSource::Lease);
    assert_eq!(from_leases.count() as u64, local);
    assert!(calls < allowed as u64, "{calls} EVALSHA for {allowed} admitted requests");
    let denied = first.iter().chain(&second).filter(|d| !d.allowed);
    assert!(denied.clone().all(|d| d.remaining == 0 && d.retry_after.is_some()));
    assert_eq!(denied.count(), 200 - allowed);
}

#[tokio::test]
async fn a_leased_policy_reports_remaining_like_exact_mode_and_blocks_without_round_trips() {
    // Arrange: one replica, 5 per hour, leases of 2; a private server to count EVALSHA.
    let server = RedisServer::start().expect("private redis");
    let (clients, limiter) = limiter_on(&server, "lease-one", &leased(5, 2)).await;
    avoid_window_end(3_600_000, 30_000).await;

    // Act
    let mut passed = Vec::new();
    for _ in 0..5 {
        passed.push(limiter.check("leased", "org:bolt").await.unwrap());
    }
    let denied = limiter.check("leased", "org:bolt").await.unwrap();
    let calls_before = evalsha_calls(&clients).await;
    let mut blocked = Vec::new();
    for _ in 0..20 {
        blocked.push(limiter.check("leased", "org:bolt").await.unwrap());
    }
    let calls_after = evalsha_calls(&clients).await;

    // Assert: remaining counts down as in exact mode; one token came from the lease.
    let remaining: Vec<u32> = passed.iter().map(|d| d.remaining).collect();
    assert_eq!(remaining, vec![4, 3, 2, 1, 0]);
    assert!(passed.iter().all(|d| d.allowed));
    assert_eq!(passed[1].source, DecisionSource::Lease);
    assert!(!denied.allowed);
    assert_eq!((denied.remaining, denied.source), (0, DecisionSource::Redis));
    // Blocked callers: answered in process, no EVALSHA.
    assert_eq!(calls_after, calls_before, "blocked checks sent EVALSHA");
    assert!(blocked.iter().all(|d| !d.allowed && d.source == DecisionSource::BlockedCache));
    assert_eq!(limiter.stats().lease_decisions, 1);
}

#[tokio::test]
async fn an_expired_lease_gives_its_unspent_tokens_back_with_the_next_grant() {
    // Arrange: 10 per hour, one lease may take all of them, and lives 50 ms.
    let mut settings = leased(10, 10);
    settings.expected_replicas = 1;
    settings.lease_max_age_ms = 50;
    let (clients, limiter) = limiter_on(RedisServer::shared(), "lease-back", &settings).await;
    avoid_window_end(3_600_000, 30_000).await;
    let first = limiter.check("leased", "org:cove").await.unwrap();

    // Act: the lease expires with 9 tokens unspent; the next request takes a new one.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = limiter.check("leased", "org:cove").await.unwrap();

    // Assert: the 9 went back (else nothing would be left), and Redis counts what was taken.
    assert_eq!((first.allowed, first.remaining), (true, 9));
    assert_eq!((second.allowed, second.remaining, second.source), (true, 8, DecisionSource::Redis));
    let window = unix_ms() / 3_600_000;
    let key = clients.keys().rate_limit_window("leased", "org:cove", window);
    let counted: u64 = clients.primary().get(&key).await.unwrap();
    assert_eq!(counted, 10, "1 spent + 9 regranted");
}

#[tokio::test]
async fn a_busy_lease_is_refilled_in_the_background_before_it_runs_out() {
    // Arrange: 1000 per hour, leases of 10 (the next is asked for at 5 left), one replica.
    let mut settings = leased(1_000, 10);
    settings.expected_replicas = 1;
    let (clients, limiter) = limiter_on(RedisServer::shared(), "lease-ahead", &settings).await;
    avoid_window_end(3_600_000, 30_000).await;
    let refills = |n: u64| {
        let limiter = limiter.clone();
        async move { limiter.stats().lease_refills_ahead == n }
    };

    // Act: the first request takes a lease (9 held); the next 4 spend it down to the mark.
    let mut decisions = Vec::new();
    for _ in 0..5 {
        decisions.push(limiter.check("leased", "org:dune").await.unwrap());
    }
    eventually("the first refill ahead landed", || refills(1)).await;
    // 15 held: 14 more never find the lease empty (the 10th of them asks for the next).
    for _ in 0..14 {
        decisions.push(limiter.check("leased", "org:dune").await.unwrap());
    }
    eventually("the second refill ahead landed", || refills(2)).await;

    // Assert: only the first request waited on Redis; remaining counts down as in exact mode.
    let sources: Vec<_> = decisions.iter().map(|d| d.source).collect();
    assert_eq!(sources[0], DecisionSource::Redis);
    assert!(sources[1..].iter().all(|s| *s == DecisionSource::Lease), "{sources:?}");
    let remaining: Vec<u32> = decisions.iter().map(|d| d.remaining).collect();
    assert_eq!(remaining, (981..1000).rev().collect::<Vec<u32>>());
    assert!(decisions.iter().all(|d| d.allowed));
    let window = unix_ms() / 3_600_000;
    let key = clients.keys().rate_limit_window("leased", "org:dune", window);
    let counted: u64 = clients.primary().get(&key).await.unwrap();
    assert_eq!(counted, 30, "three leases of 10, all counted in Redis");
}
