//! Joined windows: a policy whose `analysis_interval` is k times the recording's judges k
//! consecutive recorded windows as one of its own.
//!
//! Joining is exact for what adds up: counts (events and trials) add, histogram buckets add
//! (same bounds), series and samples concatenate, segment by segment of the same canary share
//! (a step change inside a joined window leaves one segment per share, as a fetch over it
//! would). A window that lacks the data makes the joined one lack it (never half a window for
//! one arm), a fetch error makes it an error, and a single value (a `query` metric) cannot be
//! made from shorter windows' values: that is an error naming the metric.

use std::time::Duration;

use super::{BacktestError, RecordedTick};
use crate::analysis::histogram::Histogram;
use crate::analysis::{Counts, Observation, Segment};
use crate::metrics::replay::{ReplaySource, ReplayWindow};

/// The recording's interval: the median length of its windows (the controller's windows
/// jitter by milliseconds around its `analysis_interval`).
fn recorded_interval(ticks: &[RecordedTick]) -> Duration {
    let mut d: Vec<Duration> = ticks
        .iter()
        .map(|t| t.end.duration_since(t.start).unwrap_or_default())
        .collect();
    d.sort_unstable();
    d.get(d.len() / 2).copied().unwrap_or_default()
}

/// How many recorded windows make one window of `policy_interval`: 1 when they are the same,
/// within 2 % (the recorded windows' jitter).
///
/// # Errors
/// [`BacktestError::Interval`] when `policy_interval` is not a whole multiple of the
/// recording's interval (shorter, or in between).
pub fn factor(policy_interval: Duration, ticks: &[RecordedTick]) -> Result<usize, BacktestError> {
    let recorded = recorded_interval(ticks);
    let (p, r) = (policy_interval.as_secs_f64(), recorded.as_secs_f64());
    if r <= 0.0 {
        return Ok(1);
    }
    let k = (p / r).round();
    if k >= 1.0 && (p - k * r).abs() <= 0.02 * p {
        return Ok(k as usize);
    }
    let millis = |d: Duration| Duration::from_millis(d.as_millis() as u64);
    Err(BacktestError::Interval {
        policy: humantime::format_duration(millis(policy_interval)).to_string(),
        recorded: humantime::format_duration(millis(recorded)).to_string(),
    })
}

/// One arm's observations of two windows as one.
fn join(a: &Observation, b: &Observation) -> Result<Observation, String> {
    Ok(match (a, b) {
        (Observation::Missing, _) | (_, Observation::Missing) => Observation::Missing,
        (Observation::Counts(x), Observation::Counts(y)) => Observation::Counts(Counts {
            events: x.events + y.events,
            trials: x.trials + y.trials,
        }),
        (Observation::Histogram(x), Observation::Histogram(y)) => {
            if x.bounds() != y.bounds() {
                return Err(
                    "histogram bucket bounds differ between the windows to join".to_string()
                );
            }
            let counts = x.counts().iter().zip(y.counts()).map(|(p, q)| p + q);
            Observation::Histogram(
                Histogram::try_new(x.bounds().to_vec(), counts.collect())
                    .map_err(|e| e.to_string())?,
            )
        }
        (Observation::Series(x), Observation::Series(y)) => {
            Observation::Series(x.iter().chain(y).copied().collect())
        }
        (Observation::Samples(x), Observation::Samples(y)) => {
            Observation::Samples(x.iter().chain(y).copied().collect())
        }
        (Observation::Scalar(_), Observation::Scalar(_)) => {
            return Err(
                "a single value (`query`) over a longer window cannot be made from shorter windows' values; backtest this policy at the recording's analysis_interval".to_string(),
            );
        }
        _ => return Err("the windows to join hold different shapes".to_string()),
    })
}

/// Adds `s` to the segments of a joined window: into the one of the same share, or as a new
/// one.
fn add(joined: &mut Vec<Segment>, s: &Segment) -> Result<(), String> {
    match joined
        .iter_mut()
        .find(|x| x.share.to_bits() == s.share.to_bits())
    {
        Some(x) => {
            x.baseline = join(&x.baseline, &s.baseline)?;
            x.canary = join(&x.canary, &s.canary)?;
        }
        None => joined.push(s.clone()),
    }
    Ok(())
}

