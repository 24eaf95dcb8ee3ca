//! Baseline health: a comparison with the baseline is evidence about the canary only while
//! the baseline itself works. Pure: the machine ([`super::machine`]) and the runner use the
//! same assessment, the runner to leave unhealthy windows out of the comparative judges, the
//! machine to hold instead of advancing or promoting.
//!
//! The rule (README, "How decisions are made"): the baseline is *unhealthy* when its error
//! rate over its most recent requests is shown to exceed `[rollout] baseline_max_error_rate`
//! (b). "Shown" is a Chernoff bound: with p̂ = e/n over the newest windows holding at least
//! [`POOL_REQUESTS`] baseline requests (or all of the last [`RECENT_WINDOWS`]), the baseline
//! is unhealthy when p̂ > b and n·KL(p̂ ‖ b) ≥ ln(1/δ), δ = [`DELTA`]. For a baseline whose
//! true error rate is at most b, P(p̂ ≥ q) ≤ exp(−n·KL(q ‖ b)) for every q > b
//! (Chernoff–Hoeffding), so a healthy baseline is called unhealthy at a given tick with
//! probability at most δ, however many requests it serves; a dead baseline (every request
//! failing) is recognised after ⌈ln(1/δ) / ln(1/b)⌉ requests (3 at the defaults).

use serde::Serialize;

/// Probability bound of calling a baseline at the limit unhealthy at one tick.
pub const DELTA: f64 = 1e-3;
/// Baseline requests pooled (newest windows first) before the rule looks.
pub const POOL_REQUESTS: f64 = 20.0;
/// Windows of baseline counts kept for pooling.
pub const RECENT_WINDOWS: usize = 16;

/// The baseline's error counts in one window, from a metric that counts errors.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ErrorCounts {
    /// The metric they come from.
    pub metric: String,
    /// Failed requests.
    pub errors: f64,
    /// All requests.
    pub requests: f64,
}

/// What the assessment found.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Health {
    /// No error counts for the baseline (the policy has no metric counting errors, or the
    /// window had none).
    Unknown,
    /// Not shown to exceed the limit.
    Healthy {
        /// Errors over the pooled requests.
        errors: f64,
        /// Pooled requests.
        requests: f64,
    },
    /// Shown to exceed the limit: comparisons are not trusted.
    Unhealthy {
        /// Errors over the pooled requests.
        errors: f64,
        /// Pooled requests.
        requests: f64,
        /// The limit.
        limit: f64,
        /// The metric of the newest counts.
        metric: String,
    },
}

impl Health {
    /// Whether comparisons are not to be trusted.
    #[must_use]
    pub fn is_unhealthy(&self) -> bool {
        matches!(self, Health::Unhealthy { .. })
    }

    /// "baseline unhealthy: 100.0% errors (95 of 95 recent requests, metric `errors`), limit 10%".
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Health::Unknown => "baseline health unknown (no error counts)".to_string(),
            Health::Healthy { errors, requests } => format!(
                "baseline healthy: {} errors ({errors:.0} of {requests:.0} recent requests)",
                pct(errors / requests.max(1.0))
            ),
            Health::Unhealthy {
                errors,
                requests,
                limit,
                metric,
            } => format!(
                "baseline unhealthy: {} errors ({errors:.0} of {requests:.0} recent requests, metric `{metric}`) above baseline_max_error_rate {}",
                pct(errors / requests.max(1.0)),
                pct(*limit)
            ),
        }
    }
}

fn pct(x: f64) -> String {
    let p = x * 100.0;
    if p >= 10.0 || p == 0.0 {
        format!("{p:.0}%")
    } else {
        format!("{p:.1}%")
    }
}

/// Kullback-Leibler divergence of Bernoulli(p) from Bernoulli(q), for 0 < q < 1.
fn kl(p: f64, q: f64) -> f64 {
    let term = |a: f64, b: f64| if a > 0.0 { a * (a / b).ln() } else { 0.0 };
    term(p, q) + term(1.0 - p, 1.0 - q)
}

