//! Throughput and latency per UTC minute (docs/queue-protocol.md §Throughput history): the
//! commit of each job (`complete.lua`) and each terminal failure (`fail.lua`, and the reaper's
//! dead-lettering) count it in its minute, after the epoch checks, so a repeated call never
//! counts twice; a succeeded job's latency (submit → commit) goes into a fixed histogram of
//! log-spaced buckets, from which percentiles are read. Each minute's record expires after
//! `MINUTE_TTL_S`, so what is kept is bounded whatever the load. Time is always the caller's
//! `now`.

use serde::{Deserialize, Serialize};

use crate::job::Millis;

/// Milliseconds in a minute.
pub const MINUTE_MS: Millis = 60_000;
/// Minutes `JobQueue::throughput` returns (the current one included).
pub const HISTORY_MINUTES: u64 = 60;
/// How long a minute's counts are kept (prelude.lua `THROUGHPUT_TTL_S`).
pub const MINUTE_TTL_S: u64 = 3 * 3_600;
/// Upper bounds (ms, inclusive) of the latency buckets, a 1-2-5 series from 100 ms to about
/// 33 minutes; one more bucket holds everything longer. prelude.lua has the same list (a test
/// checks).
pub const LATENCY_BOUNDS_MS: [u64; 14] = [
    100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000,
    1_000_000, 2_000_000,
];
/// Buckets of the histogram: one per bound plus the overflow.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// The minute (since the Unix epoch) of `now`.
pub fn minute_of(now: Millis) -> u64 {
    now / MINUTE_MS
}

/// The bucket of a latency: the first whose bound it does not pass.
pub fn latency_bucket(ms: u64) -> usize {
    LATENCY_BOUNDS_MS
        .iter()
        .position(|b| ms <= *b)
        .unwrap_or(LATENCY_BOUNDS_MS.len())
}

/// The `q` quantile (0 < q ≤ 1) of a histogram, as the upper bound of the bucket that holds
/// it; the overflow bucket reads as the last bound (the true value is longer). `None` without
/// samples.
pub fn percentile(buckets: &[u64; LATENCY_BUCKETS], q: f64) -> Option<u64> {
    let n: u64 = buckets.iter().sum();
    if n == 0 {
        return None;
    }
    // The rank of the quantile, 1-based: at least 1, at most n.
    let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
    let mut seen = 0;
    for (i, count) in buckets.iter().enumerate() {
        seen += count;
        if seen >= rank {
            let last = LATENCY_BOUNDS_MS.len() - 1;
            return Some(LATENCY_BOUNDS_MS[i.min(last)]);
        }
    }
    None
}

/// What one minute counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MinuteCounts {
    /// Minutes since the Unix epoch.
    pub minute: u64,
    /// Jobs committed in that minute.
    pub succeeded: u64,
    /// Jobs that ended `failed` or `dead` in that minute.
    pub failed: u64,
    /// Latencies (submit → commit) of the succeeded ones, by `latency_bucket`.
    pub latency: [u64; LATENCY_BUCKETS],
}

/// One minute as the queue overview shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MinuteSummary {
    /// Start of the minute (ms since the epoch).
    pub minute_start: Millis,
    pub succeeded: u64,
    pub failed: u64,
    /// Latency percentiles of the succeeded jobs (ms; bucket upper bounds), absent without any.
    pub p50_ms: Option<u64>,
    pub p95_ms: Option<u64>,
    pub p99_ms: Option<u64>,
}

/// The last `HISTORY_MINUTES` minutes and their totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ThroughputSummary {
    /// Oldest first; the last is the current (partial) minute.
    pub minutes: Vec<MinuteSummary>,
    /// The whole span: counts summed, percentiles of the summed histograms.
    pub hour: MinuteSummary,
}

