//! The sequential judge on latency histograms (statistics.md §2.2).
//!
//! A request slower than a threshold τ is an event. Under H0 (same latency distribution,
//! per-request assignment) a slow request comes from the canary with probability `w`, so
//! the conditional event test of [`super::sequential`] applies unchanged, and drift that
//! slows both arms cancels. With an allowed slowdown `m0`, the canary's events are counted
//! above `m0·τ` (rounded up to a bucket bound, which only makes the test more conservative):
//! if the canary is at most `m0` times slower, its events are no likelier than the baseline's.
//!
//! Thresholds are the baseline's quantiles estimated from *earlier* windows only (or fixed
//! bounds), so they are predictable and each window's factor keeps its null expectation.
//! The per-threshold e-processes are averaged, which is itself an e-process.
//!
//! For reporting, quantiles of each arm carry Howard–Ramdas time-uniform bounds.

use serde::{Deserialize, Serialize};

use super::confseq::cdf_band_epsilon;
use super::fmt;
use super::histogram::Histogram;
use super::observation::{Observation, Segment};
use super::sequential::{EventTest, Prior};
use super::share::{ShareMode, ShareTracker};
use super::special::log_sum_exp;
use super::verdict::{MetricVerdict, Outcome, Stats};

/// How slow-request thresholds are chosen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Thresholds {
    /// Baseline quantiles (e.g. 0.5, 0.9, 0.99), from earlier windows.
    Quantiles(Vec<f64>),
    /// Fixed latency bounds in seconds (e.g. SLO bounds), rounded up to bucket bounds.
    Fixed(Vec<f64>),
}

/// Settings of the sequential judge on latency.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyJudgeSpec {
    /// Allowed slowdown m0: the canary may be this many times slower before it fails.
    pub allowed_ratio: f64,
    /// A Pass needs every reported canary quantile's upper bound below this many times the
    /// baseline's lower bound.
    pub pass_ratio: f64,
    /// This metric's share of the false-rollback budget.
    pub alpha: f64,
    /// Thresholds for slow-request events.
    pub thresholds: Thresholds,
    /// Quantiles to report with time-uniform bounds.
    pub report_quantiles: Vec<f64>,
    /// Mixture prior over the slow-request rate ratio.
    pub prior: Prior,
    /// Where the canary share comes from.
    pub share: ShareMode,
}

