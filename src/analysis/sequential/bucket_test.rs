//! The all-buckets latency test (statistics.md §2.5): one e-process that uses every bucket
//! of the histograms and stays valid for any latency distribution.
//!
//! Given that a request fell in bucket b, under "no slowdown" it came from the canary with
//! the share w in force. The test bets, window by window, on a canary share θ_b that
//! rises with latency (non-decreasing in b), chosen only from earlier windows: a canary in
//! bucket b multiplies the wealth by θ_b/w, a baseline request by (1 − θ_b)/(1 − w). For a
//! canary at most as slow as the baseline in the stochastic order, a non-decreasing bet has
//! expectation at most 1 per request, whatever the distributions and however they drift
//! together, so the wealth is a test supermartingale. With an allowed slowdown m the
//! canary's bucket is compared with the baseline's bucket m' times lower, m' ≤ m the
//! largest margin the buckets represent ([`crate::analysis::resolution`]).
//!
//! The bets are a mixture: normal-score tilts (the exact likelihood ratio of a log-normal
//! slowdown, scored on the baseline's earlier distribution) and isotonic plug-ins of the
//! canary's share per bucket in earlier windows (any monotone shape: tails, bimodal).

use crate::analysis::histogram::Histogram;
use crate::analysis::resolution::{self, LADDER, Ladder, Resolved};
use crate::analysis::special::{log_sum_exp, norm_ppf};

/// `ln σ(x)` = −ln(1 + e^{−x}), stable for all `x`.
fn ln_sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}

/// One component of the mixture of bets.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
enum Bet {
    /// Log-odds tilt κ·s_b − κ²/2 on the baseline's normal scores s_b.
    Tilt(f64),
    /// λ × the log of the isotonic estimate of the canary/baseline density ratio.
    Iso(f64),
    /// Slow-request odds ×ρ above the baseline's `STEP_QUANTILES[q]`-quantile, none below:
    /// the slow-request event test at one threshold, as a bet.
    Step(usize, f64),
}

/// Tilt strengths: κ = ln(slowdown)/σ in normal-score units (×1.02 … ×3.6 at σ = 0.5).
const KAPPAS: [f64; 8] = [0.06, 0.1, 0.16, 0.25, 0.4, 0.63, 1.0, 1.6];
/// Fractions of the isotonic plug-in's log ratio that are bet.
const LAMBDAS: [f64; 1] = [0.7];
/// Baseline quantiles (from earlier windows) above which the step bets raise the odds. A
/// step bet grows fastest at the threshold where the canary's excess begins (a tail slowed
/// from the p95 on gains most above the p98–p98.5, not at the p97 or p99), so the grid is
/// dense in the tail, and reaches the p99.5 and p99.9 for slowdowns further out.
const STEP_QUANTILES: [f64; 8] = [0.9, 0.95, 0.97, 0.98, 0.985, 0.99, 0.995, 0.999];
/// Odds ratios of the step bets.
const STEP_RHOS: [f64; 3] = [2.0, 3.5, 6.0];
/// Prior masses of the tilts, the step bets and the isotonic plug-ins.
const TILT_MASS: f64 = 0.6;
const STEP_MASS: f64 = 0.3;
const ISO_MASS: f64 = 0.1;
/// Normal scores are clamped to this range: real latencies have heavier tails than a
/// log-normal, and a tilt that keeps growing into the slowest percent over-bets there (the
/// step bets cover tails).
const SCORE_RANGE: (f64, f64) = (-2.5, 2.0);
/// Pseudo-requests that shrink the isotonic estimate towards "no difference".
const SHRINK: f64 = 20.0;
/// Window 1 has no earlier baseline to score on; it bets with a data-free prior mixture of
/// tilts on log-normal scores `(ln x − ln median)/PRIOR_SIGMA`, over a geometric grid of
/// medians from `PRIOR_MEDIANS.0` seconds in steps of `e^{PRIOR_MEDIANS.1}`
/// (`PRIOR_MEDIANS.2` of them: 1 ms to 8 s), each at the strengths [`PRIOR_KAPPAS`].
const PRIOR_MEDIANS: (f64, f64, usize) = (1e-3, 0.5, 19);
const PRIOR_SIGMA: f64 = 0.5;
const PRIOR_KAPPAS: [f64; 2] = [0.5, 1.0];
/// The window-1 mixture's mass on not betting: its factor is never below this, so a wrong
/// prior (or no slowdown) costs at most ln(1/0.9) ≈ 0.1 of evidence. A ×1.5 body shift
/// still gains ≈ 1.9 nats in the benchmark's first window (half of it at mass ½, which
/// costs the ln 2 in every other case).
const PRIOR_ABSTAIN: f64 = 0.9;

