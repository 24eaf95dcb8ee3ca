//! `[rollout] strategy = "blue-green"` (issue 13): green is checked at 0 % (pre-rollout
//! checks and gates), then one switch 0 → 100, the post-promotion window (a Fail switches
//! back once), then `keep_blue` (blue kept for a manual rollback, surviving a restart), ending
//! with the `blue-retired` gates.

use std::time::Duration;

use super::fence::ticks;
use super::{Controller, Fixture, s};
use crate::analysis::Outcome;
use crate::controller::machine::{
    Command, Decision, Event, KeepBlue, MetricStatus, NO_PREVIEW_SHARE, Phase, Reason, Watch,
    WindowFacts, step,
};
use crate::controller::runner::{
    FinalOutcome, Lever, OperatorAction, Quiet, RunOptions, Wake, run,
};
use crate::metrics::mock::{Answer, MockSource};
use crate::model::Weight;
use crate::policy::{self, Policy, Rollout, Strategy};
use crate::traffic::mock::MockTrafficProvider;

/// A comparison (`errors`) and a threshold guard (`ceiling`) on the same error counts.
const METRICS: &str = "[[metric]]\nname = \"errors\"\nbuiltin = \"errors\"\n\
    [[metric]]\nname = \"ceiling\"\nbuiltin = \"errors\"\njudge = \"threshold\"\nmax = 0.1\nmin_trials = 50\n";

/// A blue-green policy: 10 s ticks, a 5-minute window, 10 minutes of keep_blue.
fn blue_green(extra: &str) -> Policy {
    super::policy_with(
        &format!(
            "strategy = \"blue-green\"\nanalysis_interval = \"10s\"\npost_promotion = \"5m\"\n\
             keep_blue = \"10m\"\n{extra}"
        ),
        METRICS,
    )
}

/// Green's error rate in every window (the first window is already at 100 %).
fn green(rate: f64) -> MockSource {
    let answer = Answer::Rates {
        baseline: 0.01,
        canary: rate,
        requests: 2000.0,
    };
    let src = MockSource::new();
    src.script("errors", vec![answer.clone()]);
    src.script("ceiling", vec![answer]);
    src
}

fn records(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn events(records: &[serde_json::Value]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| r["event"].as_str().map(str::to_string))
        .collect()
}

fn plan() -> Rollout {
    let mut r = Rollout::with_steps(vec![Weight::FULL]);
    r.strategy = Strategy::BlueGreen;
    r.analysis_interval = s(10);
    r.post_promotion = s(300);
    r.keep_blue = s(600);
    r
}

fn at_full(now: u64) -> Event {
    Event::Tick {
        now: s(now),
        metrics: Vec::new(),
        requests: None,
        facts: WindowFacts {
            in_force: Some(Weight::FULL),
            ..WindowFacts::default()
        },
    }
}

