//! Step plans (`[[rollout.step]]`): per-step duration and request count, planned pauses
//! (timed, and until promoted), steps with `analysis = false`; table tests of the pure
//! machine and whole rollouts under paused time.

use super::{healthy_source, plan, policy_with, progressing, s, w};
use crate::analysis::Outcome;
use crate::controller::machine::{
    Command, Decision, Event, MetricStatus, Phase, Reason, WindowFacts, step,
};
use crate::controller::runner::{FinalOutcome, Quiet, RunOptions, run};
use crate::model::Weight;
use crate::policy::{PlannedPause, Rollout, StepSpec};
use crate::traffic::mock::MockTrafficProvider;

fn tick(now: u64, outcome: Outcome, requests: [f64; 2]) -> Event {
    Event::Tick {
        now: s(now),
        metrics: vec![MetricStatus {
            metric: "m".to_string(),
            outcome: Some(outcome),
            reason: "m reason".to_string(),
            dry_run: false,
            comparative: true,
        }],
        requests: Some(requests),
        facts: WindowFacts::default(),
    }
}

fn decision(c: &[Command]) -> Decision {
    match c.first() {
        Some(Command::Record(d)) => d.clone(),
        other => panic!("no record first: {other:?}"),
    }
}

fn held(c: &[Command], text: &str) {
    match decision(c) {
        Decision::Hold { reason } => assert!(reason.contains(text), "{reason}"),
        d => panic!("not a hold: {d:?}"),
    }
}

fn with(specs: Vec<StepSpec>) -> Rollout {
    let mut r = plan();
    r.plan = specs;
    r
}

/// Feeds passing ticks every 10 s from `from` until `to`, returning the last transition.
fn ticks(mut phase: Phase, from: u64, to: u64, r: &Rollout) -> (Phase, Vec<Command>) {
    let mut cmds = Vec::new();
    let mut t = from;
    while t <= to {
        (phase, cmds) = step(phase, tick(t, Outcome::Inconclusive, [200.0, 200.0]), r);
        t += 10;
    }
    (phase, cmds)
}

#[test]
fn each_step_takes_its_own_duration_and_request_count() {
    let r = with(vec![
        StepSpec {
            duration: Some(s(20)),
            min_requests: Some(500),
            ..StepSpec::default()
        },
        StepSpec::default(),
    ]);
    // 20 s is enough time, but 400 requests per arm are not 500.
    let (p, c) = ticks(progressing(0, w(5.0), 0), 10, 20, &r);
    held(&c, "of 500 per arm");
    assert!(!format!("{c:?}").contains("step time"), "{c:?}");
    let (_, c) = ticks(p, 30, 30, &r);
    assert_eq!(
        decision(&c),
        Decision::Advance {
            step: 1,
            weight: w(25.0)
        }
    );
    // The second step takes the rollout's 60 s.
    let (_, c) = ticks(progressing(1, w(25.0), 0), 10, 50, &r);
    held(&c, "step time 50s of 60s");
}

#[test]
fn a_timed_pause_starts_once_the_step_is_done_and_metrics_still_roll_back() {
    let r = with(vec![StepSpec {
        duration: Some(s(20)),
        pause: Some(PlannedPause::For(s(30))),
        ..StepSpec::default()
    }]);
    let (p, c) = ticks(progressing(0, w(5.0), 0), 10, 20, &r);
    held(&c, "planned pause 0s of 30s");
    let (p2, c) = ticks(p.clone(), 30, 40, &r);
    held(&c, "planned pause 20s of 30s");
    let (_, c) = ticks(p2, 50, 50, &r);
    assert_eq!(
        decision(&c),
        Decision::Advance {
            step: 1,
            weight: w(25.0)
        }
    );
    // A Fail during the pause rolls back as always.
    let (p, _) = step(p, tick(30, Outcome::Fail, [100.0, 100.0]), &r);
    assert!(
        matches!(
            p,
            Phase::RollingBack {
                reason: Reason::MetricFailed { .. },
                ..
            }
        ),
        "{p:?}"
    );
}

#[test]
fn a_pause_until_promoted_holds_until_released_and_the_deadline_still_applies() {
    let r = with(vec![StepSpec {
        duration: Some(s(20)),
        pause: Some(PlannedPause::UntilPromoted),
        ..StepSpec::default()
    }]);
    let (p, c) = ticks(progressing(0, w(5.0), 0), 10, 300, &r);
    held(&c, "paused until promoted");
    assert!(matches!(p, Phase::Progressing(_)));
    let (p2, c) = step(p.clone(), Event::Release { now: s(305) }, &r);
    assert!(c.is_empty());
    let (_, c) = ticks(p2, 310, 310, &r);
    assert_eq!(
        decision(&c),
        Decision::Advance {
            step: 1,
            weight: w(25.0)
        }
    );
    // Nobody comes: the deadline (600 s) rolls back.
    let (p, c) = ticks(p, 310, 600, &r);
    assert!(
        matches!(
            p,
            Phase::RollingBack {
                reason: Reason::Deadline { .. },
                ..
            }
        ),
        "{p:?}"
    );
    assert!(matches!(decision(&c), Decision::Rollback { .. }));
}

#[test]
fn a_step_without_analysis_ends_on_time_whatever_the_metrics_say() {
    let r = with(vec![StepSpec {
        duration: Some(s(20)),
        unanalysed: true,
        ..StepSpec::default()
    }]);
    let mut phase = progressing(0, w(5.0), 0);
    let mut cmds = Vec::new();
    for t in [10, 20] {
        (phase, cmds) = step(phase, tick(t, Outcome::Fail, [0.0, 0.0]), &r);
        if t == 10 {
            held(&cmds, "analysis = false");
        }
    }
    assert_eq!(
        decision(&cmds),
        Decision::Advance {
            step: 1,
            weight: w(25.0)
        }
    );
}