/// ln of the window's factor per ladder step under the bet logit θ_b = logit w + `eta[b]`
/// (baseline counts `bc`, the canary's by the baseline bucket it scores as, per step, in
/// `mapped`; only buckets `lo..=hi` hold requests). Marks in `jumps` the thresholds where
/// the bet rises; `ln_theta` is scratch space.
fn window_log_factors(
    eta: &[f64],
    bc: &[f64],
    mapped: &[Vec<f64>],
    (lo, hi): (usize, usize),
    w: f64,
    jumps: &mut [bool],
    ln_theta: &mut [f64],
) -> Vec<f64> {
    let logit_w = (w / (1.0 - w)).ln();
    let (ln_w, ln_1w) = (w.ln(), (1.0 - w).ln());
    for i in 0..eta.len().saturating_sub(1) {
        if eta[i + 1] > eta[i] + 1e-12 {
            jumps[i] = true;
        }
    }
    let mut base = 0.0;
    for j in lo..=hi {
        let x = logit_w + eta[j];
        ln_theta[j] = ln_sigmoid(x) - ln_w;
        if bc[j] > 0.0 {
            base += bc[j] * (ln_sigmoid(-x) - ln_1w);
        }
    }
    mapped
        .iter()
        .map(|m| {
            let canary: f64 = (lo..=hi).map(|j| m[j] * ln_theta[j]).sum();
            base + canary
        })
        .collect()
}

/// ln of window 1's factor, per ladder step (statistics.md §2.5, "Window 1"): the
/// [`PRIOR_ABSTAIN`]-weighted average of no bet and the prior tilts, every one of them fixed
/// before any data (from the bounds and the share alone), so the factor has expectation at
/// most 1 under the null like any other window's. Marks in `jumps` the thresholds bet on.
fn first_window_log_factor(
    bounds: &[f64],
    bc: &[f64],
    mapped: &[Vec<f64>],
    (lo, hi): (usize, usize),
    w: f64,
    jumps: &mut [bool],
) -> Vec<f64> {
    // A bucket's value: its upper bound; the +∞ bucket twice the last finite bound.
    let mut last = 0.0;
    let ln_u: Vec<f64> = bounds
        .iter()
        .map(|t| {
            if t.is_finite() {
                last = t.ln();
                last
            } else {
                last + std::f64::consts::LN_2
            }
        })
        .collect();
    let (start, step, count) = PRIOR_MEDIANS;
    let ln_each = ((1.0 - PRIOR_ABSTAIN) / (count * PRIOR_KAPPAS.len()) as f64).ln();
    let mut terms: Vec<Vec<f64>> = vec![vec![PRIOR_ABSTAIN.ln()]; mapped.len()];
    let mut ln_theta = vec![0.0; bc.len()];
    for j in 0..count {
        let mu = start.ln() + step * j as f64;
        for k in PRIOR_KAPPAS {
            let eta: Vec<f64> = ln_u
                .iter()
                .map(|x| {
                    let z = ((x - mu) / PRIOR_SIGMA).clamp(SCORE_RANGE.0, SCORE_RANGE.1);
                    k * z - k * k / 2.0
                })
                .collect();
            let f = window_log_factors(&eta, bc, mapped, (lo, hi), w, jumps, &mut ln_theta);
            for (t, f) in terms.iter_mut().zip(f) {
                t.push(ln_each + f);
            }
        }
    }
    terms.iter().map(|t| log_sum_exp(t)).collect()
}

/// Bucket bounds with the canary→baseline bucket maps of every ladder step.
///
/// Stored as its bounds and margin only ([`LayoutWire`]) and rebuilt on load: the maps are
/// a function of the two and, with 163 buckets, were most of a rollout record's size
/// (rewritten at every tick).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(into = "LayoutWire", try_from = "LayoutWire")]
struct Layout {
    bounds: Vec<f64>,
    /// The policy's margin the maps were built for.
    allowed: f64,
    /// `maps[n][k]`: the baseline bucket a canary request in bucket k is scored as, at
    /// ladder step n.
    maps: Vec<Vec<usize>>,
    /// `resolved[n][i]`: the margin judged at threshold `bounds[i]` at step n.
    resolved: Vec<Vec<Option<Resolved>>>,
}

impl Layout {
    fn new(bounds: &[f64], allowed: f64) -> Self {
        let k = bounds.len();
        let finite: Vec<usize> = (0..k).filter(|&i| bounds[i].is_finite()).collect();
        let mut maps = Vec::with_capacity(LADDER.len());
        let mut resolved = Vec::with_capacity(LADDER.len());
        for step in LADDER {
            let m = allowed * step;
            // γ(i): the canary's bound for threshold i; a canary in bucket k is above it
            // iff γ(i) < k, so it scores as baseline bucket #{i : γ(i) < k}.
            let gamma: Vec<usize> = finite
                .iter()
                .map(|&i| resolution::canary_bound(bounds, i, m))
                .collect();
            maps.push(
                (0..k)
                    .map(|b| gamma.iter().filter(|&&g| g < b).count())
                    .collect(),
            );
            resolved.push(
                (0..k)
                    .map(|i| {
                        bounds[i]
                            .is_finite()
                            .then(|| Resolved::at_threshold(bounds, i, m))
                    })
                    .collect(),
            );
        }
        Layout {
            bounds: bounds.to_vec(),
            allowed,
            maps,
            resolved,
        }
    }
}

