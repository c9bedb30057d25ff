//! Domain types of usage metering: metrics, months, organisation ids, and the validation that
//! turns a raw [`UsageEvent`] (stream or HTTP) into a [`ValidEvent`] or a rejection reason.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use platform_redis::messages::UsageEvent;
use serde::Serialize;

/// What producers report. `donation_processed` events carry the donation amount in cents as
/// their value: one event adds 1 to `donation_processed` and the value to
/// `donation_volume_cents`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    ApiRequest,
    DonationProcessed,
    EmailSent,
    SmsSent,
    StorageUsed,
    CampaignCreated,
    /// Requests a rate limit refused (rate limit hits per organisation); counted and ranked like
    /// the others, never billed.
    RateLimited,
}

impl Metric {
    /// Every metric producers may send, in display order.
    pub const ALL: [Metric; 7] = [
        Metric::ApiRequest,
        Metric::DonationProcessed,
        Metric::EmailSent,
        Metric::SmsSent,
        Metric::StorageUsed,
        Metric::CampaignCreated,
        Metric::RateLimited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::ApiRequest => "api_request",
            Metric::DonationProcessed => "donation_processed",
            Metric::EmailSent => "email_sent",
            Metric::SmsSent => "sms_sent",
            Metric::StorageUsed => "storage_used",
            Metric::CampaignCreated => "campaign_created",
            Metric::RateLimited => "rate_limited",
        }
    }

    /// Whether a bill has a line item for it (rate-limit hits are analytics, not a product).
    pub fn is_billed(self) -> bool {
        self != Metric::RateLimited
    }

    /// A gauge keeps the latest value (by event time) instead of summing.
    pub fn is_gauge(self) -> bool {
        self == Metric::StorageUsed
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Metric::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unknown metric {s:?}"))
    }
}

impl Metric {
    /// Position in [`Metric::ALL`].
    fn index(self) -> usize {
        Metric::ALL.iter().position(|m| *m == self).unwrap_or(0)
    }
}

/// A set of metrics (one bit per entry of [`Metric::ALL`]); `Copy`, for settings read per batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricSet(u8);

impl MetricSet {
    pub fn of(metrics: &[Metric]) -> Self {
        Self(metrics.iter().fold(0, |bits, m| bits | 1 << m.index()))
    }

    /// Parses metric names; the error names the first unknown one.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, String> {
        let metrics = names.iter().map(|n| n.as_ref().parse()).collect::<Result<Vec<_>, _>>()?;
        Ok(Self::of(&metrics))
    }

    pub fn contains(self, metric: Metric) -> bool {
        self.0 & 1 << metric.index() != 0
    }
}

/// The name of the derived donation-volume counter.
pub const DONATION_VOLUME: &str = "donation_volume_cents";

/// Every counter name a month's usage reports (the metrics plus the donation volume).
pub const USAGE_FIELDS: [&str; 8] = [
    "api_request",
    "donation_processed",
    DONATION_VOLUME,
    "email_sent",
    "sms_sent",
    "storage_used",
    "campaign_created",
    "rate_limited",
];

/// Whether `field` is a usage counter name (what quota checks and top lists accept).
pub fn is_usage_field(field: &str) -> bool {
    USAGE_FIELDS.contains(&field)
}

/// A calendar month in UTC, `YYYY-MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Month {
    year: i32,
    month: u32,
}

impl Month {
    pub fn of(at: DateTime<Utc>) -> Self {
        Self { year: at.year(), month: at.month() }
    }

    pub fn current() -> Self {
        Self::of(Utc::now())
    }

    /// The first instant after the month (midnight UTC of the next month's first day).
    pub fn end(self) -> DateTime<Utc> {
        let (year, month) =
            if self.month == 12 { (self.year + 1, 1) } else { (self.year, self.month + 1) };
        Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0).single().unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl FromStr for Month {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("month {s:?} is not YYYY-MM");
        let (year, month) = s.split_once('-').ok_or_else(bad)?;
        if year.len() != 4 || month.len() != 2 {
            return Err(bad());
        }
        let year: i32 = year.parse().map_err(|_| bad())?;
        let month: u32 = month.parse().map_err(|_| bad())?;
        if !(2000..=9999).contains(&year) || !(1..=12).contains(&month) {
            return Err(bad());
        }
        Ok(Self { year, month })
    }
}

/// An organisation id: 1–64 characters of `[A-Za-z0-9_.-]`, so it can sit inside a Redis hash tag
/// and the `<org>|<month>` dirty-set field without escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct OrgId(String);

impl OrgId {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("orgId is missing or empty".into());
        }
        if raw.len() > 64 {
            return Err("orgId is longer than 64 characters".into());
        }
        if !raw.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')) {
            return Err(format!("orgId {raw:?} may only contain letters, digits, '_', '-', '.'"));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Limits on what an event may say; from `[usage]` settings.
#[derive(Debug, Clone, Copy)]
pub struct EventRules {
    /// Events older than this are refused: their month's counters may already have expired.
    pub max_age: Duration,
    /// Events further in the future than this are refused (clock skew allowance).
    pub max_future_skew: Duration,
}

/// Largest serialised metadata kept with a detail event.
const MAX_METADATA_BYTES: usize = 4096;
/// Largest value of one event: the recording script sums in Lua numbers (doubles), exact
/// below 2^53; 10^15 leaves room for many such events in one month.
pub const MAX_VALUE: i64 = 1_000_000_000_000_000;
/// Longest accepted idempotency key.
const MAX_IDEMPOTENCY_KEY: usize = 200;

