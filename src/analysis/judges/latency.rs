//! The sequential judge on latency histograms (statistics.md §2.2 and §2.5).
//!
//! Two tests, chosen by the policy's `test` key: `buckets` (the default, [`crate::analysis::bucket_test`])
//! compares the arms over every bucket of the histograms; `slow-thresholds`
//! ([`crate::analysis::slow_thresholds`]) compares their slow-request rates at a few thresholds. Both
//! are anytime-valid for any latency distribution under per-window shares and load that
//! varies over time, and both judge an allowed slowdown `m` at the largest margin at most
//! `m` the buckets represent ([`crate::analysis::resolution`]), never looser than the policy says.
//!
//! This module holds what they share: the verdict, a Pass (the conditional event test in
//! the other direction at each reported quantile, statistics.md §2.4.1), the lower bound a
//! Fail reports (the test run at a ladder of larger margins), and the quantiles reported
//! with Howard–Ramdas time-uniform bounds.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::analysis::bucket_test::BucketTest;
use crate::analysis::confseq::cdf_band_epsilon;
use crate::analysis::fmt;
use crate::analysis::histogram::Histogram;
use crate::analysis::observation::{Observation, Segment};
use crate::analysis::resolution::{self, LADDER, Ladder, Resolved};
use crate::analysis::sequential::{EventTest, Prior};
use crate::analysis::share::{ShareMode, ShareTracker};
use crate::analysis::slow_thresholds::SlowThresholdTest;
use crate::analysis::verdict::{MetricVerdict, Outcome, Stats};

/// How slow-request thresholds are chosen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Thresholds {
    /// Baseline quantiles (e.g. 0.5, 0.9, 0.99), from earlier windows.
    Quantiles(Vec<f64>),
    /// Fixed latency bounds in seconds (e.g. SLO bounds), rounded up to bucket bounds.
    Fixed(Vec<f64>),
}

/// Which latency test the sequential judge runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LatencyTest {
    /// Every bucket of the histograms (statistics.md §2.5).
    #[default]
    Buckets,
    /// Slow-request rates at a few thresholds (statistics.md §2.2).
    SlowThresholds,
}

impl LatencyTest {
    /// The policy name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            LatencyTest::Buckets => "buckets",
            LatencyTest::SlowThresholds => "slow-thresholds",
        }
    }
}

/// Settings of the sequential judge on latency.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyJudgeSpec {
    /// Allowed slowdown m: the canary may be this many times slower before it fails
    /// (judged at the largest margin at most m that the buckets represent).
    pub allowed_ratio: f64,
    /// A Pass needs every reported canary quantile's upper bound below this many times the
    /// baseline's lower bound.
    pub pass_ratio: f64,
    /// This metric's share of the false-rollback budget.
    pub alpha: f64,
    /// Which test.
    pub test: LatencyTest,
    /// Thresholds for slow-request events (`slow-thresholds` only).
    pub thresholds: Thresholds,
    /// Quantiles to report with time-uniform bounds.
    pub report_quantiles: Vec<f64>,
    /// Mixture prior over the slow-request rate ratio (`slow-thresholds`, and the pass side
    /// of both tests).
    pub prior: Prior,
    /// Where the canary share comes from.
    pub share: ShareMode,
}

impl LatencyJudgeSpec {
    /// Defaults: no allowed slowdown, the all-buckets test, p50, p90 and p99 reported (and the
    /// slow-thresholds test's thresholds there).
    #[must_use]
    pub fn new(alpha: f64) -> Self {
        LatencyJudgeSpec {
            allowed_ratio: 1.0,
            pass_ratio: 1.25,
            alpha,
            test: LatencyTest::default(),
            thresholds: Thresholds::Quantiles(vec![0.5, 0.9, 0.99]),
            report_quantiles: vec![0.5, 0.9, 0.99],
            prior: Prior::default_latency(),
            share: ShareMode::Assigned,
        }
    }
}

/// One arm-pair quantile with time-uniform bounds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QuantileStat {
    /// The quantile (0..1).
    pub q: f64,
    /// Baseline estimate, seconds.
    pub baseline: f64,
    /// Canary estimate, seconds.
    pub canary: f64,
    /// Baseline bounds.
    pub baseline_ci: [f64; 2],
    /// Canary bounds.
    pub canary_ci: [f64; 2],
    /// Canary / baseline.
    pub ratio: f64,
}

