//! Policy fixtures: every invalid one reports exactly its expected problems with positions;
//! every valid one and every example under `policies/` parses.

use std::fs;

use coalmine::policy;

use crate::support::{root, run, text};

fn toml_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

#[test]
fn invalid_fixtures_report_every_problem() {
    let dir = root().join("tests/fixtures/policies/invalid");
    let files = toml_files(&dir);
    assert!(files.len() >= 6, "fixtures present");
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let src = fs::read_to_string(&f).unwrap();
        let got = match policy::parse(&src, &name) {
            Ok(_) => panic!("{name} should be invalid"),
            Err(d) => d.to_string(),
        };
        // COALMINE_BLESS=1 writes the expected files; review them with `git diff`.
        if std::env::var_os("COALMINE_BLESS").is_some() {
            fs::write(f.with_extension("expected"), format!("{got}\n")).unwrap();
            continue;
        }
        let expected = fs::read_to_string(f.with_extension("expected"))
            .unwrap_or_else(|e| panic!("{name}: expected file: {e}"));
        assert_eq!(
            got.trim_end(),
            expected.trim_end(),
            "\n--- {name}: got ---\n{got}\n--- expected ---\n{expected}"
        );
    }
}

#[test]
fn valid_fixtures_and_examples_parse() {
    let mut files = toml_files(&root().join("tests/fixtures/policies/valid"));
    files.extend(toml_files(&root().join("policies")));
    assert!(files.len() >= 3);
    for f in files {
        let src = fs::read_to_string(&f).unwrap();
        if let Err(d) = policy::parse(&src, &f.display().to_string()) {
            panic!("{d}");
        }
    }
}

#[test]
fn defaults_fill_what_a_minimal_policy_leaves_out() {
    let src =
        fs::read_to_string(root().join("tests/fixtures/policies/valid/minimal.toml")).unwrap();
    let p = policy::parse(&src, "minimal.toml").unwrap();
    let steps: Vec<f64> = p.rollout.steps.iter().map(|w| w.percent()).collect();
    assert_eq!(steps, vec![5.0, 25.0, 100.0]);
    assert_eq!(p.alpha, 0.05);
    assert_eq!(p.source, policy::SourceConfig::Builtin);
    assert_eq!(p.metrics[0].judge.alpha(), Some(0.05));
}

#[test]
fn alpha_is_split_across_sequential_metrics() {
    let src = fs::read_to_string(root().join("tests/fixtures/policies/valid/full.toml")).unwrap();
    let p = policy::parse(&src, "full.toml").unwrap();
    let alphas: Vec<Option<f64>> = p.metrics.iter().map(|m| m.judge.alpha()).collect();
    // errors asks for 0.02 explicitly; latency gets the rest; thresholds spend none.
    assert_eq!(alphas[0], Some(0.02));
    assert!((alphas[1].unwrap() - 0.03).abs() < 1e-12);
    assert_eq!(alphas[2], None);
    assert!(p.metrics[3].dry_run);
}

#[test]
fn validate_cli_reports_three_mistakes_with_positions_and_exits_2() {
    let f = root().join("tests/fixtures/policies/invalid/three-mistakes.toml");
    let out = run(&["validate", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let (_, err) = text(&out);
    let located: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("three-mistakes.toml:"))
        .collect();
    assert_eq!(located.len(), 3, "{err}");
    for (l, want) in located.iter().zip(["4:17:", "5:17:", "6:1:"]) {
        assert!(l.contains(want), "{l} should contain {want}");
    }
}

#[test]
fn validate_cli_accepts_many_files_and_fails_if_one_is_bad() {
    let good = root().join("policies/demo.toml");
    let bad = root().join("tests/fixtures/policies/invalid/missing.toml");
    let out = run(&["validate", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let out = run(&["validate", good.to_str().unwrap(), bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["validate", "/nonexistent/policy.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("cannot read policy"));
}