/// A [`Layout`] as stored. Records written before the maps were dropped from the store
/// carry `maps` and `resolved` and no `allowed`; they load as they were.
#[derive(serde::Serialize, serde::Deserialize)]
struct LayoutWire {
    bounds: Vec<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    allowed: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    maps: Option<Vec<Vec<usize>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resolved: Option<Vec<Vec<Option<Resolved>>>>,
}

impl From<Layout> for LayoutWire {
    fn from(l: Layout) -> Self {
        // A layout loaded from an old record has no margin: it keeps its maps.
        let legacy = l.allowed.is_nan();
        LayoutWire {
            bounds: l.bounds,
            allowed: (!legacy).then_some(l.allowed),
            maps: legacy.then_some(l.maps),
            resolved: legacy.then_some(l.resolved),
        }
    }
}

impl TryFrom<LayoutWire> for Layout {
    type Error = &'static str;

    fn try_from(w: LayoutWire) -> Result<Self, Self::Error> {
        match (w.allowed, w.maps, w.resolved) {
            (Some(allowed), ..) if allowed.is_finite() => Ok(Layout::new(&w.bounds, allowed)),
            (None, Some(maps), Some(resolved)) => Ok(Layout {
                bounds: w.bounds,
                allowed: f64::NAN,
                maps,
                resolved,
            }),
            _ => Err("a bucket layout without its margin"),
        }
    }
}

/// State of the all-buckets test.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct BucketTest {
    allowed: f64,
    bets: Vec<Bet>,
    log_prior: Vec<f64>,
    /// Log wealth per ladder step and bet.
    wealth: Vec<Vec<f64>>,
    ladder: Ladder,
    layout: Option<Layout>,
    /// Baseline requests per bucket in earlier windows (current layout).
    base: Vec<f64>,
    /// Canary requests per baseline bucket they score as (step 0), earlier windows.
    canary: Vec<f64>,
    requests: (f64, f64),
}

impl BucketTest {
    /// A fresh test of "at most `allowed` times slower".
    #[must_use]
    pub fn new(allowed: f64) -> Self {
        let mut bets: Vec<Bet> = KAPPAS.iter().map(|k| Bet::Tilt(*k)).collect();
        bets.extend(LAMBDAS.iter().map(|l| Bet::Iso(*l)));
        for q in 0..STEP_QUANTILES.len() {
            bets.extend(STEP_RHOS.iter().map(|r| Bet::Step(q, *r)));
        }
        let steps = (STEP_QUANTILES.len() * STEP_RHOS.len()) as f64;
        let log_prior = bets
            .iter()
            .map(|b| match b {
                Bet::Tilt(_) => (TILT_MASS / KAPPAS.len() as f64).ln(),
                Bet::Iso(_) => (ISO_MASS / LAMBDAS.len() as f64).ln(),
                Bet::Step(..) => (STEP_MASS / steps).ln(),
            })
            .collect();
        BucketTest {
            allowed,
            wealth: vec![vec![0.0; bets.len()]; LADDER.len()],
            bets,
            log_prior,
            ladder: Ladder::default(),
            layout: None,
            base: Vec::new(),
            canary: Vec::new(),
            requests: (0.0, 0.0),
        }
    }

    /// Learns the baseline's distribution from requests served before the canary had any
    /// traffic (statistics.md §2.5, "History"): they choose the bets of the windows after,
    /// from the first one on, and are no evidence (the wealth is unchanged).
    pub fn learn_history(&mut self, b: &Histogram) {
        if !(b.total() > 0.0) {
            return;
        }
        self.use_layout(b);
        for (acc, n) in self.base.iter_mut().zip(b.counts()) {
            *acc += n;
        }
    }

    /// Forgets what [`Self::learn_history`] learned, as long as no window was added (the
    /// bets of later windows depend on it, so it is fixed once traffic moves): a history
    /// read again replaces the earlier read instead of counting its requests twice.
    pub fn forget_history(&mut self) {
        // A window without requests changes nothing, so no requests means no window.
        if self.requests == (0.0, 0.0) {
            self.layout = None;
            self.base.clear();
            self.canary.clear();
        }
    }

    /// Makes `b`'s bounds the layout. New buckets: what was learned about the old ones does
    /// not apply; the wealth (evidence so far) carries over.
    fn use_layout(&mut self, b: &Histogram) {
        if self.layout.as_ref().is_none_or(|l| l.bounds != b.bounds()) {
            self.layout = Some(Layout::new(b.bounds(), self.allowed));
            self.base = vec![0.0; b.bounds().len()];
            self.canary = vec![0.0; b.bounds().len()];
        }
    }