/// One slow-request threshold's test.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SlowStat {
    /// What chose this threshold: the baseline quantile, or `null` for a fixed bound.
    pub q: Option<f64>,
    /// Latest baseline threshold, seconds.
    pub baseline_threshold: f64,
    /// Latest canary threshold: the largest bucket bound at most allowed ratio × baseline
    /// threshold, seconds.
    pub canary_threshold: f64,
    /// `canary_threshold / baseline_threshold`: the margin judged at (≤ allowed ratio).
    pub effective_ratio: f64,
    /// Slow baseline requests so far.
    pub baseline_slow: f64,
    /// Slow canary requests so far.
    pub canary_slow: f64,
    /// Natural log of this threshold's e-value.
    pub log_e: f64,
    /// Slow-request rate ratio estimate.
    pub ratio: f64,
}

/// The numbers behind a latency verdict.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencyStats {
    /// Which latency test: `buckets` or `slow-thresholds`.
    pub test: &'static str,
    /// Baseline requests so far.
    pub baseline_requests: f64,
    /// Canary requests so far.
    pub canary_requests: f64,
    /// Canary share in force for the latest window.
    pub share: f64,
    /// Reported quantiles.
    pub quantiles: Vec<QuantileStat>,
    /// Slow-request tests (`slow-thresholds`; empty for `buckets`).
    pub thresholds: Vec<SlowStat>,
    /// Natural log of the e-value.
    pub log_e: f64,
    /// Natural log of the rejection threshold 1/α.
    pub log_threshold: f64,
    /// Anytime-valid p-value.
    pub p_value: f64,
    /// This metric's α.
    pub alpha: f64,
    /// Allowed slowdown, as the policy says.
    pub allowed_ratio: f64,
    /// The margin the test judged at: the smallest canary bound ÷ baseline threshold used
    /// so far (at most `allowed_ratio`, at least 1; `null` before the first judged window).
    /// The false-rollback guarantee holds for canaries at most this many times slower.
    pub effective_ratio: f64,
    /// Pass threshold on the slowdown's upper bound.
    pub pass_ratio: f64,
    /// On a Fail, the (1 − α) lower confidence bound the test implies: it rejected every
    /// slowdown up to and including this margin, so the canary is more than this many
    /// times slower (`null` while nothing is rejected).
    pub slowdown_lower: Option<f64>,
    /// Upper confidence bound on the slowdown, once every reported quantile has passed: the
    /// largest canary bound ÷ baseline threshold at which the canary was shown less often
    /// slow than the baseline (bucket edges, always below `pass_ratio`); `null` until then.
    pub slowdown_upper: Option<f64>,
    /// What the buckets could not resolve, when they could not (see [`crate::analysis::resolution`]).
    pub resolution: Option<String>,
}

/// The test behind a latency judge.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Test {
    Buckets(Box<BucketTest>),
    Slow(SlowThresholdTest),
}

impl Test {
    fn update(&mut self, earlier: Option<&Histogram>, b: &Histogram, c: &Histogram, w: f64) {
        match self {
            Test::Buckets(t) => t.update(b, c, w),
            Test::Slow(t) => t.update(earlier, b, c, w),
        }
    }

    fn log_e(&self) -> f64 {
        match self {
            Test::Buckets(t) => t.log_e(),
            Test::Slow(t) => t.log_e(),
        }
    }

    fn ladder(&self) -> &Ladder {
        match self {
            Test::Buckets(t) => t.ladder(),
            Test::Slow(t) => t.ladder(),
        }
    }

    fn evidence(&self) -> String {
        match self {
            Test::Buckets(t) => t.evidence(),
            Test::Slow(t) => t.evidence(),
        }
    }

    fn slot_stats(&self) -> Vec<SlowStat> {
        match self {
            Test::Buckets(_) => Vec::new(),
            Test::Slow(t) => t.slot_stats(),
        }
    }
}

/// Incremental state of the sequential judge on latency.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LatencyJudge {
    spec: LatencyJudgeSpec,
    test: Test,
    baseline: Option<Histogram>,
    canary: Option<Histogram>,
    pass: PassTest,
    share: f64,
    shares: ShareTracker,
}

impl LatencyJudge {
    /// A fresh judge.
    #[must_use]
    pub fn new(spec: LatencyJudgeSpec) -> Self {
        let test = match spec.test {
            LatencyTest::Buckets => Test::Buckets(Box::new(BucketTest::new(spec.allowed_ratio))),
            LatencyTest::SlowThresholds => Test::Slow(SlowThresholdTest::new(
                &spec.thresholds,
                &spec.prior,
                spec.allowed_ratio,
                spec.alpha,
            )),
        };
        LatencyJudge {
            shares: ShareTracker::new(spec.share),
            pass: PassTest::new(&spec),
            spec,
            test,
            baseline: None,
            canary: None,
            share: f64::NAN,
        }
    }

