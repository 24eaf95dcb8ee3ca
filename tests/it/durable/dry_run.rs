//! `coalmine run --dry-run` (issue 13) through the real binary: the split in force is
//! analysed and the verdict printed as `would-…`, while the provider's call log proves that
//! no weight was ever set, and no hook or gate ran.

// Real processes on the wall clock: plain blocking test code.
#![allow(clippy::disallowed_methods)]

use std::fmt::Write as _;

use super::rig::{Opts, Provider, Rig, finish};

const NAME: &str = "dry";

/// A rig whose canary already has `weight` of the traffic (set by someone else), with a
/// pre-rollout hook and a confirm-rollout gate that would leave a file behind if they ran.
fn rig_at(weight: &str, canary_rate: f64, provider: Provider) -> Rig {
    let rig = Rig::new(
        NAME,
        &Opts {
            provider,
            canary_rate,
            step_duration: "1s",
            hook_ms: Some(10),
            ..Opts::default()
        },
    );
    let gate_ran = rig.path("gate-ran");
    let mut policy = std::fs::read_to_string(&rig.policy).unwrap();
    let _ = write!(
        policy,
        "\n[[rollout.gate]]\nname = \"change-window\"\ntype = \"confirm-rollout\"\n\
         command = [\"/bin/sh\", \"-c\", \"touch {}\"]\n",
        gate_ran.display()
    );
    std::fs::write(&rig.policy, policy).unwrap();
    std::fs::write(rig.path("weight"), format!("{weight}\n")).unwrap();
    rig
}

fn dry_run(rig: &Rig) -> (i32, serde_json::Value, String) {
    finish(rig.start_with(&["--dry-run"]))
}

fn assert_nothing_acted(rig: &Rig, weight: &str) {
    assert!(
        rig.calls().is_empty(),
        "a weight was set: {:?}",
        rig.calls()
    );
    assert_eq!(rig.weight(), weight);
    assert!(!rig.path("gate-ran").exists(), "the gate ran");
    let hooks: Vec<_> = rig
        .records()
        .into_iter()
        .filter(|r| r["event"] == "hook-ran")
        .collect();
    assert!(hooks.is_empty(), "a hook ran: {hooks:?}");
    // Nothing was kept in the store: a real run afterwards starts fresh.
    assert!(rig.stored(NAME).is_none());
}

#[test]
fn a_dry_run_of_a_bad_canary_at_fifty_percent_says_would_rollback_and_sets_nothing() {
    // The rig's canary is bad from 50 % on.
    let rig = rig_at("50", 0.2, Provider::Exec);
    let (code, summary, err) = dry_run(&rig);
    assert_eq!(code, 0, "{err}");
    assert_eq!(summary["outcome"], "rolled-back", "{summary}");
    let would = summary["would"].as_str().unwrap_or_default();
    assert!(would.starts_with("would-rollback at "), "{summary}");
    assert!(would.contains("metric `errors` failed"), "{summary}");
    assert_eq!(summary["final_weight"], 50.0, "{summary}");
    assert!(err.contains("DRY RUN"), "{err}");
    assert!(err.contains("would-rollback at "), "{err}");
    assert!(
        err.contains(
            "not run (dry run): hook `smoke` (pre-rollout), gate `change-window` (confirm-rollout)"
        ),
        "{err}"
    );
    let finals: Vec<_> = rig
        .records()
        .into_iter()
        .filter(|r| r["event"] == "would-rollback")
        .collect();
    assert_eq!(finals.len(), 1);
    assert!(
        finals[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("nothing was changed (dry run)")),
        "{finals:?}"
    );
    assert!(rig.records().iter().all(|r| r["event"] != "rolled-back"));
    assert_nothing_acted(&rig, "50");
}

#[test]
fn a_dry_run_of_a_healthy_canary_at_ten_percent_says_would_promote_and_sets_nothing() {
    let rig = rig_at("10", 0.01, Provider::Http);
    let (code, summary, err) = dry_run(&rig);
    assert_eq!(code, 0, "{err}");
    assert_eq!(summary["outcome"], "promoted", "{summary}");
    let would = summary["would"].as_str().unwrap_or_default();
    assert!(would.starts_with("would-promote at "), "{summary}");
    // The shadow step lasts as long as the analysed steps together (1 s + 1 s).
    let at: f64 = would["would-promote at ".len()..]
        .split(' ')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(-1.0);
    assert!(at >= 2.0, "{would}");
    assert_eq!(summary["final_weight"], 10.0, "{summary}");
    assert_eq!(summary["analysed"], true, "{summary}");
    assert_nothing_acted(&rig, "10");
}

#[test]
fn a_dry_run_with_no_canary_traffic_has_nothing_to_analyse() {
    let rig = rig_at("0", 0.01, Provider::Exec);
    let (code, _, err) = dry_run(&rig);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("nothing to analyse: 0% is in force"), "{err}");
    assert_nothing_acted(&rig, "0");
}
