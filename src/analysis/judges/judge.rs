//! Judges: pure functions from observations to metric verdicts, kept as small incremental
//! state machines so a tick costs O(new data), and dispatched by an enum (no boxing).

use serde::{Deserialize, Serialize};

use crate::analysis::errors::{EventJudge, EventJudgeSpec};
use crate::analysis::kayenta::ScoredMetric;
use crate::analysis::latency::{LatencyJudge, LatencyJudgeSpec};
use crate::analysis::mw_judge::{MannWhitneyJudge, MannWhitneySpec};
use crate::analysis::observation::{Segment, Shape};
use crate::analysis::threshold::{ThresholdJudge, ThresholdSpec};
use crate::analysis::verdict::MetricVerdict;

/// A judge's settings, as validated from a policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JudgeSpec {
    /// Sequential test on event counts (errors).
    Events(EventJudgeSpec),
    /// Sequential test on slow-request events (latency histograms).
    Latency(LatencyJudgeSpec),
    /// Absolute bound on the canary.
    Threshold(ThresholdSpec),
    /// Kayenta-style Mann-Whitney on series, scored together with the other such metrics.
    MannWhitney(MannWhitneySpec),
}

impl JudgeSpec {
    /// The policy name of the judge.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            JudgeSpec::Events(_) | JudgeSpec::Latency(_) => "sequential",
            JudgeSpec::Threshold(_) => "threshold",
            JudgeSpec::MannWhitney(_) => "mann-whitney",
        }
    }

    /// Whether the judge takes observations of this shape.
    #[must_use]
    pub fn accepts(&self, shape: Shape) -> bool {
        match self {
            JudgeSpec::Events(_) => shape == Shape::Counts,
            JudgeSpec::Latency(_) => shape == Shape::Histogram,
            JudgeSpec::Threshold(_) | JudgeSpec::MannWhitney(_) => true,
        }
    }

    /// The α this judge spends, if it is a sequential test.
    #[must_use]
    pub fn alpha(&self) -> Option<f64> {
        match self {
            JudgeSpec::Events(s) => Some(s.alpha),
            JudgeSpec::Latency(s) => Some(s.alpha),
            JudgeSpec::Threshold(_) | JudgeSpec::MannWhitney(_) => None,
        }
    }
}

/// One metric's judge with its state so far.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MetricJudge {
    /// Sequential test on event counts.
    Events(EventJudge),
    /// Sequential test on latency.
    Latency(LatencyJudge),
    /// Absolute bound.
    Threshold(ThresholdJudge),
    /// Kayenta-style Mann-Whitney.
    MannWhitney(MannWhitneyJudge),
}

impl MetricJudge {
    /// A fresh judge for `spec`.
    #[must_use]
    pub fn new(spec: &JudgeSpec) -> Self {
        match spec {
            JudgeSpec::Events(s) => MetricJudge::Events(EventJudge::new(s.clone())),
            JudgeSpec::Latency(s) => MetricJudge::Latency(LatencyJudge::new(s.clone())),
            JudgeSpec::Threshold(s) => MetricJudge::Threshold(ThresholdJudge::new(s.clone())),
            JudgeSpec::MannWhitney(s) => MetricJudge::MannWhitney(MannWhitneyJudge::new(s.clone())),
        }
    }

    /// Adds one window and returns the verdict so far. Never panics, whatever the input.
    pub fn observe(&mut self, metric: &str, seg: &Segment) -> MetricVerdict {
        match self {
            MetricJudge::Events(j) => j.observe(metric, seg),
            MetricJudge::Latency(j) => j.observe(metric, seg),
            MetricJudge::Threshold(j) => j.observe(metric, seg),
            MetricJudge::MannWhitney(j) => j.observe(metric, seg),
        }
    }

    /// Whether [`Self::learn_history`] is used (the all-buckets latency test's bets).
    #[must_use]
    pub fn learns_history(&self) -> bool {
        matches!(self, MetricJudge::Latency(j) if j.learns_history())
    }

    /// Learns from the baseline's requests before the rollout, for the judges that bet with
    /// them (the all-buckets latency test); the others ignore it. Never evidence; a read
    /// again before the first window replaces the earlier one.
    pub fn learn_history(&mut self, segs: &[Segment]) {
        if let MetricJudge::Latency(j) = self {
            j.learn_history(segs);
        }
    }

    /// For `mann-whitney` metrics: the classification for the scorecard (`Some(None)` while
    /// the series is too short); `None` for other judges.
    #[must_use]
    pub fn scored(&self, metric: &str, min_points: usize) -> Option<Option<ScoredMetric>> {
        match self {
            MetricJudge::MannWhitney(j) => Some(j.scored(metric, min_points)),
            _ => None,
        }
    }
}