    fn log_threshold(&self) -> f64 {
        -self.spec.alpha.ln()
    }

    fn rejected(&self) -> bool {
        self.test.ladder().max_log_e()[0] >= self.log_threshold()
    }

    /// The largest judged-at margin among the ladder margins the test has rejected.
    fn slowdown_lower(&self) -> Option<f64> {
        let thr = self.log_threshold();
        let (max, eff) = (
            self.test.ladder().max_log_e(),
            self.test.ladder().effective(),
        );
        // The e-values decrease along the ladder on every path (the canary is compared
        // with lower baseline buckets), so the rejected margins are a prefix of it.
        (0..LADDER.len())
            .take_while(|&n| max[n] >= thr)
            .last()
            .map(|n| eff[n])
            .filter(|x| x.is_finite())
    }

    /// Whether [`Self::learn_history`] is used: by the all-buckets test only.
    #[must_use]
    pub fn learns_history(&self) -> bool {
        matches!(self.test, Test::Buckets(_))
    }

    /// Learns from the baseline's requests before the rollout (the segments' baseline
    /// histograms; their canary side is ignored): the all-buckets test bets with that
    /// distribution from the first window on. It is no evidence and appears in no count or
    /// quantile reported; the slow-threshold test does not use it. Before the first window
    /// a second call replaces the first (a controller that takes over a rollout still in
    /// its pre-checks reads the history again).
    pub fn learn_history(&mut self, segs: &[Segment]) {
        let Test::Buckets(t) = &mut self.test else {
            return;
        };
        t.forget_history();
        for seg in segs {
            // Only requests served while the canary had none are history.
            if let (true, Observation::Histogram(b)) = (seg.share == 0.0, &seg.baseline) {
                t.learn_history(b);
            }
        }
    }

    /// Adds one window and returns the verdict so far.
    pub fn observe(&mut self, metric: &str, seg: &Segment) -> MetricVerdict {
        let verdict = |outcome, reason: String, stats| MetricVerdict {
            metric: metric.to_string(),
            judge: "sequential",
            outcome,
            reason,
            stats,
        };
        let (b, c) = match (&seg.baseline, &seg.canary) {
            (Observation::Histogram(b), Observation::Histogram(c)) => (b, c),
            (Observation::Missing, _) | (_, Observation::Missing) => {
                let outcome = if self.rejected() {
                    Outcome::Fail
                } else {
                    Outcome::NoData
                };
                let stats = self.stats();
                let reason = if self.rejected() {
                    self.reason(&stats)
                } else {
                    "no data for this window".to_string()
                };
                return verdict(outcome, reason, Stats::SlowEvents(stats));
            }
            (b, c) => {
                return verdict(
                    Outcome::NoData,
                    format!(
                        "expected histograms, got {} and {}",
                        b.shape().map_or("nothing", |s| s.as_str()),
                        c.shape().map_or("nothing", |s| s.as_str())
                    ),
                    Stats::None,
                );
            }
        };
        if b.bounds() != c.bounds() {
            return verdict(
                Outcome::NoData,
                "baseline and canary histograms have different buckets".to_string(),
                Stats::None,
            );
        }
        let share = self.shares.share(seg.share, Some((b.total(), c.total())));
        self.share = share;
        // Thresholds and bets from earlier windows only: chosen before this one is merged.
        self.test.update(self.baseline.as_ref(), b, c, share);
        self.pass.update(self.baseline.as_ref(), b, c, share);
        merge_into(&mut self.baseline, b);
        merge_into(&mut self.canary, c);

        let (nb, nc) = self.requests();
        let stats = self.stats();
        let outcome = if self.rejected() {
            Outcome::Fail
        } else if nb <= 0.0 || nc <= 0.0 {
            Outcome::NoData
        } else if stats
            .slowdown_upper
            .is_some_and(|u| u < self.spec.pass_ratio)
        {
            Outcome::Pass
        } else {
            Outcome::Inconclusive
        };
        let reason = if outcome == Outcome::NoData {
            format!("no requests yet (baseline {nb}, canary {nc})")
        } else {
            self.reason(&stats)
        };
        verdict(outcome, reason, Stats::SlowEvents(stats))
    }

