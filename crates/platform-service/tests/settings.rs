//! Layered settings: the shared defaults, a service's defaults, then a file, then `APP__…`
//! variables; a missing or bad setting is named.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use platform_service::settings::{CommonSettings, LogFormat, SettingsError, load_from};
use secrecy::ExposeSecret;

const DEFAULTS: &str = r#"
[http]
host = "127.0.0.1"
port = 8081
[redis]
url = "redis://127.0.0.1:6379"
[auth]
admin_token = "dev-admin-token"
[telemetry]
format = "json"
"#;

fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
    Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

#[test]
fn environment_variables_override_file_and_defaults() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("production.toml");
    std::fs::write(&file, "[http]\nport = 9000\nhost = \"0.0.0.0\"\n").unwrap();

    // Act
    let settings: CommonSettings = load_from(
        DEFAULTS,
        Some((file.display().to_string(), true)),
        env(&[("APP__HTTP__PORT", "9100"), ("APP__AUTH__ADMIN_TOKEN", "a-long-secret")]),
    )
    .unwrap();

    // Assert
    assert_eq!(settings.http.port, 9100, "environment beats file");
    assert_eq!(settings.http.host, "0.0.0.0", "file beats defaults");
    assert_eq!(settings.auth.admin_token.expose_secret(), "a-long-secret");
    settings.validate().unwrap();
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let settings: CommonSettings =
        load_from(DEFAULTS, None, env(&[("APP__AUTH__ADMIN_TOKEN", "super-secret-token")]))
            .unwrap();
    let printed = format!("{settings:?}");
    assert!(!printed.contains("super-secret-token"), "{printed}");
    assert!(printed.contains("REDACTED"));
}

#[test]
fn a_bad_setting_is_named_in_the_error() {
    // Act
    let wrong_type: Result<CommonSettings, _> =
        load_from(DEFAULTS, None, env(&[("APP__HTTP__PORT", "eighty")]));
    let short_token: CommonSettings =
        load_from(DEFAULTS, None, env(&[("APP__AUTH__ADMIN_TOKEN", "short")])).unwrap();
    // Every shared key has a default except the port, which each service sets.
    let missing = load_from::<CommonSettings>("", None, None);

    // Assert
    let message = wrong_type.unwrap_err().to_string();
    assert!(message.contains("http.port"), "{message}");
    let invalid = short_token.validate().unwrap_err();
    assert!(matches!(invalid, SettingsError::Invalid { key: "auth.admin_token", .. }), "{invalid}");
    let message = missing.unwrap_err().to_string();
    assert!(message.contains("port"), "{message}");
}

#[test]
fn readiness_requirements_come_as_a_list_or_one_comma_separated_variable() {
    // Act
    let defaults: CommonSettings = load_from(DEFAULTS, None, None).unwrap();
    let one: CommonSettings =
        load_from(DEFAULTS, None, env(&[("APP__HTTP__READY_REQUIRES", "postgres")])).unwrap();
    let none: CommonSettings =
        load_from(DEFAULTS, None, env(&[("APP__HTTP__READY_REQUIRES", "")])).unwrap();
    let unknown: CommonSettings =
        load_from(DEFAULTS, None, env(&[("APP__HTTP__READY_REQUIRES", "redis, mysql")])).unwrap();

    // Assert
    assert_eq!(defaults.http.ready_requires, ["redis", "postgres"]);
    assert_eq!(one.http.ready_requires, ["postgres"]);
    assert!(none.http.ready_requires.is_empty());
    none.validate().unwrap();
    let invalid = unknown.validate().unwrap_err();
    assert!(
        matches!(invalid, SettingsError::Invalid { key: "http.ready_requires", .. }),
        "{invalid}"
    );
}

#[test]
fn the_http_edge_defaults_to_a_ten_second_body_deadline_and_no_cors() {
    // Act
    let defaults: CommonSettings = load_from(DEFAULTS, None, None).unwrap();

    // Assert
    assert_eq!(defaults.http.body_timeout_ms, 10_000);
    assert_eq!(defaults.http.header_timeout_ms, 5_000);
    assert_eq!(defaults.http.max_connections_per_worker, 25_000);
    assert!(defaults.http.cors_allowed_origins.is_empty());
    assert!(defaults.http.cors_paths.is_empty());
    defaults.validate().unwrap();
}

