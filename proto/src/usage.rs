//! Usage metering: per tenant and UTC day, the engine time (GPU-seconds on a GPU worker), images
//! and denoising steps of the jobs that succeeded, recorded inside the commit of each job
//! (`complete.lua`; `MemoryQueue::complete`) so a redelivered or repeated commit never counts
//! twice. Read back by `JobQueue::usage` for the admin API and `kontext usage`.

use serde::{Deserialize, Serialize};

use crate::job::Millis;

/// Milliseconds in a day.
pub const DAY_MS: Millis = 86_400_000;
/// Days of usage kept (each day's record expires this long after its last write).
pub const USAGE_RETENTION_DAYS: u32 = 400;
/// Longest range of days one read may cover.
pub const MAX_USAGE_DAYS: u32 = 400;

/// Days since 1970-01-01 (UTC) of `now`.
pub fn day_of(now: Millis) -> u32 {
    u32::try_from(now / DAY_MS).unwrap_or(u32::MAX)
}

/// One tenant's usage on one day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageRow {
    /// The UTC day, `YYYY-MM-DD`.
    pub day: String,
    pub tenant: String,
    /// Engine wall time of the tenant's succeeded jobs, in milliseconds (GPU time on a GPU
    /// worker).
    pub engine_ms: u64,
    /// Succeeded jobs (one image each).
    pub images: u64,
    /// Denoising steps those jobs asked for.
    pub steps: u64,
}

/// `YYYY-MM-DD` of a day number (days since 1970-01-01), by Howard Hinnant's `civil_from_days`.
pub fn day_name(day: u32) -> String {
    let z = i64::from(day) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The day number of `YYYY-MM-DD` (`days_from_civil`); `None` when it is not a valid date.
pub fn parse_day(s: &str) -> Option<u32> {
    let mut parts = s.split('-');
    let (y, m, d) = (
        parts.next()?.parse::<i64>().ok()?,
        parts.next()?.parse::<i64>().ok()?,
        parts.next()?.parse::<i64>().ok()?,
    );
    if parts.next().is_some() || s.len() != 10 || !(1..=12).contains(&m) || d < 1 {
        return None;
    }
    let y = y - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let day = era * 146_097 + doe - 719_468;
    let day = u32::try_from(day).ok()?;
    // Reject days past the month's end (2026-02-30) by the round trip.
    (day_name(day) == s).then_some(day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_trip_through_their_names() {
        assert_eq!(day_name(0), "1970-01-01");
        assert_eq!(day_of(1_764_892_800_000), 20_427);
        assert_eq!(day_name(20_427), "2025-12-05");
        assert_eq!(day_name(11_016), "2000-02-29");
        for day in [0, 59, 60, 11_016, 20_427, 30_000] {
            assert_eq!(parse_day(&day_name(day)), Some(day), "{day}");
        }
        for bad in [
            "2026-02-30",
            "2026-13-01",
            "2026-1-01",
            "20260101",
            "x",
            "1969-12-31",
        ] {
            assert_eq!(parse_day(bad), None, "{bad}");
        }
    }
}
