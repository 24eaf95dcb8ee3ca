//! End-to-end: full rollouts through a real HAProxy with the built `coalmine` binary,
//! traffic from a load generator, metrics from HAProxy's own per-server counters
//! (`[metrics] type = "haproxy"`). A bad canary is rolled back and observed at 0 % right
//! after; a good canary is promoted and observed at 100 %. Blue-green (issue 13): a bad
//! green gets all the traffic in one switch, fails the threshold guard inside the
//! post-promotion window and is switched back, observed at 0 % right after; a healthy green
//! is promoted after the window and keep_blue.

mod common;

use std::time::Duration;

use coalmine::demo::load::Load;
use common::{Backends, Haproxy, applied, canary_answers, require_tool};

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

/// A blue-green policy: one switch, a 4 s post-promotion window judged by an error-rate
/// ceiling, 1 s of keep_blue.
fn blue_green_policy(h: &Haproxy, decisions: &std::path::Path) -> String {
    format!(
        r#"name = "checkout-blue-green-e2e"
decisions = "{decisions}"

[rollout]
strategy = "blue-green"
analysis_interval = "500ms"
post_promotion = "4s"
keep_blue = "1s"
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
name = "error-ceiling"
builtin = "errors"
judge = "threshold"
max = 0.05
min_trials = 50
"#,
        decisions = decisions.display(),
        socket = h.socket.display(),
    )
}

/// Runs `coalmine run --json` on the policy `text(h, decisions path)` while load flows;
/// returns (exit code, JSON summary, decision records).
async fn rollout_with(
    h: &Haproxy,
    text: fn(&Haproxy, &std::path::Path) -> String,
) -> (i32, serde_json::Value, Vec<serde_json::Value>) {
    let decisions = h.dir.path().join("decisions.jsonl");
    let path = h.dir.path().join("policy.toml");
    std::fs::write(&path, text(h, &decisions)).unwrap();
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

async fn rollout(h: &Haproxy) -> (i32, serde_json::Value, Vec<serde_json::Value>) {
    rollout_with(h, policy).await
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_green_is_switched_back_to_blue_through_haproxy() {
    let Some(bin) = require_tool("haproxy", "haproxy") else {
        return;
    };
    // Green fails every third request; nothing judges it before the switch (HAProxy offers
    // no preview share), the ceiling catches it in the window after.
    let backends = Backends::start(0.3).await;
    let h = Haproxy::start(&bin, &backends).await;
    let (code, summary, records) = rollout_with(&h, blue_green_policy).await;
    assert_eq!(code, 1, "exit code 1 = rolled back; summary: {summary:#}");
    assert_eq!(summary["outcome"], "rolled-back", "{summary:#}");
    // One switch to 100 %, one back.
    let events: Vec<_> = records
        .iter()
        .map(|r| (&r["event"], &r["weight"]))
        .collect();
    assert_eq!(
        applied(&records),
        [100.0, 0.0],
        "weights applied: {events:?}"
    );
    assert!(
        summary["reason"].to_string().contains("error-ceiling"),
        "{summary:#}"
    );
    // Right after: blue answers everything.
    let (green, failed) = canary_answers(h.frontend, 1000).await;
    assert_eq!(
        (green, failed),
        (0, 0),
        "green's share after the switch back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_green_is_promoted_through_haproxy() {
    let Some(bin) = require_tool("haproxy", "haproxy") else {
        return;
    };
    let backends = Backends::start(0.0).await;
    let h = Haproxy::start(&bin, &backends).await;
    let (code, summary, records) = rollout_with(&h, blue_green_policy).await;
    assert_eq!(code, 0, "exit code 0 = promoted; summary: {summary:#}");
    // The switch (the post-promotion window starts), then the promotion at its end.
    assert_eq!(applied(&records), [100.0, 100.0], "one switch, never back");
    assert!(
        records
            .iter()
            .all(|r| !r.to_string().contains("blind cutover")),
        "the window's ticks were an analysis: {records:#?}"
    );
    // The window was judged at 100 % before the promotion.
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "tick" && r["weight"].as_f64() == Some(100.0)),
        "no tick in the post-promotion window: {records:#?}"
    );
    let (green, failed) = canary_answers(h.frontend, 500).await;
    assert_eq!(
        (green, failed),
        (500, 0),
        "green's share after the promotion"
    );
}