    /// Adds one window at canary share `w` (both histograms over the same bounds).
    pub fn update(&mut self, b: &Histogram, c: &Histogram, w: f64) {
        if !(w > 0.0 && w < 1.0) {
            return;
        }
        self.use_layout(b);
        let Some(layout) = self.layout.take() else {
            return;
        };
        let logit_w = (w / (1.0 - w)).ln();
        let (ln_w, ln_1w) = (w.ln(), (1.0 - w).ln());
        let scores = self.scores();
        let iso = self.isotonic_log_ratio();
        let bc = b.counts();
        let nb = bc.len();
        // Canary requests by the baseline bucket they are scored as, per ladder step.
        let mapped: Vec<Vec<f64>> = layout
            .maps
            .iter()
            .map(|map| {
                let mut v = vec![0.0; nb];
                for (k, c) in c.counts().iter().enumerate() {
                    v[map[k]] += c;
                }
                v
            })
            .collect();
        // The buckets this window's factors read (a window without requests multiplies by
        // 1, an empty product; one with requests in one arm only is still scored).
        let used = |v: &[f64]| {
            v.iter()
                .position(|x| *x > 0.0)
                .zip(v.iter().rposition(|x| *x > 0.0))
        };
        let ranges = [used(bc), used(&mapped[LADDER.len() - 1]), used(&mapped[0])];
        let Some((lo, hi)) = ranges
            .iter()
            .flatten()
            .copied()
            .reduce(|a, b| (a.0.min(b.0), a.1.max(b.1)))
        else {
            self.layout = Some(layout);
            return;
        };
        // Requests above each bucket, for the step bets.
        let above = |v: &[f64]| {
            let mut out = vec![0.0; v.len()];
            let mut acc = 0.0;
            for i in (0..v.len()).rev() {
                out[i] = acc;
                acc += v[i];
            }
            out
        };
        let base_above = above(bc);
        let mapped_above: Vec<Vec<f64>> = mapped.iter().map(|v| above(v)).collect();
        let steps = self.step_thresholds();
        let mut jumps = vec![false; nb];
        if scores.is_none() {
            // No earlier baseline: the data-free prior bets instead (the components below
            // need one and skip this window).
            let f = first_window_log_factor(&layout.bounds, bc, &mapped, (lo, hi), w, &mut jumps);
            for (wealth, f) in self.wealth.iter_mut().zip(f) {
                for x in wealth {
                    *x += f;
                }
            }
        }
        let mut ln_theta = vec![0.0; nb];
        for (idx, bet) in self.bets.iter().enumerate() {
            if let Bet::Step(q, rho) = *bet {
                // θ = w at or below the threshold (factor 1), w·ρ/(1 − w + w·ρ) above it.
                let Some(i) = steps.as_ref().and_then(|s| s[q]) else {
                    continue;
                };
                jumps[i] = true;
                let x = logit_w + rho.ln();
                let (up, down) = (ln_sigmoid(x) - ln_w, ln_sigmoid(-x) - ln_1w);
                for (n, m) in mapped_above.iter().enumerate() {
                    self.wealth[n][idx] += base_above[i] * down + m[i] * up;
                }
                continue;
            }
            let eta: Vec<f64> = match (bet, &scores, &iso) {
                (Bet::Tilt(k), Some(s), _) => s.iter().map(|s| k * s - k * k / 2.0).collect(),
                (Bet::Iso(l), _, Some(r)) => r.iter().map(|r| l * r).collect(),
                _ => continue,
            };
            let f = window_log_factors(&eta, bc, &mapped, (lo, hi), w, &mut jumps, &mut ln_theta);
            for (wealth, f) in self.wealth.iter_mut().zip(f) {
                wealth[idx] += f;
            }
        }
        // The margin judged at, over the thresholds actually bet on.
        for (n, resolved) in layout.resolved.iter().enumerate() {
            for (i, r) in resolved.iter().enumerate() {
                if let (true, Some(r)) = (jumps[i], r) {
                    self.ladder.judged(n, *r);
                }
            }
        }
        for n in 0..LADDER.len() {
            self.ladder.looked(n, self.log_e_at(n));
        }
        // Learn from this window for the next ones.
        for (acc, n) in self.base.iter_mut().zip(bc) {
            *acc += n;
        }
        for (acc, c) in self.canary.iter_mut().zip(&mapped[0]) {
            *acc += c;
        }
        self.requests.0 += b.total();
        self.requests.1 += c.total();
        self.layout = Some(layout);
    }

    /// The buckets holding the baseline's [`STEP_QUANTILES`] in earlier windows (`None` for a
    /// quantile in the `+∞` bucket, above which nothing can be counted).
    fn step_thresholds(&self) -> Option<Vec<Option<usize>>> {
        let total: f64 = self.base.iter().sum();
        if !(total > 0.0) {
            return None;
        }
        Some(
            STEP_QUANTILES
                .iter()
                .map(|q| {
                    let mut cum = 0.0;
                    let i = self.base.iter().position(|n| {
                        cum += n;
                        cum >= q * total
                    })?;
                    (i + 1 < self.base.len()).then_some(i)
                })
                .collect(),
        )
    }

    /// Normal scores Φ⁻¹(mid-CDF) of the baseline's earlier requests per bucket, clamped to
    /// [`SCORE_RANGE`].
    fn scores(&self) -> Option<Vec<f64>> {
        let total: f64 = self.base.iter().sum();
        if !(total > 0.0) {
            return None;
        }
        let mut below = 0.0;
        Some(
            self.base
                .iter()
                .map(|n| {
                    let f = (below + 0.5 * n + 0.5) / (total + 1.0);
                    below += n;
                    norm_ppf(f).clamp(SCORE_RANGE.0, SCORE_RANGE.1)
                })
                .collect(),
        )
    }