impl LatencyJudgeSpec {
    /// Defaults: no allowed slowdown, thresholds at the baseline's p50, p90 and p99.
    #[must_use]
    pub fn new(alpha: f64) -> Self {
        LatencyJudgeSpec {
            allowed_ratio: 1.0,
            pass_ratio: 1.25,
            alpha,
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
    /// Latest canary threshold (≥ allowed ratio × baseline threshold), seconds.
    pub canary_threshold: f64,
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
    /// Baseline requests so far.
    pub baseline_requests: f64,
    /// Canary requests so far.
    pub canary_requests: f64,
    /// Canary share in force for the latest window.
    pub share: f64,
    /// Reported quantiles.
    pub quantiles: Vec<QuantileStat>,
    /// Slow-request tests.
    pub thresholds: Vec<SlowStat>,
    /// Natural log of the averaged e-value.
    pub log_e: f64,
    /// Natural log of the rejection threshold 1/α.
    pub log_threshold: f64,
    /// Anytime-valid p-value.
    pub p_value: f64,
    /// This metric's α.
    pub alpha: f64,
    /// Allowed slowdown.
    pub allowed_ratio: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Slot {
    q: Option<f64>,
    fixed: Option<f64>,
    test: EventTest,
    last: Option<(f64, f64)>,
}

/// Incremental state of the sequential judge on latency.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LatencyJudge {
    spec: LatencyJudgeSpec,
    slots: Vec<Slot>,
    baseline: Option<Histogram>,
    canary: Option<Histogram>,
    max_log_e: f64,
    share: f64,
    shares: ShareTracker,
}

impl LatencyJudge {
    /// A fresh judge.
    #[must_use]
    pub fn new(spec: LatencyJudgeSpec) -> Self {
        let mk = |q, fixed| Slot {
            q,
            fixed,
            test: EventTest::new(spec.prior.clone(), 1.0, spec.alpha),
            last: None,
        };
        let slots = match &spec.thresholds {
            Thresholds::Quantiles(qs) => qs.iter().map(|q| mk(Some(*q), None)).collect(),
            Thresholds::Fixed(ts) => ts.iter().map(|t| mk(None, Some(*t))).collect(),
        };
        LatencyJudge {
            shares: ShareTracker::new(spec.share),
            spec,
            slots,
            baseline: None,
            canary: None,
            max_log_e: 0.0,
            share: f64::NAN,
        }
    }

    fn log_e(&self) -> f64 {
        if self.slots.is_empty() {
            return 0.0;
        }
        let l: Vec<f64> = self.slots.iter().map(|s| s.test.log_e()).collect();
        log_sum_exp(&l) - (self.slots.len() as f64).ln()
    }

    fn log_threshold(&self) -> f64 {
        -self.spec.alpha.ln()
    }

    fn rejected(&self) -> bool {
        self.max_log_e >= self.log_threshold()
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
                let reason = if self.rejected() {
                    self.reason()
                } else {
                    "no data for this window".to_string()
                };
                return verdict(outcome, reason, Stats::SlowEvents(self.stats()));
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
        // Thresholds from earlier windows only: chosen before this window is merged.
        for slot in &mut self.slots {
            let bi = match (slot.q, slot.fixed) {
                (_, Some(t)) => b.bound_at_or_above(t),
                (Some(q), None) => self
                    .baseline
                    .as_ref()
                    .and_then(|h| h.quantile_bucket(q))
                    .filter(|&i| b.bounds()[i].is_finite()),
                (None, None) => None,
            };
            let Some(bi) = bi else { continue };
            let tau = b.bounds()[bi];
            let Some(ci) = c.bound_at_or_above(tau * self.spec.allowed_ratio) else {
                continue;
            };
            slot.last = Some((tau, c.bounds()[ci]));
            slot.test
                .update(share, c.count_above(ci), b.count_above(bi));
        }
        self.max_log_e = self.max_log_e.max(self.log_e());
        merge_into(&mut self.baseline, b);
        merge_into(&mut self.canary, c);

        let (nb, nc) = self.requests();
        let stats = self.stats();
        let outcome = if self.rejected() {
            Outcome::Fail
        } else if nb <= 0.0 || nc <= 0.0 {
            Outcome::NoData
        } else if !stats.quantiles.is_empty()
            && stats
                .quantiles
                .iter()
                .all(|q| q.canary_ci[1] <= self.spec.pass_ratio * q.baseline_ci[0])
        {
            Outcome::Pass
        } else {
            Outcome::Inconclusive
        };
        let reason = if outcome == Outcome::NoData {
            format!("no requests yet (baseline {nb}, canary {nc})")
        } else {
            self.reason()
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
        // Two arms, each band at α/2.
        let eb = cdf_band_epsilon(nb, self.spec.alpha / 2.0);
        let ec = cdf_band_epsilon(nc, self.spec.alpha / 2.0);
        let quantiles = match (&self.baseline, &self.canary) {
            (Some(b), Some(c)) if nb > 0.0 && nc > 0.0 => self
                .spec
                .report_quantiles
                .iter()
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
                .collect(),
            _ => Vec::new(),
        };
        let thresholds = self
            .slots
            .iter()
            .map(|s| {
                let (bs, cs) = s.test.events();
                let (bt, ct) = s.last.unwrap_or((f64::NAN, f64::NAN));
                SlowStat {
                    q: s.q,
                    baseline_threshold: bt,
                    canary_threshold: ct,
                    baseline_slow: bs,
                    canary_slow: cs,
                    log_e: s.test.log_e(),
                    ratio: s.test.ratio_estimate(),
                }
            })
            .collect();
        LatencyStats {
            baseline_requests: nb,
            canary_requests: nc,
            share: self.share,
            quantiles,
            thresholds,
            log_e: self.log_e(),
            log_threshold: self.log_threshold(),
            p_value: (-self.max_log_e).exp().min(1.0),
            alpha: self.spec.alpha,
            allowed_ratio: self.spec.allowed_ratio,
        }
    }

    fn reason(&self) -> String {
        let s = self.stats();
        let qs: Vec<String> = s
            .quantiles
            .iter()
            .map(|q| {
                format!(
                    "p{} canary {} vs baseline {} (×{})",
                    fmt_q(q.q),
                    fmt::secs(q.canary),
                    fmt::secs(q.baseline),
                    fmt::num(q.ratio)
                )
            })
            .collect();
        let worst = s
            .thresholds
            .iter()
            .filter(|t| t.baseline_threshold.is_finite())
            .max_by(|a, b| a.log_e.total_cmp(&b.log_e));
        let slow = worst.map_or(String::new(), |t| {
            format!(
                "; strongest evidence above {}: canary {} slow vs baseline {}, slow-rate ratio {}",
                fmt::secs(t.baseline_threshold),
                fmt::count(t.canary_slow),
                fmt::count(t.baseline_slow),
                fmt::num(t.ratio)
            )
        });
        let verdict = if self.rejected() {
            format!(
                "e-value {} reached {} (1/α): canary slower than {}× baseline",
                fmt::evalue(s.log_e.max(self.max_log_e)),
                fmt::evalue(s.log_threshold),
                fmt::num(s.allowed_ratio)
            )
        } else {
            format!(
                "e-value {}, needs {} to fail",
                fmt::evalue(s.log_e),
                fmt::evalue(s.log_threshold)
            )
        };
        format!("{}{slow}; {verdict}", qs.join(", "))
    }
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

#[cfg(test)]
mod tests {
    use super::super::histogram::{log_bounds, log_bucket_index};
    use super::*;

    /// Deterministic log-normal-ish histogram: `n` values spread over quantiles.
    fn hist(n: usize, median: f64) -> Histogram {
        let bounds = log_bounds();
        let mut counts = vec![0.0; bounds.len()];
        for i in 0..n {
            let u = (i as f64 + 0.5) / n as f64;
            let z = super::super::special::norm_ppf(u);
            let x = median * (0.5 * z).exp();
            counts[log_bucket_index(x)] += 1.0;
        }
        Histogram::try_new(bounds, counts).unwrap()
    }

    fn seg(w: f64, b: Histogram, c: Histogram) -> Segment {
        Segment {
            share: w,
            baseline: Observation::Histogram(b),
            canary: Observation::Histogram(c),
        }
    }

    #[test]
    fn slower_canary_fails() {
        let mut j = LatencyJudge::new(LatencyJudgeSpec::new(0.05));
        let mut out = Outcome::Inconclusive;
        for _ in 0..20 {
            out = j
                .observe("latency", &seg(0.05, hist(950, 0.02), hist(50, 0.03)))
                .outcome;
        }
        assert_eq!(out, Outcome::Fail);
    }

    #[test]
    fn same_latency_does_not_fail_and_reports_quantiles() {
        let mut j = LatencyJudge::new(LatencyJudgeSpec::new(0.05));
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
        let mut spec = LatencyJudgeSpec::new(0.05);
        spec.allowed_ratio = 1.25;
        let mut j = LatencyJudge::new(spec);
        for _ in 0..50 {
            let v = j.observe("latency", &seg(0.25, hist(750, 0.02), hist(250, 0.022)));
            assert_ne!(v.outcome, Outcome::Fail, "{}", v.reason);
        }
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
