//! Welch's t test (unequal variances) with Welch-Satterthwaite degrees of freedom, as scipy
//! `ttest_ind(x, y, equal_var=False)` (statistics.md §3.3). Use on log-latency if at all.

use serde::Serialize;
use statrs::distribution::{ContinuousCDF, StudentsT};

use crate::analysis::mann_whitney::Alternative;

/// Result of Welch's t test.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Welch {
    /// t = (x̄_c − x̄_b)/sqrt(s_c²/n_c + s_b²/n_b).
    pub t: f64,
    /// Welch-Satterthwaite degrees of freedom.
    pub df: f64,
    /// The p-value for the chosen alternative (NaN when both variances are 0).
    pub p_value: f64,
    /// x̄_c − x̄_b.
    pub mean_difference: f64,
}

fn mean_var(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let ss: f64 = v.iter().map(|x| (x - mean).powi(2)).sum();
    (mean, ss / (n - 1.0))
}

/// Welch's t test of `canary` against `baseline`; `None` unless each arm has at least two
/// values. Non-finite values propagate into NaN results rather than panicking.
#[must_use]
pub fn welch(canary: &[f64], baseline: &[f64], alternative: Alternative) -> Option<Welch> {
    if canary.len() < 2 || baseline.len() < 2 {
        return None;
    }
    let (m1, v1) = mean_var(canary);
    let (m2, v2) = mean_var(baseline);
    let (a, b) = (v1 / canary.len() as f64, v2 / baseline.len() as f64);
    let t = (m1 - m2) / (a + b).sqrt();
    let df = (a + b).powi(2)
        / (a * a / (canary.len() as f64 - 1.0) + b * b / (baseline.len() as f64 - 1.0));
    let p_value = StudentsT::new(0.0, 1.0, df).map_or(f64::NAN, |d| {
        if t.is_nan() {
            return f64::NAN;
        }
        match alternative {
            Alternative::Greater => d.sf(t),
            Alternative::Less => d.cdf(t),
            Alternative::TwoSided => (2.0 * d.sf(t.abs())).min(1.0),
        }
    });
    Some(Welch {
        t,
        df,
        p_value,
        mean_difference: m1 - m2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_example() {
        // x̄ = 3, s² = 2.5 (n 5); ȳ = 1.5, s² = 1.666… (n 4): t = 1.5/sqrt(0.5 + 0.41666…).
        let r = welch(
            &[1.0, 2.0, 3.0, 4.0, 5.0],
            &[0.0, 1.0, 2.0, 3.0],
            Alternative::TwoSided,
        );
        let r = r.unwrap();
        let se2: f64 = 0.5 + 5.0 / 12.0;
        assert!((r.t - 1.5 / se2.sqrt()).abs() < 1e-12);
        let df = se2 * se2 / (0.25 / 4.0 + (5.0f64 / 12.0).powi(2) / 3.0);
        assert!((r.df - df).abs() < 1e-12);
        assert!(r.p_value > 0.1 && r.p_value < 0.2, "{r:?}");
        let g = welch(
            &[1.0, 2.0, 3.0, 4.0, 5.0],
            &[0.0, 1.0, 2.0, 3.0],
            Alternative::Greater,
        );
        assert!((g.unwrap().p_value - r.p_value / 2.0).abs() < 1e-12);
    }

    #[test]
    fn degenerate_inputs() {
        assert!(welch(&[1.0], &[1.0, 2.0], Alternative::TwoSided).is_none());
        let r = welch(&[1.0, 1.0], &[2.0, 2.0], Alternative::TwoSided).unwrap();
        assert!(r.p_value.is_nan() || r.p_value == 0.0);
        let r = welch(&[f64::INFINITY, 1.0], &[2.0, 3.0], Alternative::TwoSided).unwrap();
        assert!(r.p_value.is_nan());
    }
}
