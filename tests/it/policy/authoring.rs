//! Policy authoring and command-line conventions: `coalmine init` for every combination (and
//! its output run against the demo's services), `validate --json`, colour, progress lines
//! that fit a 100-column terminal.

use std::fs;

use crate::support::{coalmine, root, run, text};

/// Every progress line of a run (stderr lines starting with the elapsed seconds) fits a
/// 100-column terminal.
pub(crate) fn assert_progress_fits(stderr: &str) {
    let mut progress = 0;
    for l in stderr.lines() {
        let t = l.trim_start();
        let is_progress = t
            .split_once("s  ")
            .is_some_and(|(secs, _)| !secs.is_empty() && secs.parse::<f64>().is_ok());
        if is_progress {
            progress += 1;
            let width = l.chars().count();
            assert!(width <= 100, "{width} columns: {l}");
        }
    }
    assert!(progress > 0, "no progress lines in:\n{stderr}");
}

const PROVIDERS: [&str; 6] = ["proxy", "haproxy", "nginx", "exec", "http", "gateway-api"];
const SOURCES: [&str; 3] = ["builtin", "prometheus", "haproxy"];

#[test]
fn init_writes_a_policy_validate_accepts_for_every_combination() {
    let dir = tempfile::tempdir().unwrap();
    let mut accepted = Vec::new();
    for provider in PROVIDERS {
        for metrics in SOURCES {
            let file = dir.path().join(format!("{provider}-{metrics}.toml"));
            let f = file.to_str().unwrap();
            let out = run(&[
                "init",
                "--provider",
                provider,
                "--metrics",
                metrics,
                "-o",
                f,
            ]);
            let (_, stderr) = text(&out);
            let ok = matches!(
                (provider, metrics),
                ("proxy", "builtin") | ("haproxy", "haproxy") | (_, "prometheus")
            );
            if !ok {
                assert_eq!(out.status.code(), Some(2), "{provider}+{metrics}: {stderr}");
                assert!(
                    stderr.starts_with("error: --metrics ") && stderr.contains("needs --provider"),
                    "{stderr}"
                );
                assert!(!file.exists(), "nothing written for a refused combination");
                continue;
            }
            assert_eq!(out.status.code(), Some(0), "{provider}+{metrics}: {stderr}");
            let out = run(&["validate", f]);
            let (stdout, stderr) = text(&out);
            assert_eq!(out.status.code(), Some(0), "{provider}+{metrics}: {stderr}");
            assert!(stdout.contains(": ok:"), "{stdout}");
            assert!(
                !stderr.contains("warning"),
                "{provider}+{metrics}: {stderr}"
            );
            let policy = fs::read_to_string(&file).unwrap();
            assert!(policy.contains("name = \"") && policy.contains("error-ceiling"));
            accepted.push(format!("{provider}+{metrics}"));
        }
    }
    assert_eq!(accepted.len(), 8, "{accepted:?}");
}

