//! One window through the judges: the runner's tick and a backtest's.

use super::Analysed;
use crate::analysis::mw_judge::score_verdict;
use crate::analysis::observation::Shape;
use crate::analysis::{JudgeSpec, MetricJudge, Observation, Outcome, Segment, Stats};
use crate::controller::machine::{Judging, MetricStatus};
use crate::controller::record::{MetricRecord, SegmentRecord};
use crate::metrics::{Fetched, MetricsError, Window};
use crate::policy::{MetricConfig, Policy};

/// Feeds `policy`'s judges the fetched window, comparative ones only when `judging` admits
/// it, and builds the tick's statuses and records (`last`: the previous tick's records, whose
/// numbers a metric not judged or not fetched keeps showing). The runner's tick, and a
/// backtest's.
#[must_use]
pub fn judge_window(
    policy: &Policy,
    judges: &mut [MetricJudge],
    last: &[MetricRecord],
    window: &Window,
    fetches: Vec<Result<Fetched, MetricsError>>,
    judging: &Judging,
) -> Analysed {
    let mut statuses = Vec::new();
    let mut records = Vec::new();
    let mut requests: Option<[f64; 2]> = None;
    let counts_requests = policy.counts_requests();
    for ((m, judge), res) in policy.metrics.iter().zip(judges.iter_mut()).zip(fetches) {
        let last_stats = || {
            last.iter()
                .find(|r| r.metric == m.name)
                .map_or(Stats::None, |r| r.stats.clone())
        };
        match res {
            Ok(f) => {
                if requests.is_none() && matches!(m.shape, Shape::Counts | Shape::Histogram) {
                    let mut sum = [0.0, 0.0];
                    let mut any = false;
                    for seg in &f.segments {
                        if let Some((b, c)) = seg.trials() {
                            sum[0] += b;
                            sum[1] += c;
                            any = true;
                        }
                    }
                    if any {
                        requests = Some(sum);
                    }
                }
                // A `mann-whitney` metric is advisory on its own: the scorecard over all of
                // them (below) is what the controller acts on, as in Kayenta.
                let scored = matches!(m.judge, JudgeSpec::MannWhitney(_));
                if comparative(m) && !judging.comparative {
                    let why = judging.why.clone().unwrap_or_default();
                    let reason = format!("not judged this window: {why}");
                    statuses.push(MetricStatus {
                        metric: m.name.clone(),
                        outcome: Some(Outcome::Inconclusive),
                        reason: reason.clone(),
                        dry_run: m.dry_run || scored,
                        comparative: true,
                    });
                    records.push(MetricRecord {
                        metric: m.name.clone(),
                        judge: m.judge.name(),
                        outcome: Some(Outcome::Inconclusive),
                        reason,
                        stats: last_stats(),
                        dry_run: m.dry_run,
                        error: None,
                        // Recorded all the same: replay needs them for the baseline's
                        // health, which decides whether a window is judged.
                        observed: SegmentRecord::all(&f.segments),
                        queries: f.queries,
                    });
                    continue;
                }
                let mut verdict = None;
                for seg in &f.segments {
                    verdict = Some(judge.observe(&m.name, seg));
                }
                let v = verdict.unwrap_or_else(|| {
                    judge.observe(
                        &m.name,
                        &Segment {
                            share: window.weight.fraction(),
                            baseline: Observation::Missing,
                            canary: Observation::Missing,
                        },
                    )
                });
                statuses.push(MetricStatus {
                    metric: m.name.clone(),
                    outcome: Some(v.outcome),
                    reason: v.reason.clone(),
                    dry_run: m.dry_run || scored,
                    comparative: comparative(m),
                });
                records.push(MetricRecord {
                    metric: m.name.clone(),
                    judge: v.judge,
                    outcome: Some(v.outcome),
                    reason: v.reason,
                    stats: v.stats,
                    dry_run: m.dry_run,
                    observed: SegmentRecord::all(&f.segments),
                    queries: f.queries,
                    error: None,
                });
            }
            Err(e) => {
                statuses.push(MetricStatus {
                    metric: m.name.clone(),
                    outcome: None,
                    reason: e.to_string(),
                    dry_run: m.dry_run,
                    comparative: comparative(m),
                });
                // Keep the last numbers visible while the source is failing.
                records.push(MetricRecord {
                    metric: m.name.clone(),
                    judge: m.judge.name(),
                    outcome: None,
                    reason: e.to_string(),
                    stats: last_stats(),
                    dry_run: m.dry_run,
                    queries: Vec::new(),
                    error: Some(format!("{}: {e}", e.kind())),
                    observed: Vec::new(),
                });
            }
        }
    }
    if let Some(scoring) = &policy.scoring {
        let v = if judging.comparative {
            let scored: Vec<_> = policy
                .metrics
                .iter()
                .zip(judges.iter())
                .filter(|(m, _)| !m.dry_run)
                .filter_map(|(m, j)| j.scored(&m.name, scoring.min_points))
                .collect();
            Some(score_verdict(&scored, scoring))
        } else {
            None
        };
        let (outcome, reason, judge, stats) = match v {
            Some(v) => (v.outcome, v.reason, v.judge, v.stats),
            None => (
                Outcome::Inconclusive,
                format!(
                    "not judged this window: {}",
                    judging.why.clone().unwrap_or_default()
                ),
                "mann-whitney",
                Stats::None,
            ),
        };
        statuses.push(MetricStatus {
            metric: "score".to_string(),
            outcome: Some(outcome),
            reason: reason.clone(),
            dry_run: false,
            comparative: true,
        });
        records.push(MetricRecord {
            metric: "score".to_string(),
            judge,
            outcome: Some(outcome),
            reason,
            stats,
            dry_run: false,
            queries: Vec::new(),
            error: None,
            observed: Vec::new(),
        });
    }
    // `None` only when no metric of the policy counts requests: then `min_requests`
    // cannot apply. A counting metric without counts this window counts zero.
    let requests = if counts_requests {
        Some(requests.unwrap_or([0.0, 0.0]))
    } else {
        None
    };
    Analysed {
        statuses,
        records,
        requests,
    }
}

/// Whether a metric's judge compares the arms (as opposed to bounding the canary alone).
fn comparative(m: &MetricConfig) -> bool {
    !matches!(m.judge, JudgeSpec::Threshold(_))
}