/// Joins windows `first..first + k` of `source` for `metric`: `None` when one of them lacks
/// the metric.
fn joined_metric(
    source: &ReplaySource,
    metric: &str,
    first: usize,
    k: usize,
) -> Result<Option<Result<Vec<Segment>, String>>, String> {
    let mut segments = Vec::new();
    for i in first..first + k {
        match source.window(i).and_then(|w| w.metrics.get(metric)) {
            None => return Ok(None),
            Some(Err(e)) => return Ok(Some(Err(e.clone()))),
            Some(Ok(segs)) => {
                for s in segs {
                    add(&mut segments, s)?;
                }
            }
        }
    }
    Ok(Some(Ok(segments)))
}

/// The recorded windows joined `k` at a time (a last incomplete group is left out), with
/// each joined tick's clock: it ends when its last recorded window did. A joined tick's
/// recorded state is its deciding recorded tick's, else its last one's.
///
/// # Errors
/// [`BacktestError::Join`] when a metric's windows cannot be joined.
pub fn regroup(
    path: &str,
    source: &ReplaySource,
    ticks: &[RecordedTick],
    k: usize,
) -> Result<(ReplaySource, Vec<RecordedTick>), BacktestError> {
    let names = source.metric_names();
    let mut windows = Vec::new();
    let mut groups = Vec::new();
    for (g, chunk) in ticks.chunks_exact(k).enumerate() {
        let first = g * k;
        let last = &chunk[k - 1];
        let mut w = ReplayWindow::default();
        for name in &names {
            let joined =
                joined_metric(source, name, first, k).map_err(|message| BacktestError::Join {
                    path: path.to_string(),
                    line: last.line,
                    metric: name.clone(),
                    message,
                })?;
            if let Some(j) = joined {
                w.metrics.insert(name.clone(), j);
            }
        }
        windows.push(w);
        let mut requests: Option<[f64; 2]> = None;
        for q in chunk.iter().filter_map(|t| t.requests) {
            let r = requests.get_or_insert([0.0, 0.0]);
            r[0] += q[0];
            r[1] += q[1];
        }
        let state = chunk
            .iter()
            .filter_map(|t| t.state.as_ref())
            .find(|s| super::decisive(&s.action))
            .or(last.state.as_ref())
            .cloned();
        groups.push(RecordedTick {
            line: last.line,
            now: last.now,
            since: last.since,
            start: chunk[0].start,
            end: last.end,
            discarded: chunk.iter().all(|t| t.discarded),
            discard: None,
            state,
            requests,
            joined: Some([first + 1, first + k]),
        });
    }
    Ok((ReplaySource::new(windows), groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(e: f64, t: f64) -> Observation {
        Observation::Counts(Counts {
            events: e,
            trials: t,
        })
    }

    #[test]
    fn counts_and_buckets_add_series_concatenate_per_share() {
        let h = |c: Vec<f64>| {
            Observation::Histogram(Histogram::try_new(vec![0.1, f64::INFINITY], c).unwrap())
        };
        let mut joined = Vec::new();
        for (share, b, c) in [
            (0.05, counts(1.0, 100.0), counts(2.0, 10.0)),
            (0.05, counts(3.0, 200.0), counts(0.0, 20.0)),
            (0.25, counts(1.0, 50.0), counts(1.0, 50.0)),
        ] {
            add(
                &mut joined,
                &Segment {
                    share,
                    baseline: b,
                    canary: c,
                },
            )
            .unwrap();
        }
        assert_eq!(joined.len(), 2);
        assert_eq!(joined[0].baseline, counts(4.0, 300.0));
        assert_eq!(joined[0].canary, counts(2.0, 30.0));
        assert_eq!(joined[1].share, 0.25);
        assert_eq!(
            join(&h(vec![3.0, 1.0]), &h(vec![2.0, 5.0])).unwrap(),
            h(vec![5.0, 6.0])
        );
        assert_eq!(
            join(
                &Observation::Series(vec![1.0, 2.0]),
                &Observation::Series(vec![3.0])
            )
            .unwrap(),
            Observation::Series(vec![1.0, 2.0, 3.0])
        );
        assert_eq!(
            join(&counts(1.0, 2.0), &Observation::Missing).unwrap(),
            Observation::Missing
        );
        let other = Observation::Histogram(
            Histogram::try_new(vec![0.2, f64::INFINITY], vec![1.0, 1.0]).unwrap(),
        );
        assert!(
            join(&h(vec![1.0, 1.0]), &other)
                .unwrap_err()
                .contains("bounds differ")
        );
        assert!(
            join(&Observation::Scalar(1.0), &Observation::Scalar(2.0))
                .unwrap_err()
                .contains("single value")
        );
        assert!(join(&counts(1.0, 2.0), &Observation::Series(vec![1.0])).is_err());
    }
}
