//! The `builtin` source: the built-in proxy's own per-arm counters and latency histograms.
//!
//! Windows are differences of cumulative snapshots taken at window ends, split by epoch,
//! so each segment carries the exact assignment probability its requests were routed with.
//!
//! `errors` counts, per arm, the requests that failed (5xx, upstream unreachable or timed
//! out, body broken after the headers) out of all requests counted in the window; `latency`
//! is the histogram of the requests that did not fail, measured to the last byte, so its
//! total is `requests - errors` (an arm whose every request failed has no latency data).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{Fetched, MetricsError, MetricsSource, RenderedQuery, Window};
use crate::analysis::histogram::{Histogram, log_bounds};
use crate::analysis::observation::{Counts, Observation, Segment, Shape};
use crate::model::Arm;
use crate::policy::{BuiltinSignal, DataSpec, MetricConfig};
use crate::traffic::proxy::{ArmSnapshot, EpochSnapshot, ProxyState};

type Snapshot = Arc<Vec<EpochSnapshot>>;

/// Reads the built-in proxy's counters.
#[derive(Debug)]
pub struct BuiltinSource {
    state: Arc<ProxyState>,
    /// Snapshot taken when the source was created: the start of window 0.
    origin: Snapshot,
    /// Snapshots at window ends, by window sequence number.
    ends: Mutex<BTreeMap<u64, Snapshot>>,
}

impl BuiltinSource {
    /// A source over the proxy's state; window 0 starts now.
    #[must_use]
    pub fn new(state: Arc<ProxyState>) -> Self {
        let origin = Arc::new(state.snapshot());
        BuiltinSource {
            state,
            origin,
            ends: Mutex::new(BTreeMap::new()),
        }
    }

    /// Cumulative snapshots at the start and end of `seq`.
    fn bounds(&self, seq: u64) -> (Snapshot, Snapshot) {
        let mut ends = self
            .ends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let end = ends
            .entry(seq)
            .or_insert_with(|| Arc::new(self.state.snapshot()))
            .clone();
        let start = seq
            .checked_sub(1)
            .and_then(|p| ends.get(&p).cloned())
            .unwrap_or_else(|| self.origin.clone());
        // Keep the previous window's end: it is the start of the next one.
        ends.retain(|k, _| *k + 1 >= seq);
        (start, end)
    }
}

fn delta(end: &ArmSnapshot, start: Option<&ArmSnapshot>) -> ArmSnapshot {
    let Some(s) = start else { return end.clone() };
    ArmSnapshot {
        requests: end.requests.saturating_sub(s.requests),
        errors: end.errors.saturating_sub(s.errors),
        buckets: end
            .buckets
            .iter()
            .zip(s.buckets.iter().chain(std::iter::repeat(&0)))
            .map(|(e, s)| e.saturating_sub(*s))
            .collect(),
    }
}

fn histogram(a: &ArmSnapshot) -> Observation {
    let counts = a.buckets.iter().map(|c| *c as f64).collect();
    Histogram::try_new(log_bounds(), counts).map_or(Observation::Missing, Observation::Histogram)
}

fn counts(a: &ArmSnapshot) -> Observation {
    Observation::Counts(Counts {
        events: a.errors as f64,
        trials: a.requests as f64,
    })
}

/// One value per window for series and scalar shapes: the error rate or the mean latency.
fn value(signal: BuiltinSignal, a: &ArmSnapshot) -> Option<f64> {
    if a.requests == 0 {
        return None;
    }
    match signal {
        BuiltinSignal::Errors => Some(a.errors as f64 / a.requests as f64),
        BuiltinSignal::Latency => match histogram(a) {
            Observation::Histogram(h) => Some(h.approx_mean()),
            _ => None,
        },
    }
}

fn add(acc: &mut ArmSnapshot, d: &ArmSnapshot) {
    acc.requests += d.requests;
    acc.errors += d.errors;
    if acc.buckets.len() < d.buckets.len() {
        acc.buckets.resize(d.buckets.len(), 0);
    }
    for (a, b) in acc.buckets.iter_mut().zip(&d.buckets) {
        *a += b;
    }
}

