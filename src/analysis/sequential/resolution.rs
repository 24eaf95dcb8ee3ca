//! Histogram resolution: how finely a bucketed latency distribution can express an allowed
//! slowdown (statistics.md §2.2.1).
//!
//! A latency test with an allowed slowdown m compares the canary's requests slower than a
//! canary bound with the baseline's requests slower than a threshold τ. Rounding the canary
//! bound *up* to the next bucket keeps the false-rollback guarantee but silently tolerates a
//! slowdown of up to the bucket ratio: with buckets doubling at each bound, "up to 10 %
//! slower" behaved like "up to 2× slower". coalmine rounds *down* instead: the canary bound
//! is the largest bucket bound at most m·τ, so the test judges at the largest margin m' ≤ m
//! the buckets can represent (m' ≥ 1, since τ is itself a bound: the A/A guarantee holds).
//! Where m' < m the verdict, the decision record and `validate --preflight` say so.

use crate::analysis::fmt;

/// Margins (relative to the allowed ratio) at which a latency test also runs, for the lower
/// confidence bound a Fail reports (statistics.md §2.4.1); the first is the policy's own.
pub const LADDER: [f64; 6] = [1.0, 1.1, 1.25, 1.5, 2.0, 3.0];

/// What a latency e-process run at every [`LADDER`] margin has shown so far: the running
/// maximum of its log e-value and the smallest margin judged at, per ladder step, and where
/// the policy's own margin was resolved most coarsely. Both latency tests keep one.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Ladder {
    max_log_e: Vec<f64>,
    effective: Vec<f64>,
    coarsest: Option<Resolved>,
}

impl Default for Ladder {
    fn default() -> Self {
        Ladder {
            max_log_e: vec![0.0; LADDER.len()],
            effective: vec![f64::INFINITY; LADDER.len()],
            coarsest: None,
        }
    }
}

impl Ladder {
    /// Records that step `n` judged at `r` (the coarsest is kept for the policy's margin).
    pub fn judged(&mut self, n: usize, r: Resolved) {
        self.effective[n] = self.effective[n].min(r.ratio);
        if n == 0 {
            self.coarsest = coarsest(self.coarsest.into_iter().chain([r]));
        }
    }

    /// Records step `n`'s log e-value after a window.
    pub fn looked(&mut self, n: usize, log_e: f64) {
        self.max_log_e[n] = self.max_log_e[n].max(log_e);
    }

    /// Running maximum of the log e-value, per ladder step.
    #[must_use]
    pub fn max_log_e(&self) -> &[f64] {
        &self.max_log_e
    }

    /// Smallest judged-at margin so far, per ladder step (∞ before the first).
    #[must_use]
    pub fn effective(&self) -> &[f64] {
        &self.effective
    }

    /// Where the policy's margin was resolved most coarsely.
    #[must_use]
    pub fn coarsest(&self) -> Option<Resolved> {
        self.coarsest
    }
}

/// Relative tolerance when comparing a margin times a bound with another bound.
const TOL: f64 = 1e-9;

/// Index of the largest finite bound at most `m · bounds[i]`: the canary's bound for the
/// baseline threshold `bounds[i]` at margin `m ≥ 1` (never looser than `m`). Returns `i`
/// when `m ≤ 1` or when `bounds[i]` is not finite.
#[must_use]
pub fn canary_bound(bounds: &[f64], i: usize, m: f64) -> usize {
    let Some(&tau) = bounds.get(i) else {
        return i;
    };
    if !tau.is_finite() || !(m > 1.0) {
        return i;
    }
    let limit = m * tau * (1.0 + TOL);
    let mut j = i;
    while j + 1 < bounds.len() && bounds[j + 1].is_finite() && bounds[j + 1] <= limit {
        j += 1;
    }
    j
}

/// The margin a test really judges at one threshold, and the bucket ratio there.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Resolved {
    /// The baseline threshold τ, seconds.
    pub at: f64,
    /// The canary bound divided by τ: the margin judged at (1 ≤ this ≤ the policy's).
    pub ratio: f64,
    /// The next bound above τ divided by τ (∞ above the last finite bound).
    pub gap: f64,
}

impl Resolved {
    /// The margin judged at threshold `bounds[i]` for the policy's margin `m`.
    #[must_use]
    pub fn at_threshold(bounds: &[f64], i: usize, m: f64) -> Self {
        let tau = bounds[i];
        let c = canary_bound(bounds, i, m);
        Resolved {
            at: tau,
            ratio: bounds[c] / tau,
            gap: bounds.get(i + 1).map_or(f64::INFINITY, |b| b / tau),
        }
    }