fn summary(
    minute_start: Millis,
    succeeded: u64,
    failed: u64,
    h: &[u64; LATENCY_BUCKETS],
) -> MinuteSummary {
    MinuteSummary {
        minute_start,
        succeeded,
        failed,
        p50_ms: percentile(h, 0.50),
        p95_ms: percentile(h, 0.95),
        p99_ms: percentile(h, 0.99),
    }
}

/// Per-minute and whole-span summaries of `minutes` (oldest first).
pub fn summarize(minutes: &[MinuteCounts]) -> ThroughputSummary {
    let mut total = [0u64; LATENCY_BUCKETS];
    let (mut ok, mut failed) = (0, 0);
    let per_minute = minutes
        .iter()
        .map(|m| {
            for (t, c) in total.iter_mut().zip(m.latency) {
                *t += c;
            }
            ok += m.succeeded;
            failed += m.failed;
            summary(m.minute * MINUTE_MS, m.succeeded, m.failed, &m.latency)
        })
        .collect();
    let start = minutes.first().map_or(0, |m| m.minute * MINUTE_MS);
    ThroughputSummary {
        minutes: per_minute,
        hour: summary(start, ok, failed, &total),
    }
}

/// The minutes `JobQueue::throughput` covers at `now`, oldest first.
pub fn window(now: Millis) -> std::ops::RangeInclusive<u64> {
    let last = minute_of(now);
    last.saturating_sub(HISTORY_MINUTES - 1)..=last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_log_spaced_and_inclusive() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(100), 0);
        assert_eq!(latency_bucket(101), 1);
        assert_eq!(latency_bucket(4_999), 5);
        assert_eq!(latency_bucket(2_000_000), 13);
        assert_eq!(latency_bucket(2_000_001), 14);
        assert!(LATENCY_BOUNDS_MS.windows(2).all(|w| w[1] > w[0]));
    }

    #[test]
    fn percentiles_read_the_bucket_holding_the_rank() {
        let mut h = [0u64; LATENCY_BUCKETS];
        assert_eq!(percentile(&h, 0.5), None);
        // 90 fast (≤ 1 s), 9 at ≤ 10 s, 1 overflowing.
        h[latency_bucket(800)] = 90;
        h[latency_bucket(9_000)] = 9;
        h[latency_bucket(10_000_000)] = 1;
        assert_eq!(percentile(&h, 0.50), Some(1_000));
        assert_eq!(percentile(&h, 0.90), Some(1_000));
        assert_eq!(percentile(&h, 0.95), Some(10_000));
        assert_eq!(percentile(&h, 0.99), Some(10_000));
        assert_eq!(
            percentile(&h, 1.0),
            Some(2_000_000),
            "overflow reads as the last bound"
        );
    }

    #[test]
    fn the_hour_sums_its_minutes() {
        let mut a = MinuteCounts {
            minute: 10,
            succeeded: 2,
            failed: 1,
            ..MinuteCounts::default()
        };
        a.latency[latency_bucket(150)] = 2;
        let mut b = MinuteCounts {
            minute: 11,
            succeeded: 2,
            ..MinuteCounts::default()
        };
        b.latency[latency_bucket(40_000)] = 2;
        let s = summarize(&[a, b]);
        assert_eq!(s.minutes.len(), 2);
        assert_eq!(s.minutes[1].minute_start, 11 * MINUTE_MS);
        assert_eq!(
            (s.minutes[0].p50_ms, s.minutes[1].p99_ms),
            (Some(200), Some(50_000))
        );
        assert_eq!((s.hour.succeeded, s.hour.failed), (4, 1));
        assert_eq!((s.hour.p50_ms, s.hour.p95_ms), (Some(200), Some(50_000)));
        assert_eq!(s.hour.minute_start, 10 * MINUTE_MS);
        assert_eq!(window(59 * MINUTE_MS + 5).count(), HISTORY_MINUTES as usize);
        assert_eq!(*window(100 * MINUTE_MS).end(), 100);
    }
}
