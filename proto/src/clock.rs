//! Time as every binary of the fleet reads it: the one wall clock (`now_ms`), which every queue
//! call takes its `now` from so that policy code never reads a clock itself, and the one way a
//! flag or environment variable spells a duration (`parse_duration`, `format_duration`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::Millis;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, crate::policy::millis)
}

/// A flag value that is not a duration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{value:?} is not a duration ({source}): use e.g. 1500ms, 30s, 15m, 1h or 2d")]
pub struct DurationSyntaxError {
    value: String,
    #[source]
    source: humantime::DurationError,
}

/// Parses a duration flag in humantime's syntax (`1500ms`, `30s`, `15m`, `1h`, `2d`, `1h 30m`,
/// `1.5s`). A bare number is seconds, as the fleet's flags have always read it.
pub fn parse_duration(value: &str) -> Result<Duration, DurationSyntaxError> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(value).map_err(|source| DurationSyntaxError {
        value: value.to_owned(),
        source,
    })
}

/// `d` as `parse_duration` reads it back (`30s`, `500ms`, `1h 30m`): flag defaults in `--help`.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        for bad in ["", "ms", "h", "-1s", "10 parsecs", "1h30"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn defaults_read_back() {
        for d in [
            Duration::from_millis(500),
            Duration::from_secs(30),
            Duration::from_secs(7 * 86_400),
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
    }
}