#[test]
fn the_machine_switches_once_watches_keeps_blue_then_promotes() {
    let r = plan();
    // The checks and gates at 0 %, then straight to 100 %: no step in between.
    let (phase, cmds) = step(
        Phase::PreChecks,
        Event::PreChecksDone {
            failed: None,
            now: s(1),
        },
        &r,
    );
    assert_eq!(phase, Phase::Promoting { attempt: 0 });
    assert_eq!(
        cmds,
        vec![Command::Apply {
            weight: Weight::FULL,
            delay: Duration::ZERO
        }]
    );
    let (phase, _) = step(
        phase,
        Event::Applied {
            weight: Weight::FULL,
            now: s(2),
        },
        &r,
    );
    assert!(matches!(phase, Phase::Watching(_)), "{phase:?}");
    // The window's end keeps blue (not promoted yet), from that moment.
    let guard = MetricStatus {
        metric: "ceiling".into(),
        outcome: Some(Outcome::Pass),
        reason: "fine".into(),
        dry_run: false,
        comparative: false,
    };
    let (phase, cmds) = step(
        phase,
        Event::Tick {
            now: s(302),
            metrics: vec![guard],
            requests: None,
            facts: WindowFacts {
                in_force: Some(Weight::FULL),
                ..WindowFacts::default()
            },
        },
        &r,
    );
    assert_eq!(
        phase,
        Phase::KeepingBlue(KeepBlue {
            since: s(302),
            paused_for: Duration::ZERO
        })
    );
    assert!(
        matches!(&cmds[0], Command::Record(Decision::Hold { reason }) if reason.contains("keeping blue for 600s")),
        "{cmds:?}"
    );
    assert!(!cmds.iter().any(|c| matches!(c, Command::Apply { .. })));
    let (held, cmds) = step(phase.clone(), at_full(901), &r);
    assert!(matches!(held, Phase::KeepingBlue(_)), "{held:?}");
    assert!(
        matches!(&cmds[0], Command::Record(Decision::Hold { reason }) if reason.contains("keeping blue 599s of 600s")),
        "{cmds:?}"
    );
    let (done, cmds) = step(held.clone(), at_full(902), &r);
    assert_eq!(done, Phase::Promoted);
    assert_eq!(cmds.last(), Some(&Command::Finish));
    // An operator's rollback during keep_blue: one switch back to 0.
    let (back, cmds) = step(
        held.clone(),
        Event::Abort {
            why: "by hand".into(),
            now: s(500),
        },
        &r,
    );
    assert!(matches!(back, Phase::RollingBack { .. }), "{back:?}");
    assert_eq!(
        cmds.iter()
            .filter(|c| matches!(c, Command::Apply { weight, .. } if *weight == Weight::ZERO))
            .count(),
        1
    );
    // `promote --full` retires blue now.
    let (done, _) = step(held.clone(), Event::PromoteNow { now: s(500) }, &r);
    assert_eq!(done, Phase::Promoted);
    // Someone switched back to blue by hand: never overridden (paused, nothing applied).
    let (paused, cmds) = step(
        held,
        Event::Tick {
            now: s(500),
            metrics: Vec::new(),
            requests: None,
            facts: WindowFacts {
                in_force: Some(Weight::ZERO),
                ..WindowFacts::default()
            },
        },
        &r,
    );
    assert!(matches!(paused, Phase::Paused(_)), "{paused:?}");
    assert!(!cmds.iter().any(|c| matches!(c, Command::Apply { .. })));
    // An operator ending the window early keeps blue too; keep_blue = 0 promotes at once.
    let watching = Phase::Watching(Watch {
        since: s(2),
        no_data_since: None,
        error_ticks: 0,
        paused_for: Duration::ZERO,
    });
    let (kept, _) = step(watching.clone(), Event::PromoteNow { now: s(50) }, &r);
    assert!(matches!(kept, Phase::KeepingBlue(k) if k.since == s(50)));
    let mut now_retired = plan();
    now_retired.keep_blue = Duration::ZERO;
    let (done, _) = step(watching, at_full(302), &now_retired);
    assert_eq!(done, Phase::Promoted);
    // A canary policy's window end promotes as before (keep_blue is blue-green's).
    let mut canary = plan();
    canary.strategy = Strategy::Canary;
    let (done, _) = step(
        Phase::Watching(Watch {
            since: s(2),
            no_data_since: None,
            error_ticks: 0,
            paused_for: Duration::ZERO,
        }),
        at_full(302),
        &canary,
    );
    assert_eq!(done, Phase::Promoted);
}

