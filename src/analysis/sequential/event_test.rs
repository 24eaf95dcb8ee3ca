//! Anytime-valid tests on event counts (statistics.md §2.1).
//!
//! Given that an event (an error, or a request slower than a threshold) happened, it came
//! from the canary with probability θ = w·r / (1 − w + w·r), where `w` is the canary's
//! assignment probability and `r` the per-request rate ratio canary/baseline. Under H0
//! (r ≤ r0) each event is a coin flip with a known bias, whatever the shared load profile,
//! so the tests need only event counts per arm and the share in force.
//!
//! Two forms are implemented:
//! - [`beta_mixture`]: fixed share, conjugate Beta(k·w, k·(1−w)) mixture (Netflix's form);
//! - [`EventTest`]: varying shares, a grid mixture over δ = ln r in which every window of
//!   counts carries the share in force when its requests were routed. This is the default.

use serde::{Deserialize, Serialize};

use crate::analysis::special::{bisect, ln_beta, log_sum_exp, xlogy};

/// `ln σ(x)` = −ln(1 + e^{−x}), stable for all `x`.
fn ln_sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}

fn logit(w: f64) -> f64 {
    (w / (1.0 - w)).ln()
}

/// Probability that an event comes from the canary, for log rate ratio `delta` at share `w`.
#[must_use]
pub fn canary_event_probability(delta: f64, w: f64) -> f64 {
    ln_sigmoid(delta + logit(w)).exp()
}

/// Maps a canary-event probability θ at share `w` to the rate ratio r.
#[must_use]
pub fn ratio_from_theta(theta: f64, w: f64) -> f64 {
    theta / (1.0 - theta) * (1.0 - w) / w
}

/// Result of the fixed-share Beta-mixture test.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BetaMixture {
    /// Natural log of the Bayes factor (the e-value) against r = 1.
    pub log_e: f64,
    /// `min(1, 1/BF)`: an anytime-valid p-value at this look.
    pub p_value: f64,
    /// (1 − α) confidence-sequence interval for the rate ratio r at this look.
    pub ci_ratio: (f64, f64),
}

/// Fixed-share Beta-mixture test (statistics.md §2.1, first form).
///
/// `nb`, `nc`: baseline and canary events; `w`: canary share in (0, 1); `k`: prior
/// concentration (Netflix uses 100); `alpha`: level of the confidence sequence.
/// Returns `None` for a share outside (0, 1), a non-positive `k`, negative or non-finite
/// counts, or `alpha` outside (0, 1).
#[must_use]
pub fn beta_mixture(nb: f64, nc: f64, w: f64, k: f64, alpha: f64) -> Option<BetaMixture> {
    let valid = nb.is_finite()
        && nc.is_finite()
        && nb >= 0.0
        && nc >= 0.0
        && w > 0.0
        && w < 1.0
        && k > 0.0
        && k.is_finite()
        && alpha > 0.0
        && alpha < 1.0;
    if !valid {
        return None;
    }
    let (a0, b0) = (k * w, k * (1.0 - w));
    let log_marginal = ln_beta(a0 + nc, b0 + nb) - ln_beta(a0, b0);
    let log_e = log_marginal - xlogy(nc, w) - xlogy(nb, 1.0 - w);
    let p_value = (-log_e).exp().min(1.0);
    // CS: θ with nc·ln θ + nb·ln(1−θ) > ln α + log marginal likelihood.
    let target = alpha.ln() + log_marginal;
    let loglik = |t: f64| xlogy(nc, t) + xlogy(nb, 1.0 - t) - target;
    let n = nb + nc;
    let theta_hat = if n > 0.0 { nc / n } else { w };
    let eps = 1e-15;
    let lo = if nc == 0.0 {
        0.0
    } else {
        bisect(eps, theta_hat.clamp(eps, 1.0 - eps), 1e-14, loglik).unwrap_or(0.0)
    };
    let hi = if nb == 0.0 {
        1.0
    } else {
        bisect(theta_hat.clamp(eps, 1.0 - eps), 1.0 - eps, 1e-14, loglik).unwrap_or(1.0)
    };
    let to_r = |t: f64| {
        if t >= 1.0 {
            f64::INFINITY
        } else {
            ratio_from_theta(t, w)
        }
    };
    Some(BetaMixture {
        log_e,
        p_value,
        ci_ratio: (to_r(lo), to_r(hi)),
    })
}