    /// ln of the non-decreasing (isotonic) estimate of the canary/baseline density ratio
    /// per bucket, from earlier windows, shrunk towards 1 by [`SHRINK`] pseudo-requests.
    fn isotonic_log_ratio(&self) -> Option<Vec<f64>> {
        let (nb, nc): (f64, f64) = (self.base.iter().sum(), self.canary.iter().sum());
        if !(nb > 0.0 && nc > 0.0) {
            return None;
        }
        let pooled = nb + nc;
        // Share of "canary" at a reference share of ½, weighted by the bucket's mass.
        let points: Vec<(f64, f64)> = self
            .base
            .iter()
            .zip(&self.canary)
            .map(|(b, c)| {
                let q = (b + c) / pooled;
                let pb = (b + SHRINK * q) / (nb + SHRINK);
                let pc = (c + SHRINK * q) / (nc + SHRINK);
                let weight = pb + pc;
                (if weight > 0.0 { pc / weight } else { 0.5 }, weight)
            })
            .collect();
        let fitted = isotonic_increasing(&points);
        Some(
            fitted
                .iter()
                .map(|p| {
                    let p = p.clamp(1e-6, 1.0 - 1e-6);
                    (p / (1.0 - p)).ln()
                })
                .collect(),
        )
    }

    fn log_e_at(&self, n: usize) -> f64 {
        let terms: Vec<f64> = self.wealth[n]
            .iter()
            .zip(&self.log_prior)
            .map(|(w, p)| w + p)
            .collect();
        log_sum_exp(&terms)
    }

    /// Current log e-value at the policy's margin.
    #[must_use]
    pub fn log_e(&self) -> f64 {
        self.log_e_at(0)
    }

    /// The ladder's record: running maxima, margins judged at, the coarsest resolution.
    #[must_use]
    pub fn ladder(&self) -> &Ladder {
        &self.ladder
    }

    /// The bet with the most wealth, for the reason.
    #[must_use]
    pub fn evidence(&self) -> String {
        let best = self.wealth[0]
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| self.bets[i]);
        let what = match best {
            Some(Bet::Tilt(_)) => "a slowdown across the distribution",
            Some(Bet::Iso(_)) => "a slowdown in part of the distribution",
            Some(Bet::Step(q, _)) => {
                return format!(
                    "; all buckets compared, strongest evidence for more canary requests above the baseline's p{}",
                    (STEP_QUANTILES[q] * 1000.0).round() / 10.0
                );
            }
            None => return String::new(),
        };
        format!("; all buckets compared, strongest evidence for {what}")
    }
}