#[test]
fn a_restored_keep_blue_keeps_its_start_and_old_records_load() {
    let r = plan();
    let k = Phase::KeepingBlue(KeepBlue {
        since: s(400),
        paused_for: Duration::ZERO,
    });
    let text = serde_json::to_string(&k).unwrap();
    assert_eq!(serde_json::from_str::<Phase>(&text).unwrap(), k);
    let old: Phase =
        serde_json::from_str(r#"{"phase":"keeping-blue","since":{"secs":400,"nanos":0}}"#).unwrap();
    assert_eq!(old, k);
    let restored = |found| {
        step(
            k.clone(),
            Event::Restored {
                found,
                applied: Weight::FULL,
                downtime: s(60),
                now: s(700),
            },
            &r,
        )
    };
    for found in [Some(Weight::FULL), None] {
        let (phase, cmds) = restored(found);
        assert_eq!(phase, k, "keep_blue goes on from its recorded start");
        assert!(cmds.is_empty(), "no second switch: {cmds:?}");
    }
    let (phase, cmds) = restored(Some(Weight::ZERO));
    assert!(matches!(phase, Phase::Paused(_)), "{phase:?}");
    assert!(!cmds.iter().any(|c| matches!(c, Command::Apply { .. })));
}

#[tokio::test(start_paused = true)]
async fn a_healthy_green_is_promoted_after_the_window_and_keep_blue_then_blue_is_retired_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("d.jsonl");
    let told = dir.path().join("told");
    let policy = blue_green(&format!(
        "[[rollout.gate]]\nname = \"scale-down-blue\"\ntype = \"blue-retired\"\n\
         command = [\"sh\", \"-c\", \"echo \\\"$COALMINE_GATE_BODY\\\" >> {}\"]\n",
        told.display()
    ));
    let f = Fixture::new(policy, green(0.01)).logged(&log);
    let traffic = &f.traffic;
    let mut r = f.start(None).await;
    ticks(&mut r, 200, |_| false).await;
    assert!(r.finished(), "{:?}", r.phase());
    assert!(
        !told.exists(),
        "the blue-retired gate is told after the end, not before"
    );
    // The gate's command runs on the real clock (paused time would time it out at once).
    tokio::time::resume();
    let report = r.finish().await;
    assert_eq!(report.outcome, FinalOutcome::Promoted, "{report:?}");
    // One switch, 0 → 100, and never back.
    assert_eq!(traffic.calls(), vec![Weight::FULL]);
    // 300 s of window, then 600 s of keep_blue.
    assert!(
        report.duration_s >= 900.0 && report.duration_s < 915.0,
        "{}",
        report.duration_s
    );
    // Only the window's ticks analyse (keep_blue judges nothing).
    assert_eq!(report.ticks, 30);
    // The window's ticks judged green at 100 %: not a blind cutover.
    assert!(report.analysed, "{report:?}");
    let told = std::fs::read_to_string(&told).unwrap();
    let lines: Vec<&str> = told.lines().collect();
    assert_eq!(lines.len(), 1, "told once: {told}");
    let body: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(body["type"], "blue-retired");
    assert_eq!(body["weight_in_force"], 100.0);
    assert_eq!(body["phase"], "promoted");
    let recs = records(&log);
    let ev = events(&recs);
    let pos = |e: &str| {
        ev.iter()
            .position(|x| x == e)
            .unwrap_or_else(|| panic!("{e}: {ev:?}"))
    };
    assert!(pos("blue-green") < pos("post-promotion"));
    assert!(pos("post-promotion") < pos("keeping-blue"));
    assert!(pos("keeping-blue") < pos("promoted"));
    assert!(pos("promoted") < pos("gate-passed"));
    let bg = recs.iter().find(|r| r["event"] == "blue-green").unwrap();
    assert!(
        bg["detail"].as_str().unwrap().contains(NO_PREVIEW_SHARE),
        "{bg}"
    );
    // Nothing is analysed at 0 %: no tick before the switch.
    let first_tick = recs.iter().find(|r| r["kind"] == "tick").unwrap();
    assert_eq!(first_tick["weight"], 100.0, "{first_tick}");
}

