//! The binary end to end: the demo's scenarios, JSON output and exit codes.

use std::time::{Duration, Instant};

use crate::support::{run, text};

#[expect(
    clippy::disallowed_methods,
    reason = "wall-clock time of a child process, not of our async code"
)]
fn demo(scenario: &str) -> (i32, serde_json::Value, String, Duration) {
    let start = Instant::now();
    let out = run(&["demo", "--scenario", scenario, "--json"]);
    let took = start.elapsed();
    let (stdout, stderr) = text(&out);
    crate::policy::authoring::assert_progress_fits(&stderr);
    let json: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is JSON ({e}):\n{stdout}\n{stderr}"));
    (out.status.code().unwrap_or(-1), json, stderr, took)
}

#[test]
fn demo_healthy_promotes() {
    let (code, json, stderr, took) = demo("healthy");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json["outcome"], "promoted");
    assert_eq!(json["final_weight"], 100.0);
    assert_eq!(json["scenario"], "healthy");
    assert!(stderr.contains("PROMOTED"), "{stderr}");
    assert!(stderr.contains("weight-applied (weight 25%)"), "{stderr}");
    assert!(took < Duration::from_secs(60), "{took:?}");
}

#[test]
fn demo_errors_rolls_back_naming_the_metric_and_its_numbers() {
    let (code, json, stderr, took) = demo("errors");
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(json["outcome"], "rolled-back");
    assert_eq!(json["reason"]["cause"], "metric-failed");
    assert_eq!(json["reason"]["metric"], "error-rate");
    assert_eq!(json["final_weight"], 0.0);
    let detail = json["reason"]["detail"].as_str().unwrap();
    assert!(
        detail.contains("e-value") && detail.contains("lower confidence bound"),
        "{detail}"
    );
    let m = json["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metric"] == "error-rate")
        .unwrap();
    assert_eq!(m["outcome"], "fail");
    assert!(m["stats"]["log_e"].as_f64().unwrap() >= m["stats"]["log_threshold"].as_f64().unwrap());
    let ci = m["stats"]["ci_ratio"].as_array().unwrap();
    assert!(ci[0].as_f64().unwrap() > 1.0, "interval excludes 1: {ci:?}");
    assert!(m["stats"]["lower_bound"].as_f64().unwrap() > 1.0, "{m}");
    assert!(stderr.contains("ROLLED BACK"), "{stderr}");
    assert!(took < Duration::from_secs(60), "{took:?}");
}

#[test]
fn demo_latency_rolls_back_naming_latency() {
    let (code, json, stderr, took) = demo("latency");
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(json["reason"]["metric"], "latency");
    let detail = json["reason"]["detail"].as_str().unwrap();
    assert!(
        detail.contains("p50") && detail.contains("e-value"),
        "{detail}"
    );
    assert!(took < Duration::from_secs(60), "{took:?}");
}

#[test]
fn demo_writes_one_decision_record_per_tick() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("d.jsonl");
    let out = run(&[
        "demo",
        "--scenario",
        "errors",
        "--quiet",
        "--decisions",
        log.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ticks: Vec<&serde_json::Value> = records.iter().filter(|r| r["kind"] == "tick").collect();
    assert!(!ticks.is_empty());
    for (i, t) in ticks.iter().enumerate() {
        assert_eq!(t["window"]["seq"], i as u64);
        assert!(t["decision"]["action"].is_string());
        assert_eq!(t["metrics"].as_array().unwrap().len(), 3);
    }
    assert_eq!(ticks.last().unwrap()["decision"]["action"], "rollback");
    let last = records.last().unwrap();
    assert_eq!(last["kind"], "final");
    assert_eq!(last["weight"], 0.0);
}

#[test]
fn usage_errors_exit_2() {
    let out = run(&["demo", "--scenario", "nonsense"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn judge_counts_prints_json() {
    let out = run(&[
        "judge",
        "counts",
        "--baseline-errors",
        "190",
        "--canary-errors",
        "30",
        "--canary-share",
        "0.05",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_str(&text(&out).0).unwrap();
    assert!((v["log_e"].as_f64().unwrap() - 8.0481).abs() < 1e-4);
    let out = run(&[
        "judge",
        "counts",
        "--baseline-errors",
        "1",
        "--canary-errors",
        "1",
        "--canary-share",
        "1.5",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn demo_services_refuses_buckets_that_are_not_a_histogram() {
    for (arg, says) in [
        ("0.02,0.01", "bucket bounds must increase (0.01 after 0.02)"),
        ("0.01,-1", "bucket bounds must be positive seconds, got -1"),
        (
            "0.01,inf",
            "bucket bounds must be positive seconds, got inf",
        ),
    ] {
        let out = run(&["demo-services", "--rps", "0", "--buckets", arg]);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{arg}: {stderr}");
        assert!(stderr.contains(says), "{arg}: {stderr}");
    }
}

#[test]
fn bash_loads_the_completion_script_and_completes_a_subcommand() {
    let out = run(&["completions", "bash"]);
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("coalmine.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    let check = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source '{}' && complete -p coalmine && COMP_WORDS=(coalmine va) COMP_CWORD=1 \
             COMP_LINE='coalmine va' COMP_POINT=11 && _coalmine coalmine va coalmine && \
             echo \"reply: ${{COMPREPLY[*]}}\"",
            script.display()
        ))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(said.contains("-F _coalmine coalmine"), "{said}");
    assert!(said.contains("reply: validate"), "{said}");
}