/// Weighted isotonic (non-decreasing) regression by pool-adjacent-violators of
/// `(value, weight)` points; points of weight 0 take the fitted value of the previous one
/// (or the next, at the start).
#[must_use]
pub fn isotonic_increasing(points: &[(f64, f64)]) -> Vec<f64> {
    // Blocks of (weighted sum, weight, number of points).
    let mut blocks: Vec<(f64, f64, usize)> = Vec::new();
    let mut order = Vec::new();
    for (i, &(y, w)) in points.iter().enumerate() {
        if !(w > 0.0) || !y.is_finite() {
            continue;
        }
        order.push(i);
        blocks.push((y * w, w, 1));
        while blocks.len() >= 2 {
            let (s2, w2, n2) = blocks[blocks.len() - 1];
            let (s1, w1, n1) = blocks[blocks.len() - 2];
            if s1 / w1 <= s2 / w2 {
                break;
            }
            blocks.pop();
            let last = blocks.len() - 1;
            blocks[last] = (s1 + s2, w1 + w2, n1 + n2);
        }
    }
    let mut fitted_at = vec![f64::NAN; points.len()];
    let mut at = 0;
    for (s, w, n) in blocks {
        for &i in &order[at..at + n] {
            fitted_at[i] = s / w;
        }
        at += n;
    }
    // Fill points without weight from their neighbours (keeps the fit non-decreasing).
    let first = fitted_at.iter().copied().find(|v| v.is_finite());
    let mut prev = first.unwrap_or(0.5);
    for v in &mut fitted_at {
        if v.is_finite() {
            prev = *v;
        } else {
            *v = prev;
        }
    }
    fitted_at
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values: scipy.optimize.isotonic_regression (scipy 1.17), see
    /// scripts/gen_fixtures.py.
    #[test]
    fn isotonic_regression_matches_reference() {
        // y = [1, 3, 2, 4, 3, 5], w = [1, 2, 1, 1, 3, 1].
        let pts = [
            (1.0, 1.0),
            (3.0, 2.0),
            (2.0, 1.0),
            (4.0, 1.0),
            (3.0, 3.0),
            (5.0, 1.0),
        ];
        let want = [1.0, 8.0 / 3.0, 8.0 / 3.0, 3.25, 3.25, 5.0];
        let got = isotonic_increasing(&pts);
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
        // Zero weights take the neighbour's value; all decreasing pools to the mean.
        let got = isotonic_increasing(&[(0.9, 0.0), (3.0, 1.0), (1.0, 1.0), (0.2, 0.0)]);
        assert_eq!(got, vec![2.0, 2.0, 2.0, 2.0]);
        assert_eq!(isotonic_increasing(&[]), Vec::<f64>::new());
    }

    #[test]
    fn maps_score_the_canary_at_the_resolved_margin() {
        let mut b: Vec<f64> = (0..6).map(|i| 0.005 * 2f64.powi(i)).collect();
        b.push(f64::INFINITY);
        // allowed 1.1 on ×2 buckets: judged at ×1, the canary's bucket is its own.
        let l = Layout::new(&b, 1.1);
        assert_eq!(l.maps[0], (0..7).collect::<Vec<_>>());
        // allowed 2: the canary's bucket k scores as the baseline's k − 1, except above
        // the last finite bound, where 2× cannot be represented (judged at ×1 there).
        let l = Layout::new(&b, 2.0);
        assert_eq!(l.maps[0], vec![0, 0, 1, 2, 3, 4, 6]);
        // Ladder steps never score a canary higher than the step before.
        for n in 1..LADDER.len() {
            assert!(l.maps[n].iter().zip(&l.maps[n - 1]).all(|(a, b)| a <= b));
        }
    }

    /// Window 1 bets with the data-free prior (it bet nothing before), or with the
    /// baseline's history when it was read, and either bet is a fair one: over a window
    /// holding one request, the expected factor is exactly 1 when the canary is the
    /// baseline, at most 1 when it is faster or at the allowed slowdown, and above 1 when it
    /// is slower than allowed.
    #[test]
    fn window_one_bets_fairly_with_the_prior_or_the_history() {
        let mut bounds: Vec<f64> = (0..14).map(|i| 0.005 * 2f64.powi(i)).collect();
        bounds.push(f64::INFINITY);
        let k = bounds.len();
        let one = |i: usize| {
            let mut c = vec![0.0; k];
            c[i] = 1.0;
            Histogram::try_new(bounds.clone(), c).expect("histogram")
        };
        let empty = Histogram::try_new(bounds.clone(), vec![0.0; k]).expect("histogram");
        // Nothing in the last finite bucket or above: a ×2 slowdown stays representable
        // (above the last finite bound the test judges at ×1, so a canary ×2 slower there
        // is slower than allowed, and a bet from history rightly wins on it).
        let base: Vec<f64> = (0..k)
            .map(|i| {
                if i + 2 < k {
                    (1.0 + (i as f64 - 5.0).abs()).recip()
                } else {
                    0.0
                }
            })
            .collect();
        let shifted = |p: &[f64], by: isize| {
            let mut q = vec![0.0; k];
            for (i, x) in p.iter().enumerate() {
                q[i.saturating_add_signed(by).min(k - 1)] += x;
            }
            let t: f64 = q.iter().sum();
            q.iter().map(|x| x / t).collect::<Vec<_>>()
        };
        let base = shifted(&base, 0);
        // The history: 10 000 baseline requests, not evidence.
        let history = Histogram::try_new(
            bounds.clone(),
            base.iter().map(|p| (p * 1e4).round()).collect(),
        )
        .expect("histogram");
        let start = |allowed: f64, learned: bool| {
            let mut t = BucketTest::new(allowed);
            if learned {
                t.learn_history(&history);
                assert_eq!(t.log_e(), 0.0, "history is no evidence");
                assert_eq!(t.requests, (0.0, 0.0));
            }
            t
        };
        let expected = |allowed: f64, canary: &[f64], w: f64, learned: bool| -> f64 {
            (0..k)
                .map(|i| {
                    let mut as_base = start(allowed, learned);
                    as_base.update(&one(i), &empty, w);
                    let mut as_canary = start(allowed, learned);
                    as_canary.update(&empty, &one(i), w);
                    (1.0 - w) * base[i] * as_base.log_e().exp()
                        + w * canary[i] * as_canary.log_e().exp()
                })
                .sum()
        };
        for (w, learned) in [(0.05, false), (0.25, false), (0.05, true), (0.25, true)] {
            let same = expected(1.0, &base, w, learned);
            assert!((same - 1.0).abs() < 1e-9, "A/A at {w}: {same}");
            let faster = expected(1.0, &shifted(&base, -1), w, learned);
            assert!(faster <= 1.0 + 1e-12, "faster at {w}: {faster}");
            // ×2 buckets: one bucket up is exactly ×2, allowed at 2, a regression at 1.
            let at_allowed = expected(2.0, &shifted(&base, 1), w, learned);
            assert!(
                at_allowed <= 1.0 + 1e-12,
                "at ×2 allowed at {w}: {at_allowed}"
            );
            let slower = expected(1.0, &shifted(&base, 1), w, learned);
            assert!(slower > 1.0 + 1e-6, "slower at {w}: {slower}");
        }
        // A ×1.5 body shift in one window of 25 canary requests is already evidence.
        let bounds = crate::analysis::histogram::log_bounds();
        let mut t = BucketTest::new(1.0);
        t.update(&window(&bounds, 0, 25.0), &window(&bounds, 5, 1.25), 0.05);
        assert!(t.log_e() > 0.1, "{}", t.log_e());
        // With the baseline's history the same window is more evidence: the bets are
        // placed where the baseline's requests are, not where a prior guessed them.
        let mut h = BucketTest::new(1.0);
        h.learn_history(&window(&bounds, 0, 500.0));
        h.update(&window(&bounds, 0, 25.0), &window(&bounds, 5, 1.25), 0.05);
        assert!(
            h.log_e() > t.log_e() + 0.5,
            "{} vs {}",
            h.log_e(),
            t.log_e()
        );
    }

    fn cbor<T: serde::Serialize>(v: &T) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(v, &mut out).expect("encode");
        out
    }

    fn window(bounds: &[f64], shift: usize, n: f64) -> Histogram {
        let k = bounds.len();
        let counts = (0..k)
            .map(|i| {
                if (40 + shift..60 + shift).contains(&i) {
                    n
                } else {
                    0.0
                }
            })
            .collect();
        Histogram::try_new(bounds.to_vec(), counts).expect("histogram")
    }

    /// The stored state is the bounds and the margin, not the maps (6 ladder steps × 163
    /// buckets of indices and resolved margins were most of a rollout record, rewritten at
    /// every tick); the loaded test goes on exactly as the one that was stored.
    #[test]
    fn the_layout_is_stored_as_its_bounds_and_rebuilt_on_load() {
        let bounds = crate::analysis::histogram::log_bounds();
        let mut t = BucketTest::new(1.1);
        for _ in 0..5 {
            t.update(&window(&bounds, 0, 30.0), &window(&bounds, 3, 3.0), 0.1);
        }
        let bytes = cbor(&t);
        let layout_only = cbor(t.layout.as_ref().expect("layout"));
        assert!(
            layout_only.len() < 12 * bounds.len(),
            "{} bytes",
            layout_only.len()
        );
        let mut back: BucketTest = ciborium::from_reader(bytes.as_slice()).expect("decode");
        let (l, b) = (t.layout.as_ref().unwrap(), back.layout.as_ref().unwrap());
        assert_eq!((&l.maps, &l.resolved), (&b.maps, &b.resolved));
        t.update(&window(&bounds, 0, 30.0), &window(&bounds, 3, 3.0), 0.1);
        back.update(&window(&bounds, 0, 30.0), &window(&bounds, 3, 3.0), 0.1);
        assert_eq!(t.log_e().to_bits(), back.log_e().to_bits());
        assert!(t.log_e() > 0.0, "a slower canary gathers evidence");
    }

    /// A record written before (the maps stored, no margin) loads with its maps and is
    /// stored the same way again; a layout with neither is refused, not guessed.
    #[test]
    fn a_layout_from_an_older_record_keeps_its_maps() {
        let bounds = crate::analysis::histogram::log_bounds();
        let l = Layout::new(&bounds, 2.0);
        let old = LayoutWire {
            bounds: l.bounds.clone(),
            allowed: None,
            maps: Some(l.maps.clone()),
            resolved: Some(l.resolved.clone()),
        };
        let back: Layout = ciborium::from_reader(cbor(&old).as_slice()).expect("decode");
        assert_eq!((&back.maps, &back.resolved), (&l.maps, &l.resolved));
        let again: Layout = ciborium::from_reader(cbor(&back).as_slice()).expect("decode");
        assert_eq!(again.maps, l.maps);
        let neither = LayoutWire {
            bounds: l.bounds.clone(),
            allowed: None,
            maps: None,
            resolved: None,
        };
        assert!(ciborium::from_reader::<Layout, _>(cbor(&neither).as_slice()).is_err());
    }
}

