//! `coalmine backtest`: the demo's recorded rollouts replayed through their own policy give
//! back every recorded decision exactly; through other policies, what those would have done.

use std::path::Path;

use crate::report::demo_log;
use crate::support::{root, run, text};

fn backtest_json(policy: &Path, log: &Path) -> serde_json::Value {
    let out = run(&[
        "backtest",
        policy.to_str().unwrap(),
        "--records",
        log.to_str().unwrap(),
        "--json",
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("JSON ({e}): {stdout}"))
}

/// A variant of the demo policy.
fn demo_policy(dir: &Path, name: &str, edit: impl Fn(String) -> String) -> std::path::PathBuf {
    let text = std::fs::read_to_string(root().join("policies/demo.toml")).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, edit(text)).unwrap();
    p
}

fn reproduces(scenario: &str, outcome: &str) {
    let log = demo_log(scenario);
    let b = backtest_json(&root().join("policies/demo.toml"), &log);
    let ticks = b["ticks"].as_array().unwrap();
    let recorded = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| l.contains(r#""kind":"tick""#))
        .count();
    assert_eq!(ticks.len(), recorded);
    assert!(recorded >= 3, "{recorded} ticks");
    for t in ticks {
        let (r, s) = (&t["recorded"], &t["simulated"]);
        // Same decision, same step and weight, every metric's outcome and e-value to the bit.
        assert_eq!(r, s, "tick {}", t["tick"]);
    }
    assert_eq!(b["differing_ticks"], 0);
    assert_eq!(b["recorded"], b["simulated"], "{b:#}");
    assert_eq!(b["simulated"]["outcome"], outcome);
    assert_eq!(b["simulated"]["decided_tick"], recorded);
}

#[test]
fn healthy_recording_through_its_own_policy_promotes_at_the_recorded_tick() {
    reproduces("healthy", "promoted");
}

#[test]
fn errors_recording_through_its_own_policy_is_reproduced_exactly() {
    reproduces("errors", "rolled-back");
}

#[test]
fn latency_recording_through_its_own_policy_is_reproduced_exactly() {
    reproduces("latency", "rolled-back");
}

#[test]
fn other_policies_decide_otherwise_on_the_same_windows() {
    let dir = tempfile::tempdir().unwrap();
    let log = demo_log("errors");
    // A larger α: a lower threshold, so the same evidence decides no later, with fewer
    // requests, and the e-values are the same numbers up to that tick.
    let loose = demo_policy(dir.path(), "alpha.toml", |t| {
        t.replace("alpha = 0.01 ", "alpha = 0.2 ")
    });
    let b = backtest_json(&loose, &log);
    let (rec, sim) = (&b["recorded"], &b["simulated"]);
    assert_eq!(sim["outcome"], "rolled-back", "{b:#}");
    let (rt, st) = (
        rec["decided_tick"].as_u64().unwrap(),
        sim["decided_tick"].as_u64().unwrap(),
    );
    assert!(st <= rt, "decided at tick {st}, recorded {rt}");
    assert!(sim["requests"][1].as_f64() <= rec["requests"][1].as_f64());
    let threshold =
        |side: &serde_json::Value| side["metrics"][0]["log_threshold"].as_f64().unwrap();
    assert!(threshold(sim) < threshold(rec), "{b:#}");
    let first = &b["ticks"][0];
    assert_eq!(
        first["recorded"]["metrics"][0]["log_e"], first["simulated"]["metrics"][0]["log_e"],
        "the error test's e-value does not depend on α"
    );

    // Allowing the canary 20× the baseline's errors and no absolute guard: not rolled back
    // within the recorded windows.
    let lax = demo_policy(dir.path(), "lax.toml", |t| {
        let t = t.replace("allowed_ratio = 1.0 ", "allowed_ratio = 20.0 ");
        t[..t.find("# The absolute floor").unwrap()].to_string()
    });
    let b = backtest_json(&lax, &log);
    assert_eq!(b["simulated"]["outcome"], "undecided", "{b:#}");
    assert_eq!(b["simulated"]["decided_tick"], serde_json::Value::Null);
    assert!(b["differing_ticks"].as_u64().unwrap() >= 1);
    let out = run(&[
        "backtest",
        lax.to_str().unwrap(),
        "--records",
        log.to_str().unwrap(),
    ]);
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("outcome ") && stdout.contains("undecided"),
        "{stdout}"
    );
}

#[test]
fn logs_that_are_not_recordings_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::read_to_string(demo_log("errors")).unwrap();
    // A log as coalmine wrote it before it recorded observations.
    let old: Vec<String> = log
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("since_s");
            if let Some(ms) = o.get_mut("metrics").and_then(|m| m.as_array_mut()) {
                for m in ms {
                    m.as_object_mut().unwrap().remove("observed");
                }
            }
            v.to_string()
        })
        .collect();
    let p = dir.path().join("old.jsonl");
    std::fs::write(&p, old.join("\n")).unwrap();
    let first_tick = log
        .lines()
        .position(|l| l.contains(r#""kind":"tick""#))
        .unwrap()
        + 1;
    let policy = root().join("policies/demo.toml");
    let out = run(&[
        "backtest",
        policy.to_str().unwrap(),
        "--records",
        p.to_str().unwrap(),
    ]);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "{}:{first_tick}: this tick carries no recorded observations",
            p.display()
        )),
        "{err}"
    );
    // A policy with a metric the recording does not have.
    let other = demo_policy(dir.path(), "renamed.toml", |t| {
        t.replace("name = \"latency\"", "name = \"p99\"")
    });
    let real = demo_log("errors");
    let out = run(&[
        "backtest",
        other.to_str().unwrap(),
        "--records",
        real.to_str().unwrap(),
    ]);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("metric `p99` of the policy is not in the recording"),
        "{err}"
    );
}
