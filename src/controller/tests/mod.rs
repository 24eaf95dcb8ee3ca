//! Controller tests: table tests of the pure machine, and the runner under paused time with
//! mock providers and sources.

mod blue_green;
mod fence;
mod gates;
mod hooks;
mod levers;
mod plans;
mod post_promotion;
mod rollouts;
mod safety;
mod sources;

use std::time::Duration;

use super::machine::{
    Command, Decision, Event, MetricStatus, Phase, Progress, Reason, WindowFacts, step,
};
use super::runner::{FinalOutcome, Quiet, RunOptions, run};
use crate::analysis::Outcome;
use crate::metrics::mock::{Answer, MockSource};
use crate::model::Weight;
use crate::policy::{self, OnNoData, Rollout};
use crate::traffic::mock::{Behaviour, MockTrafficProvider};

pub(super) fn w(p: f64) -> Weight {
    Weight::try_from_percent(p).unwrap()
}

pub(super) fn s(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

pub(super) fn plan() -> Rollout {
    let mut r = Rollout::with_steps(vec![w(5.0), w(25.0), w(100.0)]);
    r.step_duration = s(60);
    r.analysis_interval = s(10);
    r.min_requests = 100;
    r.deadline = s(600);
    r.no_data_limit = s(30);
    r.error_limit = 3;
    r.apply_retries = 2;
    r
}

pub(super) fn progressing(step: usize, weight: Weight, since: u64) -> Phase {
    Phase::Progressing(Progress::new(step, weight, s(since), Duration::ZERO))
}

fn status(metric: &str, outcome: Option<Outcome>) -> MetricStatus {
    MetricStatus {
        metric: metric.to_string(),
        outcome,
        reason: format!("{metric} reason"),
        dry_run: false,
        comparative: true,
    }
}

fn tick(now: u64, outcomes: &[Option<Outcome>], requests: [f64; 2]) -> Event {
    Event::Tick {
        now: s(now),
        metrics: outcomes
            .iter()
            .enumerate()
            .map(|(i, o)| status(&format!("m{i}"), *o))
            .collect(),
        requests: Some(requests),
        facts: WindowFacts::default(),
    }
}

fn apply(weight: Weight) -> Command {
    Command::Apply {
        weight,
        delay: Duration::ZERO,
    }
}

const INC: Option<Outcome> = Some(Outcome::Inconclusive);
const PASS: Option<Outcome> = Some(Outcome::Pass);
const FAIL: Option<Outcome> = Some(Outcome::Fail);
const NODATA: Option<Outcome> = Some(Outcome::NoData);

#[test]
fn start_shifts_to_first_step() {
    let (p, c) = step(
        Phase::Pending,
        Event::Start {
            now: s(0),
            pre_checks: false,
        },
        &plan(),
    );
    assert_eq!(
        p,
        Phase::Shifting {
            step: 0,
            target: w(5.0),
            attempt: 0,
            paused_for: Duration::ZERO,
        }
    );
    assert_eq!(c, vec![apply(w(5.0))]);
    let (p, c) = step(
        p,
        Event::Applied {
            weight: w(5.0),
            now: s(1),
        },
        &plan(),
    );
    assert_eq!(p, progressing(0, w(5.0), 1));
    assert!(c.is_empty());
}

#[test]
fn a_fail_rolls_back_first_and_records_before_acting() {
    let (p, c) = step(
        progressing(0, w(5.0), 0),
        tick(10, &[INC, FAIL], [500.0, 30.0]),
        &plan(),
    );
    let Phase::RollingBack { reason, .. } = &p else {
        panic!("{p:?}")
    };
    assert!(matches!(reason, Reason::MetricFailed { metric, .. } if metric == "m1"));
    assert!(matches!(c[0], Command::Record(Decision::Rollback { .. })));
    assert_eq!(c[1], apply(Weight::ZERO));
    let (p, c) = step(
        p,
        Event::Applied {
            weight: Weight::ZERO,
            now: s(11),
        },
        &plan(),
    );
    assert!(matches!(p, Phase::RolledBack { .. }));
    assert_eq!(c, vec![Command::Finish]);
}

/// A dry run (`coalmine run --dry-run`) watches a rollout someone else drives: whatever it
/// concludes, it never calls the provider's `set_weight`, and says what it would have done.
#[tokio::test(start_paused = true)]
async fn a_dry_run_never_sets_the_weight_and_says_what_it_would_do() {
    use crate::traffic::TrafficProvider as _;
    for (canary, would) in [(0.2, "would-rollback"), (0.01, "would-promote")] {
        // What `coalmine run --dry-run` judges: the weight in force, then 100 %.
        let policy = policy_with(&TIMING.replace("[5, 25, 100]", "[5, 100]"), ERRORS);
        let traffic = MockTrafficProvider::new();
        // The rollout being watched holds its first step.
        traffic
            .set_weight(policy.rollout.steps[0])
            .await
            .expect("mock set");
        let before = traffic.calls().len();
        let source = MockSource::new();
        source.script(
            "errors",
            vec![Answer::Rates {
                baseline: 0.01,
                canary,
                requests: 2000.0,
            }],
        );
        let opts = RunOptions {
            dry_run: Some(super::runner::DryRun::default()),
            ..RunOptions::default()
        };
        let mut quiet = Quiet;
        let run = run(&policy, &traffic, &source, opts, &mut quiet);
        let report = tokio::time::timeout(Duration::from_secs(3600), run)
            .await
            .expect("the dry run ends")
            .unwrap();
        assert_eq!(
            traffic.calls().len(),
            before,
            "a dry run set the weight: {:?}",
            traffic.calls()
        );
        let said = report.would.clone().unwrap_or_default();
        assert!(
            said.starts_with(would),
            "{canary}: {said:?} ({:?})",
            report.outcome
        );
    }
}

#[test]
fn a_dry_run_fail_is_ignored() {
    let mut ev = tick(10, &[INC, FAIL], [500.0, 30.0]);
    if let Event::Tick { metrics, .. } = &mut ev {
        metrics[1].dry_run = true;
    }
    let (p, _) = step(progressing(0, w(5.0), 0), ev, &plan());
    assert!(matches!(p, Phase::Progressing(_)));
}

#[test]
fn holds_until_duration_and_requests_then_advances_then_promotes() {
    let plan = plan();
    // Time not reached.
    let (p, c) = step(
        progressing(0, w(5.0), 0),
        tick(50, &[INC, INC], [1000.0, 50.0]),
        &plan,
    );
    let Command::Record(Decision::Hold { reason }) = &c[0] else {
        panic!("{c:?}")
    };
    assert!(reason.contains("step time 50s of 60s"), "{reason}");
    // Time reached but too few canary requests.
    let (p, c) = step(p, tick(60, &[INC, INC], [0.0, 0.0]), &plan);
    let _ = p;
    let Command::Record(Decision::Hold { reason }) = &c[0] else {
        panic!("{c:?}")
    };
    assert!(reason.contains("requests"), "{reason}");
    // Enough: advance to 25 %.
    let (p, c) = step(
        progressing(0, w(5.0), 0),
        tick(60, &[INC, PASS], [1000.0, 100.0]),
        &plan,
    );
    assert_eq!(
        p,
        Phase::Shifting {
            step: 1,
            target: w(25.0),
            attempt: 0,
            paused_for: Duration::ZERO,
        }
    );
    assert_eq!(
        c,
        vec![
            Command::Record(Decision::Advance {
                step: 1,
                weight: w(25.0)
            }),
            apply(w(25.0))
        ]
    );
    // The 25 % step done: the next (100 %) step promotes.
    let (p, c) = step(
        progressing(1, w(25.0), 60),
        tick(120, &[INC, INC], [1000.0, 300.0]),
        &plan,
    );
    assert_eq!(p, Phase::Promoting { attempt: 0 });
    assert_eq!(
        c,
        vec![Command::Record(Decision::Promote), apply(Weight::FULL)]
    );
    let (p, c) = step(
        p,
        Event::Applied {
            weight: Weight::FULL,
            now: s(121),
        },
        &plan,
    );
    assert_eq!(p, Phase::Promoted);
    assert_eq!(c, vec![Command::Finish]);
}

#[test]
fn nodata_never_advances_and_rolls_back_past_the_limit() {
    let mut plan = plan();
    // Holding: NoData at the end of the step does not advance.
    let (p, c) = step(
        progressing(0, w(5.0), 0),
        tick(60, &[INC, NODATA], [1000.0, 50.0]),
        &plan,
    );
    assert!(
        matches!(&c[0], Command::Record(Decision::Hold { reason }) if reason.contains("no data for m1"))
    );
    // on_no_data = hold: keeps holding past the limit.
    let (p2, _) = step(p.clone(), tick(120, &[INC, NODATA], [0.0, 0.0]), &plan);
    assert!(matches!(p2, Phase::Progressing(_)));
    // on_no_data = rollback: rolls back once data has been missing for the limit.
    plan.on_no_data = OnNoData::Rollback;
    let (p3, _) = step(p.clone(), tick(80, &[INC, NODATA], [0.0, 0.0]), &plan);
    assert!(matches!(p3, Phase::Progressing(_)), "20s < 30s limit");
    let (p4, _) = step(p3, tick(90, &[INC, NODATA], [0.0, 0.0]), &plan);
    assert!(
        matches!(&p4, Phase::RollingBack { reason: Reason::NoData { metrics, .. }, .. } if metrics == &["m1".to_string()]),
        "{p4:?}"
    );
    // Data coming back resets the clock.
    let (p5, _) = step(p, tick(80, &[INC, INC], [0.0, 0.0]), &plan);
    let (p6, _) = step(p5, tick(95, &[INC, NODATA], [0.0, 0.0]), &plan);
    assert!(matches!(p6, Phase::Progressing(_)));
}

#[test]
fn consecutive_query_errors_roll_back_and_recovery_resets() {
    let plan = plan();
    let mut p = progressing(0, w(5.0), 0);
    for t in [10, 20] {
        let (n, c) = step(p, tick(t, &[INC, None], [100.0, 5.0]), &plan);
        assert!(
            matches!(&c[0], Command::Record(Decision::Hold { reason }) if reason.contains("query errors"))
        );
        p = n;
    }
    // Recovery resets the count.
    let (n, _) = step(p.clone(), tick(30, &[INC, INC], [100.0, 5.0]), &plan);
    let (n, _) = step(n, tick(40, &[INC, None], [100.0, 5.0]), &plan);
    assert!(matches!(
        n,
        Phase::Progressing(Progress { error_ticks: 1, .. })
    ));
    // A third consecutive error rolls back.
    let (n, _) = step(p, tick(30, &[INC, None], [100.0, 5.0]), &plan);
    assert!(
        matches!(
            &n,
            Phase::RollingBack {
                reason: Reason::QueryErrors { ticks: 3, .. },
                ..
            }
        ),
        "{n:?}"
    );
}

#[test]
fn deadline_rolls_back() {
    let (p, _) = step(
        progressing(1, w(25.0), 550),
        tick(600, &[INC, INC], [100.0, 50.0]),
        &plan(),
    );
    assert!(matches!(
        p,
        Phase::RollingBack {
            reason: Reason::Deadline { .. },
            ..
        }
    ));
}

#[test]
fn advance_pass_waits_for_every_metric_to_pass() {
    let mut plan = plan();
    plan.advance = policy::Advance::Pass;
    let (p, c) = step(
        progressing(0, w(5.0), 0),
        tick(60, &[PASS, INC], [1000.0, 100.0]),
        &plan,
    );
    assert!(matches!(p, Phase::Progressing(_)));
    assert!(
        matches!(&c[0], Command::Record(Decision::Hold { reason }) if reason.contains("not yet passing: m1"))
    );
    let (p, _) = step(p, tick(70, &[PASS, PASS], [0.0, 0.0]), &plan);
    assert!(matches!(p, Phase::Shifting { step: 1, .. }));
}

#[test]
fn provider_failures_are_retried_then_roll_back() {
    let plan = plan();
    let failed = |transient| Event::ApplyFailed {
        weight: w(5.0),
        error: "boom".into(),
        transient,
        now: s(1),
    };
    let shifting = Phase::Shifting {
        step: 0,
        target: w(5.0),
        attempt: 0,
        paused_for: Duration::ZERO,
    };
    let (p, c) = step(shifting.clone(), failed(true), &plan);
    assert_eq!(
        p,
        Phase::Shifting {
            step: 0,
            target: w(5.0),
            attempt: 1,
            paused_for: Duration::ZERO,
        }
    );
    assert!(matches!(c[0], Command::Apply { delay, .. } if delay > Duration::ZERO));
    let (p, _) = step(p, failed(true), &plan);
    let (p, c) = step(p, failed(true), &plan);
    assert!(matches!(
        p,
        Phase::RollingBack {
            reason: Reason::Provider { .. },
            ..
        }
    ));
    assert_eq!(c, vec![apply(Weight::ZERO)]);
    // A permanent error does not retry.
    let (p, _) = step(shifting, failed(false), &plan);
    assert!(matches!(p, Phase::RollingBack { .. }));
}

#[test]
fn a_rollback_that_cannot_be_applied_fails_loudly() {
    let plan = plan();
    let mut p = Phase::RollingBack {
        reason: Reason::Deadline {
            after_s: 600.0,
            waiting: String::new(),
        },
        attempt: 0,
    };
    for _ in 0..=plan.apply_retries * 2 {
        let (n, _) = step(
            p,
            Event::ApplyFailed {
                weight: Weight::ZERO,
                error: "socket gone".into(),
                transient: false,
                now: s(1),
            },
            &plan,
        );
        p = n;
    }
    let Phase::Failed { reason } = &p else {
        panic!("{p:?}")
    };
    assert!(
        reason.contains("traffic may still reach the canary"),
        "{reason}"
    );
}

#[test]
fn abort_rolls_back_from_any_live_phase() {
    for phase in [
        progressing(0, w(5.0), 0),
        Phase::Shifting {
            step: 1,
            target: w(25.0),
            attempt: 0,
            paused_for: Duration::ZERO,
        },
        Phase::Promoting { attempt: 0 },
    ] {
        let (p, c) = step(
            phase,
            Event::Abort {
                why: "ctrl-c".into(),
                now: s(3),
            },
            &plan(),
        );
        assert!(matches!(
            p,
            Phase::RollingBack {
                reason: Reason::Aborted { .. },
                ..
            }
        ));
        assert_eq!(c, vec![apply(Weight::ZERO)]);
    }
    let (p, c) = step(
        Phase::Promoted,
        Event::Abort {
            why: "late".into(),
            now: s(3),
        },
        &plan(),
    );
    assert_eq!(p, Phase::Promoted);
    assert!(c.is_empty());
}

// ---- the runner, under paused time ----

pub(super) fn policy_with(rollout: &str, metrics: &str) -> policy::Policy {
    let text = format!(
        "name = \"t\"\n[rollout]\n{rollout}\n[traffic]\ntype = \"proxy\"\nlisten = \"127.0.0.1:0\"\n\
         baseline = \"http://127.0.0.1:1\"\ncanary = \"http://127.0.0.1:2\"\n{metrics}"
    );
    policy::parse(&text, "t.toml").unwrap_or_else(|d| panic!("{d}"))
}

const ERRORS: &str = "[[metric]]\nname = \"errors\"\nbuiltin = \"errors\"\n";
pub(super) const TIMING: &str = "steps = [5, 25, 100]\nstep_duration = \"60s\"\nanalysis_interval = \"10s\"\nmin_requests = 100\ndeadline = \"10m\"";

async fn run_quiet(
    policy: &policy::Policy,
    traffic: &MockTrafficProvider,
    source: &MockSource,
) -> super::runner::RunReport {
    run(policy, traffic, source, RunOptions::default(), &mut Quiet)
        .await
        .expect("the run starts")
}

pub(crate) fn healthy_source() -> MockSource {
    let source = MockSource::new();
    source.script(
        "errors",
        vec![Answer::Rates {
            baseline: 0.01,
            canary: 0.01,
            requests: 2000.0,
        }],
    );
    source
}

#[tokio::test(start_paused = true)]
async fn healthy_run_promotes_through_every_step() {
    let policy = policy_with(TIMING, ERRORS);
    let traffic = MockTrafficProvider::new();
    let source = healthy_source();
    let report = run_quiet(&policy, &traffic, &source).await;
    assert_eq!(report.outcome, FinalOutcome::Promoted);
    assert_eq!(report.exit_code, 0);
    assert_eq!(traffic.calls(), vec![w(5.0), w(25.0), Weight::FULL]);
    assert_eq!(traffic.weight(), Weight::FULL);
    // Two analysed steps of 60 s at 10 s: 12 ticks, and windows carry the weight in force.
    assert_eq!(report.ticks, 12);
    let shares: Vec<Weight> = source.windows().iter().map(|w| w.weight).collect();
    assert_eq!(shares[..6], [w(5.0); 6]);
    assert_eq!(shares[6..], [w(25.0); 6]);
    assert!(
        (report.duration_s - 120.0).abs() < 1.0,
        "{}",
        report.duration_s
    );
}

#[tokio::test(start_paused = true)]
async fn bad_canary_rolls_back_and_the_record_precedes_the_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.jsonl");
    let policy = policy_with(TIMING, ERRORS);
    let traffic = MockTrafficProvider::new();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let (l, s2) = (log.clone(), seen.clone());
    traffic.on_set(move |weight| {
        if weight == Weight::ZERO {
            // What the log holds at the moment traffic is moved back.
            *s2.lock().unwrap() = std::fs::read_to_string(&l).ok();
        }
    });
    let source = MockSource::new();
    source.script(
        "errors",
        vec![Answer::Rates {
            baseline: 0.01,
            canary: 0.2,
            requests: 2000.0,
        }],
    );
    let opts = RunOptions {
        decisions: Some(log.clone()),
        abort: None,
        levers: None,
        readiness: None,
        policy_sha256: None,
        dry_run: None,
    };
    let report = run(&policy, &traffic, &source, opts, &mut Quiet)
        .await
        .unwrap();
    let FinalOutcome::RolledBack { reason } = &report.outcome else {
        panic!("{:?}", report.outcome)
    };
    assert!(matches!(reason, Reason::MetricFailed { metric, .. } if metric == "errors"));
    assert_eq!(report.exit_code, 1);
    assert_eq!(traffic.calls().last(), Some(&Weight::ZERO));
    let at_rollback = seen.lock().unwrap().clone().expect("rollback seen");
    let last: serde_json::Value =
        serde_json::from_str(at_rollback.lines().last().unwrap()).unwrap();
    assert_eq!(last["kind"], "tick");
    assert_eq!(last["decision"]["action"], "rollback");
    assert_eq!(last["metrics"][0]["outcome"], "fail");
    // The final record follows.
    let all = std::fs::read_to_string(&log).unwrap();
    let fin: serde_json::Value = serde_json::from_str(all.lines().last().unwrap()).unwrap();
    assert_eq!(fin["kind"], "final");
    assert_eq!(fin["event"], "rolled-back");
    assert_eq!(fin["weight"], 0.0);
}

