//! The machine's safety rules (issue 10): a broken baseline is no evidence, a human's
//! traffic change is never overridden (Paused), readiness gates the first step, `min_requests`
//! counts only what the metrics count, and early pass is opt-in.

use crate::controller::health::ErrorCounts;
use crate::controller::machine::{
    Command, Decision, Event, MetricStatus, Note, PauseCause, Phase, Reason, WindowFacts, judging,
    step,
};
use std::time::Duration;

use super::{plan, progressing, s, w};
use crate::analysis::Outcome;
use crate::model::Weight;
use crate::policy::OnExternalChange;

/// A comparative metric (`sequential`) and an absolute guard (`threshold`).
fn metrics(comparative: Option<Outcome>, guard: Option<Outcome>) -> Vec<MetricStatus> {
    vec![
        MetricStatus {
            metric: "errors".into(),
            outcome: comparative,
            reason: "errors reason".into(),
            dry_run: false,
            comparative: true,
        },
        MetricStatus {
            metric: "ceiling".into(),
            outcome: guard,
            reason: "ceiling reason".into(),
            dry_run: false,
            comparative: false,
        },
    ]
}

fn baseline(errors: f64, requests: f64) -> ErrorCounts {
    ErrorCounts {
        metric: "errors".into(),
        errors,
        requests,
    }
}

fn tick_with(now: u64, m: Vec<MetricStatus>, facts: WindowFacts) -> Event {
    Event::Tick {
        now: s(now),
        metrics: m,
        requests: Some([1000.0, 100.0]),
        facts,
    }
}

fn dead_baseline(now: u64, m: Vec<MetricStatus>) -> Event {
    tick_with(
        now,
        m,
        WindowFacts {
            baseline_errors: Some(baseline(950.0, 950.0)),
            ..WindowFacts::default()
        },
    )
}

fn healthy_baseline(now: u64, m: Vec<MetricStatus>) -> Event {
    tick_with(
        now,
        m,
        WindowFacts {
            baseline_errors: Some(baseline(5.0, 950.0)),
            ..WindowFacts::default()
        },
    )
}

fn decision(cmds: &[Command]) -> Decision {
    cmds.iter()
        .find_map(|c| match c {
            Command::Record(d) => Some(d.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no decision in {cmds:?}"))
}

fn notes(cmds: &[Command]) -> Vec<&'static str> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Notify(n) => Some(n.event()),
            _ => None,
        })
        .collect()
}

const PASS: Option<Outcome> = Some(Outcome::Pass);
const FAIL: Option<Outcome> = Some(Outcome::Fail);
const INC: Option<Outcome> = Some(Outcome::Inconclusive);

#[test]
fn a_dead_baseline_holds_and_never_advances_or_promotes() {
    let plan = plan();
    // Every metric "passes" against the dead baseline, the step's time is long done.
    let mut p = progressing(1, w(25.0), 0);
    for (i, now) in (70..600).step_by(10).enumerate() {
        let (n, c) = step(p, dead_baseline(now, metrics(PASS, PASS)), &plan);
        let Decision::Hold { reason } = decision(&c) else {
            panic!("{now}s: {c:?}")
        };
        assert!(
            reason.contains("baseline unhealthy: 100% errors"),
            "{reason}"
        );
        assert!(reason.contains("baseline_max_error_rate 10%"), "{reason}");
        // Notified once, when it became unhealthy.
        assert_eq!(
            notes(&c),
            if i == 0 {
                vec!["baseline-unhealthy"]
            } else {
                vec![]
            }
        );
        p = n;
    }
    // The deadline still applies, and says what the rollout was waiting for.
    let (n, c) = step(p, dead_baseline(600, metrics(PASS, PASS)), &plan);
    let Phase::RollingBack {
        reason: Reason::Deadline { waiting, .. },
        ..
    } = &n
    else {
        panic!("{n:?}")
    };
    assert!(waiting.contains("baseline unhealthy"), "{waiting}");
    assert!(matches!(decision(&c), Decision::Rollback { .. }));
}

