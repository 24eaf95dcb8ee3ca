//! Property tests of the judges: no panic on any input, and no Fail when the arms behave
//! the same.

use proptest::prelude::*;

use super::errors::EventJudgeSpec;
use super::histogram::{Histogram, log_bounds};
use super::latency::LatencyJudgeSpec;
use super::threshold::ThresholdSpec;
use super::{Counts, JudgeSpec, MetricJudge, Observation, Outcome, Segment};

fn wild() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-1.0),
        Just(0.0),
        Just(1e300),
        0.0..1e6f64,
    ]
}

fn observation() -> impl Strategy<Value = Observation> {
    prop_oneof![
        (wild(), wild())
            .prop_map(|(events, trials)| Observation::Counts(Counts { events, trials })),
        proptest::collection::vec(0.0..1e4f64, 163).prop_map(|c| {
            Histogram::try_new(log_bounds(), c).map_or(Observation::Missing, Observation::Histogram)
        }),
        proptest::collection::vec(wild(), 0..5).prop_map(Observation::Series),
        proptest::collection::vec(wild(), 0..5).prop_map(Observation::Samples),
        wild().prop_map(Observation::Scalar),
        Just(Observation::Missing),
    ]
}

fn specs() -> Vec<JudgeSpec> {
    vec![
        JudgeSpec::Events(EventJudgeSpec::new(0.05)),
        JudgeSpec::Latency(LatencyJudgeSpec::new(0.05)),
        JudgeSpec::Threshold(ThresholdSpec {
            max: Some(0.05),
            ..ThresholdSpec::default()
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn judges_never_panic(
        segs in proptest::collection::vec((wild(), observation(), observation()), 1..6)
    ) {
        for spec in specs() {
            let mut j = MetricJudge::new(&spec);
            for (share, b, c) in &segs {
                let v = j.observe("m", &Segment { share: *share, baseline: b.clone(), canary: c.clone() });
                prop_assert!(!v.reason.is_empty());
                // Every verdict serialises (non-finite numbers become null).
                prop_assert!(serde_json::to_string(&v).is_ok());
            }
        }
    }

    #[test]
    fn proportional_error_counts_never_fail(
        share in prop_oneof![Just(0.01), Just(0.05), Just(0.25), Just(0.5), Just(0.9)],
        rate in 0.0..0.3f64,
        per_window in 1.0..5000.0f64,
        windows in 1usize..60,
    ) {
        let mut j = MetricJudge::new(&JudgeSpec::Events(EventJudgeSpec::new(0.05)));
        for _ in 0..windows {
            let (nb, nc) = (per_window * (1.0 - share), per_window * share);
            let seg = Segment {
                share,
                baseline: Observation::Counts(Counts { events: nb * rate, trials: nb }),
                canary: Observation::Counts(Counts { events: nc * rate, trials: nc }),
            };
            let v = j.observe("errors", &seg);
            prop_assert_ne!(v.outcome, Outcome::Fail, "{}", v.reason);
        }
    }

    #[test]
    fn identical_latency_distributions_never_fail(
        share in prop_oneof![Just(0.05), Just(0.25), Just(0.5)],
        shape in proptest::collection::vec(0.0..100.0f64, 163),
        windows in 1usize..30,
    ) {
        let mut j = MetricJudge::new(&JudgeSpec::Latency(LatencyJudgeSpec::new(0.05)));
        let scaled = |f: f64| {
            Histogram::try_new(log_bounds(), shape.iter().map(|c| c * f).collect()).unwrap()
        };
        for _ in 0..windows {
            let seg = Segment {
                share,
                baseline: Observation::Histogram(scaled(1.0 - share)),
                canary: Observation::Histogram(scaled(share)),
            };
            let v = j.observe("latency", &seg);
            prop_assert_ne!(v.outcome, Outcome::Fail, "{}", v.reason);
        }
    }

    #[test]
    fn empty_arms_are_nodata(share in 0.01..0.99f64) {
        for spec in &specs()[..2] {
            let mut j = MetricJudge::new(spec);
            let v = j.observe("m", &Segment { share, baseline: Observation::Missing, canary: Observation::Missing });
            prop_assert_eq!(v.outcome, Outcome::NoData);
        }
        let mut j = MetricJudge::new(&specs()[0]);
        let zero = Observation::Counts(Counts { events: 0.0, trials: 0.0 });
        let v = j.observe("m", &Segment { share, baseline: zero.clone(), canary: zero });
        prop_assert_eq!(v.outcome, Outcome::NoData);
    }
}