fn cold_start_source() -> MockSource {
    // The canary is bad for its first three windows (cold caches), then as good as the
    // baseline.
    let source = MockSource::new();
    let cold = Answer::Rates {
        baseline: 0.01,
        canary: 0.3,
        requests: 2000.0,
    };
    let warm = Answer::Rates {
        baseline: 0.01,
        canary: 0.01,
        requests: 2000.0,
    };
    source.script("errors", vec![cold.clone(), cold.clone(), cold, warm]);
    source
}

#[tokio::test(start_paused = true)]
async fn warmup_discards_the_first_windows_and_records_why() {
    // Without a warm-up the cold start rolls the canary back ...
    let policy = policy_with(TIMING, ERRORS);
    let report = run_quiet(&policy, &MockTrafficProvider::new(), &cold_start_source()).await;
    assert!(
        matches!(report.outcome, FinalOutcome::RolledBack { .. }),
        "{:?}",
        report.outcome
    );
    // ... with 30 s of warm-up the three cold windows are discarded and it promotes.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.jsonl");
    let policy = policy_with(&format!("{TIMING}\nwarmup = \"30s\""), ERRORS);
    let opts = RunOptions {
        decisions: Some(log.clone()),
        abort: None,
        levers: None,
        readiness: None,
        policy_sha256: None,
        dry_run: None,
    };
    let source = cold_start_source();
    let report = run(
        &policy,
        &MockTrafficProvider::new(),
        &source,
        opts,
        &mut Quiet,
    )
    .await
    .unwrap();
    assert_eq!(report.outcome, FinalOutcome::Promoted);
    let ticks: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["kind"] == "tick")
        .collect();
    for t in &ticks[..3] {
        assert_eq!(t["decision"]["action"], "hold", "{t}");
        let reason = t["decision"]["reason"].as_str().unwrap();
        assert!(reason.starts_with("warming up"), "{reason}");
        assert!(t.get("metrics").is_none(), "{t}");
    }
    assert!(
        ticks[3]["metrics"].as_array().unwrap().len() == 1,
        "{}",
        ticks[3]
    );
    // Every window was still fetched, so the judged windows stay contiguous.
    assert_eq!(source.windows()[3].seq, 3);
}

