//! Metric verdicts: the outcome of one judge at one tick, with the numbers behind it.

use serde::Serialize;

use super::errors::EventStats;
use super::latency::LatencyStats;
use super::threshold::ThresholdStats;

/// What a judge concluded so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The canary is within the allowed margin, with the required confidence.
    Pass,
    /// The canary is worse than allowed: roll back.
    Fail,
    /// Not enough evidence either way yet.
    Inconclusive,
    /// No data to judge: never a pass.
    NoData,
}

impl Outcome {
    /// Lowercase name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Inconclusive => "inconclusive",
            Outcome::NoData => "nodata",
        }
    }
}

/// The numbers behind a verdict, by judge.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Stats {
    /// Sequential test on event counts.
    ErrorEvents(EventStats),
    /// Sequential test on slow-request events, with quantiles.
    SlowEvents(LatencyStats),
    /// Absolute bound on the canary.
    Threshold(ThresholdStats),
    /// Kayenta-style Mann-Whitney classification of one metric.
    MannWhitney(super::mw_judge::MannWhitneyStats),
    /// Kayenta-style score over all `mann-whitney` metrics.
    Score(super::mw_judge::ScoreStats),
    /// Nothing computed (no data, wrong shape).
    None,
}

/// One metric's verdict at one tick.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricVerdict {
    /// Metric name from the policy.
    pub metric: String,
    /// Judge name (`sequential`, `mann-whitney`, `threshold`).
    pub judge: &'static str,
    /// The outcome.
    pub outcome: Outcome,
    /// One sentence with the numbers that decided.
    pub reason: String,
    /// The numbers.
    pub stats: Stats,
}
