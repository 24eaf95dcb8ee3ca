//! Policy fixtures: every invalid one reports exactly its expected problems with positions;
//! every valid one and every example under `policies/` parses.

use std::fmt::Write as _;
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

/// Compares `got` with `<fixture>.expected`; `COALMINE_BLESS=1` writes the expected file
/// instead (review it with `git diff`).
fn expect(fixture: &std::path::Path, got: &str) {
    let name = fixture.file_name().unwrap().to_string_lossy();
    let want = fixture.with_extension("expected");
    if std::env::var_os("COALMINE_BLESS").is_some() {
        fs::write(&want, format!("{got}\n")).unwrap();
        return;
    }
    let expected =
        fs::read_to_string(&want).unwrap_or_else(|e| panic!("{name}: expected file: {e}"));
    assert_eq!(
        got.trim_end(),
        expected.trim_end(),
        "\n--- {name}: got ---\n{got}\n--- expected ---\n{expected}"
    );
}

#[test]
fn invalid_fixtures_report_every_problem() {
    let dir = root().join("tests/fixtures/policies/invalid");
    let files = toml_files(&dir);
    assert!(files.len() >= 6, "fixtures present");
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        // Bytes, not text: one fixture is not UTF-8 on purpose.
        let src = fs::read(&f).unwrap();
        let got = match policy::parse_bytes(&src, &name) {
            Ok(_) => panic!("{name} should be invalid"),
            Err(d) => d.to_string(),
        };
        expect(&f, &got);
    }
}

#[test]
fn warning_fixtures_are_valid_and_warn() {
    let files = toml_files(&root().join("tests/fixtures/policies/warnings"));
    assert!(files.len() >= 3, "fixtures present");
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let (_, warnings) = policy::parse_bytes(&fs::read(&f).unwrap(), &name)
            .unwrap_or_else(|d| panic!("{name} should be valid: {d}"));
        assert!(!warnings.warnings().is_empty(), "{name} should warn");
        assert!(warnings.items().is_empty());
        expect(&f, &warnings.to_string());
    }
}

#[test]
fn valid_fixtures_and_examples_parse() {
    let mut files = toml_files(&root().join("tests/fixtures/policies/valid"));
    files.extend(toml_files(&root().join("policies")));
    assert!(files.len() >= 3);
    for f in files {
        let src = fs::read_to_string(&f).unwrap();
        match policy::parse_with_warnings(&src, &f.display().to_string()) {
            Err(d) => panic!("{d}"),
            // The examples are what users copy: they must not warn either.
            Ok((_, w)) => assert!(w.is_empty(), "{w}"),
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

#[test]
fn r17_validate_prints_warnings_and_exits_0() {
    let f = root().join("tests/fixtures/policies/warnings/never-promotes.toml");
    let out = run(&["validate", f.to_str().unwrap()]);
    let (stdout, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        stdout.contains(": ok: rollout `never-promotes`"),
        "{stdout}"
    );
    assert!(
        err.contains("never-promotes.toml:9:12: warning: the rollout can never promote"),
        "{err}"
    );
}

#[test]
fn r17_a_huge_hostile_file_is_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("huge.toml");
    // 6 MB of backslashes and newlines: the file the validate never finished.
    let chunk = "\\\\\\a\\\\\n\\\\b\\".repeat(1000);
    fs::write(&f, chunk.repeat(6_000_000 / chunk.len() + 1)).unwrap();
    let out = run(&["validate", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let (_, err) = text(&out);
    assert!(
        err.contains("huge.toml:1:1: the file is ")
            && err.contains("more than the 1048576 bytes (1 MiB) a policy may have"),
        "{err}"
    );
}

#[test]
fn r17_invalid_utf8_is_located() {
    let f = root().join("tests/fixtures/policies/invalid/r17-invalid-utf8.toml");
    let out = run(&["validate", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let (_, err) = text(&out);
    assert!(
        err.contains("r17-invalid-utf8.toml:3:18: invalid UTF-8 (byte 0xff at offset 47)"),
        "{err}"
    );
}

#[test]
fn r17_terminal_escapes_never_reach_the_terminal() {
    let f = root().join("tests/fixtures/policies/invalid/r17-terminal-escapes.toml");
    let out = run(&["validate", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let (stdout, err) = text(&out);
    for s in [&stdout, &err] {
        assert!(
            !s.chars()
                .any(|c| c.is_control() && c != '\n' || c == '\u{202e}'),
            "{s:?}"
        );
    }
    assert!(err.contains("\\u{1b}"), "{err}");
}

#[test]
fn r17_twenty_thousand_problems_are_all_found_and_a_hundred_printed() {
    let mut src = String::from(
        "name = \"many\"\n[traffic]\ntype = \"proxy\"\nlisten = \"127.0.0.1:8080\"\n\
         baseline = \"http://127.0.0.1:9001\"\ncanary = \"http://127.0.0.1:9002\"\n",
    );
    for i in 0..20_000 {
        let _ = write!(src, "[[metric]]\nname = \"m{i}\"\nbuiltin = \"errorz\"\n");
    }
    let d = policy::parse(&src, "many.toml").unwrap_err();
    assert_eq!(d.items().len(), 20_000);
    let shown = d.to_string();
    assert_eq!(shown.lines().count(), 101);
    assert!(
        shown.ends_with("many.toml: … and 19900 more (19900 error(s), 0 warning(s)) not shown"),
        "{}",
        shown.lines().last().unwrap()
    );
    let last = d.items().last().unwrap();
    assert_eq!(d.line_col(last.span.start), (6 + 3 * 20_000, 11));
}