#[test]
fn against_a_dead_baseline_a_comparative_fail_is_no_evidence_but_a_guard_still_rolls_back() {
    let plan = plan();
    let (n, c) = step(
        progressing(0, w(5.0), 0),
        dead_baseline(10, metrics(FAIL, INC)),
        &plan,
    );
    assert!(matches!(n, Phase::Progressing(_)), "{n:?}");
    assert!(matches!(decision(&c), Decision::Hold { .. }));
    let (n, c) = step(n, dead_baseline(20, metrics(INC, FAIL)), &plan);
    assert!(
        matches!(&n, Phase::RollingBack { reason: Reason::MetricFailed { metric, .. }, .. } if metric == "ceiling"),
        "{n:?}"
    );
    // Record, then traffic.
    assert!(matches!(c[0], Command::Record(Decision::Rollback { .. })));
    assert!(matches!(c.last(), Some(Command::Apply { weight, .. }) if *weight == Weight::ZERO));
    // With a healthy baseline the same comparative Fail rolls back.
    let (n, _) = step(
        progressing(0, w(5.0), 0),
        healthy_baseline(10, metrics(FAIL, INC)),
        &plan,
    );
    assert!(matches!(n, Phase::RollingBack { .. }), "{n:?}");
}

#[test]
fn both_arms_failing_is_a_hold_never_a_pass() {
    // Both arms 100 % errors: the error comparison sees "no difference" and passes; the
    // canary's guard is disabled (dry-run) to show the hold comes from the baseline rule.
    let mut plan = plan();
    plan.advance = crate::policy::Advance::Pass;
    let mut m = metrics(PASS, FAIL);
    m[1].dry_run = true;
    let (n, c) = step(progressing(1, w(25.0), 0), dead_baseline(100, m), &plan);
    assert!(matches!(n, Phase::Progressing(_)), "{n:?}");
    assert!(
        matches!(decision(&c), Decision::Hold { reason } if reason.contains("baseline unhealthy"))
    );
}

#[test]
fn unhealthy_windows_do_not_count_toward_the_step_and_recovery_is_noticed() {
    let plan = plan();
    let mut p = progressing(0, w(5.0), 0);
    // 30 s healthy, 40 s dead, then healthy again.
    for now in [10, 20, 30] {
        p = step(p, healthy_baseline(now, metrics(INC, PASS)), &plan).0;
    }
    for now in [40, 50, 60, 70] {
        p = step(p, dead_baseline(now, metrics(INC, PASS)), &plan).0;
    }
    let Phase::Progressing(q) = &p else { panic!() };
    assert_eq!(q.excluded, s(40));
    assert!(
        (q.requests[0] - 3000.0).abs() < 1e-9,
        "unhealthy windows' requests are not counted: {:?}",
        q.requests
    );
    let (p, c) = step(p, healthy_baseline(80, metrics(INC, PASS)), &plan);
    assert_eq!(notes(&c), vec!["baseline-healthy"]);
    let Decision::Hold { reason } = decision(&c) else {
        panic!()
    };
    assert!(reason.contains("step time 40s of 60s"), "{reason}");
    // 20 healthy seconds later the step is complete.
    let (p, _) = step(p, healthy_baseline(90, metrics(INC, PASS)), &plan);
    let (p, c) = step(p, healthy_baseline(100, metrics(INC, PASS)), &plan);
    assert!(matches!(p, Phase::Shifting { step: 1, .. }), "{p:?} {c:?}");
}

#[test]
fn the_runner_is_told_not_to_feed_comparisons_of_unhealthy_or_changed_windows() {
    let plan = plan();
    let p = progressing(0, w(5.0), 0);
    let dead = WindowFacts {
        baseline_errors: Some(baseline(95.0, 100.0)),
        ..WindowFacts::default()
    };
    let j = judging(&p, &dead, &plan);
    assert!(!j.comparative);
    assert!(j.why.unwrap().contains("baseline unhealthy"));
    let fine = WindowFacts {
        baseline_errors: Some(baseline(1.0, 100.0)),
        ..WindowFacts::default()
    };
    assert!(judging(&p, &fine, &plan).comparative);
    let moved = WindowFacts {
        in_force: Some(Weight::ZERO),
        ..WindowFacts::default()
    };
    assert!(!judging(&p, &moved, &plan).comparative);
    // A baseline limit of 1 turns the rule off.
    let mut off = plan.clone();
    off.baseline_max_error_rate = 1.0;
    assert!(judging(&p, &dead, &off).comparative);
}

fn found(now: u64, weight: Weight) -> Event {
    tick_with(
        now,
        metrics(INC, PASS),
        WindowFacts {
            in_force: Some(weight),
            ..WindowFacts::default()
        },
    )
}