/// A usage event that passed validation, ready to record.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidEvent {
    pub org: OrgId,
    pub metric: Metric,
    pub value: i64,
    pub occurred_at: DateTime<Utc>,
    pub month: Month,
    pub idempotency_key: Option<String>,
    /// The detail record (JSON) kept in the org's event list; only for events with metadata.
    pub detail: Option<String>,
}

/// Validates `event` at `now`; the error is a sentence used as dead-letter reason or 400 detail.
pub fn validate(
    event: &UsageEvent,
    now: DateTime<Utc>,
    rules: &EventRules,
) -> Result<ValidEvent, String> {
    let org = OrgId::parse(event.org_id.trim())?;
    let metric: Metric = event.metric.parse()?;
    if event.value < 0 {
        return Err(format!("value {} is negative", event.value));
    }
    if event.value > MAX_VALUE {
        return Err(format!("value {} is larger than {MAX_VALUE}", event.value));
    }
    let occurred_at = match &event.occurred_at {
        None => now,
        Some(text) => DateTime::parse_from_rfc3339(text)
            .map_err(|e| format!("occurredAt {text:?} is not RFC 3339: {e}"))?
            .with_timezone(&Utc),
    };
    if occurred_at < now - rules.max_age {
        return Err(format!(
            "occurredAt {occurred_at} is older than the accepted {} days",
            rules.max_age.num_days()
        ));
    }
    if occurred_at > now + rules.max_future_skew {
        return Err(format!("occurredAt {occurred_at} is in the future"));
    }
    let idempotency_key = match &event.idempotency_key {
        None => None,
        Some(key) if key.is_empty() => return Err("idempotencyKey is empty".into()),
        Some(key) if key.len() > MAX_IDEMPOTENCY_KEY => {
            return Err(format!("idempotencyKey is longer than {MAX_IDEMPOTENCY_KEY} bytes"));
        }
        Some(key) => Some(key.clone()),
    };
    let detail = match &event.metadata {
        None | Some(serde_json::Value::Null) => None,
        Some(metadata) => {
            let detail = serde_json::json!({
                "metric": metric.as_str(),
                "value": event.value,
                "timestamp": occurred_at.to_rfc3339(),
                "idempotencyKey": idempotency_key,
                "metadata": metadata,
            })
            .to_string();
            if detail.len() > MAX_METADATA_BYTES {
                return Err(format!("metadata is larger than {MAX_METADATA_BYTES} bytes"));
            }
            Some(detail)
        }
    };
    Ok(ValidEvent {
        org,
        metric,
        value: event.value,
        month: Month::of(occurred_at),
        occurred_at,
        idempotency_key,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> EventRules {
        EventRules { max_age: Duration::days(35), max_future_skew: Duration::minutes(5) }
    }

    fn event(org: &str, metric: &str, value: i64, at: Option<&str>) -> UsageEvent {
        UsageEvent {
            org_id: org.into(),
            metric: metric.into(),
            value,
            occurred_at: at.map(Into::into),
            idempotency_key: None,
            metadata: None,
        }
    }

    #[test]
    fn metric_sets_hold_exactly_the_named_metrics() {
        let set = MetricSet::parse(&["donation_processed", "sms_sent"]);
        assert_eq!(set, Ok(MetricSet::of(&[Metric::SmsSent, Metric::DonationProcessed])));
        let set = set.unwrap_or_default();
        assert!(set.contains(Metric::DonationProcessed) && set.contains(Metric::SmsSent));
        assert!(!set.contains(Metric::ApiRequest) && !set.contains(Metric::RateLimited));
        assert!(MetricSet::parse(&["beer"]).is_err());
    }

    #[test]
    fn months_parse_only_as_yyyy_mm() {
        assert_eq!("2026-01".parse::<Month>().map(|m| m.to_string()), Ok("2026-01".into()));
        for bad in ["2026-13", "2026-1", "26-01", "2026/01", "", "2026-00", "abcd-ef"] {
            assert!(bad.parse::<Month>().is_err(), "{bad}");
        }
    }

    #[test]
    fn poison_events_are_rejected_with_a_reason() {
        let now: DateTime<Utc> = "2026-11-20T10:00:00Z".parse().unwrap_or_default();
        let reason = |e: UsageEvent| validate(&e, now, &rules()).err().unwrap_or_default();
        assert!(reason(event("o", "beer", 1, None)).contains("unknown metric"));
        assert!(reason(event("o", "sms_sent", -1, None)).contains("negative"));
        assert!(reason(event("", "sms_sent", 1, None)).contains("orgId"));
        assert!(reason(event("a{b}", "sms_sent", 1, None)).contains("orgId"));
        assert!(reason(event("o", "sms_sent", 1, Some("yesterday"))).contains("RFC 3339"));
        assert!(reason(event("o", "sms_sent", 1, Some("2020-01-01T00:00:00Z"))).contains("older"));
        assert!(reason(event("o", "sms_sent", 1, Some("2027-01-01T00:00:00Z"))).contains("future"));
        let ok = validate(&event("o", "sms_sent", 2, Some("2026-11-01T00:00:00Z")), now, &rules());
        assert_eq!(ok.map(|e| e.month.to_string()), Ok("2026-11".into()));
    }
}
