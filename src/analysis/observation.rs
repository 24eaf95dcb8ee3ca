//! What a metrics source returns for one window: an observation per arm, and the canary's
//! assignment probability in force while those requests were routed.

use serde::Serialize;

use super::histogram::Histogram;

/// Events out of trials (errors of requests, slow requests of requests).
///
/// Floats, because PromQL `increase()` extrapolates to non-integer counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Counts {
    /// Number of events (e.g. 5xx responses).
    pub events: f64,
    /// Number of trials (e.g. requests).
    pub trials: f64,
}

impl Counts {
    /// `events / trials`, NaN with no trials.
    #[must_use]
    pub fn rate(&self) -> f64 {
        if self.trials > 0.0 {
            self.events / self.trials
        } else {
            f64::NAN
        }
    }
}

/// The data shapes of statistics.md §1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// Events and trials.
    Counts,
    /// Bucket bounds and counts.
    Histogram,
    /// Raw values.
    Samples,
    /// One aggregated value per time step.
    Series,
    /// One value.
    Scalar,
}

impl Shape {
    /// Lowercase name, as in policies and messages.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Shape::Counts => "counts",
            Shape::Histogram => "histogram",
            Shape::Samples => "samples",
            Shape::Series => "series",
            Shape::Scalar => "scalar",
        }
    }
}

/// One arm's data for one window.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// Events and trials.
    Counts(Counts),
    /// A latency (or other) distribution.
    Histogram(Histogram),
    /// Raw values.
    Samples(Vec<f64>),
    /// One value per time step.
    Series(Vec<f64>),
    /// One value.
    Scalar(f64),
    /// The source had nothing for this window (empty result, NaN, missing series).
    Missing,
}

impl Observation {
    /// The shape, or `None` for [`Observation::Missing`].
    #[must_use]
    pub fn shape(&self) -> Option<Shape> {
        match self {
            Observation::Counts(_) => Some(Shape::Counts),
            Observation::Histogram(_) => Some(Shape::Histogram),
            Observation::Samples(_) => Some(Shape::Samples),
            Observation::Series(_) => Some(Shape::Series),
            Observation::Scalar(_) => Some(Shape::Scalar),
            Observation::Missing => None,
        }
    }

    /// Number of requests behind this observation, where the shape tells.
    #[must_use]
    pub fn trials(&self) -> Option<f64> {
        match self {
            Observation::Counts(c) => Some(c.trials),
            Observation::Histogram(h) => Some(h.total()),
            Observation::Samples(s) => Some(s.len() as f64),
            _ => None,
        }
    }
}

/// Both arms' observations for one window, with the canary's assignment probability.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    /// Probability (0..=1) that a request in this window was routed to the canary.
    pub share: f64,
    /// The baseline's observation.
    pub baseline: Observation,
    /// The canary's observation.
    pub canary: Observation,
}

impl Segment {
    /// Requests per arm `(baseline, canary)` when both observations tell.
    #[must_use]
    pub fn trials(&self) -> Option<(f64, f64)> {
        Some((self.baseline.trials()?, self.canary.trials()?))
    }
}