#[test]
fn a_weight_set_by_hand_pauses_and_is_never_overridden() {
    let plan = plan();
    let (p, c) = step(progressing(1, w(25.0), 60), found(100, Weight::ZERO), &plan);
    let Phase::Paused(z) = &p else {
        panic!("{p:?}")
    };
    assert_eq!(z.in_force, Weight::ZERO);
    assert!(matches!(
        z.cause,
        PauseCause::ExternalChange { found, applied, .. } if found == Weight::ZERO && applied == w(25.0)
    ));
    let Decision::Pause { reason } = decision(&c) else {
        panic!("{c:?}")
    };
    assert!(
        reason.contains("weight 0% in force, 25% applied at 60s"),
        "{reason}"
    );
    assert_eq!(notes(&c), vec!["paused"]);
    assert!(!c.iter().any(|c| matches!(c, Command::Apply { .. })));
    // Paused: ticks long past the step time and past the deadline, a failing guard, an
    // approval: nothing touches traffic.
    let mut p = p;
    let (q, _) = step(p.clone(), Event::Approve { now: s(105) }, &plan);
    p = q;
    let mut alerts = 0;
    for now in (110..900).step_by(10) {
        let ev = tick_with(
            now,
            metrics(PASS, FAIL),
            WindowFacts {
                in_force: Some(Weight::ZERO),
                ..WindowFacts::default()
            },
        );
        let (n, c) = step(p, ev, &plan);
        assert!(matches!(n, Phase::Paused(_)), "{now}s: {n:?}");
        assert!(
            !c.iter().any(|c| matches!(c, Command::Apply { .. })),
            "{now}s: {c:?}"
        );
        alerts += notes(&c)
            .iter()
            .filter(|n| **n == "failing-while-paused")
            .count();
        let Decision::Hold { reason } = decision(&c) else {
            panic!()
        };
        assert!(
            reason.contains("not acted on while paused: ceiling failing"),
            "{reason}"
        );
        p = n;
    }
    assert_eq!(alerts, 1, "the failing guard is told once, not acted on");
    // The operator resumes: the step's weight is put back, and the deadline counts only the
    // controller's own time (900 s elapsed, 800 s of them paused).
    let (p, c) = step(p, Event::Resume { now: s(900) }, &plan);
    assert!(
        matches!(p, Phase::Shifting { step: 1, target, paused_for, .. } if target == w(25.0) && paused_for == s(800)),
        "{p:?}"
    );
    assert_eq!(notes(&c), vec!["resumed"]);
    assert!(matches!(c.last(), Some(Command::Apply { weight, .. }) if *weight == w(25.0)));
    let (p, _) = step(
        p,
        Event::Applied {
            weight: w(25.0),
            now: s(901),
        },
        &plan,
    );
    let (p, c) = step(p, healthy_baseline(911, metrics(INC, PASS)), &plan);
    assert!(
        matches!(p, Phase::Progressing(_)),
        "not past the deadline: {c:?}"
    );
    let (p, _) = step(p, healthy_baseline(1400, metrics(INC, PASS)), &plan);
    assert!(
        matches!(
            p,
            Phase::RollingBack {
                reason: Reason::Deadline { .. },
                ..
            }
        ),
        "600 s of own time: {p:?}"
    );
}