    /// `"allowed_ratio 1.1 is finer than the histogram's buckets (×2 at 20.0ms): judged at
    /// ×1.0"` when the buckets cannot represent `allowed`, else `None`.
    #[must_use]
    pub fn fail_note(&self, allowed: f64) -> Option<String> {
        (self.ratio < allowed * (1.0 - TOL)).then(|| {
            format!(
                "allowed_ratio {} is finer than the histogram's buckets (×{} at {}): judged at ×{}",
                fmt::num_short(allowed),
                fmt::num_short(self.gap),
                fmt::secs(self.at),
                fmt::num_short(self.ratio)
            )
        })
    }

    /// `"pass_ratio 1.25 is finer than the histogram's buckets (×2.0 at 20.0ms): only a
    /// canary faster than the baseline can pass"` when no bucket bound lies between τ and
    /// `pass`·τ, else `None`: a Pass shows the canary below a bucket bound under `pass`·τ.
    #[must_use]
    pub fn pass_note(&self, pass: f64) -> Option<String> {
        (self.gap.is_finite() && self.gap >= pass * (1.0 - TOL)).then(|| {
            format!(
                "pass_ratio {} is finer than the histogram's buckets (×{} at {}): only a canary faster than the baseline can pass",
                fmt::num_short(pass),
                fmt::num_short(self.gap),
                fmt::secs(self.at)
            )
        })
    }
}

/// The coarsest of several thresholds: the smallest judged-at margin (for the fail side),
/// ties broken by the widest gap.
#[must_use]
pub fn coarsest(items: impl IntoIterator<Item = Resolved>) -> Option<Resolved> {
    items.into_iter().min_by(|a, b| {
        a.ratio
            .total_cmp(&b.ratio)
            .then_with(|| b.gap.total_cmp(&a.gap))
    })
}

/// The widest gap among several thresholds (for the pass side).
#[must_use]
pub fn widest(items: impl IntoIterator<Item = Resolved>) -> Option<Resolved> {
    items
        .into_iter()
        .filter(|r| r.gap.is_finite())
        .max_by(|a, b| a.gap.total_cmp(&b.gap))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doubling() -> Vec<f64> {
        let mut b: Vec<f64> = (0..8).map(|i| 0.005 * 2f64.powi(i)).collect();
        b.push(f64::INFINITY);
        b
    }

    #[test]
    fn rounds_the_canary_bound_down() {
        let b = doubling();
        // τ = 20 ms (index 2): 1.1·τ = 22 ms is not a bound; the largest bound ≤ 22 ms is τ.
        assert_eq!(canary_bound(&b, 2, 1.1), 2);
        assert_eq!(canary_bound(&b, 2, 1.0), 2);
        // Exactly representable margins are kept (2·20 ms = 40 ms is a bound).
        assert_eq!(canary_bound(&b, 2, 2.0), 3);
        assert_eq!(canary_bound(&b, 2, 3.9), 3);
        assert_eq!(canary_bound(&b, 2, 4.0), 4);
        // Past the last finite bound: the last finite bound, never +∞.
        assert_eq!(canary_bound(&b, 7, 10.0), 7);
        assert_eq!(canary_bound(&b, 5, 100.0), 7);
        // Finer buckets resolve finer margins: built-in 2^(1/8) spacing.
        let fine = crate::analysis::histogram::log_bounds();
        let i = 80;
        let c = canary_bound(&fine, i, 1.1);
        assert_eq!(c, i + 1);
        assert!(fine[c] / fine[i] <= 1.1 && fine[c + 1] / fine[i] > 1.1);
    }

    #[test]
    fn notes_name_the_ratio_the_gap_and_the_margin() {
        let b = doubling();
        let r = Resolved::at_threshold(&b, 2, 1.1);
        assert_eq!(r.ratio, 1.0);
        assert_eq!(
            r.fail_note(1.1).unwrap(),
            "allowed_ratio 1.1 is finer than the histogram's buckets (×2.0 at 20.0ms): judged at ×1.0"
        );
        assert!(Resolved::at_threshold(&b, 2, 2.0).fail_note(2.0).is_none());
        assert!(r.pass_note(1.25).unwrap().contains("only a canary faster"));
        assert!(r.pass_note(2.5).is_none());
        let worst = coarsest([
            Resolved::at_threshold(&b, 2, 2.5),
            Resolved::at_threshold(&b, 3, 1.5),
        ])
        .unwrap();
        assert_eq!(worst.ratio, 1.0);
    }
}
