//! The sequential judge on counts: the conditional error-event test with the traffic share
//! in force for each window (statistics.md §2.1), made into a verdict with its numbers.

use serde::{Deserialize, Serialize};

use crate::analysis::fmt;
use crate::analysis::observation::{Observation, Segment};
use crate::analysis::sequential::{EventTest, Prior};
use crate::analysis::share::{ShareMode, ShareTracker};
use crate::analysis::verdict::{MetricVerdict, Outcome, Stats};

/// Settings of the sequential judge on counts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventJudgeSpec {
    /// H0 boundary: the canary may have up to this rate ratio before it fails.
    pub allowed_ratio: f64,
    /// A Pass needs the upper end of the confidence sequence below this ratio.
    pub pass_ratio: f64,
    /// This metric's share of the false-rollback budget.
    pub alpha: f64,
    /// Mixture prior over rate ratios.
    pub prior: Prior,
    /// Compute the confidence sequence at every tick (needed for Pass and for reports;
    /// the accuracy benchmark turns it off where nothing reads it).
    pub intervals: bool,
    /// Where the canary share comes from.
    pub share: ShareMode,
}

impl EventJudgeSpec {
    /// Defaults: allowed ratio 1, pass below 1.5, the default prior.
    #[must_use]
    pub fn new(alpha: f64) -> Self {
        EventJudgeSpec {
            allowed_ratio: 1.0,
            pass_ratio: 1.5,
            alpha,
            prior: Prior::default_events(),
            intervals: true,
            share: ShareMode::Assigned,
        }
    }
}

/// The numbers behind an error-event verdict (cumulative over the rollout).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EventStats {
    /// Baseline events (errors) so far.
    pub baseline_events: f64,
    /// Canary events so far.
    pub canary_events: f64,
    /// Baseline trials (requests) so far.
    pub baseline_trials: f64,
    /// Canary trials so far.
    pub canary_trials: f64,
    /// Baseline event rate.
    pub baseline_rate: f64,
    /// Canary event rate.
    pub canary_rate: f64,
    /// Canary share in force for the latest window.
    pub share: f64,
    /// Maximum-likelihood rate ratio canary/baseline, per unit of traffic.
    pub ratio: f64,
    /// Confidence sequence for the ratio (`null` upper end means unbounded): the two-sided
    /// one, except on a Fail, where it is the test's own one-sided interval
    /// `[lower_bound, ∞)`, which always excludes the allowed ratio.
    pub ci_ratio: [f64; 2],
    /// The (1 − α) lower confidence bound for the ratio that the test itself implies: every
    /// ratio at or below it has been rejected (0 while the test has rejected nothing).
    pub lower_bound: f64,
    /// Natural log of the current e-value.
    pub log_e: f64,
    /// Natural log of the rejection threshold 1/α.
    pub log_threshold: f64,
    /// Anytime-valid p-value.
    pub p_value: f64,
    /// This metric's α.
    pub alpha: f64,
    /// Allowed ratio (H0 boundary).
    pub allowed_ratio: f64,
}

/// Incremental state of the sequential judge on counts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventJudge {
    spec: EventJudgeSpec,
    test: EventTest,
    shares: ShareTracker,
    trials: (f64, f64),
    share: f64,
}

impl EventJudge {
    /// A fresh judge.
    #[must_use]
    pub fn new(spec: EventJudgeSpec) -> Self {
        let test = EventTest::new(spec.prior.clone(), spec.allowed_ratio, spec.alpha);
        EventJudge {
            shares: ShareTracker::new(spec.share),
            spec,
            test,
            trials: (0.0, 0.0),
            share: f64::NAN,
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
            (Observation::Counts(b), Observation::Counts(c)) => (*b, *c),
            (Observation::Missing, _) | (_, Observation::Missing) => {
                if self.test.rejected() {
                    return verdict(
                        Outcome::Fail,
                        self.reason(),
                        Stats::ErrorEvents(self.stats()),
                    );
                }
                return verdict(
                    Outcome::NoData,
                    "no data for this window".to_string(),
                    Stats::ErrorEvents(self.stats()),
                );
            }
            (b, c) => {
                return verdict(
                    Outcome::NoData,
                    format!(
                        "expected counts, got {} and {}",
                        b.shape().map_or("nothing", |s| s.as_str()),
                        c.shape().map_or("nothing", |s| s.as_str())
                    ),
                    Stats::None,
                );
            }
        };
        let finite = |x: f64| if x.is_finite() && x > 0.0 { x } else { 0.0 };
        self.trials.0 += finite(b.trials);
        self.trials.1 += finite(c.trials);
        let share = self.shares.share(seg.share, Some((b.trials, c.trials)));
        self.share = share;
        self.test.update(share, c.events, b.events);
        if self.spec.intervals {
            self.test.update_confidence_sequence();
        }
        let outcome = if self.test.rejected() {
            Outcome::Fail
        } else if self.trials.0 <= 0.0 || self.trials.1 <= 0.0 {
            Outcome::NoData
        } else if self.spec.intervals && self.test.confidence_sequence().1 < self.spec.pass_ratio {
            Outcome::Pass
        } else {
            Outcome::Inconclusive
        };
        let reason = if outcome == Outcome::NoData {
            format!(
                "no requests yet (baseline {}, canary {})",
                self.trials.0, self.trials.1
            )
        } else {
            self.reason()
        };
        verdict(outcome, reason, Stats::ErrorEvents(self.stats()))
    }

