//! `[rollout] post_promotion` (issue 13): after the last step the canary is still judged at
//! 100 % by the threshold guards (comparisons need a concurrent baseline: not judged), a Fail
//! rolls back to 0 inside the window, its end promotes, and a restart in the middle of it
//! resumes the window from its recorded start.

use super::fence::ticks;
use super::{Fixture, TIMING, policy_with, s};
use crate::analysis::Outcome;
use crate::controller::machine::{
    Command, Decision, Event, MetricStatus, Phase, Reason, Watch, WindowFacts, step,
};
use crate::controller::runner::{FinalOutcome, Quiet, RunOptions, run};
use crate::metrics::mock::{Answer, MockSource};
use crate::model::Weight;
use crate::policy::Rollout;
use crate::traffic::mock::MockTrafficProvider;

/// A comparison (`errors`, sequential) and an absolute guard (`ceiling`, threshold) on the
/// same error counts.
const METRICS: &str = "[[metric]]\nname = \"errors\"\nbuiltin = \"errors\"\n\
    [[metric]]\nname = \"ceiling\"\nbuiltin = \"errors\"\njudge = \"threshold\"\nmax = 0.1\nmin_trials = 50\n";

fn watched(pp: &str) -> crate::policy::Policy {
    policy_with(&format!("{TIMING}\npost_promotion = \"{pp}\""), METRICS)
}

/// Healthy for the 12 windows before the promotion (two steps of 60 s at 10 s), then the
/// canary's error rate is `after`.
fn source(after: f64) -> MockSource {
    let healthy = Answer::Rates {
        baseline: 0.01,
        canary: 0.01,
        requests: 2000.0,
    };
    let mut script: Vec<Answer> = (0..12).map(|_| healthy.clone()).collect();
    script.push(Answer::Rates {
        baseline: 0.01,
        canary: after,
        requests: 2000.0,
    });
    let src = MockSource::new();
    src.script("errors", script.clone());
    src.script("ceiling", script);
    src
}

fn status(metric: &str, outcome: Outcome, comparative: bool) -> MetricStatus {
    MetricStatus {
        metric: metric.to_string(),
        outcome: Some(outcome),
        reason: format!("{metric} said so"),
        dry_run: false,
        comparative,
    }
}

fn tick(now: u64, metrics: Vec<MetricStatus>) -> Event {
    Event::Tick {
        now: s(now),
        metrics,
        requests: None,
        facts: WindowFacts {
            in_force: Some(Weight::FULL),
            ..WindowFacts::default()
        },
    }
}

/// 100 % read back in force at `now` (from `Promoting`, or whatever `phase` is).
fn full_at(phase: Phase, now: u64, r: &Rollout) -> (Phase, Vec<Command>) {
    step(
        phase,
        Event::Applied {
            weight: Weight::FULL,
            now: s(now),
        },
        r,
    )
}

/// The post-promotion window, begun at `since`.
fn watching_since(since: u64) -> Phase {
    Phase::Watching(Watch {
        since: s(since),
        no_data_since: None,
        error_ticks: 0,
        paused_for: s(0),
    })
}

fn plan(pp: u64) -> Rollout {
    let mut r = super::plan();
    r.post_promotion = s(pp);
    r
}

#[test]
fn the_machine_watches_after_100_percent_rolls_back_on_a_guard_and_promotes_at_the_end() {
    let r = plan(300);
    let (phase, cmds) = full_at(Phase::Promoting { attempt: 0 }, 100, &r);
    let Phase::Watching(w) = &phase else {
        panic!("{phase:?}")
    };
    assert_eq!(w.since, s(100));
    assert!(cmds.is_empty(), "{cmds:?}");
    // Without post_promotion, promoted at once (as before).
    let (done, _) = full_at(Phase::Promoting { attempt: 0 }, 100, &plan(0));
    assert_eq!(done, Phase::Promoted);
    // A comparison's Fail is not acted on (no concurrent baseline); a guard's Fail is.
    let (phase, cmds) = step(
        phase,
        tick(110, vec![status("errors", Outcome::Fail, true)]),
        &r,
    );
    assert!(matches!(phase, Phase::Watching(_)), "{phase:?}");
    assert!(
        matches!(&cmds[0], Command::Record(Decision::Hold { reason }) if reason.contains("post-promotion window 10s of 300s")),
        "{cmds:?}"
    );
    let (back, cmds) = step(
        phase.clone(),
        tick(120, vec![status("ceiling", Outcome::Fail, false)]),
        &r,
    );
    let Phase::RollingBack { reason, .. } = &back else {
        panic!("{back:?}")
    };
    assert!(
        matches!(reason, Reason::MetricFailed { metric, detail } if metric == "ceiling" && detail.contains("after the promotion, 20s into the post-promotion window")),
        "{reason:?}"
    );
    // The record first, then weight 0.
    assert!(matches!(
        cmds[0],
        Command::Record(Decision::Rollback { .. })
    ));
    assert!(matches!(cmds[1], Command::Apply { weight, .. } if weight == Weight::ZERO));
    // Passing ticks until the window's end: promoted then, not before.
    let (phase, _) = step(
        phase,
        tick(399, vec![status("ceiling", Outcome::Pass, false)]),
        &r,
    );
    assert!(matches!(phase, Phase::Watching(_)), "{phase:?}");
    let (phase, cmds) = step(
        phase,
        tick(400, vec![status("ceiling", Outcome::Pass, false)]),
        &r,
    );
    assert_eq!(phase, Phase::Promoted);
    assert_eq!(cmds.last(), Some(&Command::Finish));
}