#[test]
fn external_change_can_roll_back_or_be_adopted() {
    let mut plan = plan();
    plan.on_external_change = OnExternalChange::Rollback;
    let (p, c) = step(progressing(1, w(25.0), 60), found(70, w(50.0)), &plan);
    assert!(
        matches!(&p, Phase::RollingBack { reason: Reason::ExternalChange { found, applied }, .. } if *found == w(50.0) && *applied == w(25.0)),
        "{p:?}"
    );
    assert!(matches!(c[0], Command::Record(Decision::Rollback { .. })));
    plan.on_external_change = OnExternalChange::Adopt;
    // Adopted: 10 % becomes the step's weight, its time starts over; the next step is the
    // first planned one above it.
    let (p, c) = step(progressing(0, w(5.0), 0), found(30, w(10.0)), &plan);
    let Phase::Progressing(q) = &p else {
        panic!("{p:?}")
    };
    assert_eq!((q.step, q.weight, q.since), (0, w(10.0), s(30)));
    assert_eq!(decision(&c), Decision::Adopt { weight: w(10.0) });
    assert_eq!(notes(&c), vec!["adopted"]);
    let (p, _) = step(p, healthy_baseline(90, metrics(INC, PASS)), &plan);
    assert!(matches!(p, Phase::Shifting { step: 1, target, .. } if target == w(25.0)));
    // Adopting 10 % in the 25 % step goes back to the 25 % step next, not on to 100 %.
    let (p, _) = step(progressing(1, w(25.0), 0), found(30, w(10.0)), &plan);
    let (p, _) = step(p, healthy_baseline(90, metrics(INC, PASS)), &plan);
    assert!(
        matches!(p, Phase::Shifting { step: 1, target, .. } if target == w(25.0)),
        "{p:?}"
    );
    // Adopting 30 % (above the 25 % step) skips it.
    let (p, _) = step(progressing(0, w(5.0), 0), found(30, w(30.0)), &plan);
    let (p, c) = step(p, healthy_baseline(90, metrics(INC, PASS)), &plan);
    assert!(matches!(p, Phase::Promoting { .. }), "{p:?}");
    assert_eq!(decision(&c), Decision::Promote);
    // 0 % found: already rolled back by someone; 100 %: promoted by someone.
    let (p, c) = step(progressing(1, w(25.0), 0), found(30, Weight::ZERO), &plan);
    assert!(matches!(p, Phase::RolledBack { .. }), "{p:?}");
    assert!(!c.iter().any(|c| matches!(c, Command::Apply { .. })));
    let (p, _) = step(progressing(1, w(25.0), 0), found(30, Weight::FULL), &plan);
    assert_eq!(p, Phase::Promoted);
}

#[test]
fn an_operator_pause_holds_until_resume_which_keeps_the_step() {
    let plan = plan();
    let (p, c) = step(
        progressing(0, w(5.0), 0),
        Event::Pause {
            why: "looking at a dashboard".into(),
            now: s(20),
        },
        &plan,
    );
    assert!(matches!(&p, Phase::Paused(z) if matches!(z.cause, PauseCause::Operator { .. })));
    assert!(matches!(&c[..], [Command::Notify(Note::Paused(_))]));
    let (p, _) = step(p, found(30, w(5.0)), &plan);
    // Resumed with its own weight still in force: the step goes on, the pause not counted.
    let (p, c) = step(p, Event::Resume { now: s(50) }, &plan);
    let Phase::Progressing(q) = &p else {
        panic!("{p:?}")
    };
    assert_eq!(q.excluded, s(30));
    assert!(!c.iter().any(|c| matches!(c, Command::Apply { .. })));
    let (_, c) = step(p, healthy_baseline(60, metrics(INC, PASS)), &plan);
    assert!(
        matches!(decision(&c), Decision::Hold { reason } if reason.contains("step time 30s of 60s"))
    );
    // Resume when not paused changes nothing.
    let (p, c) = step(
        progressing(0, w(5.0), 0),
        Event::Resume { now: s(5) },
        &plan,
    );
    assert_eq!(p, progressing(0, w(5.0), 0));
    assert!(c.is_empty());
}

#[test]
fn early_pass_is_opt_in() {
    let mut plan = plan();
    let all_pass = || healthy_baseline(20, metrics(PASS, PASS));
    let (p, c) = step(progressing(0, w(5.0), 0), all_pass(), &plan);
    assert!(
        matches!(p, Phase::Progressing(_)),
        "off by default: bake time"
    );
    assert!(
        matches!(decision(&c), Decision::Hold { reason } if reason.contains("step time 20s of 60s"))
    );
    plan.early_pass = true;
    let (p, _) = step(progressing(0, w(5.0), 0), all_pass(), &plan);
    assert!(matches!(p, Phase::Shifting { step: 1, .. }), "{p:?}");
    // Not while anything is short of passing, nor before min_requests.
    let (p, _) = step(
        progressing(0, w(5.0), 0),
        healthy_baseline(20, metrics(INC, PASS)),
        &plan,
    );
    assert!(matches!(p, Phase::Progressing(_)));
    let mut few = all_pass();
    if let Event::Tick { requests, .. } = &mut few {
        *requests = Some([50.0, 5.0]);
    }
    let (p, _) = step(progressing(0, w(5.0), 0), few, &plan);
    assert!(matches!(p, Phase::Progressing(_)));
    // Nor against an unhealthy baseline.
    let (p, _) = step(
        progressing(0, w(5.0), 0),
        dead_baseline(20, metrics(PASS, PASS)),
        &plan,
    );
    assert!(matches!(p, Phase::Progressing(_)));
}

