//! The operator's levers through the runner: a lever the rollout cannot take where it is
//! is recorded as refused (a promote while a gate held it was recorded as done, and dropped), and `promote --full` ends
//! the post-promotion window and keep_blue (it was refused: there is no step to name).

use super::fence::ticks;
use super::{Fixture, TIMING, healthy_source, policy_with};
use crate::controller::machine::Phase;
use crate::controller::runner::{FinalOutcome, Lever, OperatorAction, Wake};
use crate::model::Weight;
use crate::policy::Policy;

const ERRORS: &str = "[[metric]]\nname = \"errors\"\nbuiltin = \"errors\"\n\
    [[metric]]\nname = \"ceiling\"\nbuiltin = \"errors\"\njudge = \"threshold\"\nmax = 0.1\nmin_trials = 50\n";

fn operator_records(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "operator")
        .collect()
}

fn promote_full(step: usize) -> Wake {
    Wake::Lever(Lever::Operator {
        action: OperatorAction::Promote { step, full: true },
        actor: "alice".into(),
        reason: "ship it".into(),
    })
}

/// A confirm-rollout gate says no: the rollout holds in `confirming`, where a promote is
/// not something it can take.
#[tokio::test]
async fn a_promote_while_a_gate_holds_the_rollout_is_recorded_as_refused() {
    let policy = policy_with(
        &format!(
            "{TIMING}\n[[rollout.gate]]\nname = \"desk\"\ntype = \"confirm-rollout\"\n\
             command = [\"false\"]\n"
        ),
        ERRORS,
    );
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("d.jsonl");
    let rig = Fixture::new(policy, healthy_source()).logged(&log);
    let mut r = rig.start(None).await;
    for _ in 0..3 {
        if matches!(r.phase(), Phase::Confirming { .. }) {
            break;
        }
        r.reconcile(Wake::Tick).await;
    }
    assert!(
        matches!(r.phase(), Phase::Confirming { step: 0, .. }),
        "{:?}",
        r.phase()
    );
    let before = r.phase().clone();
    r.reconcile(promote_full(1)).await;
    assert_eq!(r.phase(), &before, "nothing was done");
    let ops = operator_records(&log);
    let detail = ops.last().expect("the lever is recorded")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        detail.starts_with("refused:") && detail.contains("confirming"),
        "{detail}"
    );
    assert!(rig.traffic.calls().is_empty(), "{:?}", rig.traffic.calls());
}

fn blue_green() -> Policy {
    policy_with(
        "strategy = \"blue-green\"\nanalysis_interval = \"10s\"\npost_promotion = \"5m\"\n\
         keep_blue = \"10m\"\n",
        ERRORS,
    )
}

/// `promote --full` in the post-promotion window ends it (keep_blue follows), and again in
/// keep_blue retires blue: the rollout is promoted long before the 15 minutes.
#[tokio::test(start_paused = true)]
async fn promote_full_ends_the_post_promotion_window_then_keep_blue() {
    let policy = blue_green();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("d.jsonl");
    let rig = Fixture::new(policy, healthy_source()).logged(&log);
    let mut r = rig.start(None).await;
    ticks(&mut r, 50, |r| matches!(r.phase(), Phase::Watching(_))).await;
    ticks(&mut r, 2, |_| false).await;
    assert!(matches!(r.phase(), Phase::Watching(_)), "{:?}", r.phase());
    r.reconcile(promote_full(0)).await;
    assert!(
        matches!(r.phase(), Phase::KeepingBlue(_)),
        "the window ended: {:?}",
        r.phase()
    );
    r.reconcile(promote_full(0)).await;
    assert!(r.finished(), "blue retired: {:?}", r.phase());
    let report = r.finish().await;
    assert!(
        matches!(report.outcome, FinalOutcome::Promoted),
        "{:?}",
        report.outcome
    );
    assert!(report.duration_s < 120.0, "{}", report.duration_s);
    assert_eq!(
        rig.traffic.calls(),
        vec![Weight::FULL],
        "one switch, never back"
    );
    let ops = operator_records(&log);
    let details: Vec<&str> = ops.iter().map(|r| r["detail"].as_str().unwrap()).collect();
    assert_eq!(details.len(), 2, "{details:?}");
    assert!(
        details.iter().all(|d| !d.starts_with("refused")),
        "{details:?}"
    );
}