/// Assesses the baseline over `recent` counts `[errors, requests]`, newest last, against
/// `limit` (`baseline_max_error_rate`); `metric` names the newest counts' metric.
#[must_use]
pub fn assess(recent: &[[f64; 2]], limit: f64, metric: &str) -> Health {
    let (mut errors, mut requests) = (0.0, 0.0);
    for [e, n] in recent.iter().rev() {
        errors += e.max(0.0);
        requests += n.max(0.0);
        if requests >= POOL_REQUESTS {
            break;
        }
    }
    if requests <= 0.0 {
        return Health::Unknown;
    }
    // Counts from PromQL's increase() may be fractional or slightly inconsistent.
    let errors = errors.min(requests);
    let rate = errors / requests;
    if limit < 1.0 && rate > limit && requests * kl(rate, limit) >= (1.0 / DELTA).ln() {
        Health::Unhealthy {
            errors,
            requests,
            limit,
            metric: metric.to_string(),
        }
    } else {
        Health::Healthy { errors, requests }
    }
}

/// Appends a window's counts to `recent`, keeping the last [`RECENT_WINDOWS`].
pub fn remember(recent: &mut Vec<[f64; 2]>, counts: &ErrorCounts) {
    if !(counts.requests.is_finite() && counts.errors.is_finite()) {
        return;
    }
    recent.push([counts.errors, counts.requests]);
    if recent.len() > RECENT_WINDOWS {
        let extra = recent.len() - RECENT_WINDOWS;
        recent.drain(..extra);
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn a_dead_baseline_is_unhealthy_after_three_requests() {
        assert_eq!(
            assess(&[[2.0, 2.0]], 0.1, "e"),
            Health::Healthy {
                errors: 2.0,
                requests: 2.0
            }
        );
        assert!(assess(&[[3.0, 3.0]], 0.1, "e").is_unhealthy());
        // Pooled over windows when each holds few requests.
        assert!(assess(&[[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]], 0.1, "e").is_unhealthy());
        assert!(assess(&[[950.0, 950.0]], 0.1, "e").is_unhealthy());
    }

    #[test]
    fn recent_windows_are_what_counts() {
        // A dead window after many healthy ones: the newest window alone holds enough
        // requests, so the old ones do not dilute it.
        let mut recent = vec![[1.0, 500.0]; 10];
        recent.push([400.0, 400.0]);
        assert!(assess(&recent, 0.1, "e").is_unhealthy());
        // Recovery is seen at once, too.
        recent.push([2.0, 400.0]);
        assert!(!assess(&recent, 0.1, "e").is_unhealthy());
        assert_eq!(assess(&[], 0.1, "e"), Health::Unknown);
        assert_eq!(assess(&[[0.0, 0.0]], 0.1, "e"), Health::Unknown);
    }

    #[test]
    fn limit_one_turns_the_check_off_and_bad_input_does_not_panic() {
        assert!(!assess(&[[1000.0, 1000.0]], 1.0, "e").is_unhealthy());
        assert!(!assess(&[[f64::NAN, 10.0]], 0.1, "e").is_unhealthy());
        assert!(
            assess(&[[12.0, 10.0]], 0.1, "e").is_unhealthy(),
            "errors capped at requests"
        );
        let mut r = Vec::new();
        remember(
            &mut r,
            &ErrorCounts {
                metric: "e".into(),
                errors: f64::NAN,
                requests: 1.0,
            },
        );
        assert!(r.is_empty());
        for i in 0..40 {
            remember(
                &mut r,
                &ErrorCounts {
                    metric: "e".into(),
                    errors: 0.0,
                    requests: f64::from(i),
                },
            );
        }
        assert_eq!(r.len(), RECENT_WINDOWS);
        assert_eq!(r[RECENT_WINDOWS - 1], [0.0, 39.0]);
    }

    #[test]
    fn a_baseline_at_the_limit_is_rarely_called_unhealthy() {
        // A/A of the rule at its worst case: a baseline erring exactly at the limit, windows
        // of 1 to 2000 requests. The per-tick rate of false calls must stay below δ (with
        // room for the simulation's own noise: 20 000 ticks, δ = 0.001, so at most ~2×δ).
        let mut rng = SmallRng::seed_from_u64(7);
        let limit = 0.1;
        let ticks = 20_000;
        let mut recent: Vec<[f64; 2]> = Vec::new();
        let mut flagged = 0;
        for t in 0..ticks {
            let n = [1u32, 5, 20, 200, 2000][t % 5];
            let e = (0..n).filter(|_| rng.random::<f64>() < limit).count() as f64;
            remember(
                &mut recent,
                &ErrorCounts {
                    metric: "e".into(),
                    errors: e,
                    requests: f64::from(n),
                },
            );
            if assess(&recent, limit, "e").is_unhealthy() {
                flagged += 1;
            }
        }
        let rate = f64::from(flagged) / ticks as f64;
        assert!(rate <= 2.0 * DELTA, "false unhealthy rate {rate}");
    }
}