#[tokio::test(start_paused = true)]
async fn a_bad_green_is_switched_back_once_inside_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("d.jsonl");
    let policy = blue_green("");
    let traffic = MockTrafficProvider::new();
    let opts = RunOptions {
        decisions: Some(log.clone()),
        ..RunOptions::default()
    };
    let report = run(&policy, &traffic, &green(0.3), opts, &mut Quiet)
        .await
        .unwrap();
    let FinalOutcome::RolledBack { reason } = &report.outcome else {
        panic!("{:?}", report.outcome)
    };
    assert!(
        matches!(reason, Reason::MetricFailed { metric, detail } if metric == "ceiling" && detail.contains("post-promotion window")),
        "{reason:?}"
    );
    // Exactly two traffic changes: the switch and the switch back.
    assert_eq!(traffic.calls(), vec![Weight::FULL, Weight::ZERO]);
    assert_eq!(report.final_weight, Weight::ZERO);
    // The first window at 100 % failed: well inside the 5-minute window.
    assert!(report.duration_s < 30.0, "{}", report.duration_s);
    let ev = events(&records(&log));
    assert!(!ev.iter().any(|e| e == "keeping-blue"), "{ev:?}");
    assert_eq!(ev.last().map(String::as_str), Some("rolled-back"));
}

#[tokio::test(start_paused = true)]
async fn a_restart_in_the_middle_of_keep_blue_resumes_it_without_a_second_switch() {
    let policy = blue_green("");
    let f = Fixture::new(policy, green(0.01));
    let traffic = &f.traffic;
    let mut r = f.start(None).await;
    ticks(&mut r, 100, |r| matches!(r.phase(), Phase::KeepingBlue(_))).await;
    let Phase::KeepingBlue(k) = r.phase().clone() else {
        panic!("{:?}", r.phase())
    };
    ticks(&mut r, 20, |_| false).await;
    drop(r);
    let stored = f.stored().await;
    assert_eq!(stored.phase, Phase::KeepingBlue(k.clone()));
    // Nobody watches for a minute.
    tokio::time::sleep(s(60)).await;
    let mut r = f.start(Some(stored)).await;
    assert_eq!(
        r.phase(),
        &Phase::KeepingBlue(k.clone()),
        "resumed in keep_blue"
    );
    ticks(&mut r, 100, |_| false).await;
    assert!(r.finished());
    let report = r.finish().await;
    assert_eq!(report.outcome, FinalOutcome::Promoted, "{report:?}");
    assert_eq!(traffic.calls(), vec![Weight::FULL], "no second switch");
    // It ended at the recorded keep_blue's end, not ten minutes after the restart.
    let end = k.since + s(600);
    assert!(
        report.duration_s >= end.as_secs_f64() && report.duration_s < end.as_secs_f64() + 15.0,
        "{} vs {end:?}",
        report.duration_s
    );
}

#[tokio::test(start_paused = true)]
async fn a_rollback_during_keep_blue_switches_back_to_blue() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("d.jsonl");
    let policy = blue_green("");
    let f = Fixture::new(policy, green(0.01)).logged(&log);
    let traffic = &f.traffic;
    let mut r = f.start(None).await;
    ticks(&mut r, 100, |r| matches!(r.phase(), Phase::KeepingBlue(_))).await;
    ticks(&mut r, 5, |_| false).await;
    assert!(
        matches!(r.phase(), Phase::KeepingBlue(_)),
        "{:?}",
        r.phase()
    );
    assert_eq!(traffic.calls(), vec![Weight::FULL]);
    // `coalmine rollback` (the control API's abort).
    r.reconcile(Wake::Lever(Lever::Operator {
        action: OperatorAction::Abort,
        actor: "alice".into(),
        reason: "green's dashboards look wrong".into(),
    }))
    .await;
    assert!(r.finished(), "{:?}", r.phase());
    let report = r.finish().await;
    let FinalOutcome::RolledBack { reason } = &report.outcome else {
        panic!("{:?}", report.outcome)
    };
    assert!(
        matches!(reason, Reason::Aborted { why } if why.contains("alice")),
        "{reason:?}"
    );
    assert_eq!(traffic.calls(), vec![Weight::FULL, Weight::ZERO]);
    // During keep_blue: after the 5-minute window, before its 10 minutes ended.
    assert!(
        report.duration_s > 300.0 && report.duration_s < 900.0,
        "{}",
        report.duration_s
    );
    assert_eq!(
        events(&records(&log)).last().map(String::as_str),
        Some("rolled-back")
    );
}