#[test]
fn min_requests_applies_only_when_a_metric_counts_requests() {
    let plan = plan();
    let series_only = |now| Event::Tick {
        now: s(now),
        metrics: metrics(INC, PASS),
        requests: None,
        facts: WindowFacts::default(),
    };
    let (p, c) = step(progressing(0, w(5.0), 0), series_only(60), &plan);
    assert!(matches!(p, Phase::Shifting { step: 1, .. }), "{c:?}");
    // With counts, zero requests hold.
    let (p, c) = step(
        progressing(0, w(5.0), 0),
        Event::Tick {
            now: s(60),
            metrics: metrics(INC, PASS),
            requests: Some([0.0, 0.0]),
            facts: WindowFacts::default(),
        },
        &plan,
    );
    assert!(matches!(p, Phase::Progressing(_)));
    assert!(
        matches!(decision(&c), Decision::Hold { reason } if reason.contains("requests baseline 0, canary 0 of 100"))
    );
}

#[test]
fn a_failed_readiness_check_moves_nothing() {
    let plan = plan();
    let (p, c) = step(
        Phase::PreChecks,
        Event::PreChecksDone {
            failed: Some(("canary readiness".into(), "connection refused".into())),
            now: s(3),
        },
        &plan,
    );
    assert!(matches!(p, Phase::NotStarted { .. }));
    assert!(p.is_terminal());
    assert_eq!(c, vec![Command::Finish]);
}

#[test]
fn a_change_landing_between_set_and_read_back_is_not_overridden() {
    let plan = plan();
    let shifting = Phase::Shifting {
        step: 1,
        target: w(25.0),
        attempt: 0,
        paused_for: Duration::ZERO,
    };
    let preempted = Event::Preempted {
        weight: w(25.0),
        found: Weight::ZERO,
        now: s(61),
    };
    let (p, c) = step(shifting, preempted.clone(), &plan);
    let Phase::Paused(z) = &p else {
        panic!("{p:?}")
    };
    assert_eq!((z.in_force, z.progress.weight), (Weight::ZERO, w(25.0)));
    assert!(
        !c.iter().any(|c| matches!(c, Command::Apply { .. })),
        "{c:?}"
    );
    // While promoting, too; resuming then promotes.
    let (p, _) = step(Phase::Promoting { attempt: 0 }, preempted.clone(), &plan);
    assert!(matches!(p, Phase::Paused(_)), "{p:?}");
    let (p, c) = step(p, Event::Resume { now: s(90) }, &plan);
    assert_eq!(p, Phase::Promoting { attempt: 0 });
    assert!(matches!(c.last(), Some(Command::Apply { weight, .. }) if *weight == Weight::FULL));
    // A rollback goes on regardless: 0 % is the safe state.
    let rolling = Phase::RollingBack {
        reason: Reason::Aborted { why: "x".into() },
        attempt: 0,
    };
    let (p, c) = step(rolling, preempted, &plan);
    assert!(matches!(p, Phase::RollingBack { attempt: 1, .. }), "{p:?}");
    assert!(matches!(c[0], Command::Apply { .. }));
}

#[test]
fn out_of_time_rolls_a_forward_move_back_and_fails_a_rollback_loudly() {
    let plan = plan();
    let shifting = Phase::Shifting {
        step: 1,
        target: w(25.0),
        attempt: 2,
        paused_for: Duration::ZERO,
    };
    let late = Event::OutOfTime {
        weight: w(25.0),
        now: s(601),
    };
    let (p, c) = step(shifting, late, &plan);
    let Phase::RollingBack { reason, attempt: 0 } = &p else {
        panic!("{p:?}")
    };
    assert!(matches!(reason, Reason::Deadline { .. }), "{reason:?}");
    assert!(matches!(c.last(), Some(Command::Apply { weight, .. }) if *weight == Weight::ZERO));
    let (p, c) = step(
        p,
        Event::OutOfTime {
            weight: Weight::ZERO,
            now: s(611),
        },
        &plan,
    );
    let Phase::Failed { reason } = &p else {
        panic!("{p:?}")
    };
    assert!(
        reason.contains("traffic may still reach the canary"),
        "{reason}"
    );
    assert_eq!(c, vec![Command::Finish]);
}