#[test]
fn a_restored_window_keeps_its_start_and_a_weight_changed_meanwhile_is_not_overridden() {
    let r = plan(300);
    let w = watching_since(100);
    // The record round-trips (the store keeps it), and old records without the new fields load.
    let text = serde_json::to_string(&w).unwrap();
    assert_eq!(serde_json::from_str::<Phase>(&text).unwrap(), w);
    let old: Phase =
        serde_json::from_str(r#"{"phase":"watching","since":{"secs":100,"nanos":0}}"#).unwrap();
    assert_eq!(old, w);
    let restored = |found| {
        step(
            w.clone(),
            Event::Restored {
                found,
                applied: Weight::FULL,
                downtime: s(50),
                now: s(250),
            },
            &r,
        )
    };
    let (phase, cmds) = restored(Some(Weight::FULL));
    assert_eq!(phase, w, "the window goes on from its recorded start");
    assert!(cmds.is_empty(), "{cmds:?}");
    let (phase, _) = step(phase, tick(400, Vec::new()), &r);
    assert_eq!(phase, Phase::Promoted);
    // Someone took the canary down to 0 while nobody watched: paused, never set back to 100.
    let (phase, cmds) = restored(Some(Weight::ZERO));
    assert!(matches!(phase, Phase::Paused(_)), "{phase:?}");
    assert!(
        !cmds.iter().any(|c| matches!(c, Command::Apply { .. })),
        "{cmds:?}"
    );
}

/// Someone sets another weight during the window: paused (not overridden); resumed, 100 % is
/// put back and the window starts over from the moment it is in force again: the canary is
/// watched for a whole window at 100 % after a human touched traffic (the safe side), and
/// the time at the outside weight is never counted as time watched.
#[test]
fn a_resume_after_an_outside_change_in_the_window_watches_a_whole_window_again() {
    let r = plan(300);
    let w = watching_since(100);
    let mut changed = tick(350, Vec::new());
    if let Event::Tick { facts, .. } = &mut changed {
        facts.in_force = Some(Weight::try_from_percent(50.0).unwrap());
    }
    let (paused, cmds) = step(w, changed, &r);
    assert!(matches!(paused, Phase::Paused(_)), "{paused:?}");
    assert!(
        !cmds.iter().any(|c| matches!(c, Command::Apply { .. })),
        "{cmds:?}"
    );
    let (phase, cmds) = step(paused, Event::Resume { now: s(500) }, &r);
    assert_eq!(phase, Phase::Promoting { attempt: 0 });
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::Apply { weight, .. } if *weight == Weight::FULL)),
        "{cmds:?}"
    );
    let (phase, _) = full_at(phase, 510, &r);
    let Phase::Watching(again) = &phase else {
        panic!("{phase:?}")
    };
    assert_eq!(again.since, s(510));
    // The first window would have ended at 400; this one ends 300 s after 510.
    let (phase, _) = step(phase, tick(809, Vec::new()), &r);
    assert!(matches!(phase, Phase::Watching(_)), "{phase:?}");
    let (phase, _) = step(phase, tick(810, Vec::new()), &r);
    assert_eq!(phase, Phase::Promoted);
}

