//! usage-meter's settings: the shared sections, its database, `[usage]` (the stream consumer,
//! retention, event rules, the Postgres flush), `[billing]` (tiers, defined with the pricing
//! rules) and `[organisation_events]` (the organisation stream's consumer group); defaults and
//! comments: `config/default.toml`.

use std::time::Duration;

use platform_redis::StreamName;
use platform_redis::streams::{ConsumerSettings, GroupSettings, StartFrom};
use platform_service::settings::{
    CommonSettings, DatabaseSettings, ServiceSettings, SettingsError,
};
use serde::Deserialize;

use crate::domain::pricing::BillingSettings;
use crate::domain::usage::{EventRules, Metric, MetricSet};
use crate::store::Retention;

/// This service's configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub common: CommonSettings,
    pub database: DatabaseSettings,
    pub usage: UsageSettings,
    pub billing: BillingSettings,
    /// campaign-api's organisation stream: plans and `campaign_created`.
    pub organisation_events: GroupSettings,
}

/// `[usage]`: the stream consumer, retention, event rules and the Postgres flush.
#[derive(Debug, Clone, Deserialize)]
pub struct UsageSettings {
    pub consumer_enabled: bool,
    pub consumer_group: String,
    /// `beginning` (count events appended before the group existed) or `new`.
    pub start_from: String,
    pub batch_size: usize,
    pub block_ms: u64,
    pub claim_idle_ms: u64,
    pub max_deliveries: u64,
    pub counter_ttl_days: u64,
    pub events_ttl_days: u64,
    pub events_per_org: u64,
    pub idempotency_window_secs: u64,
    pub max_event_age_days: i64,
    pub max_future_skew_secs: i64,
    /// How often counters are copied to Postgres: the most a Redis data loss can cost.
    pub flush_interval_ms: u64,
    pub max_http_events: usize,
    /// Metrics whose idempotency keys are kept in Postgres with the counters, so their events
    /// redelivered after a Redis data loss are still counted once.
    pub durable_idempotency_metrics: Vec<String>,
    /// How long a replica keeps an organisation's plan in memory for quota checks.
    pub plan_cache_ttl_ms: u64,
}

impl UsageSettings {
    pub fn retention(&self) -> Retention {
        Retention {
            counter_ttl_secs: self.counter_ttl_days * 86_400,
            events_ttl_secs: self.events_ttl_days * 86_400,
            events_per_org: self.events_per_org,
            idempotency_window_secs: self.idempotency_window_secs,
            // Validated at load; an unknown name cannot get here.
            durable_marks: MetricSet::parse(&self.durable_idempotency_metrics).unwrap_or_default(),
        }
    }

    pub fn rules(&self) -> EventRules {
        EventRules {
            max_age: chrono::Duration::days(self.max_event_age_days),
            max_future_skew: chrono::Duration::seconds(self.max_future_skew_secs),
        }
    }

    pub fn consumer(&self) -> ConsumerSettings {
        let mut settings = ConsumerSettings::new(StreamName::UsageEvents, &self.consumer_group);
        settings.batch_size = self.batch_size;
        settings.block = Duration::from_millis(self.block_ms);
        settings.claim_idle = Duration::from_millis(self.claim_idle_ms);
        settings.max_deliveries = self.max_deliveries;
        settings.start_from =
            if self.start_from == "new" { StartFrom::New } else { StartFrom::Beginning };
        settings
    }

    fn validate(&self) -> Result<(), SettingsError> {
        let check = |ok: bool, key: &'static str, reason: &str| {
            if ok { Ok(()) } else { Err(SettingsError::invalid(key, reason)) }
        };
        check(
            matches!(self.start_from.as_str(), "beginning" | "new"),
            "usage.start_from",
            "must be beginning or new",
        )?;
        check(self.counter_ttl_days > 0, "usage.counter_ttl_days", "must be > 0")?;
        check(self.events_ttl_days > 0, "usage.events_ttl_days", "must be > 0")?;
        check(self.events_per_org > 0, "usage.events_per_org", "must be > 0")?;
        check(self.idempotency_window_secs > 0, "usage.idempotency_window_secs", "must be > 0")?;
        check(
            self.max_event_age_days > 0 && (self.max_event_age_days as u64) < self.counter_ttl_days,
            "usage.max_event_age_days",
            "must be > 0 and below counter_ttl_days (late events must find their month)",
        )?;
        check(self.max_future_skew_secs >= 0, "usage.max_future_skew_secs", "must be >= 0")?;
        check(
            (10..=3_600_000).contains(&self.flush_interval_ms),
            "usage.flush_interval_ms",
            "must be 10..=3600000",
        )?;
        for name in &self.durable_idempotency_metrics {
            let metric: Result<Metric, _> = name.parse();
            check(
                metric.is_ok_and(|m| !m.is_gauge()),
                "usage.durable_idempotency_metrics",
                "must name counter metrics (a gauge's repeat changes nothing)",
            )?;
        }
        check(
            (1..=10_000).contains(&self.max_http_events),
            "usage.max_http_events",
            "must be 1..=10000",
        )?;
        check(self.plan_cache_ttl_ms > 0, "usage.plan_cache_ttl_ms", "must be > 0")?;
        self.consumer().validate().map_err(|e| SettingsError::invalid("usage", e.to_string()))
    }
}

impl ServiceSettings for Settings {
    const DEFAULTS: &'static str = include_str!("../config/default.toml");

    fn common(&self) -> &CommonSettings {
        &self.common
    }

    fn database(&self) -> Option<&DatabaseSettings> {
        Some(&self.database)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        self.usage.validate()?;
        self.organisation_events
            .consumer(StreamName::OrganisationEvents)
            .validate()
            .map_err(|e| SettingsError::invalid("organisation_events", e.to_string()))?;
        self.billing.validate().map_err(|reason| SettingsError::invalid("billing", reason))?;
        Ok(())
    }
}