    fn requests(&self) -> (f64, f64) {
        (
            self.baseline.as_ref().map_or(0.0, Histogram::total),
            self.canary.as_ref().map_or(0.0, Histogram::total),
        )
    }

    fn stats(&self) -> LatencyStats {
        let (nb, nc) = self.requests();
        let quantiles = quantile_stats(
            self.baseline.as_ref(),
            self.canary.as_ref(),
            &self.spec.report_quantiles,
            self.spec.alpha,
        );
        let thresholds = self.test.slot_stats();
        let effective = self.test.ladder().effective()[0];
        let pass_note = self.pass.note(self.spec.pass_ratio);
        let fail_note = self
            .test
            .ladder()
            .coarsest()
            .and_then(|r| r.fail_note(self.spec.allowed_ratio));
        let resolution = match (fail_note, pass_note) {
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
            (a, b) => a.or(b),
        };
        LatencyStats {
            test: self.spec.test.as_str(),
            baseline_requests: nb,
            canary_requests: nc,
            share: self.share,
            slowdown_upper: self.pass.upper(),
            quantiles,
            thresholds,
            log_e: self.test.log_e(),
            log_threshold: self.log_threshold(),
            p_value: (-self.test.ladder().max_log_e()[0]).exp().min(1.0),
            alpha: self.spec.alpha,
            allowed_ratio: self.spec.allowed_ratio,
            effective_ratio: if effective.is_finite() {
                effective
            } else {
                f64::NAN
            },
            pass_ratio: self.spec.pass_ratio,
            slowdown_lower: if self.rejected() {
                self.slowdown_lower()
            } else {
                None
            },
            resolution,
        }
    }

    fn reason(&self, s: &LatencyStats) -> String {
        format!(
            "{}{}; {}",
            quantile_summary(&s.quantiles),
            self.test.evidence(),
            verdict_summary(s, self.test.ladder().max_log_e()[0], self.rejected())
        )
    }
}

/// The pass side (statistics.md §2.4.1): for each reported quantile q, a one-sided test of
/// "the canary's requests slower than c are at least as frequent as the baseline's slower
/// than τ", τ the baseline's q-quantile bound (fixed once earlier windows hold about 20
/// requests above it) and c the largest bound *below* `pass_ratio`·τ. Rejecting it for
/// every quantile shows, at level α, that the canary is less than c/τ (< `pass_ratio`)
/// times slower there; the bound is a bucket ratio, so no Pass is finer than the buckets.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PassTest {
    pass_ratio: f64,
    slots: Vec<PassSlot>,
    bounds: Option<Vec<f64>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct PassSlot {
    q: f64,
    /// (baseline threshold index, canary bound index), fixed once chosen.
    at: Option<(usize, usize)>,
    /// Baseline events against canary events, share 1 − w: rejects "canary rate ≥
    /// baseline rate".
    test: EventTest,
}

impl PassTest {
    fn new(spec: &LatencyJudgeSpec) -> Self {
        PassTest {
            pass_ratio: spec.pass_ratio,
            slots: spec
                .report_quantiles
                .iter()
                .map(|&q| PassSlot {
                    q,
                    at: None,
                    test: EventTest::new(spec.prior.clone(), 1.0, spec.alpha)
                        .tracking_lower_bound(false),
                })
                .collect(),
            bounds: None,
        }
    }

    /// Adds a window; thresholds come from `earlier` (the baseline before this window).
    fn update(&mut self, earlier: Option<&Histogram>, b: &Histogram, c: &Histogram, w: f64) {
        if self.bounds.as_deref() != Some(b.bounds()) {
            // New buckets: thresholds and evidence about the old ones no longer apply.
            let fresh: Vec<PassSlot> = self
                .slots
                .iter()
                .map(|s| PassSlot {
                    q: s.q,
                    at: None,
                    test: s.test.fresh(),
                })
                .collect();
            self.slots = fresh;
            self.bounds = Some(b.bounds().to_vec());
        }
        let bounds = b.bounds();
        for slot in &mut self.slots {
            if slot.at.is_none()
                && let Some(h) = earlier.filter(|h| h.bounds() == bounds)
                && let Some(i) = h.quantile_bucket(slot.q).filter(|&i| bounds[i].is_finite())
                && h.count_above(i) >= 20.0
            {
                slot.at = Some((i, pass_bound(bounds, i, self.pass_ratio)));
            }
            if let Some((i, ci)) = slot.at {
                slot.test
                    .update(1.0 - w, b.count_above(i), c.count_above(ci));
            }
        }
    }

