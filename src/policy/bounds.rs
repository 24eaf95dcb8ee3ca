//! Duration arithmetic that cannot overflow, and the bounds every policy duration is held to.
//!
//! Every place that combines policy durations (defaults such as the deadline = 3 × the
//! analysed steps, budgets, timeouts plus slack) goes through [`times`] and [`plus`], which
//! saturate at [`MAX`] instead of panicking. Each duration key has a [`Bound`] whose
//! message says why a value outside it is refused, so a typo (`"3100000000000000000s"`) or a
//! harmful value (`analysis_interval = "1ns"`) is a validation error, never a panic or a
//! decision log filling the disk.

use std::time::Duration;

/// Longest duration any policy key may hold, and where the arithmetic saturates: 30 days.
pub const MAX: Duration = Duration::from_secs(30 * 24 * 3600);

/// `d × n`, saturating at [`MAX`].
#[must_use]
pub fn times(d: Duration, n: u64) -> Duration {
    u32::try_from(n)
        .ok()
        .and_then(|n| d.checked_mul(n))
        .map_or(MAX, |p| p.min(MAX))
}

/// `a + b`, saturating at [`MAX`].
#[must_use]
pub fn plus(a: Duration, b: Duration) -> Duration {
    a.checked_add(b).map_or(MAX, |s| s.min(MAX))
}

/// `d` rounded up to a whole number of `tick`s (a step ends at the first tick at or after
/// its duration); `d` itself when `tick` is zero.
#[must_use]
pub fn round_up(d: Duration, tick: Duration) -> Duration {
    if tick.is_zero() {
        return d.min(MAX);
    }
    let n = d.as_nanos().div_ceil(tick.as_nanos());
    times(tick, u64::try_from(n).unwrap_or(u64::MAX))
}

/// The range a duration key accepts, with the reason for each end.
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    /// The key, as written in a policy.
    pub key: &'static str,
    /// Smallest accepted value.
    pub min: Duration,
    /// Why smaller values are refused.
    pub why_min: &'static str,
    /// Largest accepted value.
    pub max: Duration,
    /// Why larger values are refused.
    pub why_max: &'static str,
}

const TYPO: &str = "longer values are typos (a missing or wrong unit), not rollouts";

impl Bound {
    /// A key accepting any positive value up to [`MAX`].
    #[must_use]
    pub const fn positive(key: &'static str) -> Self {
        Bound {
            key,
            min: Duration::from_nanos(1),
            why_min: "zero would never wait",
            max: MAX,
            why_max: TYPO,
        }
    }

    /// A time limit of one call (a provider command, a request, a hook): 10 ms to 1 h.
    #[must_use]
    pub const fn timeout(key: &'static str) -> Self {
        Bound {
            key,
            min: Duration::from_millis(10),
            why_min: "a shorter limit fails even a healthy call on a busy host",
            max: Duration::from_secs(3600),
            why_max: "a call still hanging after an hour holds the rollout (and a rollback) hostage",
        }
    }

    /// The problem with `d`, if it is outside the bound.
    #[must_use]
    pub fn check(&self, d: Duration) -> Option<String> {
        let f = humantime::format_duration;
        if d < self.min {
            Some(format!(
                "{} must be at least {}, got {}: {}",
                self.key,
                f(self.min),
                f(d),
                self.why_min
            ))
        } else if d > self.max {
            Some(format!(
                "{} must be at most {}, got {}: {}",
                self.key,
                f(self.max),
                f(d),
                self.why_max
            ))
        } else {
            None
        }
    }
}

/// `[rollout] analysis_interval`.
pub const ANALYSIS_INTERVAL: Bound = Bound {
    key: "analysis_interval",
    min: Duration::from_millis(100),
    why_min: "each tick writes an fsync'd decision record and queries every metric: ten a \
              second is already more than a disk and a metrics source should be asked for",
    max: Duration::from_secs(3600),
    why_max: "a failing canary would run for longer than that before it is judged",
};

/// `[rollout] step_duration`.
pub const STEP_DURATION: Bound = Bound {
    key: "step_duration",
    min: Duration::from_secs(1),
    why_min: "a step needs at least one analysis tick (analysis_interval is at least 100ms)",
    max: Duration::from_secs(7 * 24 * 3600),
    why_max: "a step held for more than a week is a release left half-done, not a canary",
};

/// `[rollout] deadline`.
pub const DEADLINE: Bound = Bound {
    key: "deadline",
    min: Duration::from_secs(1),
    why_min: "the rollout needs time for at least one tick",
    max: MAX,
    why_max: TYPO,
};

/// `[rollout] apply_timeout`.
pub const APPLY_TIMEOUT: Bound = Bound {
    key: "apply_timeout",
    min: Duration::from_millis(100),
    why_min: "a proxy reload or an API call takes longer than that",
    max: Duration::from_secs(600),
    why_max: "a rollback waits this long for each attempt before it is reported as failed",
};

/// `[metrics] series_step`.
pub const SERIES_STEP: Bound = Bound {
    key: "series_step",
    min: Duration::from_secs(1),
    why_min: "finer steps return more points per window than Prometheus serves (11,000 per \
              series) and repeat the same scraped samples",
    max: Duration::from_secs(3600),
    why_max: "a window holds at most one analysis interval (at most 1h)",
};

/// Latency `thresholds` of a sequential metric.
pub const LATENCY_THRESHOLD: Bound = Bound {
    key: "thresholds",
    min: Duration::from_nanos(1),
    why_min: "a threshold of zero counts every request as slow",
    max: Duration::from_secs(3600),
    why_max: "no request is judged slow only after an hour",
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let huge = Duration::from_secs(3_100_000_000_000_000_000);
        assert_eq!(times(huge, 3), MAX);
        assert_eq!(times(Duration::from_secs(1), u64::MAX), MAX);
        assert_eq!(times(Duration::from_secs(2), 3), Duration::from_secs(6));
        assert_eq!(plus(Duration::MAX, Duration::MAX), MAX);
        assert_eq!(
            plus(Duration::from_secs(1), Duration::from_secs(2)),
            Duration::from_secs(3)
        );
        let (sd, ai) = (Duration::from_secs(25), Duration::from_secs(10));
        assert_eq!(round_up(sd, ai), Duration::from_secs(30));
        assert_eq!(round_up(ai, ai), ai);
        assert_eq!(round_up(huge, Duration::from_nanos(1)), MAX);
        assert_eq!(round_up(sd, Duration::ZERO), sd);
    }

    #[test]
    fn bounds_say_why() {
        let m = ANALYSIS_INTERVAL.check(Duration::from_nanos(1)).unwrap();
        assert_eq!(
            m,
            "analysis_interval must be at least 100ms, got 1ns: each tick writes an fsync'd \
             decision record and queries every metric: ten a second is already more than a \
             disk and a metrics source should be asked for"
        );
        assert!(ANALYSIS_INTERVAL.check(Duration::from_secs(15)).is_none());
        assert!(
            DEADLINE
                .check(Duration::from_secs(3_100_000_000_000_000_000))
                .unwrap()
                .starts_with("deadline must be at most 30days, got ")
        );
    }
}
