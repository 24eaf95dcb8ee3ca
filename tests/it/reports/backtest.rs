//! `coalmine backtest`: the demo's recorded rollouts replayed through their own policy give
//! back every recorded decision exactly; through other policies, what those would have done.

use std::path::Path;

use crate::reports::report::demo_log;
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
    // At least two ticks: a replay of more than one decision (the latency demo can decide at
    // its second tick on a loaded machine).
    assert!(recorded >= 2, "{recorded} ticks");
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

/// Each recorded tick's `observed` counts of `metric`, summed per share.
fn recorded_counts(log: &Path, metric: &str) -> Vec<Vec<(f64, [f64; 4])>> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter(|l| l.contains(r#""kind":"tick""#))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let m = v["metrics"]
                .as_array()
                .and_then(|ms| ms.iter().find(|m| m["metric"] == metric).cloned())
                .unwrap_or_default();
            segments(&m["observed"])
        })
        .collect()
}

/// `[(share, [baseline events, baseline trials, canary events, canary trials])]`.
fn segments(observed: &serde_json::Value) -> Vec<(f64, [f64; 4])> {
    observed
        .as_array()
        .map(|segs| {
            segs.iter()
                .map(|s| {
                    let c = |arm: &str, i: usize| s[arm]["counts"][i].as_f64().unwrap();
                    (
                        s["share"].as_f64().unwrap(),
                        [
                            c("baseline", 0),
                            c("baseline", 1),
                            c("canary", 0),
                            c("canary", 1),
                        ],
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_policy_at_twice_the_recorded_interval_judges_joined_windows() {
    let dir = tempfile::tempdir().unwrap();
    let log = demo_log("errors");
    let policy = demo_policy(dir.path(), "2s.toml", |t| {
        t.replace("analysis_interval = \"1s\"", "analysis_interval = \"2s\"")
    });
    let b = backtest_json(&policy, &log);
    let recorded = recorded_counts(&log, "error-rate");
    let ticks = b["ticks"].as_array().unwrap();
    assert_eq!(ticks.len(), recorded.len() / 2, "{b:#}");
    let mut compared = 0;
    for (g, t) in ticks.iter().enumerate() {
        assert_eq!(
            t["recorded_ticks"],
            serde_json::json!([2 * g + 1, 2 * g + 2])
        );
        // Counts add, share by share.
        let mut want: Vec<(f64, [f64; 4])> = Vec::new();
        for (share, c) in recorded[2 * g].iter().chain(&recorded[2 * g + 1]) {
            match want.iter_mut().find(|(s, _)| s == share) {
                Some((_, w)) => (0..4).for_each(|i| w[i] += c[i]),
                None => want.push((*share, *c)),
            }
        }
        assert_eq!(
            segments(&t["data"]["error-rate"]["observed"]),
            want,
            "joined tick {}",
            g + 1
        );
        // The error test's evidence is a product over error events: two windows joined give
        // the e-value the recording had after the second of them.
        let Some(sim) = t["simulated"].as_object() else {
            continue;
        };
        let rec_tick = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .filter(|l| l.contains(r#""kind":"tick""#))
            .nth(2 * g + 1)
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .unwrap();
        let rec_e = rec_tick["metrics"][0]["stats"]["log_e"].as_f64().unwrap();
        let sim_e = sim["metrics"][0]["log_e"].as_f64().unwrap();
        assert!(
            (rec_e - sim_e).abs() < 1e-9,
            "joined tick {}: ln e {sim_e}, recorded {rec_e}",
            g + 1
        );
        compared += 1;
    }
    assert!(compared >= 2, "{b:#}");
    assert!(
        b["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("2 recorded windows")),
        "{b:#}"
    );
}

#[test]
fn a_policy_interval_that_is_not_a_multiple_of_the_recorded_one_exits_2_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let log = demo_log("healthy");
    for (interval, shown) in [("1500ms", "1s 500ms"), ("500ms", "500ms")] {
        let policy = demo_policy(dir.path(), "odd.toml", |t| {
            t.replace(
                "analysis_interval = \"1s\"",
                &format!("analysis_interval = \"{interval}\""),
            )
        });
        let out = run(&[
            "backtest",
            policy.to_str().unwrap(),
            "--records",
            log.to_str().unwrap(),
        ]);
        let (_, err) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains(&format!(
                "the policy's analysis_interval ({shown}) is not a whole multiple of the recording's (1s)"
            )),
            "{err}"
        );
    }
}

#[test]
fn backtests_on_prometheus_refuse_bad_arguments_with_exit_2_and_unreachable_with_3() {
    let (_reserved, refusing) = crate::common::refusing_addr();
    let nothing = format!("http://{refusing}");
    let prom_policy = root().join("policies/prometheus-demo.toml");
    let prom_policy = prom_policy.to_str().unwrap();
    let demo = root().join("policies/demo.toml");
    let cases: [(&str, &[&str], &str); 7] = [
        (
            prom_policy,
            &["--from", "yesterday", "--to", "now", "--share", "5"],
            "--from: `yesterday` is not a time",
        ),
        (
            prom_policy,
            &["--from", "-1h", "--to", "now+1h", "--share", "5"],
            "--to: `now+1h` is not a time",
        ),
        (
            prom_policy,
            &["--from", "-1h", "--to", "now", "--share", "0"],
            "--share `0`: expected the canary's weight in percent",
        ),
        (
            prom_policy,
            &["--from", "now", "--to", "-1h", "--share", "5"],
            "must be before --to",
        ),
        (
            prom_policy,
            &[
                "--from",
                "-1h",
                "--to",
                "2999-01-01T00:00:00Z",
                "--share",
                "5",
            ],
            "is in the future",
        ),
        (
            demo.to_str().unwrap(),
            &["--from", "-1h", "--to", "now", "--share", "5"],
            "type = \"builtin\"",
        ),
        (
            prom_policy,
            &[
                "--from",
                "-1h",
                "--to",
                "now",
                "--share",
                "observed",
                "--records",
                "x.jsonl",
            ],
            "cannot be used with",
        ),
    ];
    for (policy, args, want) in cases {
        let mut all = vec!["backtest", policy, "--prometheus", &nothing];
        all.extend_from_slice(args);
        let out = run(&all);
        let (_, err) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // --share is required with --prometheus.
    let out = run(&[
        "backtest",
        prom_policy,
        "--prometheus",
        &nothing,
        "--from",
        "-1h",
        "--to",
        "now",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("--share"), "{:?}", text(&out));
    // Nothing listens: an operational failure.
    let out = run(&[
        "backtest",
        prom_policy,
        "--prometheus",
        &nothing,
        "--from",
        "-1h",
        "--to",
        "now",
        "--share",
        "5",
    ]);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("unreachable"), "{err}");
}
