//! End-to-end: full rollouts through a real HAProxy with the built `coalmine` binary,
//! traffic from a load generator, metrics from HAProxy's own per-server counters
//! (`[metrics] type = "haproxy"`). A bad canary is rolled back and observed at 0 % right
//! after; a good canary is promoted and observed at 100 %.

mod common;

use std::time::Duration;

use coalmine::demo::load::Load;
use common::{Backends, Haproxy, canary_answers, require_tool};

fn policy(h: &Haproxy, decisions: &std::path::Path) -> String {
    format!(
        r#"name = "checkout-e2e"
decisions = "{decisions}"

[rollout]
steps = [5, 25, 100]
step_duration = "4s"
analysis_interval = "1s"
min_requests = 50
deadline = "60s"

[traffic]
type = "haproxy"
socket = "{socket}"
backend = "checkout"
baseline = "stable"
canary = "canary"

[metrics]
type = "haproxy"

[[metric]]
name = "errors"
builtin = "errors"
judge = "sequential"
allowed_ratio = 1.0
"#,
        decisions = decisions.display(),
        socket = h.socket.display(),
    )
}

/// Runs `coalmine run --json` on the policy while load flows; returns (exit code, JSON
/// summary, decision records).
async fn rollout(h: &Haproxy) -> (i32, serde_json::Value, Vec<serde_json::Value>) {
    let decisions = h.dir.path().join("decisions.jsonl");
    let path = h.dir.path().join("policy.toml");
    std::fs::write(&path, policy(h, &decisions)).unwrap();
    let load = Load::start(h.frontend, 400, 64);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_coalmine"))
        .arg("run")
        .arg(&path)
        .env("COALMINE_STATE_DIR", h.dir.path().join("state"))
        .arg("--json")
        .arg("--quiet")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), out)
        .await
        .expect("coalmine run finishes within 90 s")
        .unwrap();
    let stats = load.stop().await;
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("load: {stats:?}");
    assert_eq!(
        stats.failed, 0,
        "requests through haproxy failed: {stats:?}"
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "summary is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let records = std::fs::read_to_string(&decisions)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (out.status.code().unwrap_or(-1), summary, records)
}

fn applied(records: &[serde_json::Value]) -> Vec<f64> {
    records
        .iter()
        .filter(|r| {
            matches!(
                r["event"].as_str(),
                Some("weight-applied" | "rolled-back" | "promoted")
            )
        })
        .filter_map(|r| r["weight"].as_f64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_canary_is_rolled_back_through_haproxy() {
    let Some(bin) = require_tool("haproxy", "haproxy") else {
        return;
    };
    // Every third canary request fails; the baseline never does.
    let backends = Backends::start(0.3).await;
    let h = Haproxy::start(&bin, &backends).await;
    let (code, summary, records) = rollout(&h).await;
    assert_eq!(code, 1, "exit code 1 = rolled back; summary: {summary:#}");
    assert_eq!(summary["outcome"], "rolled-back", "{summary:#}");
    // Traffic was really shifted to the canary before the verdict, then back.
    let weights = applied(&records);
    assert!(weights.contains(&5.0), "weights applied: {weights:?}");
    assert_eq!(weights.last(), Some(&0.0), "weights applied: {weights:?}");
    let reason = summary["reason"].to_string();
    assert!(reason.contains("errors"), "{reason}");
    // Right after: no request reaches the canary.
    let (canary, failed) = canary_answers(h.frontend, 1000).await;
    assert_eq!((canary, failed), (0, 0), "canary share after the rollback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_canary_is_promoted_through_haproxy() {
    let Some(bin) = require_tool("haproxy", "haproxy") else {
        return;
    };
    let backends = Backends::start(0.0).await;
    let h = Haproxy::start(&bin, &backends).await;
    let (code, summary, records) = rollout(&h).await;
    assert_eq!(code, 0, "exit code 0 = promoted; summary: {summary:#}");
    let weights = applied(&records);
    assert_eq!(weights, [5.0, 25.0, 100.0], "weights applied");
    let (canary, failed) = canary_answers(h.frontend, 500).await;
    assert_eq!(
        (canary, failed),
        (500, 0),
        "canary share after the promotion"
    );
}