#[test]
fn warmup_must_be_shorter_than_the_deadline() {
    let text = "name = \"t\"\n[rollout]\ndeadline = \"5m\"\nwarmup = \"5m\"\n[traffic]\n\
                type = \"proxy\"\nlisten = \"127.0.0.1:0\"\nbaseline = \"http://127.0.0.1:1\"\n\
                canary = \"http://127.0.0.1:2\"\n[[metric]]\nname = \"errors\"\nbuiltin = \"errors\"\n";
    let err = policy::parse(text, "t.toml").unwrap_err().to_string();
    assert!(
        err.contains("t.toml:4:10: warmup 5m must be shorter than the deadline 5m"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn no_data_holds_then_rolls_back() {
    let timing = format!("{TIMING}\non_no_data = \"rollback\"\nno_data_limit = \"30s\"");
    let policy = policy_with(&timing, ERRORS);
    let traffic = MockTrafficProvider::new();
    let source = MockSource::new();
    source.script("errors", vec![Answer::Missing]);
    let report = run_quiet(&policy, &traffic, &source).await;
    assert!(matches!(
        report.outcome,
        FinalOutcome::RolledBack {
            reason: Reason::NoData { .. }
        }
    ));
    assert_eq!(
        traffic.calls(),
        vec![w(5.0), Weight::ZERO],
        "never advanced"
    );
}

#[tokio::test(start_paused = true)]
async fn outage_within_limit_recovers_and_promotes() {
    let timing = format!("{TIMING}\nerror_limit = 4");
    let policy = policy_with(&timing, ERRORS);
    let traffic = MockTrafficProvider::new();
    let source = MockSource::new();
    let ok = Answer::Rates {
        baseline: 0.01,
        canary: 0.01,
        requests: 2000.0,
    };
    let mut script = vec![ok.clone(); 3];
    script.extend(vec![Answer::Unreachable; 3]);
    script.push(ok);
    source.script("errors", script);
    let report = run_quiet(&policy, &traffic, &source).await;
    assert_eq!(report.outcome, FinalOutcome::Promoted);
    // The outage held the first step: it lasted past its 60 s.
    assert!(report.ticks > 12, "{}", report.ticks);
}

#[tokio::test(start_paused = true)]
async fn long_outage_rolls_back_with_the_error() {
    let policy = policy_with(&format!("{TIMING}\nerror_limit = 4"), ERRORS);
    let traffic = MockTrafficProvider::new();
    let source = MockSource::new();
    source.script("errors", vec![Answer::Unreachable]);
    let report = run_quiet(&policy, &traffic, &source).await;
    let FinalOutcome::RolledBack {
        reason: Reason::QueryErrors { ticks, last },
    } = &report.outcome
    else {
        panic!("{:?}", report.outcome)
    };
    assert_eq!(*ticks, 4);
    assert!(last.contains("scripted outage"), "{last}");
}

#[tokio::test(start_paused = true)]
async fn transient_provider_errors_are_retried() {
    let policy = policy_with(TIMING, ERRORS);
    let traffic = MockTrafficProvider::new();
    traffic.script([Behaviour::Transient, Behaviour::Ignore]);
    let source = healthy_source();
    let report = run_quiet(&policy, &traffic, &source).await;
    assert_eq!(report.outcome, FinalOutcome::Promoted);
    // Transient failure, ignored set (read-back mismatch), then success.
    assert_eq!(traffic.calls()[..3], [w(5.0), w(5.0), w(5.0)]);
}

#[tokio::test(start_paused = true)]
async fn a_provider_that_never_works_fails_with_exit_3() {
    let policy = policy_with(TIMING, ERRORS);
    let traffic = MockTrafficProvider::new();
    traffic.always(Behaviour::Permanent);
    let source = MockSource::new();
    let report = run_quiet(&policy, &traffic, &source).await;
    assert!(
        matches!(report.outcome, FinalOutcome::Failed { .. }),
        "{:?}",
        report.outcome
    );
    assert_eq!(report.exit_code, 3);
}

#[tokio::test(start_paused = true)]
async fn slow_provider_times_out_and_is_retried() {
    let policy = policy_with(&format!("{TIMING}\napply_timeout = \"2s\""), ERRORS);
    let traffic = MockTrafficProvider::new();
    traffic.script([Behaviour::Slow(s(5))]);
    let source = healthy_source();
    let report = run_quiet(&policy, &traffic, &source).await;
    assert_eq!(report.outcome, FinalOutcome::Promoted);
    assert_eq!(traffic.calls()[..2], [w(5.0), w(5.0)]);
}

#[tokio::test(start_paused = true)]
async fn deadline_rolls_back_a_rollout_that_cannot_finish() {
    // Too few requests ever to complete a step.
    let policy = policy_with(TIMING, ERRORS);
    let traffic = MockTrafficProvider::new();
    let source = MockSource::new();
    source.script(
        "errors",
        vec![Answer::Rates {
            baseline: 0.0,
            canary: 0.0,
            requests: 20.0,
        }],
    );
    let report = run_quiet(&policy, &traffic, &source).await;
    assert!(matches!(
        report.outcome,
        FinalOutcome::RolledBack {
            reason: Reason::Deadline { .. }
        }
    ));
    assert!(
        (report.duration_s - 600.0).abs() < 11.0,
        "{}",
        report.duration_s
    );
}

#[tokio::test(start_paused = true)]
async fn abort_signal_rolls_back() {
    let policy = policy_with(TIMING, ERRORS);
    let traffic = MockTrafficProvider::new();
    let source = healthy_source();
    let (tx, rx) = tokio::sync::watch::channel(None);
    tokio::spawn(async move {
        tokio::time::sleep(s(25)).await;
        let _ = tx.send(Some("operator abort".to_string()));
    });
    let opts = RunOptions {
        decisions: None,
        abort: Some(rx),
        levers: None,
        readiness: None,
        policy_sha256: None,
        dry_run: None,
    };
    let report = run(&policy, &traffic, &source, opts, &mut Quiet)
        .await
        .unwrap();
    assert!(matches!(
        report.outcome,
        FinalOutcome::RolledBack {
            reason: Reason::Aborted { .. }
        }
    ));
    assert_eq!(traffic.calls(), vec![w(5.0), Weight::ZERO]);
}

#[test]
fn the_run_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let policy = policy_with(TIMING, ERRORS);
    let traffic = MockTrafficProvider::new();
    let source = MockSource::new();
    let mut quiet = Quiet;
    let fut = run(
        &policy,
        &traffic,
        &source,
        RunOptions::default(),
        &mut quiet,
    );
    assert_send(&fut);
}

#[test]
fn an_approval_gate_holds_a_ready_step_until_approved() {
    let mut plan = plan();
    plan.approval = policy::Approval::Promotion;
    // The 5 % step needs no approval under "promotion".
    let (p, _) = step(
        progressing(0, w(5.0), 0),
        tick(60, &[INC], [1000.0, 100.0]),
        &plan,
    );
    assert!(matches!(p, Phase::Shifting { step: 1, .. }));
    // The 25 % step is ready but waits.
    let (p, c) = step(
        progressing(1, w(25.0), 60),
        tick(120, &[INC], [1000.0, 300.0]),
        &plan,
    );
    assert!(
        matches!(&c[0], Command::Record(Decision::Hold { reason }) if reason.contains("approve the promotion"))
    );
    let (p, c) = step(p, Event::Approve { now: s(125) }, &plan);
    assert!(c.is_empty());
    let (p, _) = step(p, tick(130, &[INC], [0.0, 0.0]), &plan);
    assert_eq!(p, Phase::Promoting { attempt: 0 });
    // A Fail still rolls back while waiting.
    plan.approval = policy::Approval::EveryStep;
    let (p, _) = step(
        progressing(0, w(5.0), 0),
        tick(60, &[INC], [1000.0, 100.0]),
        &plan,
    );
    let (p, _) = step(p, tick(70, &[FAIL], [0.0, 0.0]), &plan);
    assert!(matches!(p, Phase::RollingBack { .. }));
}

/// `coalmine promote` without `--full` releases the current step only: it moves on at the
/// next tick without the rest of its time or requests, the next step bakes in full, and a
/// Fail or missing data still win.
#[test]
fn a_release_ends_the_current_step_at_the_next_tick_and_only_that_step() {
    let plan = plan();
    let released = |p: Phase| step(p, Event::Release { now: s(12) }, &plan).0;
    // 15 s into a 60 s step with 40 canary requests of 100: it holds…
    let (p, c) = step(
        progressing(0, w(5.0), 0),
        tick(15, &[INC], [1000.0, 40.0]),
        &plan,
    );
    assert!(matches!(p, Phase::Progressing(_)), "{p:?}");
    assert!(
        matches!(&c[0], Command::Record(Decision::Hold { reason }) if reason.contains("step time") && reason.contains("requests")),
        "{c:?}"
    );
    // …released, it moves on at the next tick (no traffic change at the release itself).
    let (p, c) = step(
        progressing(0, w(5.0), 0),
        Event::Release { now: s(12) },
        &plan,
    );
    assert!(c.is_empty(), "{c:?}");
    let (p, c) = step(p, tick(15, &[INC], [1000.0, 40.0]), &plan);
    assert!(matches!(p, Phase::Shifting { step: 1, .. }), "{p:?}");
    assert_eq!(c.last(), Some(&apply(w(25.0))));
    // The next step is not released: it bakes in full.
    let (p, _) = step(
        p,
        Event::Applied {
            weight: w(25.0),
            now: s(16),
        },
        &plan,
    );
    let Phase::Progressing(q) = &p else {
        panic!("{p:?}")
    };
    assert!(!q.released && !q.approved);
    let (p, _) = step(p, tick(30, &[INC], [1000.0, 400.0]), &plan);
    assert!(matches!(p, Phase::Progressing(_)), "{p:?}");
    // Released at the last step below 100 %: the next tick promotes.
    let (p, _) = step(
        released(progressing(1, w(25.0), 0)),
        tick(15, &[INC], [0.0, 0.0]),
        &plan,
    );
    assert_eq!(p, Phase::Promoting { attempt: 0 });
    // A Fail still rolls back; missing data still holds.
    let (p, _) = step(
        released(progressing(0, w(5.0), 0)),
        tick(15, &[FAIL], [1000.0, 40.0]),
        &plan,
    );
    assert!(matches!(p, Phase::RollingBack { .. }), "{p:?}");
    let (p, c) = step(
        released(progressing(0, w(5.0), 0)),
        tick(15, &[NODATA], [1000.0, 40.0]),
        &plan,
    );
    assert!(matches!(p, Phase::Progressing(_)), "{p:?}");
    assert!(
        matches!(&c[0], Command::Record(Decision::Hold { reason }) if reason.contains("no data")),
        "{c:?}"
    );
    // An approval gate is released too.
    let mut gated = plan.clone();
    gated.approval = policy::Approval::EveryStep;
    let (p, _) = step(
        progressing(0, w(5.0), 0),
        Event::Release { now: s(12) },
        &gated,
    );
    let (p, _) = step(p, tick(15, &[INC], [1000.0, 40.0]), &gated);
    assert!(matches!(p, Phase::Shifting { step: 1, .. }), "{p:?}");
}

/// `promote --full` goes to 100 % at once, from a step or paused.
#[test]
fn promote_now_goes_to_full_at_once() {
    let plan = plan();
    let (p, c) = step(
        progressing(0, w(5.0), 0),
        Event::PromoteNow { now: s(5) },
        &plan,
    );
    assert_eq!(p, Phase::Promoting { attempt: 0 });
    assert_eq!(
        c,
        vec![Command::Record(Decision::Promote), apply(Weight::FULL)]
    );
}

/// The set-up the durable runner tests share (blue-green, the post-promotion window): a
/// policy, a mock provider and source, an in-memory store, and the decision log if any.
struct Fixture {
    policy: policy::Policy,
    traffic: MockTrafficProvider,
    src: MockSource,
    store: fence::Deposable,
    log: Option<std::path::PathBuf>,
}

/// A controller on a [`Fixture`].
type Controller<'a> =
    super::runner::Reconciler<'a, MockTrafficProvider, MockSource, fence::Deposable>;

impl Fixture {
    fn new(policy: policy::Policy, src: MockSource) -> Self {
        Fixture {
            policy,
            traffic: MockTrafficProvider::new(),
            src,
            store: fence::Deposable::default(),
            log: None,
        }
    }

    /// Decision records go to `log`.
    fn logged(mut self, log: &std::path::Path) -> Self {
        self.log = Some(log.to_path_buf());
        self
    }

    /// The record the store holds.
    async fn stored(&self) -> super::store::RolloutState {
        use super::store::Store as _;
        self.store
            .load(&self.policy.name)
            .await
            .unwrap()
            .expect("a record")
    }

    /// Starts a controller: a new rollout, or one resumed from `resume` (a restart).
    async fn start(&self, resume: Option<super::store::RolloutState>) -> Controller<'_> {
        let mut d = fence::durable(&self.store);
        if let Some(stored) = resume {
            d.revision = stored.revision;
            d.resume = Some(stored);
        }
        let opts = RunOptions {
            decisions: self.log.clone(),
            ..RunOptions::default()
        };
        // `Quiet` holds nothing: leaking one costs nothing.
        let quiet: &'static mut Quiet = Box::leak(Box::new(Quiet));
        super::runner::Reconciler::start(
            &self.policy,
            &self.traffic,
            &self.src,
            Some(d),
            opts,
            quiet,
        )
        .await
        .unwrap()
    }
}