    /// The largest margin c/τ over the quantiles, once every one has passed.
    fn upper(&self) -> Option<f64> {
        let bounds = self.bounds.as_ref()?;
        let mut worst: f64 = 0.0;
        for s in &self.slots {
            let (i, ci) = s.at?;
            if !s.test.rejected() {
                return None;
            }
            worst = worst.max(bounds[ci] / bounds[i]);
        }
        (!self.slots.is_empty()).then_some(worst)
    }

    /// Where the buckets make `pass_ratio` unreachable except for a faster canary.
    fn note(&self, pass_ratio: f64) -> Option<String> {
        let bounds = self.bounds.as_ref()?;
        let resolved = self
            .slots
            .iter()
            .filter_map(|s| s.at)
            .map(|(i, _)| Resolved::at_threshold(bounds, i, 1.0));
        resolution::widest(resolved)?.pass_note(pass_ratio)
    }
}

/// Index of the largest bound strictly below `p·bounds[i]` (at least `i`): the pass side
/// rounds the other way, so a Pass never claims a finer margin than the buckets show.
fn pass_bound(bounds: &[f64], i: usize, p: f64) -> usize {
    let c = resolution::canary_bound(bounds, i, p);
    if c > i && bounds[c] >= p * bounds[i] * (1.0 - 1e-9) {
        c - 1
    } else {
        c
    }
}

/// The reported quantiles with Howard–Ramdas bounds, each arm's band at α/2.
fn quantile_stats(
    baseline: Option<&Histogram>,
    canary: Option<&Histogram>,
    qs: &[f64],
    alpha: f64,
) -> Vec<QuantileStat> {
    let (Some(b), Some(c)) = (baseline, canary) else {
        return Vec::new();
    };
    let (nb, nc) = (b.total(), c.total());
    if !(nb > 0.0 && nc > 0.0) {
        return Vec::new();
    }
    let eb = cdf_band_epsilon(nb, alpha / 2.0);
    let ec = cdf_band_epsilon(nc, alpha / 2.0);
    qs.iter()
        .map(|&q| {
            let (bl, bh) = b.quantile_bounds(q, eb);
            let (cl, ch) = c.quantile_bounds(q, ec);
            let (bq, cq) = (b.quantile(q), c.quantile(q));
            QuantileStat {
                q,
                baseline: bq,
                canary: cq,
                baseline_ci: [bl, bh],
                canary_ci: [cl, ch],
                ratio: cq / bq,
            }
        })
        .collect()
}

