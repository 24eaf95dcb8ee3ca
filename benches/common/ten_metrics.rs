//! The 10-metric policy of the tick and store benchmarks: 4 error-rate and 3 latency
//! metrics with the sequential judge, 3 threshold guards, each with one window of 1 000
//! requests at 25 %.

use coalmine::analysis::errors::EventJudgeSpec;
use coalmine::analysis::histogram::{Histogram, log_bounds, log_bucket_index};
use coalmine::analysis::latency::LatencyJudgeSpec;
use coalmine::analysis::threshold::ThresholdSpec;
use coalmine::analysis::{Counts, JudgeSpec, Observation, Segment};

/// `n` requests of a log-normal latency with this median (σ = 0.5), in the builtin buckets.
pub(crate) fn histogram(n: usize, median: f64) -> Histogram {
    let bounds = log_bounds();
    let mut counts = vec![0.0; bounds.len()];
    for i in 0..n {
        let u = (i as f64 + 0.5) / n as f64;
        let x = median * (0.5 * coalmine::analysis::special::norm_ppf(u)).exp();
        counts[log_bucket_index(x)] += 1.0;
    }
    Histogram::try_new(bounds, counts).expect("histogram")
}

/// Each metric's judge and its window.
pub(crate) fn policy() -> Vec<(JudgeSpec, Segment)> {
    let counts = Segment {
        share: 0.25,
        baseline: Observation::Counts(Counts {
            events: 4.0,
            trials: 750.0,
        }),
        canary: Observation::Counts(Counts {
            events: 1.0,
            trials: 250.0,
        }),
    };
    let latency = Segment {
        share: 0.25,
        baseline: Observation::Histogram(histogram(750, 0.05)),
        canary: Observation::Histogram(histogram(250, 0.05)),
    };
    let mut v = Vec::new();
    for _ in 0..4 {
        v.push((
            JudgeSpec::Events(EventJudgeSpec::new(0.005)),
            counts.clone(),
        ));
    }
    for _ in 0..3 {
        v.push((
            JudgeSpec::Latency(LatencyJudgeSpec::new(0.005)),
            latency.clone(),
        ));
    }
    for _ in 0..3 {
        let spec = ThresholdSpec {
            max: Some(0.05),
            ..ThresholdSpec::default()
        };
        v.push((JudgeSpec::Threshold(spec), counts.clone()));
    }
    v
}