#[test]
fn cors_origins_come_as_one_comma_separated_variable_and_must_be_bare_origins() {
    // Act
    let listed: CommonSettings = load_from(
        DEFAULTS,
        None,
        env(&[
            ("APP__HTTP__CORS_ALLOWED_ORIGINS", "https://shop.example, http://localhost:3000"),
            ("APP__HTTP__CORS_PATHS", "/api/public/,/api/init"),
        ]),
    )
    .unwrap();
    let invalid =
        ["*", "https://shop.example/", "https://shop.example/cart", "shop.example", "null"].map(
            |origin| {
                let settings: CommonSettings =
                    load_from(DEFAULTS, None, env(&[("APP__HTTP__CORS_ALLOWED_ORIGINS", origin)]))
                        .unwrap();
                settings.validate().err()
            },
        );
    let relative_path: CommonSettings =
        load_from(DEFAULTS, None, env(&[("APP__HTTP__CORS_PATHS", "api/public/")])).unwrap();

    // Assert
    assert_eq!(listed.http.cors_allowed_origins, ["https://shop.example", "http://localhost:3000"]);
    assert_eq!(listed.http.cors_paths, ["/api/public/", "/api/init"]);
    listed.validate().unwrap();
    for error in invalid {
        assert!(
            matches!(error, Some(SettingsError::Invalid { key: "http.cors_allowed_origins", .. })),
            "{error:?}"
        );
    }
    let error = relative_path.validate().unwrap_err();
    assert!(matches!(error, SettingsError::Invalid { key: "http.cors_paths", .. }), "{error}");
}

#[test]
fn tenant_token_secrets_come_as_one_comma_separated_variable_stay_redacted_and_must_be_long() {
    // Act
    let emptied: CommonSettings =
        load_from(DEFAULTS, None, env(&[("APP__TENANT_AUTH__HS256_SECRETS", "")])).unwrap();
    let rotating: CommonSettings = load_from(
        DEFAULTS,
        None,
        env(&[(
            "APP__TENANT_AUTH__HS256_SECRETS",
            "new-secret-0123456789abcdefghijklmnopq, old-secret-0123456789abcdefghijklmnopq",
        )]),
    )
    .unwrap();
    let short: CommonSettings =
        load_from(DEFAULTS, None, env(&[("APP__TENANT_AUTH__HS256_SECRETS", "short")])).unwrap();
    let bare_claim: CommonSettings =
        load_from(DEFAULTS, None, env(&[("APP__TENANT_AUTH__ORG_CLAIM", "org_id")])).unwrap();

    // Assert
    assert!(emptied.tenant_auth.hs256_secrets.is_empty(), "an empty variable means no secret");
    emptied.validate().unwrap();
    assert_eq!(emptied.tenant_auth.org_claim, "/org_id");
    let secrets: Vec<_> =
        rotating.tenant_auth.hs256_secrets.iter().map(|s| s.expose_secret().to_owned()).collect();
    assert_eq!(
        secrets,
        ["new-secret-0123456789abcdefghijklmnopq", "old-secret-0123456789abcdefghijklmnopq"]
    );
    rotating.validate().unwrap();
    assert!(!format!("{rotating:?}").contains("new-secret"), "secrets are redacted");
    let invalid = short.validate().unwrap_err();
    assert!(
        matches!(invalid, SettingsError::Invalid { key: "tenant_auth.hs256_secrets", .. }),
        "{invalid}"
    );
    let invalid = bare_claim.validate().unwrap_err();
    assert!(
        matches!(invalid, SettingsError::Invalid { key: "tenant_auth.org_claim", .. }),
        "{invalid}"
    );
}

#[test]
fn the_shared_defaults_are_complete_once_a_service_sets_its_port() {
    // Act
    let settings: CommonSettings = load_from("[http]\nport = 8080\n", None, None).unwrap();

    // Assert
    settings.validate().unwrap();
    assert_eq!(settings.http.host, "127.0.0.1");
    assert_eq!(settings.http.shutdown_timeout_secs, 20);
    assert_eq!(settings.http.body_limit_bytes, 1_048_576);
    assert_eq!(settings.telemetry.filter, "info");
    assert_eq!(settings.telemetry.format, LogFormat::Json);
    assert!(settings.telemetry.otlp_endpoint.is_none());
    assert!(settings.rate_limit.enabled);
    assert_eq!(settings.tenant_auth.mint_ttl_secs, 900);
}
