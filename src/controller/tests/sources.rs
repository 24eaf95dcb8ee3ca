//! The pure state machine under failing metrics sources: query errors and missing data hold
//! a step, limits roll back, and nothing advances without data.

use std::time::Duration;

use crate::analysis::Outcome;
use crate::controller::machine::{
    Command, Decision, Event, MetricStatus, Phase, Progress, Reason, WindowFacts, step,
};
use crate::model::Weight;
use crate::policy::{OnNoData, Rollout};

fn plan() -> Rollout {
    let mut r = Rollout::with_steps(
        [10.0, 50.0, 100.0]
            .iter()
            .map(|p| Weight::try_from_percent(*p).unwrap())
            .collect(),
    );
    r.step_duration = Duration::from_secs(4);
    r.analysis_interval = Duration::from_secs(1);
    r.min_requests = 10;
    r.deadline = Duration::from_secs(600);
    r.error_limit = 3;
    r.on_no_data = OnNoData::Hold;
    r.no_data_limit = Duration::from_secs(5);
    r
}

fn progressing() -> Phase {
    let mut p = Progress::new(
        0,
        Weight::try_from_percent(10.0).unwrap(),
        Duration::ZERO,
        Duration::ZERO,
    );
    // Enough requests already: only the metrics decide.
    p.requests = [1000.0, 1000.0];
    Phase::Progressing(p)
}

fn status(metric: &str, outcome: Option<Outcome>) -> MetricStatus {
    MetricStatus {
        metric: metric.to_string(),
        outcome,
        reason: if outcome.is_none() {
            "source `prometheus` unreachable: connection refused".to_string()
        } else {
            String::new()
        },
        dry_run: false,
        comparative: true,
    }
}

fn tick(phase: Phase, secs: u64, metrics: Vec<MetricStatus>, plan: &Rollout) -> (Phase, Decision) {
    let (next, cmds) = step(
        phase,
        Event::Tick {
            now: Duration::from_secs(secs),
            metrics,
            requests: Some([100.0, 100.0]),
            facts: WindowFacts::default(),
        },
        plan,
    );
    let decision = cmds
        .iter()
        .find_map(|c| match c {
            Command::Record(d) => Some(d.clone()),
            _ => None,
        })
        .expect("every tick records a decision");
    (next, decision)
}

fn error_ticks(p: &Phase) -> u32 {
    match p {
        Phase::Progressing(p) => p.error_ticks,
        other => panic!("not progressing: {other:?}"),
    }
}

#[test]
fn a_tick_with_an_errored_metric_never_advances() {
    let plan = plan();
    // Past the step's duration, every other metric passing: still a hold.
    let (next, d) = tick(
        progressing(),
        10,
        vec![
            status("errors", Some(Outcome::Pass)),
            status("latency", None),
        ],
        &plan,
    );
    assert!(
        matches!(&d, Decision::Hold { reason } if reason.contains("query errors (1 in a row, limit 3)")),
        "{d:?}"
    );
    assert_eq!(error_ticks(&next), 1);
    // Same with missing data instead of an error.
    let (_, d) = tick(
        progressing(),
        10,
        vec![
            status("errors", Some(Outcome::Pass)),
            status("latency", Some(Outcome::NoData)),
        ],
        &plan,
    );
    assert!(
        matches!(&d, Decision::Hold { reason } if reason.contains("no data for latency")),
        "{d:?}"
    );
    // A dry-run metric's error does not hold the step.
    let mut dry = status("shadow", None);
    dry.dry_run = true;
    let (_, d) = tick(
        progressing(),
        10,
        vec![status("errors", Some(Outcome::Pass)), dry],
        &plan,
    );
    assert!(matches!(d, Decision::Advance { step: 1, .. }), "{d:?}");
}

#[test]
fn error_limit_counts_consecutive_error_ticks_and_recovery_resets_it() {
    let plan = plan();
    let failing = || vec![status("errors", None)];
    let ok = || vec![status("errors", Some(Outcome::Inconclusive))];
    let (p, _) = tick(progressing(), 1, failing(), &plan);
    let (p, _) = tick(p, 2, failing(), &plan);
    assert_eq!(error_ticks(&p), 2);
    // One good tick resets the count...
    let (p, d) = tick(p, 3, ok(), &plan);
    assert_eq!(error_ticks(&p), 0);
    assert!(matches!(d, Decision::Hold { .. }), "{d:?}");
    // ...so two more errors are not yet the limit of 3, the third is.
    let (p, _) = tick(p, 4, failing(), &plan);
    let (p, d) = tick(p, 5, failing(), &plan);
    assert!(matches!(d, Decision::Hold { .. }), "{d:?}");
    let (p, d) = tick(p, 6, failing(), &plan);
    let Decision::Rollback {
        reason: Reason::QueryErrors { ticks, last },
    } = &d
    else {
        panic!("{d:?}")
    };
    assert_eq!(*ticks, 3);
    assert!(last.contains("unreachable"), "{last}");
    assert!(matches!(p, Phase::RollingBack { .. }), "{p:?}");
}

#[test]
fn error_limit_zero_never_rolls_back_on_errors_alone() {
    let mut plan = plan();
    plan.error_limit = 0;
    let mut p = progressing();
    for s in 1..50 {
        let (next, d) = tick(p, s, vec![status("errors", None)], &plan);
        assert!(matches!(d, Decision::Hold { .. }), "{s}: {d:?}");
        p = next;
    }
}

#[test]
fn missing_data_holds_and_rolls_back_after_the_limit_with_rollback() {
    let mut plan = plan();
    plan.error_limit = 0;
    // Long steps: only the data decides here.
    plan.step_duration = Duration::from_secs(60);
    let nodata = || vec![status("errors", Some(Outcome::NoData))];
    // Hold: data missing for ever is still a hold (the deadline applies).
    let (p, _) = tick(progressing(), 1, nodata(), &plan);
    let (_, d) = tick(p, 100, nodata(), &plan);
    assert!(matches!(d, Decision::Hold { .. }), "{d:?}");
    // Rollback: after no_data_limit counted from the first tick without data; query
    // errors count as missing data too.
    plan.on_no_data = OnNoData::Rollback;
    let (p, _) = tick(progressing(), 1, nodata(), &plan);
    let (p, d) = tick(p, 5, vec![status("errors", None)], &plan);
    assert!(matches!(d, Decision::Hold { .. }), "{d:?}");
    let (_, d) = tick(p, 6, nodata(), &plan);
    assert!(
        matches!(&d, Decision::Rollback { reason: Reason::NoData { metrics, for_s } } if metrics == &["errors".to_string()] && *for_s == 5.0),
        "{d:?}"
    );
    // Data coming back resets the clock.
    let (p, _) = tick(progressing(), 1, nodata(), &plan);
    let (p, _) = tick(
        p,
        4,
        vec![status("errors", Some(Outcome::Inconclusive))],
        &plan,
    );
    let (_, d) = tick(p, 8, nodata(), &plan);
    assert!(matches!(d, Decision::Hold { .. }), "{d:?}");
}

#[test]
fn a_failed_metric_rolls_back_even_while_others_error() {
    let plan = plan();
    let (_, d) = tick(
        progressing(),
        1,
        vec![
            status("latency", None),
            status("errors", Some(Outcome::Fail)),
        ],
        &plan,
    );
    assert!(
        matches!(&d, Decision::Rollback { reason: Reason::MetricFailed { metric, .. } } if metric == "errors"),
        "{d:?}"
    );
}