/// A discrete prior over log rate ratios, used by [`EventTest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prior {
    /// Offsets Δ of ln r above the null boundary ln r0 (one-sided, all > 0).
    deltas: Vec<f64>,
    /// Natural logs of the prior weights (summing to 1).
    log_weights: Vec<f64>,
}

impl Prior {
    /// `n` points spaced geometrically in δ = ln r between ln `lo` and ln `hi` (both > 1),
    /// with equal weights. Spacing proportional to δ keeps the relative loss of growth rate
    /// from the nearest grid point the same at every effect size, so few points cover a wide
    /// range and the mixture pays only ln `n` for not knowing the effect.
    #[must_use]
    pub fn log_geometric(lo: f64, hi: f64, n: usize) -> Self {
        let n = n.max(1);
        let (a, b) = (lo.max(1.0 + 1e-6).ln(), hi.max(lo * (1.0 + 1e-6)).ln());
        let deltas: Vec<f64> = (0..n)
            .map(|i| {
                if n == 1 {
                    a
                } else {
                    a * (b / a).powf(i as f64 / (n - 1) as f64)
                }
            })
            .collect();
        Prior {
            log_weights: vec![-(n as f64).ln(); n],
            deltas,
        }
    }

    /// The default prior for error events: 7 ratios from 1.2 to 10 (1.2, 1.32, 1.53, 1.91,
    /// 2.69, 4.53, 10), chosen against the oracle SPRT in `benches/accuracy`: fewer points
    /// cost less (ln 7) and the spacing keeps the loss from the nearest point small.
    #[must_use]
    pub fn default_events() -> Self {
        Self::log_geometric(1.2, 10.0, 7)
    }

    /// The default prior for slow-request events: a 5 % slowdown moves the slow-request
    /// rate at the median by only ~8 %, so the grid starts lower: 10 ratios from 1.05 to 5.
    #[must_use]
    pub fn default_latency() -> Self {
        Self::log_geometric(1.05, 5.0, 10)
    }

    /// The same magnitudes on both sides of zero, for two-sided confidence sequences.
    #[must_use]
    pub fn two_sided(&self) -> Self {
        let mut deltas = Vec::with_capacity(self.deltas.len() * 2);
        let mut log_weights = Vec::with_capacity(self.deltas.len() * 2);
        for (d, lw) in self.deltas.iter().zip(&self.log_weights) {
            for s in [1.0, -1.0] {
                deltas.push(s * d);
                log_weights.push(lw - std::f64::consts::LN_2);
            }
        }
        Prior {
            deltas,
            log_weights,
        }
    }

    /// Grid offsets (ln ratios relative to the null boundary).
    #[must_use]
    pub fn deltas(&self) -> &[f64] {
        &self.deltas
    }
}

/// Event counts at one share, merged over windows.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct ShareCounts {
    logit_w: f64,
    canary: f64,
    baseline: f64,
}

/// Sequential conditional test on events with varying traffic shares (statistics.md §2.1 (b)).
///
/// One-sided: the e-process grows when the canary produces more events than its share
/// explains, beyond the allowed ratio `r0`. Also keeps the sufficient statistics for a
/// two-sided confidence sequence on the rate ratio.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventTest {
    prior: Prior,
    ln_r0: f64,
    log_threshold: f64,
    alpha: f64,
    log_lik: Vec<f64>,
    by_share: Vec<ShareCounts>,
    max_log_e: f64,
    track_lower: bool,
    lower: f64,
    cs: (f64, f64),
    canary_events: f64,
    baseline_events: f64,
}

impl EventTest {
    /// A test of H0: r ≤ `allowed_ratio`, rejecting at e-value 1/`alpha`.
    #[must_use]
    pub fn new(prior: Prior, allowed_ratio: f64, alpha: f64) -> Self {
        let n = prior.deltas.len();
        EventTest {
            prior,
            ln_r0: allowed_ratio.max(f64::MIN_POSITIVE).ln(),
            log_threshold: -alpha.ln(),
            alpha,
            log_lik: vec![0.0; n],
            by_share: Vec::new(),
            max_log_e: 0.0,
            track_lower: true,
            lower: 0.0,
            cs: (0.0, f64::INFINITY),
            canary_events: 0.0,
            baseline_events: 0.0,
        }
    }

    /// The same test with no evidence yet.
    #[must_use]
    pub fn fresh(&self) -> Self {
        EventTest::new(self.prior.clone(), self.ln_r0.exp(), self.alpha)
            .tracking_lower_bound(self.track_lower)
    }