#[tokio::test(start_paused = true)]
async fn a_canary_that_breaks_after_the_promotion_is_rolled_back_inside_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("d.jsonl");
    let policy = watched("5m");
    let traffic = MockTrafficProvider::new();
    let src = source(0.3);
    let opts = RunOptions {
        decisions: Some(log.clone()),
        ..RunOptions::default()
    };
    let report = run(&policy, &traffic, &src, opts, &mut Quiet)
        .await
        .unwrap();
    let FinalOutcome::RolledBack { reason } = &report.outcome else {
        panic!("{:?}", report.outcome)
    };
    assert!(
        matches!(reason, Reason::MetricFailed { metric, detail } if metric == "ceiling" && detail.contains("after the promotion")),
        "{reason:?}"
    );
    assert_eq!(
        traffic.calls(),
        vec![super::w(5.0), super::w(25.0), Weight::FULL, Weight::ZERO]
    );
    assert_eq!(report.final_weight, Weight::ZERO);
    // The first window at 100 % failed: 10 s after the switch, well inside the 5 minutes.
    assert!(report.duration_s < 140.0, "{}", report.duration_s);
    let text = std::fs::read_to_string(&log).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(records.iter().any(|r| r["event"] == "post-promotion"));
    // The comparison is named for what it is: not judged without a concurrent baseline.
    let last_tick = records.iter().rev().find(|r| r["kind"] == "tick").unwrap();
    let errors = last_tick["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metric"] == "errors")
        .unwrap();
    assert!(
        errors["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no concurrent baseline")),
        "{errors}"
    );
    assert_eq!(records.last().unwrap()["event"], "rolled-back");
}

#[tokio::test(start_paused = true)]
async fn a_healthy_canary_is_promoted_at_the_end_of_the_window() {
    let policy = watched("5m");
    let traffic = MockTrafficProvider::new();
    let report = run(
        &policy,
        &traffic,
        &source(0.01),
        RunOptions::default(),
        &mut Quiet,
    )
    .await
    .unwrap();
    assert_eq!(report.outcome, FinalOutcome::Promoted, "{report:?}");
    assert_eq!(
        traffic.calls(),
        vec![super::w(5.0), super::w(25.0), Weight::FULL]
    );
    // 120 s of steps, then the 300 s window.
    assert!(
        report.duration_s >= 420.0 && report.duration_s < 440.0,
        "{}",
        report.duration_s
    );
    assert_eq!(report.ticks, 12 + 30);
}

#[tokio::test(start_paused = true)]
async fn a_restart_in_the_middle_of_the_window_resumes_it() {
    let f = Fixture::new(watched("5m"), source(0.01));
    let traffic = &f.traffic;
    let mut r = f.start(None).await;
    // Into the window, then the controller dies (its record was written before each act).
    ticks(&mut r, 100, |r| matches!(r.phase(), Phase::Watching(_))).await;
    let Phase::Watching(w) = r.phase().clone() else {
        panic!("{:?}", r.phase())
    };
    ticks(&mut r, 10, |_| false).await;
    drop(r);
    let stored = f.stored().await;
    assert_eq!(stored.phase, Phase::Watching(w.clone()));
    let mut r = f.start(Some(stored)).await;
    assert_eq!(
        r.phase(),
        &Phase::Watching(w.clone()),
        "resumed in the window"
    );
    ticks(&mut r, 100, |_| false).await;
    assert!(r.finished());
    let report = r.finish().await;
    assert_eq!(report.outcome, FinalOutcome::Promoted, "{report:?}");
    // 100 % was set once: the resumed controller did not set it again.
    assert_eq!(
        traffic.calls(),
        vec![super::w(5.0), super::w(25.0), Weight::FULL]
    );
    // It ended at the recorded window's end, not a full window after the restart.
    let end = w.since + s(300);
    assert!(
        report.duration_s >= end.as_secs_f64() && report.duration_s < end.as_secs_f64() + 15.0,
        "{} vs {end:?}",
        report.duration_s
    );
}

#[test]
fn post_promotion_without_a_threshold_guard_is_a_warning_at_its_key() {
    let said = super::plans::diagnostics("steps = [5, 100]\npost_promotion = \"30m\"");
    assert!(
        said.contains("t.toml:4:1: warning: post_promotion judges only threshold guards"),
        "{said}"
    );
    let said = super::plans::diagnostics("steps = [5, 100]");
    assert!(!said.contains("post_promotion"), "{said}");
    let said = super::plans::diagnostics("steps = [5, 100]\npost_promotion = \"soon\"");
    assert!(
        said.contains("t.toml:4:18: invalid duration `soon`"),
        "{said}"
    );
    assert_eq!(watched("30m").rollout.post_promotion, s(1800));
}