impl MetricsSource for BuiltinSource {
    fn name(&self) -> &'static str {
        "builtin"
    }

    async fn fetch(&self, metric: &MetricConfig, window: &Window) -> Result<Fetched, MetricsError> {
        let DataSpec::Builtin(signal) = metric.data else {
            return Err(MetricsError::Unsupported {
                source_name: "builtin",
                metric: metric.name.clone(),
                message: "the builtin source serves only builtin = \"errors\" or \"latency\""
                    .to_string(),
            });
        };
        let (start, end) = self.bounds(window.seq);
        let last_id = end.last().map_or(0, |e| e.id);
        let mut per_epoch: Vec<(f64, [ArmSnapshot; 2])> = Vec::new();
        for e in end.iter() {
            let before = start.iter().find(|s| s.id == e.id);
            let d = [
                delta(&e.arms[0], before.map(|b| &b.arms[0])),
                delta(&e.arms[1], before.map(|b| &b.arms[1])),
            ];
            if d[0].requests + d[1].requests > 0 || e.id == last_id {
                per_epoch.push((e.weight.fraction(), d));
            }
        }
        let role = match signal {
            BuiltinSignal::Errors => "errors",
            BuiltinSignal::Latency => "latency",
        };
        let queries = Arm::BOTH
            .iter()
            .map(|arm| RenderedQuery {
                arm: *arm,
                role,
                query: format!("builtin:{role}:window={}", window.seq),
            })
            .collect();
        let segments = match metric.shape {
            Shape::Counts | Shape::Histogram => per_epoch
                .iter()
                .map(|(share, d)| {
                    let obs = |a: &ArmSnapshot| {
                        if metric.shape == Shape::Counts {
                            counts(a)
                        } else {
                            histogram(a)
                        }
                    };
                    Segment {
                        share: *share,
                        baseline: obs(&d[0]),
                        canary: obs(&d[1]),
                    }
                })
                .collect(),
            Shape::Series | Shape::Scalar | Shape::Samples => {
                let mut total = [ArmSnapshot::default(), ArmSnapshot::default()];
                for (_, d) in &per_epoch {
                    add(&mut total[0], &d[0]);
                    add(&mut total[1], &d[1]);
                }
                let obs = |a: &ArmSnapshot| match value(signal, a) {
                    None => Observation::Missing,
                    Some(v) if metric.shape == Shape::Scalar => Observation::Scalar(v),
                    Some(v) => Observation::Series(vec![v]),
                };
                vec![Segment {
                    share: window.weight.fraction(),
                    baseline: obs(&total[0]),
                    canary: obs(&total[1]),
                }]
            }
        };
        Ok(Fetched { segments, queries })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::analysis::JudgeSpec;
    use crate::analysis::errors::EventJudgeSpec;
    use crate::model::Weight;

    fn metric(shape: Shape) -> MetricConfig {
        MetricConfig {
            name: "errors".into(),
            description: None,
            data: DataSpec::Builtin(BuiltinSignal::Errors),
            shape,
            judge: JudgeSpec::Events(EventJudgeSpec::new(0.05)),
            dry_run: false,
        }
    }

    fn window(seq: u64, pct: f64) -> Window {
        Window {
            seq,
            start: SystemTime::UNIX_EPOCH,
            end: SystemTime::UNIX_EPOCH,
            weight: Weight::try_from_percent(pct).unwrap(),
        }
    }

    #[tokio::test]
    async fn windows_are_deltas_split_by_epoch() {
        let state = Arc::new(ProxyState::new(Some(1)));
        let src = BuiltinSource::new(state.clone());
        state.set_weight(Weight::try_from_percent(5.0).unwrap());
        let (_, e) = state.route();
        e.record(Arm::Canary, Duration::from_millis(5), true);
        e.record(Arm::Baseline, Duration::from_millis(5), false);
        let f = src
            .fetch(&metric(Shape::Counts), &window(0, 5.0))
            .await
            .unwrap();
        assert_eq!(f.segments.len(), 1);
        assert_eq!(f.segments[0].share, 0.05);
        assert_eq!(
            f.segments[0].canary,
            Observation::Counts(Counts {
                events: 1.0,
                trials: 1.0
            })
        );
        // A second metric asking for the same window sees the same data.
        let again = src
            .fetch(&metric(Shape::Counts), &window(0, 5.0))
            .await
            .unwrap();
        assert_eq!(again.segments, f.segments);
        // Next window: a weight change with a request from the old epoch completing late.
        state.set_weight(Weight::try_from_percent(25.0).unwrap());
        e.record(Arm::Baseline, Duration::from_millis(5), false);
        let (_, e2) = state.route();
        e2.record(Arm::Canary, Duration::from_millis(5), false);
        let f = src
            .fetch(&metric(Shape::Counts), &window(1, 25.0))
            .await
            .unwrap();
        let shares: Vec<f64> = f.segments.iter().map(|s| s.share).collect();
        assert_eq!(shares, vec![0.05, 0.25]);
        assert_eq!(f.segments[0].baseline.trials(), Some(1.0));
        assert_eq!(f.segments[1].canary.trials(), Some(1.0));
        // Series: one merged value per arm.
        let s = src
            .fetch(&metric(Shape::Series), &window(2, 25.0))
            .await
            .unwrap();
        assert_eq!(s.segments.len(), 1);
        assert_eq!(s.segments[0].canary, Observation::Missing);
    }
}