    /// Whether to keep the lower confidence bound ([`Self::lower_bound`], on by default). A
    /// test whose bound nothing reads skips the bisection at every look above 1/α; it then
    /// rejects when the e-process crosses 1/α.
    #[must_use]
    pub fn tracking_lower_bound(mut self, on: bool) -> Self {
        self.track_lower = on;
        self
    }

    /// Adds one window: `canary` and `baseline` events routed while the canary's
    /// assignment probability was `w`. Windows at a share of 0 or 1, or with non-finite or
    /// negative counts, carry no information and are ignored.
    pub fn update(&mut self, w: f64, canary: f64, baseline: f64) {
        if !(w > 0.0 && w < 1.0) || !canary.is_finite() || !baseline.is_finite() {
            return;
        }
        let (c, b) = (canary.max(0.0), baseline.max(0.0));
        if c + b == 0.0 {
            return;
        }
        let lw = logit(w);
        let x0 = self.ln_r0 + lw;
        let (l0, m0) = (ln_sigmoid(x0), ln_sigmoid(-x0));
        for (ll, d) in self.log_lik.iter_mut().zip(&self.prior.deltas) {
            let x = x0 + d;
            *ll += c * (ln_sigmoid(x) - l0) + b * (ln_sigmoid(-x) - m0);
        }
        self.canary_events += c;
        self.baseline_events += b;
        match self.by_share.iter_mut().find(|s| s.logit_w == lw) {
            Some(s) => {
                s.canary += c;
                s.baseline += b;
            }
            None => self.by_share.push(ShareCounts {
                logit_w: lw,
                canary: c,
                baseline: b,
            }),
        }
        let log_e = self.log_e();
        self.max_log_e = self.max_log_e.max(log_e);
        if self.track_lower && log_e >= self.log_threshold {
            self.lower = self.lower.max(self.rejected_below());
        }
    }

