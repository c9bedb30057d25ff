//! The refresh schedule: a cron expression (UTC) with per-replica jitter.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

/// A parsed cron expression. Five fields (`min hour dom mon dow`, as in crontab and the default
/// `0 */6 * * *`) get a leading `0` seconds field for the `cron` crate, which wants six or seven.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    schedule: cron::Schedule,
}

impl CronSchedule {
    pub fn parse(expression: &str) -> Result<Self, cron::error::Error> {
        let fields = expression.split_whitespace().count();
        let full =
            if fields == 5 { format!("0 {}", expression.trim()) } else { expression.to_owned() };
        Ok(Self { schedule: cron::Schedule::from_str(&full)? })
    }

    /// The first tick strictly after `now`.
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule.after(&now).next()
    }
}

/// A random pause in `0..=max`, so replicas woken by the same tick do not all hit the lock (and
/// simPRO) in the same instant.
pub fn jitter(max: Duration) -> Duration {
    let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    if max_ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(rand::rng().random_range(0..=max_ms))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_seed_expression_ticks_every_six_hours() {
        let schedule = CronSchedule::parse("0 */6 * * *").unwrap();
        let now = Utc.with_ymd_and_hms(2026, 2, 5, 12, 0, 0).unwrap();
        assert_eq!(
            schedule.next_after(now).unwrap(),
            Utc.with_ymd_and_hms(2026, 2, 5, 18, 0, 0).unwrap()
        );
    }

    #[test]
    fn a_broken_expression_is_rejected() {
        assert!(CronSchedule::parse("every six hours").is_err());
    }
}