/// A real-clock run: the checks and gates before the switch see weight 0, the
/// blue-retired gate sees 100 at the end.
#[tokio::test]
async fn green_is_checked_at_zero_before_the_switch_and_blue_is_retired_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let told = dir.path().join("told");
    let append = |what: &str| {
        format!(
            "command = [\"sh\", \"-c\", \"echo \\\"{what}\\\" >> {}\"]\n",
            told.display()
        )
    };
    let text = format!(
        "name = \"bg\"\n[rollout]\nstrategy = \"blue-green\"\nanalysis_interval = \"200ms\"\n\
         post_promotion = \"1s\"\nkeep_blue = \"1s\"\n\
         [[rollout.gate]]\nname = \"change-window\"\ntype = \"confirm-rollout\"\n{}\
         [[rollout.gate]]\nname = \"release-manager\"\ntype = \"confirm-promotion\"\n{}\
         [[rollout.gate]]\nname = \"scale-down\"\ntype = \"blue-retired\"\n{}\
         [traffic]\ntype = \"proxy\"\nlisten = \"127.0.0.1:0\"\nbaseline = \"http://127.0.0.1:1\"\n\
         canary = \"http://127.0.0.1:2\"\n{METRICS}\
         [[hook]]\nname = \"smoke\"\nwhen = \"pre-rollout\"\n{}",
        append("$COALMINE_GATE_BODY"),
        append("$COALMINE_GATE_BODY"),
        append("$COALMINE_GATE_BODY"),
        append("hook $COALMINE_WEIGHT"),
    );
    let policy = policy::parse(&text, "bg.toml").unwrap_or_else(|d| panic!("{d}"));
    let traffic = MockTrafficProvider::new();
    let report = run(
        &policy,
        &traffic,
        &green(0.01),
        RunOptions::default(),
        &mut Quiet,
    )
    .await
    .unwrap();
    assert_eq!(report.outcome, FinalOutcome::Promoted, "{report:?}");
    assert_eq!(traffic.calls(), vec![Weight::FULL]);
    // (what, weight in force) in the order told.
    let said: Vec<(String, f64)> = std::fs::read_to_string(&told)
        .unwrap()
        .lines()
        .map(|l| match l.strip_prefix("hook ") {
            Some(w) => ("hook".to_string(), w.parse().unwrap()),
            None => {
                let v: serde_json::Value =
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
                (
                    v["type"].as_str().unwrap().to_string(),
                    v["weight_in_force"].as_f64().unwrap(),
                )
            }
        })
        .collect();
    let expected = [
        ("hook", 0.0),
        ("confirm-rollout", 0.0),
        ("confirm-promotion", 0.0),
        ("blue-retired", 100.0),
    ];
    assert_eq!(
        said,
        expected
            .iter()
            .map(|(k, w)| ((*k).to_string(), *w))
            .collect::<Vec<_>>()
    );
}

fn diagnostics(rollout: &str, metrics: &str) -> String {
    let text = format!(
        "name = \"t\"\n[rollout]\n{rollout}\n[traffic]\ntype = \"proxy\"\nlisten = \"127.0.0.1:0\"\n\
         baseline = \"http://127.0.0.1:1\"\ncanary = \"http://127.0.0.1:2\"\n{metrics}"
    );
    match policy::parse_with_warnings(&text, "t.toml") {
        Ok((_, warnings)) => warnings.to_string(),
        Err(d) => d.to_string(),
    }
}