    /// The largest ratio r′ ≥ r0 whose one-sided test (this prior, shifted to the boundary
    /// ln r′) is at or above 1/α now; r0 itself when none is (statistics.md §2.4.1).
    ///
    /// Each member of the family is an e-process under r ≤ r′ and its e-value decreases
    /// strictly in r′, so the ratios it rejects form an interval from 0 up to this point.
    /// Bisection keeps a point that is certainly rejected.
    fn rejected_below(&self) -> f64 {
        let f = |d: f64| self.log_e_at(self.ln_r0 + d, &self.prior) - self.log_threshold;
        if !(f(0.0) >= 0.0) {
            return self.ln_r0.exp();
        }
        let (mut lo, mut hi) = (0.0_f64, 40.0_f64);
        if f(hi) >= 0.0 {
            return (self.ln_r0 + hi).exp();
        }
        for _ in 0..200 {
            if hi - lo <= 1e-13 * (1.0 + (self.ln_r0 + lo).abs()) {
                break;
            }
            let mid = 0.5 * (lo + hi);
            if f(mid) >= 0.0 {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        (self.ln_r0 + lo).exp()
    }

    /// The one-sided (1 − α) lower confidence bound for r implied by the test itself: every
    /// ratio at or below it has been rejected at some look (running maximum over looks; 0
    /// until the test rejects r0). Time-uniform: the true ratio is above it at every look
    /// with probability at least 1 − α.
    #[must_use]
    pub fn lower_bound(&self) -> f64 {
        self.lower
    }

    /// Current log e-value against H0: r ≤ r0.
    #[must_use]
    pub fn log_e(&self) -> f64 {
        let terms: Vec<f64> = self
            .log_lik
            .iter()
            .zip(&self.prior.log_weights)
            .map(|(l, w)| l + w)
            .collect();
        log_sum_exp(&terms)
    }

    /// Largest log e-value seen so far.
    #[must_use]
    pub fn max_log_e(&self) -> f64 {
        self.max_log_e
    }

    /// `ln(1/α)`: the rejection threshold for the log e-value.
    #[must_use]
    pub fn log_threshold(&self) -> f64 {
        self.log_threshold
    }

    /// Anytime-valid p-value: the running minimum of `min(1, 1/e)`.
    #[must_use]
    pub fn p_value(&self) -> f64 {
        (-self.max_log_e).exp().min(1.0)
    }

    /// Whether the test has rejected r ≤ r0 at some look: its lower confidence bound is
    /// above r0 (so a Fail is never reported with a bound at or below the allowed ratio),
    /// which implies that the e-process crossed 1/α; without the bound, that crossing.
    #[must_use]
    pub fn rejected(&self) -> bool {
        if self.track_lower {
            self.lower > self.ln_r0.exp()
        } else {
            self.max_log_e >= self.log_threshold
        }
    }

    /// Events so far: (baseline, canary).
    #[must_use]
    pub fn events(&self) -> (f64, f64) {
        (self.baseline_events, self.canary_events)
    }

    /// Log e-value of the mixture `prior` (offsets from the boundary) against the null
    /// boundary log ratio `delta0`: the test's own family when `prior` is the test's prior,
    /// the two-sided one for the confidence sequence.
    fn log_e_at(&self, delta0: f64, two: &Prior) -> f64 {
        let terms: Vec<f64> = two
            .deltas
            .iter()
            .zip(&two.log_weights)
            .map(|(d, lw)| {
                let mut s = *lw;
                for sc in &self.by_share {
                    let x0 = delta0 + sc.logit_w;
                    let x = x0 + d;
                    s += sc.canary * (ln_sigmoid(x) - ln_sigmoid(x0))
                        + sc.baseline * (ln_sigmoid(-x) - ln_sigmoid(-x0));
                }
                s
            })
            .collect();
        log_sum_exp(&terms)
    }

    /// Maximum-likelihood log ratio from the pooled windows (±∞ when one arm has no events).
    fn mle_delta(&self) -> f64 {
        if self.canary_events == 0.0 {
            return f64::NEG_INFINITY;
        }
        if self.baseline_events == 0.0 {
            return f64::INFINITY;
        }
        let score = |d: f64| {
            self.by_share
                .iter()
                .map(|s| s.canary - (s.canary + s.baseline) * ln_sigmoid(d + s.logit_w).exp())
                .sum::<f64>()
        };
        bisect(-40.0, 40.0, 1e-12, |d| -score(d)).unwrap_or(0.0)
    }

    /// Maximum-likelihood rate ratio (0 or ∞ when one arm has no events; NaN with no events).
    #[must_use]
    pub fn ratio_estimate(&self) -> f64 {
        if self.canary_events + self.baseline_events == 0.0 {
            f64::NAN
        } else {
            self.mle_delta().exp()
        }
    }

    /// Computes the (1 − α) confidence interval for r at this look, intersects it with the
    /// intervals of earlier calls (a running intersection stays valid) and returns it.
    pub fn update_confidence_sequence(&mut self) -> (f64, f64) {
        const EDGE: f64 = 15.0;
        if self.canary_events + self.baseline_events == 0.0 {
            return self.cs;
        }
        let two = self.prior.two_sided();
        let centre = self.mle_delta().clamp(-EDGE, EDGE);
        let f = |d: f64| self.log_e_at(d, &two) - self.log_threshold;
        let lo = if f(-EDGE) < 0.0 {
            0.0
        } else {
            bisect(-EDGE, centre, 1e-9, f).map_or(0.0, f64::exp)
        };
        let hi = if f(EDGE) < 0.0 {
            f64::INFINITY
        } else {
            bisect(centre, EDGE, 1e-9, f).map_or(f64::INFINITY, f64::exp)
        };
        let (plo, phi) = self.cs;
        let (nlo, nhi) = (plo.max(lo), phi.min(hi));
        // An empty intersection can only happen on the α-probability event; report the
        // current interval rather than an inverted one.
        self.cs = if nlo <= nhi { (nlo, nhi) } else { (lo, hi) };
        self.cs
    }

    /// The last interval computed by [`Self::update_confidence_sequence`].
    #[must_use]
    pub fn confidence_sequence(&self) -> (f64, f64) {
        self.cs
    }

    /// Significance level of the test and the interval.
    #[must_use]
    pub fn alpha(&self) -> f64 {
        self.alpha
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-300)
    }

    /// statistics.md §2.1 table (w = 0.05, k = 100, α = 0.05).
    #[test]
    fn beta_mixture_vectors() {
        let rows = [
            (95.0, 5.0, -0.3549, 1.0, (0.234, 2.757)),
            (95.0, 15.0, 2.9358, 0.05309, (0.994, 7.185)),
            (190.0, 30.0, 8.0481, 3.197e-4, (1.338, 5.896)),
            (950.0, 80.0, 5.1778, 5.641e-3, (1.086, 2.269)),
            (1900.0, 150.0, 8.0551, 3.175e-4, (1.130, 1.949)),
        ];
        for (nb, nc, log_bf, p, (lo, hi)) in rows {
            let r = beta_mixture(nb, nc, 0.05, 100.0, 0.05).unwrap();
            assert!((r.log_e - log_bf).abs() < 5e-5, "{nb} {nc}: {}", r.log_e);
            assert!(close(r.p_value, p, 2e-3), "{nb} {nc}: p {}", r.p_value);
            assert!(
                (r.ci_ratio.0 - lo).abs() < 6e-4,
                "{nb} {nc}: lo {}",
                r.ci_ratio.0
            );
            assert!(
                (r.ci_ratio.1 - hi).abs() < 6e-4,
                "{nb} {nc}: hi {}",
                r.ci_ratio.1
            );
        }
    }

    /// savvi: w = 0.2 for the canary, k = 100, counts (148, 62): p = 0.045579631759.
    #[test]
    fn beta_mixture_savvi_p() {
        let r = beta_mixture(148.0, 62.0, 0.2, 100.0, 0.05).unwrap();
        assert!(close(r.p_value, 0.045_579_631_759, 1e-6), "{}", r.p_value);
    }

    #[test]
    fn beta_mixture_rejects_bad_input() {
        assert!(beta_mixture(1.0, 1.0, 0.0, 100.0, 0.05).is_none());
        assert!(beta_mixture(1.0, 1.0, 1.0, 100.0, 0.05).is_none());
        assert!(beta_mixture(-1.0, 1.0, 0.5, 100.0, 0.05).is_none());
        assert!(beta_mixture(f64::NAN, 1.0, 0.5, 100.0, 0.05).is_none());
        assert!(beta_mixture(1.0, 1.0, 0.5, 0.0, 0.05).is_none());
        let z = beta_mixture(0.0, 0.0, 0.5, 10.0, 0.05).unwrap();
        assert_eq!(z.log_e, 0.0);
        assert_eq!(z.ci_ratio, (0.0, f64::INFINITY));
    }

    #[test]
    fn event_test_detects_and_holds() {
        // 10 % of errors from a 5 % canary: twice its share.
        let mut t = EventTest::new(Prior::default_events(), 1.0, 0.05);
        for _ in 0..40 {
            t.update(0.05, 2.0, 18.0);
        }
        assert!(t.rejected(), "log e {}", t.max_log_e());
        // The bound the test implies excludes r0 and sits below the estimate.
        let l = t.lower_bound();
        assert!(l > 1.0 && l < t.ratio_estimate(), "{l}");
        // It is the boundary of the rejected set: the family shifted to l is at 1/α.
        let at = t.log_e_at(l.ln(), &t.prior.clone());
        assert!((at - t.log_threshold()).abs() < 1e-6, "{at}");
        let (lo, hi) = t.update_confidence_sequence();
        assert!(lo > 1.0 && hi > 2.0 && lo < 2.0, "{lo} {hi}");
        // Exactly the share: never rejects, interval covers 1.
        let mut a = EventTest::new(Prior::default_events(), 1.0, 0.05);
        for _ in 0..200 {
            a.update(0.25, 5.0, 15.0);
        }
        assert!(!a.rejected());
        let (lo, hi) = a.update_confidence_sequence();
        assert!(lo < 1.0 && hi > 1.0, "{lo} {hi}");
        assert!(close(a.ratio_estimate(), 1.0, 1e-6));
    }

    #[test]
    fn event_test_uses_share_in_force() {
        // The same counts are suspicious at 5 % but expected at 50 %.
        let mut low = EventTest::new(Prior::default_events(), 1.0, 0.05);
        let mut high = EventTest::new(Prior::default_events(), 1.0, 0.05);
        for _ in 0..10 {
            low.update(0.05, 10.0, 10.0);
            high.update(0.5, 10.0, 10.0);
        }
        assert!(low.rejected());
        assert!(!high.rejected());
    }

    #[test]
    fn event_test_ignores_degenerate_windows() {
        let mut t = EventTest::new(Prior::default_events(), 1.0, 0.05);
        t.update(0.0, 5.0, 5.0);
        t.update(1.0, 5.0, 5.0);
        t.update(0.5, f64::NAN, 5.0);
        t.update(0.5, f64::INFINITY, 5.0);
        assert_eq!(t.events(), (0.0, 0.0));
        assert_eq!(t.log_e(), 0.0);
        assert!(t.ratio_estimate().is_nan());
        assert_eq!(t.update_confidence_sequence(), (0.0, f64::INFINITY));
    }
}
