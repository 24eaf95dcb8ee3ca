//! The threshold judge: an absolute bound on the canary alone, window by window (Flagger's
//! `thresholdRange`, Argo's conditions). Cheap and blunt; a good critical guard next to a
//! statistical judge ("error rate above 5 % → roll back now").

use serde::{Deserialize, Serialize};

use crate::analysis::fmt;
use crate::analysis::observation::{Observation, Segment};
use crate::analysis::verdict::{MetricVerdict, Outcome, Stats};

/// How failing windows are counted toward the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureCount {
    /// A passing window resets the count (protects against flaky metrics).
    Consecutive,
    /// Failing windows add up over the rollout and never reset (Flagger's `failedChecks`).
    Total,
}

/// Settings of the threshold judge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThresholdSpec {
    /// The value must be at least this.
    pub min: Option<f64>,
    /// The value must be at most this.
    pub max: Option<f64>,
    /// For histograms: which quantile of the canary is compared (default 0.99).
    pub quantile: f64,
    /// How many failing windows make a Fail.
    pub failure_limit: u32,
    /// Whether the count resets on a passing window.
    pub count: FailureCount,
    /// Windows with fewer canary trials than this are NoData.
    pub min_trials: f64,
}

impl Default for ThresholdSpec {
    fn default() -> Self {
        ThresholdSpec {
            min: None,
            max: None,
            quantile: 0.99,
            failure_limit: 1,
            count: FailureCount::Consecutive,
            min_trials: 1.0,
        }
    }
}

/// The numbers behind a threshold verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThresholdStats {
    /// The canary's value in the latest window.
    pub value: f64,
    /// What the value is: `rate`, `p99`, `value`, `mean`.
    pub measure: String,
    /// Lower bound.
    pub min: Option<f64>,
    /// Upper bound.
    pub max: Option<f64>,
    /// Failing windows counted so far.
    pub failures: u32,
    /// Limit.
    pub failure_limit: u32,
}

/// Incremental state of the threshold judge.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ThresholdJudge {
    spec: ThresholdSpec,
    failures: u32,
    failed: bool,
    last: Option<ThresholdStats>,
}

impl ThresholdJudge {
    /// A fresh judge.
    #[must_use]
    pub fn new(spec: ThresholdSpec) -> Self {
        ThresholdJudge {
            spec,
            failures: 0,
            failed: false,
            last: None,
        }
    }

    fn value(&self, obs: &Observation) -> Option<(f64, String)> {
        match obs {
            Observation::Counts(c) if c.trials > 0.0 => Some((c.rate(), "rate".to_string())),
            Observation::Histogram(h) if h.total() > 0.0 => Some((
                h.quantile(self.spec.quantile),
                format!("p{}", self.spec.quantile * 100.0),
            )),
            Observation::Scalar(v) => Some((*v, "value".to_string())),
            Observation::Series(s) => s
                .iter()
                .rev()
                .find(|v| !v.is_nan())
                .map(|v| (*v, "last value".to_string())),
            Observation::Samples(s) if !s.is_empty() => {
                let finite: Vec<f64> = s.iter().copied().filter(|v| !v.is_nan()).collect();
                (!finite.is_empty()).then(|| {
                    (
                        finite.iter().sum::<f64>() / finite.len() as f64,
                        "mean".to_string(),
                    )
                })
            }
            _ => None,
        }
        .filter(|(v, _)| !v.is_nan())
    }