#[test]
fn validate_refuses_steps_with_blue_green_and_blue_green_keys_without_it() {
    let steps = "steps make no sense";
    let said = diagnostics(
        "strategy = \"blue-green\"\nsteps = [5, 100]\npost_promotion = \"5m\"",
        METRICS,
    );
    assert!(
        said.contains(&format!(
            "t.toml:4:9: blue-green switches 0 → 100 once; {steps}"
        )),
        "{said}"
    );
    let said = diagnostics(
        "strategy = \"blue-green\"\npost_promotion = \"5m\"\n[[rollout.step]]\nweight = 50\n",
        METRICS,
    );
    assert!(
        said.contains(&format!(
            "t.toml:5:1: blue-green switches 0 → 100 once; {steps}"
        )),
        "{said}"
    );
    let said = diagnostics("steps = [5, 100]\nkeep_blue = \"10m\"", METRICS);
    assert!(
        said.contains("t.toml:4:13: keep_blue needs strategy = \"blue-green\""),
        "{said}"
    );
    let said = diagnostics(
        "steps = [5, 100]\n[[rollout.gate]]\nname = \"x\"\ntype = \"blue-retired\"\ncommand = [\"true\"]",
        METRICS,
    );
    assert!(
        said.contains("t.toml:6:8: a blue-retired gate needs strategy = \"blue-green\""),
        "{said}"
    );
    let said = diagnostics("strategy = \"blue-grean\"", METRICS);
    assert!(
        said.contains("t.toml:3:12:") && said.contains("blue-grean"),
        "{said}"
    );
    // Written out explicitly, the canary strategy takes steps as always.
    let said = diagnostics("strategy = \"canary\"\nsteps = [5, 100]", METRICS);
    assert!(!said.contains("error") && !said.contains("blue"), "{said}");
}

#[test]
fn validate_warns_when_nothing_is_analysed_after_the_switch() {
    let said = diagnostics("strategy = \"blue-green\"", METRICS);
    assert!(
        said.contains("t.toml:3:1: warning: blue-green without post_promotion: nothing is analysed after the switch"),
        "{said}"
    );
    // Not called a blind cutover (the switch is the strategy), and no step-time errors.
    assert!(!said.contains("blind cutover"), "{said}");
    let said = diagnostics(
        "strategy = \"blue-green\"\npost_promotion = \"0s\"\nkeep_blue = \"10m\"",
        METRICS,
    );
    assert!(
        said.contains("nothing is analysed after the switch"),
        "{said}"
    );
    // No threshold guard: the post_promotion warning.
    let errors = "[[metric]]\nname = \"errors\"\nbuiltin = \"errors\"\n";
    let said = diagnostics(
        "strategy = \"blue-green\"\npost_promotion = \"30m\"",
        errors,
    );
    assert!(
        said.contains("t.toml:4:1: warning: post_promotion judges only threshold guards"),
        "{said}"
    );
    // A complete one is clean, and its deadline covers the checks before the switch.
    let text = format!(
        "name = \"t\"\n[rollout]\nstrategy = \"blue-green\"\npost_promotion = \"30m\"\nkeep_blue = \"10m\"\n\
         [traffic]\ntype = \"proxy\"\nlisten = \"127.0.0.1:0\"\nbaseline = \"http://127.0.0.1:1\"\n\
         canary = \"http://127.0.0.1:2\"\n{METRICS}"
    );
    let (p, warnings) = policy::parse_with_warnings(&text, "t.toml").unwrap();
    assert!(warnings.is_empty(), "{warnings}");
    assert_eq!(p.rollout.steps, vec![Weight::FULL]);
    assert_eq!(p.rollout.strategy, Strategy::BlueGreen);
    assert_eq!(p.rollout.keep_blue, s(600));
    assert_eq!(p.rollout.deadline, s(600));
    // A canary `steps = [100]` is still a blind cutover.
    let said = diagnostics("steps = [100]", METRICS);
    assert!(
        said.contains("a blind cutover: nothing is analysed"),
        "{said}"
    );
}

/// Drives a blue-green rollout into keep_blue, 5 ticks in, then puts `outside` in force from
/// outside coalmine: the rollout pauses. Returns the reconciler, paused, and keep_blue's
/// state at the pause.
async fn paused_in_keep_blue(f: &Fixture, outside: Weight) -> (Controller<'_>, KeepBlue) {
    let mut r = f.start(None).await;
    ticks(&mut r, 100, |r| matches!(r.phase(), Phase::KeepingBlue(_))).await;
    let Phase::KeepingBlue(k) = r.phase().clone() else {
        panic!("{:?}", r.phase())
    };
    ticks(&mut r, 5, |_| false).await;
    f.traffic.force(outside);
    ticks(&mut r, 5, |r| matches!(r.phase(), Phase::Paused(_))).await;
    assert!(matches!(r.phase(), Phase::Paused(_)), "{:?}", r.phase());
    (r, k)
}