#[test]
fn init_defaults_to_the_proxy_and_its_counters_on_stdout() {
    let out = run(&["init"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let p = coalmine::policy::parse(&stdout, "stdout").unwrap();
    assert_eq!(p.traffic.kind(), "proxy");
    assert_eq!(p.source.kind(), "builtin");
    assert_eq!(p.name, "my-service");
    // Without --metrics, nginx gets Prometheus (it has no counters of its own here).
    let out = run(&["init", "--provider", "nginx", "--name", "checkout"]);
    let p = coalmine::policy::parse(&text(&out).0, "stdout").unwrap();
    assert_eq!((p.traffic.kind(), p.source.kind()), ("nginx", "prometheus"));
    assert_eq!(p.name, "checkout");
}

#[test]
fn init_never_overwrites_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("checkout.toml");
    fs::write(&file, "mine").unwrap();
    let f = file.to_str().unwrap();
    let out = run(&["init", "-o", f]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("already exists") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(fs::read_to_string(&file).unwrap(), "mine");
    let out = run(&["init", "-o", f, "--force"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let p = coalmine::policy::parse(&fs::read_to_string(&file).unwrap(), f).unwrap();
    assert_eq!(p.name, "checkout", "the name comes from the file");
}

/// The `proxy` + `builtin` starting policy, as written, against the demo's services: only
/// its timing is compressed (three values replaced, every other line as `init` wrote it),
/// and the healthy canary is promoted.
#[test]
fn init_policy_promotes_the_healthy_demo() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("svc.toml");
    let out = run(&["init", "-o", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let mut policy = fs::read_to_string(&file).unwrap();
    for (from, to) in [
        ("step_duration = \"5m\"", "step_duration = \"8s\""),
        ("analysis_interval = \"15s\"", "analysis_interval = \"1s\""),
        ("deadline = \"30m\"", "deadline = \"60s\""),
    ] {
        assert_eq!(policy.matches(from).count(), 1, "{from} in\n{policy}");
        policy = policy.replace(from, to);
    }
    fs::write(&file, policy).unwrap();
    let out = run(&[
        "demo",
        "--scenario",
        "healthy",
        "--policy",
        file.to_str().unwrap(),
        "--json",
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["outcome"], "promoted", "{stderr}");
    assert_eq!(json["rollout"], "svc");
    let metrics: Vec<&str> = json["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["metric"].as_str().unwrap())
        .collect();
    assert_eq!(metrics, ["error-rate", "latency", "error-ceiling"]);
    assert_progress_fits(&stderr);
}

#[test]
fn validate_json_lists_every_problem_with_its_position() {
    let invalid = root().join("tests/fixtures/policies/invalid/three-mistakes.toml");
    let warns = root().join("tests/fixtures/policies/warnings/never-promotes.toml");
    let valid = root().join("policies/default.toml");
    let out = run(&[
        "validate",
        "--json",
        valid.to_str().unwrap(),
        invalid.to_str().unwrap(),
        warns.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    let of = |p: &std::path::Path| -> Vec<&serde_json::Value> {
        list.iter()
            .filter(|x| x["path"] == p.to_str().unwrap())
            .collect()
    };
    assert!(of(&valid).is_empty(), "{list:#?}");
    // The same problems, at the same places, as the text output.
    let plain = text(&run(&["validate", invalid.to_str().unwrap()])).1;
    let errors = of(&invalid);
    assert_eq!(errors.len(), 3, "{list:#?}");
    for e in &errors {
        assert_eq!(e["severity"], "error");
        let line = format!(
            "{}:{}:{}: {}",
            invalid.display(),
            e["line"],
            e["column"],
            e["message"].as_str().unwrap()
        );
        assert!(plain.contains(&line), "{line} not in\n{plain}");
    }
    let warnings = of(&warns);
    assert!(!warnings.is_empty(), "{list:#?}");
    assert!(warnings.iter().all(|w| w["severity"] == "warning"));
    // Nothing valid: an empty list and exit 0; unreadable: an error without a position.
    let out = run(&["validate", "--json", valid.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out).0.trim(), "[]");
    let out = run(&["validate", "--json", "/nonexistent/policy.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let list: Vec<serde_json::Value> = serde_json::from_str(&text(&out).0).unwrap();
    assert_eq!(list.len(), 1);
    assert!(list[0]["line"].is_null());
    assert!(
        list[0]["message"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/policy.toml"),
        "{list:?}"
    );
}

#[test]
fn colour_only_when_asked_or_on_a_terminal() {
    let refused = ["init", "--provider", "nginx", "--metrics", "builtin"];
    // Into a pipe: no escapes.
    let out = run(&refused);
    assert!(!text(&out).1.contains('\u{1b}'), "{:?}", text(&out).1);
    let mut always = vec!["--color", "always"];
    always.extend(refused);
    let out = run(&always);
    assert!(text(&out).1.contains("\u{1b}["), "{:?}", text(&out).1);
    // NO_COLOR does not override an explicit --color always (no-color.org), and --color never
    // wins over everything.
    let out = coalmine()
        .args(&always)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(text(&out).1.contains("\u{1b}["));
    let out = coalmine()
        .args(["--color=never"])
        .args(refused)
        .env("CLICOLOR_FORCE", "1")
        .output()
        .unwrap();
    assert!(!text(&out).1.contains('\u{1b}'));
}

/// The detail that does not fit 100 columns is behind `-v`: the same run prints the arms'
/// error rates and every metric's e-value only when asked.
#[test]
fn verbose_progress_lines_carry_every_number() {
    let compact = text(&run(&["demo", "--scenario", "errors"])).1;
    assert_progress_fits(&compact);
    assert!(!compact.contains("err b="), "{compact}");
    let verbose = text(&run(&["-v", "demo", "--scenario", "errors"])).1;
    let ticks: Vec<&str> = verbose.lines().filter(|l| l.contains("  | ")).collect();
    assert!(!ticks.is_empty(), "{verbose}");
    for l in ticks {
        assert!(l.contains("err b=") && l.contains("e="), "{l}");
    }
}