    /// Adds one window and returns the verdict.
    pub fn observe(&mut self, metric: &str, seg: &Segment) -> MetricVerdict {
        let verdict = |outcome, reason: String, stats| MetricVerdict {
            metric: metric.to_string(),
            judge: "threshold",
            outcome,
            reason,
            stats,
        };
        let trials = seg.canary.trials();
        if let Some(n) = trials
            && n > 0.0
            && n < self.spec.min_trials
        {
            // Some data, too little to judge this window: not a missing source.
            let stats = self.last.clone().map_or(Stats::None, Stats::Threshold);
            let outcome = if self.failed {
                Outcome::Fail
            } else {
                Outcome::Inconclusive
            };
            return verdict(
                outcome,
                format!(
                    "{n} canary requests in this window, fewer than min_trials {}",
                    self.spec.min_trials
                ),
                stats,
            );
        }
        let Some((value, measure)) = self.value(&seg.canary) else {
            let stats = self.last.clone().map_or(Stats::None, Stats::Threshold);
            if self.failed {
                return verdict(Outcome::Fail, "failed earlier".to_string(), stats);
            }
            return verdict(
                Outcome::NoData,
                "no canary data in this window".to_string(),
                stats,
            );
        };
        let below = self.spec.min.is_some_and(|m| value < m);
        let above = self.spec.max.is_some_and(|m| value > m);
        if below || above {
            self.failures += 1;
        } else if self.spec.count == FailureCount::Consecutive {
            self.failures = 0;
        }
        if self.failures >= self.spec.failure_limit {
            self.failed = true;
        }
        let stats = ThresholdStats {
            value,
            measure: measure.clone(),
            min: self.spec.min,
            max: self.spec.max,
            failures: self.failures,
            failure_limit: self.spec.failure_limit,
        };
        self.last = Some(stats.clone());
        let shown = |v: f64| {
            if measure == "rate" {
                fmt::pct(v)
            } else {
                fmt::num(v)
            }
        };
        let bound = match (self.spec.min, self.spec.max) {
            (Some(lo), Some(hi)) => format!("within [{}, {}]", shown(lo), shown(hi)),
            (Some(lo), None) => format!("at least {}", shown(lo)),
            (None, Some(hi)) => format!("at most {}", shown(hi)),
            (None, None) => "unbounded".to_string(),
        };
        let reason = format!(
            "canary {measure} {} must be {bound}; failing windows {}/{}",
            shown(value),
            self.failures,
            self.spec.failure_limit
        );
        let outcome = if self.failed {
            Outcome::Fail
        } else {
            Outcome::Pass
        };
        verdict(outcome, reason, Stats::Threshold(stats))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::observation::Counts;

    fn seg(events: f64, trials: f64) -> Segment {
        Segment {
            share: 0.1,
            baseline: Observation::Missing,
            canary: Observation::Counts(Counts { events, trials }),
        }
    }

    #[test]
    fn consecutive_limit() {
        let mut j = ThresholdJudge::new(ThresholdSpec {
            max: Some(0.05),
            failure_limit: 2,
            ..ThresholdSpec::default()
        });
        assert_eq!(j.observe("e", &seg(10.0, 100.0)).outcome, Outcome::Pass);
        assert_eq!(j.observe("e", &seg(1.0, 100.0)).outcome, Outcome::Pass);
        assert_eq!(j.observe("e", &seg(10.0, 100.0)).outcome, Outcome::Pass);
        let v = j.observe("e", &seg(10.0, 100.0));
        assert_eq!(v.outcome, Outcome::Fail, "{}", v.reason);
        assert!(v.reason.contains("10.0%"), "{}", v.reason);
        assert_eq!(j.observe("e", &seg(0.0, 0.0)).outcome, Outcome::Fail);
    }

    #[test]
    fn a_latched_failure_stays_failed_in_thin_windows_and_bounds_are_exact() {
        let mut j = ThresholdJudge::new(ThresholdSpec {
            max: Some(0.05),
            min_trials: 20.0,
            ..ThresholdSpec::default()
        });
        assert_eq!(j.observe("e", &seg(10.0, 100.0)).outcome, Outcome::Fail);
        // Too few requests to judge again: a guard that failed is still failed.
        assert_eq!(j.observe("e", &seg(0.0, 5.0)).outcome, Outcome::Fail);
        // Just above the bound fails, exactly at it passes; the same for a lower bound.
        let mut j = ThresholdJudge::new(ThresholdSpec {
            max: Some(0.05),
            ..ThresholdSpec::default()
        });
        assert_eq!(j.observe("e", &seg(50.0, 1000.0)).outcome, Outcome::Pass);
        assert_eq!(j.observe("e", &seg(501.0, 10000.0)).outcome, Outcome::Fail);
        let mut j = ThresholdJudge::new(ThresholdSpec {
            min: Some(0.5),
            ..ThresholdSpec::default()
        });
        assert_eq!(j.observe("e", &seg(500.0, 1000.0)).outcome, Outcome::Pass);
        assert_eq!(j.observe("e", &seg(4999.0, 10000.0)).outcome, Outcome::Fail);
    }

    #[test]
    fn total_count_never_resets() {
        let mut j = ThresholdJudge::new(ThresholdSpec {
            max: Some(0.05),
            failure_limit: 2,
            count: FailureCount::Total,
            ..ThresholdSpec::default()
        });
        j.observe("e", &seg(10.0, 100.0));
        j.observe("e", &seg(1.0, 100.0));
        assert_eq!(j.observe("e", &seg(10.0, 100.0)).outcome, Outcome::Fail);
    }

    #[test]
    fn too_few_trials_is_inconclusive() {
        let mut j = ThresholdJudge::new(ThresholdSpec {
            max: Some(0.05),
            min_trials: 20.0,
            ..ThresholdSpec::default()
        });
        assert_eq!(
            j.observe("e", &seg(5.0, 10.0)).outcome,
            Outcome::Inconclusive
        );
        assert_eq!(j.observe("e", &seg(5.0, 20.0)).outcome, Outcome::Fail);
    }

    #[test]
    fn no_trials_is_nodata() {
        let mut j = ThresholdJudge::new(ThresholdSpec {
            max: Some(0.05),
            ..ThresholdSpec::default()
        });
        assert_eq!(j.observe("e", &seg(0.0, 0.0)).outcome, Outcome::NoData);
        let nan = Segment {
            share: 0.1,
            baseline: Observation::Missing,
            canary: Observation::Scalar(f64::NAN),
        };
        assert_eq!(j.observe("e", &nan).outcome, Outcome::NoData);
    }
}