/// How close the fixed bet shapes come to the best a one-sided test can do, per request
/// (statistics.md §2.5, "Rates"): exact expected log-growth from the bucket probabilities
/// of the accuracy benchmark's latency model (`benches/accuracy/sim.rs`), no sampling.
#[cfg(test)]
mod rates {
    use super::*;
    use crate::analysis::histogram::log_bounds;
    use crate::analysis::special::norm_cdf;

    type Cdf = Box<dyn Fn(f64) -> f64>;

    /// The benchmark's baseline CDF: log-normal body (median 50 ms, σ 0.5), a 2 % Pareto
    /// tail (shape 1.5) from the body's p98, 0.05 % timeouts at 30 s.
    fn baseline(x: f64) -> f64 {
        if x <= 0.0 {
            return 0.0;
        }
        let xm = 0.05 * (0.5f64 * 2.054).exp();
        let body = norm_cdf((x / 0.05).ln() / 0.5);
        let tail = if x < xm {
            0.0
        } else {
            1.0 - (xm / x).powf(1.5)
        };
        let timeout = if x >= 30.0 { 1.0 } else { 0.0 };
        0.9795 * body + 0.02 * tail + 0.0005 * timeout
    }

    fn probs(bounds: &[f64], cdf: &dyn Fn(f64) -> f64) -> Vec<f64> {
        let mut prev = 0.0;
        bounds
            .iter()
            .map(|b| {
                let c = if b.is_finite() { cdf(*b) } else { 1.0 };
                let p = (c - prev).max(0.0);
                prev = c.max(prev);
                p
            })
            .collect()
    }