#[test]
fn the_plan_keeps_its_pause_across_a_restore() {
    let r = with(vec![StepSpec {
        duration: Some(s(20)),
        pause: Some(PlannedPause::UntilPromoted),
        ..StepSpec::default()
    }]);
    let (p, _) = ticks(progressing(0, w(5.0), 0), 10, 30, &r);
    // Through the stored record's JSON, as the store keeps it.
    let json = serde_json::to_string(&p).unwrap();
    let back: Phase = serde_json::from_str(&json).unwrap();
    let (p, c) = step(
        back,
        Event::Restored {
            found: Some(w(5.0)),
            applied: w(5.0),
            downtime: s(5),
            now: s(35),
        },
        &r,
    );
    assert!(c.is_empty(), "{c:?}");
    let (_, c) = ticks(p, 40, 100, &r);
    held(&c, "paused until promoted");
}

#[tokio::test(start_paused = true)]
async fn a_plan_runs_end_to_end_under_paused_time() {
    let policy = policy_with(
        "analysis_interval = \"10s\"\nstep_duration = \"30s\"\nmin_requests = 10\ndeadline = \"10m\"\n\
         [[rollout.step]]\nweight = 10\nanalysis = false\nduration = \"20s\"\n\
         [[rollout.step]]\nweight = 50\npause = \"40s\"\n\
         [[rollout.step]]\nweight = 100\n",
        "[[metric]]\nname = \"errors\"\nbuiltin = \"errors\"\n",
    );
    let traffic = MockTrafficProvider::new();
    let source = healthy_source();
    let report = run(
        &policy,
        &traffic,
        &source,
        RunOptions::default(),
        &mut Quiet,
    )
    .await
    .unwrap();
    assert_eq!(report.outcome, FinalOutcome::Promoted, "{report:?}");
    assert!(report.analysed);
    assert_eq!(traffic.calls(), vec![w(10.0), w(50.0), Weight::FULL]);
    // 2 ticks unanalysed at 10 %, 3 analysed + 4 paused at 50 %.
    assert_eq!(report.ticks, 9);
    let judged: Vec<Weight> = source.windows().iter().map(|x| x.weight).collect();
    assert_eq!(judged.len(), 9);
    assert!(
        report.duration_s >= 90.0 && report.duration_s < 100.0,
        "{report:?}"
    );
}

pub(super) fn diagnostics(rollout: &str) -> String {
    let text = format!(
        "name = \"t\"\n[rollout]\n{rollout}\n[traffic]\ntype = \"proxy\"\nlisten = \"127.0.0.1:0\"\n\
         baseline = \"http://127.0.0.1:1\"\ncanary = \"http://127.0.0.1:2\"\n\
         [[metric]]\nname = \"errors\"\nbuiltin = \"errors\"\n"
    );
    match crate::policy::parse_with_warnings(&text, "t.toml") {
        Ok((_, warnings)) => warnings.to_string(),
        Err(d) => d.to_string(),
    }
}

#[test]
fn steps_and_step_tables_at_once_are_refused_with_their_position() {
    let said = diagnostics("steps = [5, 100]\n[[rollout.step]]\nweight = 5\n");
    assert!(
        said.contains("t.toml:3:9: give steps = [...] or [[rollout.step]] tables, not both"),
        "{said}"
    );
    let said = diagnostics(
        "[[rollout.step]]\nweight = 5\npause = \"soon\"\n[[rollout.step]]\nweight = 100\n",
    );
    assert!(
        said.contains("t.toml:5:9: pause `soon` must be a duration"),
        "{said}"
    );
    let said = diagnostics("[[rollout.step]]\nweight = 50\n[[rollout.step]]\nweight = 20\n");
    assert!(
        said.contains("step weights must increase (20 after 50)"),
        "{said}"
    );
    let said = diagnostics("[[rollout.step]]\nweight = 5\nwieght = 3\n");
    assert!(said.contains("unknown key `wieght`"), "{said}");
}

#[test]
fn a_plan_with_nothing_analysed_is_a_blind_cutover() {
    for plan in [
        "steps = [100]",
        "[[rollout.step]]\nweight = 10\nanalysis = false\n[[rollout.step]]\nweight = 100\n",
    ] {
        let said = diagnostics(plan);
        assert!(
            said.contains("warning: a blind cutover: nothing is analysed"),
            "{plan}: {said}"
        );
    }
    let said = diagnostics("[[rollout.step]]\nweight = 10\n[[rollout.step]]\nweight = 100\n");
    assert!(!said.contains("blind"), "{said}");
    let p = policy_with(
        "[[rollout.step]]\nweight = 10\nduration = \"2m\"\nmin_requests = 7\npause = \"until-promoted\"\n\
         [[rollout.step]]\nweight = 100\n",
        "[[metric]]\nname = \"errors\"\nbuiltin = \"errors\"\n",
    );
    assert_eq!(p.rollout.steps, vec![w(10.0), Weight::FULL]);
    assert_eq!(
        p.rollout.spec(0),
        StepSpec {
            duration: Some(s(120)),
            min_requests: Some(7),
            pause: Some(PlannedPause::UntilPromoted),
            unanalysed: false,
            gates: Vec::new(),
        }
    );
    // The default deadline covers the plan's own durations (3 × 2 m, at least).
    assert!(p.rollout.deadline >= s(360), "{:?}", p.rollout.deadline);
}