/// Resumes the paused `r`: it goes on in keep_blue, to the promotion.
async fn resumed_to_the_end(mut r: Controller<'_>) -> crate::controller::runner::RunReport {
    r.reconcile(Wake::Lever(Lever::Resume)).await;
    ticks(&mut r, 3, |_| false).await;
    assert!(
        matches!(r.phase(), Phase::KeepingBlue(_)),
        "resumed in keep_blue: {:?}",
        r.phase()
    );
    ticks(&mut r, 200, |_| false).await;
    assert!(r.finished(), "{:?}", r.phase());
    let report = r.finish().await;
    assert_eq!(report.outcome, FinalOutcome::Promoted, "{report:?}");
    report
}

/// How many records of `event` the log holds.
fn count(log: &std::path::Path, event: &str) -> usize {
    events(&records(log)).iter().filter(|e| *e == event).count()
}

/// Issue 13: a rollout paused during keep_blue (a weight changed outside coalmine) and
/// resumed goes on with keep_blue: the switch and the post-promotion window already happened
/// and are recorded. Before the fix the resume switched again and ran a whole new window.
#[tokio::test(start_paused = true)]
async fn a_pause_during_keep_blue_resumes_keep_blue_not_the_window() {
    // The operator put 100 % back before resuming (nothing to apply), or resumed with the
    // outside weight still in force (coalmine puts 100 % back, once).
    for (restored_by_hand, calls) in [
        (true, vec![Weight::FULL]),
        (false, vec![Weight::FULL, Weight::FULL]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("d.jsonl");
        let f = Fixture::new(blue_green(""), green(0.01)).logged(&log);
        let traffic = &f.traffic;
        let half = Weight::try_from_percent(50.0).unwrap();
        let (mut r, k) = paused_in_keep_blue(&f, half).await;
        let windows = count(&log, "post-promotion");
        assert_eq!(windows, 1);
        // Paused for two minutes.
        tokio::time::sleep(s(120)).await;
        if restored_by_hand {
            traffic.force(Weight::FULL);
            // A paused tick reads it back.
            ticks(&mut r, 1, |_| false).await;
        }
        let report = resumed_to_the_end(r).await;
        assert_eq!(traffic.calls(), calls, "by hand: {restored_by_hand}");
        assert_eq!(count(&log, "post-promotion"), 1, "no second window");
        // keep_blue's 10 minutes, the pause (2 minutes and a tick or two) not counted.
        let end = (k.since + s(600) + s(120)).as_secs_f64();
        assert!(
            report.duration_s >= end && report.duration_s < end + 30.0,
            "{} vs {end}",
            report.duration_s
        );
    }
}

/// The same pause across a restart: the paused record is reloaded, and the resume goes on
/// with keep_blue.
#[tokio::test(start_paused = true)]
async fn a_restart_while_paused_in_keep_blue_resumes_keep_blue() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("d.jsonl");
    let f = Fixture::new(blue_green(""), green(0.01)).logged(&log);
    let traffic = &f.traffic;
    let half = Weight::try_from_percent(50.0).unwrap();
    let (r, k) = paused_in_keep_blue(&f, half).await;
    drop(r);
    let mut stored = f.stored().await;
    assert!(
        matches!(stored.phase, Phase::Paused(_)),
        "{:?}",
        stored.phase
    );
    // Down for a minute (downtime is wall-clock time, which paused time does not move), and
    // 100 % put back by hand meanwhile.
    stored.saved_at -= s(60);
    traffic.force(Weight::FULL);
    let r = f.start(Some(stored)).await;
    assert!(matches!(r.phase(), Phase::Paused(_)), "{:?}", r.phase());
    let report = resumed_to_the_end(r).await;
    assert_eq!(traffic.calls(), vec![Weight::FULL], "no second switch");
    assert_eq!(count(&log, "post-promotion"), 1, "no second window");
    let end = (k.since + s(600) + s(60)).as_secs_f64();
    assert!(
        report.duration_s >= end && report.duration_s < end + 15.0,
        "{} vs {end}",
        report.duration_s
    );
}