    /// Expected ln-growth per request of the bet with log odds `eta` at share `w`.
    fn rate(eta: &[f64], pb: &[f64], pc: &[f64], w: f64) -> f64 {
        let logit_w = (w / (1.0 - w)).ln();
        let mut r = 0.0;
        for ((b, c), e) in pb.iter().zip(pc).zip(eta) {
            let x = logit_w + e;
            if *c > 0.0 {
                r += w * c * (ln_sigmoid(x) - w.ln());
            }
            if *b > 0.0 {
                r += (1.0 - w) * b * (ln_sigmoid(-x) - (1.0 - w).ln());
            }
        }
        r
    }

    /// (the best non-decreasing bet's rate, the best fixed bet's rate), both over the
    /// oracle's (the exact likelihood ratio).
    fn best_rates(bounds: &[f64], canary: &dyn Fn(f64) -> f64) -> (f64, f64) {
        let w = 0.05;
        let (pb, pc) = (probs(bounds, &baseline), probs(bounds, canary));
        let log_odds = |p: f64| {
            let p = p.clamp(1e-12, 1.0 - 1e-12);
            (p / (1.0 - p)).ln()
        };
        let oracle: Vec<f64> = pb
            .iter()
            .zip(&pc)
            .map(|(b, c)| log_odds(c / (b + c)))
            .collect();
        let o = rate(&oracle, &pb, &pc, w);
        // The isotonic fit of the shares at ½ pools the same buckets as at any share, so
        // it is the best non-decreasing bet at w too.
        let points: Vec<(f64, f64)> = pb
            .iter()
            .zip(&pc)
            .map(|(b, c)| (c / (b + c), b + c))
            .collect();
        let monotone: Vec<f64> = isotonic_increasing(&points)
            .into_iter()
            .map(log_odds)
            .collect();
        let mut t = BucketTest::new(1.0);
        let history = pb.iter().map(|p| p * 1e7).collect();
        t.learn_history(&Histogram::try_new(bounds.to_vec(), history).unwrap());
        let (scores, steps) = (t.scores().unwrap(), t.step_thresholds().unwrap());
        let best = t
            .bets
            .iter()
            .filter_map(|b| match *b {
                Bet::Tilt(k) => Some(scores.iter().map(|s| k * s - k * k / 2.0).collect()),
                Bet::Step(q, rho) => steps[q].map(|i| {
                    (0..bounds.len())
                        .map(|j| if j > i { rho.ln() } else { 0.0 })
                        .collect::<Vec<f64>>()
                }),
                Bet::Iso(_) => None,
            })
            .map(|eta| rate(&eta, &pb, &pc, w))
            .fold(f64::NEG_INFINITY, f64::max);
        (rate(&monotone, &pb, &pc, w) / o, best / o)
    }

    #[test]
    fn fixed_bets_are_near_the_best_one_sided_bet() {
        let mut doubling: Vec<f64> = (0..14).map(|i| 0.005 * 2f64.powi(i)).collect();
        doubling.push(f64::INFINITY);
        let q95 = {
            let (mut lo, mut hi) = (1e-6f64, 100.0f64);
            for _ in 0..100 {
                let mid = (lo * hi).sqrt();
                if baseline(mid) < 0.95 {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            hi
        };
        let tail = move |x: f64| {
            if x < q95 {
                baseline(x)
            } else if x < q95 * 1.5 {
                baseline(q95)
            } else {
                baseline(x / 1.5)
            }
        };
        let cases: [(&str, Cdf); 5] = [
            ("×1.1", Box::new(|x| baseline(x / 1.1))),
            ("×1.25", Box::new(|x| baseline(x / 1.25))),
            ("×1.5", Box::new(|x| baseline(x / 1.5))),
            ("tail ×1.5", Box::new(tail)),
            (
                "bimodal",
                Box::new(|x| 0.95 * baseline(x) + 0.05 * baseline(x - 0.2)),
            ),
        ];
        for (layout, bounds) in [("built-in", log_bounds()), ("×2", doubling)] {
            for (name, canary) in &cases {
                let (monotone, best) = best_rates(&bounds, canary.as_ref());
                eprintln!(
                    "{layout} buckets, {name}: per request, the best non-decreasing bet {monotone:.3} of the oracle's rate, the best fixed bet {best:.3} ({:.0} % of the first)",
                    100.0 * best / monotone
                );
                assert!(monotone > 0.0 && monotone <= 1.0 + 1e-9, "{monotone}");
                assert!(best <= monotone + 1e-9, "a fixed bet beat the best one");
                assert!(
                    best >= 0.84 * monotone,
                    "{layout} {name}: {best} of {monotone}"
                );
            }
        }
    }
}