    fn stats(&self) -> EventStats {
        let (be, ce) = self.test.events();
        let rate = |e: f64, t: f64| if t > 0.0 { e / t } else { f64::NAN };
        let lower = self.test.lower_bound();
        let (lo, hi) = if self.test.rejected() {
            (lower, f64::INFINITY)
        } else {
            self.test.confidence_sequence()
        };
        EventStats {
            baseline_events: be,
            canary_events: ce,
            baseline_trials: self.trials.0,
            canary_trials: self.trials.1,
            baseline_rate: rate(be, self.trials.0),
            canary_rate: rate(ce, self.trials.1),
            share: self.share,
            ratio: self.test.ratio_estimate(),
            ci_ratio: [lo, hi],
            lower_bound: lower,
            log_e: self.test.log_e(),
            log_threshold: self.test.log_threshold(),
            p_value: self.test.p_value(),
            alpha: self.spec.alpha,
            allowed_ratio: self.spec.allowed_ratio,
        }
    }

    fn reason(&self) -> String {
        let s = self.stats();
        let conf = (1.0 - self.spec.alpha) * 100.0;
        let head = format!(
            "canary {} ({} of {}) vs baseline {} ({} of {}), ratio {}",
            fmt::pct(s.canary_rate),
            fmt::count(s.canary_events),
            fmt::count(s.canary_trials),
            fmt::pct(s.baseline_rate),
            fmt::count(s.baseline_events),
            fmt::count(s.baseline_trials),
            fmt::num(s.ratio),
        );
        if self.test.rejected() {
            // Only the test's own bound: a two-sided interval from another construction
            // could still include the allowed ratio and contradict the verdict.
            format!(
                "{head}, e-value {} reached {} (1/α): canary rate exceeds {}× baseline (the test rejects every ratio ≤ {}, a {conf:.1}% lower confidence bound)",
                fmt::evalue(s.log_e.max(self.test.max_log_e())),
                fmt::evalue(s.log_threshold),
                fmt::num(s.allowed_ratio),
                fmt::num_down(s.lower_bound)
            )
        } else {
            format!(
                "{head} {conf:.1}% CS {}, e-value {}, needs {} to fail",
                fmt::interval(s.ci_ratio[0], s.ci_ratio[1]),
                fmt::evalue(s.log_e),
                fmt::evalue(s.log_threshold)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::observation::Counts;

    fn seg(w: f64, b: (f64, f64), c: (f64, f64)) -> Segment {
        Segment {
            share: w,
            baseline: Observation::Counts(Counts {
                events: b.0,
                trials: b.1,
            }),
            canary: Observation::Counts(Counts {
                events: c.0,
                trials: c.1,
            }),
        }
    }

    #[test]
    fn fails_on_a_clear_regression_and_stays_failed() {
        let mut j = EventJudge::new(EventJudgeSpec::new(0.05));
        let mut last = Outcome::Inconclusive;
        for _ in 0..30 {
            last = j
                .observe("errors", &seg(0.05, (5.0, 950.0), (2.5, 50.0)))
                .outcome;
        }
        assert_eq!(last, Outcome::Fail);
        let v = j.observe("errors", &seg(0.05, (0.0, 0.0), (0.0, 0.0)));
        assert_eq!(v.outcome, Outcome::Fail);
        assert!(v.reason.contains("1/α"), "{}", v.reason);
        let missing = Segment {
            share: 0.05,
            baseline: Observation::Missing,
            canary: Observation::Missing,
        };
        assert_eq!(j.observe("errors", &missing).outcome, Outcome::Fail);
    }

    #[test]
    fn no_requests_is_nodata_and_wrong_shape_is_nodata() {
        let mut j = EventJudge::new(EventJudgeSpec::new(0.05));
        assert_eq!(
            j.observe("e", &seg(0.05, (0.0, 0.0), (0.0, 0.0))).outcome,
            Outcome::NoData
        );
        let wrong = Segment {
            share: 0.05,
            baseline: Observation::Scalar(1.0),
            canary: Observation::Scalar(1.0),
        };
        assert_eq!(j.observe("e", &wrong).outcome, Outcome::NoData);
    }

    #[test]
    fn healthy_canary_eventually_passes() {
        let mut j = EventJudge::new(EventJudgeSpec::new(0.05));
        let mut last = Outcome::Inconclusive;
        for _ in 0..200 {
            last = j
                .observe("e", &seg(0.5, (50.0, 1000.0), (50.0, 1000.0)))
                .outcome;
        }
        assert_eq!(last, Outcome::Pass);
    }
}