fn quantile_summary(qs: &[QuantileStat]) -> String {
    qs.iter()
        .map(|q| {
            format!(
                "p{} canary {} vs baseline {} (×{})",
                fmt_q(q.q),
                fmt::secs(q.canary),
                fmt::secs(q.baseline),
                fmt::num(q.ratio)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The verdict part of a latency reason: on a Fail, the margin judged at and the test's own
/// lower bound (never another construction's interval); otherwise the e-value and, when it
/// can be computed, the upper bound a Pass needs below `pass_ratio`.
fn verdict_summary(s: &LatencyStats, max_log_e: f64, rejected: bool) -> String {
    let mut out = if rejected {
        let judged = if s.effective_ratio.is_finite() {
            s.effective_ratio
        } else {
            s.allowed_ratio
        };
        let mut v = format!(
            "e-value {} reached {} (1/α): canary slower than {}× baseline",
            fmt::evalue(s.log_e.max(max_log_e)),
            fmt::evalue(s.log_threshold),
            fmt::num_short(judged),
        );
        if let Some(l) = s.slowdown_lower {
            let _ = write!(
                v,
                " (the test rejects every slowdown up to ×{}, a {:.1}% lower confidence bound)",
                fmt::num_short(l),
                (1.0 - s.alpha) * 100.0
            );
        }
        v
    } else {
        let mut v = format!(
            "e-value {}, needs {} to fail",
            fmt::evalue(s.log_e),
            fmt::evalue(s.log_threshold)
        );
        if let Some(u) = s.slowdown_upper {
            let _ = write!(
                v,
                "; slowdown below ×{} at every reported quantile ({:.1}% confidence), passes below ×{}",
                fmt::num_short(u),
                (1.0 - s.alpha) * 100.0,
                fmt::num_short(s.pass_ratio)
            );
        }
        v
    };
    if let Some(note) = &s.resolution {
        out.push_str("; ");
        out.push_str(note);
    }
    out
}

fn fmt_q(q: f64) -> String {
    let p = q * 100.0;
    if (p - p.round()).abs() < 1e-9 {
        format!("{p:.0}")
    } else {
        format!("{p}")
    }
}

fn merge_into(acc: &mut Option<Histogram>, h: &Histogram) {
    match acc {
        Some(a) => {
            if a.merge(h).is_err() {
                // Buckets changed (a re-deployed exporter): start again from this window.
                *acc = Some(h.clone());
            }
        }
        None => *acc = Some(h.clone()),
    }
}

/// What the histogram's buckets cannot resolve for this metric, for `validate --preflight`:
/// the allowed ratio where the canary's bound had to be rounded down (over the thresholds
/// the test would use on `h`: the slow-thresholds test's, or for the all-buckets test
/// every bound inside the data; every bound when `h` is empty) and a pass ratio finer than
/// the buckets. Empty when the buckets resolve both.
#[must_use]
pub fn resolution_notes(spec: &LatencyJudgeSpec, h: &Histogram) -> Vec<String> {
    let bounds = h.bounds();
    let finite: Vec<usize> = (0..bounds.len())
        .filter(|&i| bounds[i].is_finite())
        .collect();
    let has_data = h.total() > 0.0;
    let inside: Vec<usize> = if has_data {
        let counts = h.counts();
        let first = counts.iter().position(|c| *c > 0.0).unwrap_or(0);
        let last = counts.iter().rposition(|c| *c > 0.0).unwrap_or(0);
        finite
            .iter()
            .copied()
            .filter(|&i| i >= first && i < last.max(first + 1))
            .collect()
    } else {
        finite.clone()
    };
    let at: Vec<usize> = match (&spec.test, &spec.thresholds) {
        (LatencyTest::Buckets, _) => inside,
        (LatencyTest::SlowThresholds, Thresholds::Fixed(ts)) => {
            ts.iter().filter_map(|t| h.bound_at_or_above(*t)).collect()
        }
        (LatencyTest::SlowThresholds, Thresholds::Quantiles(qs)) if has_data => qs
            .iter()
            .filter_map(|q| h.quantile_bucket(*q))
            .filter(|&i| bounds[i].is_finite())
            .collect(),
        (LatencyTest::SlowThresholds, Thresholds::Quantiles(_)) => finite.clone(),
    };
    let pass_at: Vec<usize> = if has_data {
        spec.report_quantiles
            .iter()
            .filter_map(|q| h.quantile_bucket(*q))
            .filter(|&i| bounds[i].is_finite())
            .collect()
    } else {
        finite
    };
    let fail = resolution::coarsest(
        at.iter()
            .map(|&i| Resolved::at_threshold(bounds, i, spec.allowed_ratio)),
    )
    .and_then(|r| r.fail_note(spec.allowed_ratio));
    let pass = resolution::widest(
        pass_at
            .iter()
            .map(|&i| Resolved::at_threshold(bounds, i, 1.0)),
    )
    .and_then(|r| r.pass_note(spec.pass_ratio));
    fail.into_iter().chain(pass).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::histogram::log_bounds;

    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use std::cell::RefCell;

    thread_local! {
        // Each test runs on its own thread: a fixed seed per test, whatever the order.
        static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::seed_from_u64(20_261_122));
    }

    /// `n` log-normal latencies (σ = 0.5) with this median, sampled, over `bounds`.
    fn sample(bounds: Vec<f64>, n: usize, median: f64) -> Histogram {
        let mut counts = vec![0.0; bounds.len()];
        RNG.with(|r| {
            let mut rng = r.borrow_mut();
            for _ in 0..n {
                let z = crate::analysis::special::norm_ppf(rng.random::<f64>().max(1e-300));
                let x = median * (0.5 * z).exp();
                let b = bounds.partition_point(|b| *b < x).min(bounds.len() - 1);
                counts[b] += 1.0;
            }
        });
        Histogram::try_new(bounds, counts).unwrap()
    }

    /// On the built-in buckets (9 % apart).
    fn hist(n: usize, median: f64) -> Histogram {
        sample(log_bounds(), n, median)
    }

    /// Classic Prometheus buckets doubling at each bound: 5, 10, 20, … ms, then `+∞`.
    fn coarse(n: usize, median: f64) -> Histogram {
        let mut bounds: Vec<f64> = (0..13).map(|i| 0.005 * 2f64.powi(i)).collect();
        bounds.push(f64::INFINITY);
        sample(bounds, n, median)
    }

    fn seg(w: f64, b: Histogram, c: Histogram) -> Segment {
        Segment {
            share: w,
            baseline: Observation::Histogram(b),
            canary: Observation::Histogram(c),
        }
    }

    const TESTS: [LatencyTest; 2] = [LatencyTest::Buckets, LatencyTest::SlowThresholds];

    fn spec(test: LatencyTest, alpha: f64) -> LatencyJudgeSpec {
        let mut s = LatencyJudgeSpec::new(alpha);
        s.test = test;
        s
    }

    #[test]
    fn slower_canary_fails() {
        for test in TESTS {
            let mut j = LatencyJudge::new(spec(test, 0.05));
            let mut out = Outcome::Inconclusive;
            for _ in 0..20 {
                out = j
                    .observe("latency", &seg(0.05, hist(950, 0.02), hist(50, 0.03)))
                    .outcome;
            }
            assert_eq!(out, Outcome::Fail, "{test:?}");
        }
    }

    #[test]
    fn same_latency_does_not_fail_and_reports_quantiles() {
        for test in TESTS {
            same_latency_does_not_fail(test);
        }
    }

    fn same_latency_does_not_fail(test: LatencyTest) {
        let mut j = LatencyJudge::new(spec(test, 0.05));
        let mut v = None;
        for _ in 0..50 {
            v = Some(j.observe("latency", &seg(0.25, hist(750, 0.02), hist(250, 0.02))));
        }
        let v = v.unwrap();
        assert_ne!(v.outcome, Outcome::Fail, "{}", v.reason);
        let Stats::SlowEvents(s) = &v.stats else {
            panic!("stats")
        };
        assert_eq!(s.quantiles.len(), 3);
        assert!((s.quantiles[0].baseline - 0.02).abs() < 0.003);
        assert!(s.quantiles[0].canary_ci[0] <= s.quantiles[0].canary);
    }

    #[test]
    fn allowed_slowdown_is_tolerated() {
        for test in TESTS {
            let mut spec = spec(test, 0.05);
            spec.allowed_ratio = 1.25;
            let mut j = LatencyJudge::new(spec);
            for _ in 0..50 {
                let v = j.observe("latency", &seg(0.25, hist(750, 0.02), hist(250, 0.022)));
                assert_ne!(v.outcome, Outcome::Fail, "{test:?}: {}", v.reason);
            }
        }
    }

    /// Issue 10, item 1: with buckets doubling at each bound, a canary 1.5× slower under
    /// `allowed_ratio = 1.1` was promoted, because the canary's bound 1.1·τ was rounded up
    /// to the next bucket (2·τ). It must fail, and say it judged at ×1.0.
    #[test]
    fn coarse_buckets_never_loosen_the_allowed_ratio() {
        for test in TESTS {
            let mut spec = spec(test, 0.01);
            spec.allowed_ratio = 1.1;
            let mut j = LatencyJudge::new(spec);
            let mut v = None;
            for _ in 0..60 {
                v = Some(j.observe("latency", &seg(0.05, coarse(950, 0.02), coarse(50, 0.03))));
            }
            let v = v.unwrap();
            assert_eq!(v.outcome, Outcome::Fail, "{test:?}: {}", v.reason);
            assert!(v.reason.contains("judged at ×1.0"), "{}", v.reason);
        }
    }

    #[test]
    fn coarse_buckets_same_latency_does_not_fail() {
        for test in TESTS {
            coarse_same_latency(test);
        }
    }

    fn coarse_same_latency(test: LatencyTest) {
        let mut spec = spec(test, 0.01);
        spec.allowed_ratio = 1.1;
        let mut j = LatencyJudge::new(spec);
        let mut v = None;
        for _ in 0..100 {
            v = Some(j.observe("latency", &seg(0.25, coarse(750, 0.02), coarse(250, 0.02))));
            assert_ne!(v.as_ref().unwrap().outcome, Outcome::Fail);
        }
        let Stats::SlowEvents(s) = v.unwrap().stats else {
            panic!("stats")
        };
        assert_eq!(s.effective_ratio, 1.0);
        assert!(s.resolution.unwrap().contains("judged at ×1.0"));
        // ×2 buckets cannot show a same-latency canary within ×1.375 (1.25 × 1.1): no Pass.
        assert_eq!(s.slowdown_upper, None);
    }

    #[test]
    fn fixed_thresholds_round_the_canary_bound_down() {
        let mut spec = spec(LatencyTest::SlowThresholds, 0.01);
        spec.allowed_ratio = 1.1;
        spec.thresholds = Thresholds::Fixed(vec![0.02]);
        let mut j = LatencyJudge::new(spec);
        let mut v = None;
        for _ in 0..60 {
            v = Some(j.observe("latency", &seg(0.05, coarse(950, 0.02), coarse(50, 0.03))));
        }
        let v = v.unwrap();
        assert_eq!(v.outcome, Outcome::Fail, "{}", v.reason);
        let Stats::SlowEvents(s) = v.stats else {
            panic!("stats")
        };
        assert_eq!(s.thresholds[0].canary_threshold, 0.02);
        assert_eq!(s.thresholds[0].effective_ratio, 1.0);
        // The bound the Fail reports is the test's own: at least the margin judged at.
        assert!(s.slowdown_lower.unwrap() >= s.effective_ratio);
    }

    #[test]
    fn representable_margins_are_kept_and_reported() {
        for test in TESTS {
            representable_margins(test);
        }
    }

    fn representable_margins(test: LatencyTest) {
        // ×2 buckets and allowed_ratio 2: the canary's bound is exactly 2τ, no note.
        let mut spec = spec(test, 0.01);
        spec.allowed_ratio = 2.0;
        spec.pass_ratio = 2.5;
        let h = coarse(1000, 0.02);
        assert!(resolution_notes(&spec, &h).is_empty(), "{test:?}");
        let mut j = LatencyJudge::new(spec.clone());
        for _ in 0..40 {
            // Exactly 2× slower is the boundary of the null: not a Fail.
            let v = j.observe("latency", &seg(0.05, coarse(950, 0.02), coarse(50, 0.04)));
            assert_ne!(v.outcome, Outcome::Fail, "{test:?}: {}", v.reason);
        }
        spec.allowed_ratio = 1.1;
        spec.pass_ratio = 1.25;
        let notes = resolution_notes(&spec, &h);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes[0]
                .starts_with("allowed_ratio 1.1 is finer than the histogram's buckets (×2.0 at ")
        );
        assert!(notes[1].starts_with("pass_ratio 1.25 is finer"));
        assert!(notes[1].ends_with("only a canary faster than the baseline can pass"));
        // The built-in buckets (9 % apart) resolve a 1.1 margin down to ×1.09.
        let fine = hist(1000, 0.02);
        let notes = resolution_notes(&spec, &fine);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("judged at ×1.091"), "{notes:?}");
    }

    /// Early pass (`[rollout] early_pass`) needs a reachable, honest Pass: with enough data
    /// a same-latency canary's slowdown bound drops below `pass_ratio`, on fine buckets.
    #[test]
    fn healthy_canary_passes_with_enough_data() {
        for test in TESTS {
            healthy_passes(test);
        }
    }

    fn healthy_passes(test: LatencyTest) {
        let mut j = LatencyJudge::new(spec(test, 0.01));
        let mut v = None;
        // 5 minutes at 5 % and 5 at 25 % of 200 req/s, 5 s windows.
        for i in 0..120 {
            let w = if i < 60 { 0.05 } else { 0.25 };
            let n = 1000.0;
            let (nb, nc) = ((n * (1.0 - w)) as usize, (n * w) as usize);
            v = Some(j.observe("latency", &seg(w, hist(nb, 0.05), hist(nc, 0.05))));
            if v.as_ref().unwrap().outcome == Outcome::Pass {
                eprintln!("passed at window {i}");
                break;
            }
        }
        let v = v.unwrap();
        assert_eq!(v.outcome, Outcome::Pass, "{}", v.reason);
        let Stats::SlowEvents(s) = v.stats else {
            panic!("stats")
        };
        let u = s.slowdown_upper.unwrap();
        assert!(u < 1.25 && u > 1.0, "{u}");
        assert!(v.reason.contains("passes below ×1.25"), "{}", v.reason);
    }

    #[test]
    fn missing_and_mismatched_are_nodata() {
        let mut j = LatencyJudge::new(LatencyJudgeSpec::new(0.05));
        let m = Segment {
            share: 0.05,
            baseline: Observation::Missing,
            canary: Observation::Missing,
        };
        assert_eq!(j.observe("l", &m).outcome, Outcome::NoData);
        let other = Histogram::try_new(vec![0.1, f64::INFINITY], vec![1.0, 0.0]).unwrap();
        assert_eq!(
            j.observe("l", &seg(0.05, hist(10, 0.01), other)).outcome,
            Outcome::NoData
        );
    }
}
