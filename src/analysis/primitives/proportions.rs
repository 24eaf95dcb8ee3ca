//! Two-proportion tests on error counts (statistics.md §3.3): the pooled z test and R's
//! `prop.test` (Pearson's X² with Yates' continuity correction).
//!
//! `x` is the canary: z > 0 and `greater` mean the canary's error rate is higher.

use serde::Serialize;

use crate::analysis::mann_whitney::Alternative;
use crate::analysis::special::{norm_cdf, norm_sf};

/// Events out of trials for one arm.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Proportion {
    /// Events (errors).
    pub events: f64,
    /// Trials (requests).
    pub trials: f64,
}

impl Proportion {
    /// Checks `0 ≤ events ≤ trials`, `trials > 0`, all finite.
    #[must_use]
    pub fn try_new(events: f64, trials: f64) -> Option<Self> {
        (events.is_finite()
            && trials.is_finite()
            && events >= 0.0
            && trials > 0.0
            && events <= trials)
            .then_some(Self { events, trials })
    }

    fn rate(self) -> f64 {
        self.events / self.trials
    }
}

/// A test statistic with its p-value.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct TestResult {
    /// z for the pooled z test, X² for `prop.test`.
    pub statistic: f64,
    /// The p-value for the chosen alternative (NaN when the pooled rate is 0 or 1).
    pub p_value: f64,
}

fn p_from_z(z: f64, alternative: Alternative) -> f64 {
    if z.is_nan() {
        return f64::NAN;
    }
    match alternative {
        Alternative::Greater => norm_sf(z),
        Alternative::Less => norm_cdf(z),
        Alternative::TwoSided => (2.0 * norm_sf(z.abs())).min(1.0),
    }
}

/// Pooled two-proportion z test: z = (p̂_c − p̂_b)/sqrt(p̄(1−p̄)(1/n_c + 1/n_b)).
#[must_use]
pub fn pooled_z(canary: Proportion, baseline: Proportion, alternative: Alternative) -> TestResult {
    let pooled = (canary.events + baseline.events) / (canary.trials + baseline.trials);
    let se = (pooled * (1.0 - pooled) * (1.0 / canary.trials + 1.0 / baseline.trials)).sqrt();
    let z = (canary.rate() - baseline.rate()) / se;
    TestResult {
        statistic: z,
        p_value: p_from_z(z, alternative),
    }
}

/// R's `prop.test(c(x_c, x_b), c(n_c, n_b), correct = correct)`: X² against the pooled
/// rate, Yates' correction min(½, |p̂_c − p̂_b|/(1/n_c + 1/n_b)); one-sided p-values from
/// z = sign(p̂_c − p̂_b)·sqrt(X²), as R.
#[must_use]
pub fn prop_test(
    canary: Proportion,
    baseline: Proportion,
    alternative: Alternative,
    correct: bool,
) -> TestResult {
    let pooled = (canary.events + baseline.events) / (canary.trials + baseline.trials);
    let delta = canary.rate() - baseline.rate();
    let yates = if correct {
        0.5f64.min(delta.abs() / (1.0 / canary.trials + 1.0 / baseline.trials))
    } else {
        0.0
    };
    let mut x2 = 0.0;
    for arm in [canary, baseline] {
        for (observed, expected) in [
            (arm.events, arm.trials * pooled),
            (arm.trials - arm.events, arm.trials * (1.0 - pooled)),
        ] {
            x2 += ((observed - expected).abs() - yates).powi(2) / expected;
        }
    }
    let p_value = match alternative {
        // X² with one degree of freedom: P(χ²₁ > X²) = 2·Φ(−sqrt(X²)).
        Alternative::TwoSided => p_from_z(x2.sqrt(), alternative),
        alt => p_from_z(delta.signum() * x2.sqrt(), alt),
    };
    TestResult {
        statistic: x2,
        p_value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_md_vectors() {
        // statistics.md §3.3: 12/1000 (baseline) vs 30/1000 (canary).
        let c = Proportion::try_new(30.0, 1000.0).unwrap();
        let b = Proportion::try_new(12.0, 1000.0).unwrap();
        let z = pooled_z(c, b, Alternative::Greater);
        assert!((z.statistic - 2.807_091).abs() < 5e-7, "{z:?}");
        assert!((z.p_value - 0.002_499_55).abs() < 5e-9, "{z:?}");
        let t = prop_test(c, b, Alternative::TwoSided, true);
        assert!((t.statistic - 7.028_552).abs() < 5e-7, "{t:?}");
        assert!((t.p_value - 0.008_022_02).abs() < 5e-9, "{t:?}");
        // One-sided halves the two-sided p in the direction of the effect.
        let g = prop_test(c, b, Alternative::Greater, true);
        assert!((g.p_value - t.p_value / 2.0).abs() < 1e-12);
    }

    #[test]
    fn invalid_counts_are_rejected() {
        assert!(Proportion::try_new(5.0, 4.0).is_none());
        assert!(Proportion::try_new(0.0, 0.0).is_none());
        assert!(Proportion::try_new(f64::NAN, 4.0).is_none());
        let zero = Proportion::try_new(0.0, 10.0).unwrap();
        assert!(pooled_z(zero, zero, Alternative::TwoSided).p_value.is_nan());
        assert!(
            prop_test(zero, zero, Alternative::Less, true)
                .p_value
                .is_nan()
        );
    }
}