/// Issue 13: `approval = "promotion"` holds before the switch to 100 % when the first step
/// is the promotion: a canary policy with `steps = [100]`, and blue-green (after the
/// pre-rollout checks, before the 0 → 100 switch). Before the fix the machine asked only
/// when leaving an analysed step, so both switched at once.
#[test]
fn an_approval_holds_a_cutover_before_the_switch() {
    for strategy in [Strategy::Canary, Strategy::BlueGreen] {
        let mut r = plan();
        r.strategy = strategy;
        r.deadline = s(600);
        r.approval = policy::Approval::Promotion;
        let checked = Event::PreChecksDone {
            failed: None,
            now: s(1),
        };
        let (phase, cmds) = step(Phase::PreChecks, checked, &r);
        let applies = |cmds: &[Command]| {
            cmds.iter()
                .filter(|c| matches!(c, Command::Apply { .. }))
                .count()
        };
        assert!(
            matches!(phase, Phase::Confirming { step: 0, .. }),
            "{strategy:?}: {phase:?}"
        );
        assert_eq!(applies(&cmds), 0, "{strategy:?}: {cmds:?}");
        // Ticks go by: it holds, nothing moves.
        let (held, cmds) = step(phase.clone(), at_full(100), &r);
        assert!(matches!(held, Phase::Confirming { .. }), "{held:?}");
        assert_eq!(applies(&cmds), 0, "{strategy:?}: {cmds:?}");
        // The approval (or `coalmine promote --step 1`) switches, once.
        for lever in [
            Event::Approve { now: s(120) },
            Event::Release { now: s(120) },
        ] {
            let (next, cmds) = step(held.clone(), lever, &r);
            assert_eq!(next, Phase::Promoting { attempt: 0 }, "{strategy:?}");
            assert_eq!(
                cmds,
                vec![Command::Apply {
                    weight: Weight::FULL,
                    delay: Duration::ZERO
                }]
            );
        }
        // Nobody approves: not started at the deadline, nothing moved.
        let (late, cmds) = step(held, at_full(600), &r);
        assert!(
            matches!(late, Phase::NotStarted { .. }),
            "{strategy:?}: {late:?}"
        );
        assert_eq!(applies(&cmds), 0);
        // Without an approval the switch is at once, as before.
        r.approval = policy::Approval::None;
        let (phase, _) = step(
            Phase::PreChecks,
            Event::PreChecksDone {
                failed: None,
                now: s(1),
            },
            &r,
        );
        assert_eq!(phase, Phase::Promoting { attempt: 0 }, "{strategy:?}");
    }
}

/// The same through the runner: a blue-green rollout with `approval = "promotion"` moves no
/// traffic until approved, then switches once and goes through the window and keep_blue.
#[tokio::test(start_paused = true)]
async fn a_blue_green_rollout_waits_for_the_approval_before_the_switch() {
    let policy = blue_green("approval = \"promotion\"\ndeadline = \"1h\"\n");
    let f = Fixture::new(policy, green(0.01));
    let traffic = &f.traffic;
    let mut r = f.start(None).await;
    ticks(&mut r, 30, |_| false).await;
    assert!(traffic.calls().is_empty(), "{:?}", traffic.calls());
    assert!(!r.finished(), "{:?}", r.phase());
    r.reconcile(Wake::Lever(Lever::Approve)).await;
    ticks(&mut r, 200, |_| false).await;
    assert!(r.finished(), "{:?}", r.phase());
    let report = r.finish().await;
    assert_eq!(report.outcome, FinalOutcome::Promoted, "{report:?}");
    assert_eq!(traffic.calls(), vec![Weight::FULL]);
    // 30 ticks (about 290 s) of waiting, then the 5-minute window and 10 minutes of
    // keep_blue.
    assert!(report.duration_s >= 250.0 + 900.0, "{}", report.duration_s);
}
