//! The `[cache]` settings block of a service and how its durations are spelled in config.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The `[cache]` settings of a service.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// When false every read computes (status `MISS`, tier `Origin`) and nothing is stored.
    pub enabled: bool,
    /// Bound on the in-process tier; 0 disables L1.
    pub l1_max_entries: usize,
    /// Longest life of an L1 copy. In config: milliseconds, or a string such as `"30s"`,
    /// `"500ms"`, `"2m"`.
    #[serde(deserialize_with = "deserialize_duration")]
    pub l1_ttl_max: Duration,
    /// XFetch `beta`: above 1 refreshes earlier, below 1 later, 0 never early.
    pub early_refresh_beta: f64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            l1_max_entries: 10_000,
            l1_ttl_max: Duration::from_secs(30),
            early_refresh_beta: 1.0,
        }
    }
}

/// Milliseconds as a number, or a string with a unit: `ms`, `s`, `m`, `h`.
fn deserialize_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Millis(u64),
        Text(String),
    }
    match Raw::deserialize(deserializer)? {
        Raw::Millis(ms) => Ok(Duration::from_millis(ms)),
        Raw::Text(text) => parse_duration(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{text}` is not a duration (use e.g. 500ms, 30s, 5m, 1h)"
            ))
        }),
    }
}

fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let ms_per_unit = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    number.checked_mul(ms_per_unit).map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_accept_durations_with_units_or_milliseconds() {
        let settings: CacheSettings =
            serde_json::from_str(r#"{"l1_ttl_max": "2m"}"#).unwrap_or_default();
        assert_eq!(settings.l1_ttl_max, Duration::from_secs(120));
        let settings: CacheSettings =
            serde_json::from_str(r#"{"l1_ttl_max": 1500}"#).unwrap_or_default();
        assert_eq!(settings.l1_ttl_max, Duration::from_millis(1500));
        assert!(serde_json::from_str::<CacheSettings>(r#"{"l1_ttl_max": "soon"}"#).is_err());
        assert_eq!(CacheSettings::default().l1_max_entries, 10_000);
    }
}
