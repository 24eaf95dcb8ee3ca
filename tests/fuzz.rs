//! The fuzz target of the policy parser and validator and of the judges' inputs, as a
//! proptest run whose length is set by `COALMINE_FUZZ_CASES` (cargo-fuzz needs nightly).
//!
//! In the normal suite each property runs a few dozen bounded cases; the long run is
//!
//!     COALMINE_FUZZ_CASES=200000 cargo test --release --test fuzz -- --nocapture --test-threads 1
//!
//! and prints, per property, how many cases ran and the slowest one. Inputs are bounded in
//! size (hostile text up to 16 KiB in the long run), so every case is bounded in time; no
//! assertion is on time. Properties: parsing never panics; every problem points inside the
//! file; at most 100 problems are printed (then one "… and N more" line); the output holds
//! no control character; a valid policy's durations are within their bounds; the judges
//! never panic on any window (NaN, infinities, negative or inconsistent counts, shares
//! outside 0..1) and their verdicts carry a reason.

// A fuzz report measures wall time per case; nothing here runs under a paused tokio clock.
#![allow(clippy::disallowed_methods)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use coalmine::analysis::fisher::{ErrorTable, MAX_TOTAL, fisher_exact};
use coalmine::analysis::kayenta::{self, KayentaConfig};
use coalmine::analysis::latency::{LatencyJudgeSpec, LatencyTest};
use coalmine::analysis::mann_whitney::{
    Alternative, MannWhitneyConfig, SortedSample, mann_whitney_sorted,
};
use coalmine::analysis::{Counts, Histogram, MetricJudge, Observation, Segment};
use coalmine::cli::judge::latency;
use coalmine::policy::{self, Policy, bounds, diag::PRINT_LIMIT};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// The policies mutated: every valid fixture and every example.
const SEEDS: &[&str] = &[
    include_str!("fixtures/policies/valid/full.toml"),
    include_str!("fixtures/policies/valid/kayenta.toml"),
    include_str!("fixtures/policies/valid/minimal.toml"),
    include_str!("../policies/default.toml"),
    include_str!("../policies/demo.toml"),
    include_str!("../policies/exec.toml"),
    include_str!("../policies/gateway-api.toml"),
    include_str!("../policies/haproxy.toml"),
    include_str!("../policies/http.toml"),
    include_str!("../policies/nginx.toml"),
    include_str!("../policies/prometheus-demo.toml"),
];

/// Values that broke or nearly broke the validator: overflowing and tiny durations, huge
/// and non-finite numbers, unclosed templates, escapes, wrong types.
const HOSTILE_VALUES: &[&str] = &[
    "\"3100000000000000000s\"",
    "\"2000000000000000000s\"",
    "\"18446744073709551615s\"",
    "\"99999999999999999999999s\"",
    "\"1ns\"",
    "\"0s\"",
    "\"-1s\"",
    "\"30days\"",
    "-1",
    "0",
    "1e400",
    "-1e400",
    "nan",
    "inf",
    "18446744073709551615",
    "9223372036854775807",
    "\"\"",
    "[]",
    "{}",
    "[[]]",
    "true",
    "\"{{\"",
    "\"{{varient}}\"",
    "\"\\u001b[2J\"",
    "\"\\\\\\\\\\\\\"",
    "[1, \"a\"]",
    "[5, 25, 100]",
    "[100]",
    "\"http://user:pw@127.0.0.1:1/x?token=y\"",
];

/// Cases per property: `COALMINE_FUZZ_CASES`, else `normal` (the bounded normal suite).
fn cases(normal: u32) -> u32 {
    std::env::var("COALMINE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(normal)
}

fn long_run() -> bool {
    std::env::var_os("COALMINE_FUZZ_CASES").is_some()
}

/// Runs `prop` over `strategy`, reporting the case count and the slowest case.
fn fuzz<S: Strategy>(name: &str, normal: u32, strategy: S, prop: impl Fn(S::Value))
where
    S::Value: std::fmt::Debug,
{
    let n = cases(normal);
    let worst = AtomicU64::new(0);
    let mut runner = TestRunner::new(Config {
        cases: n,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&strategy, |v| {
        let t = Instant::now();
        prop(v);
        let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        worst.fetch_max(ns, Ordering::Relaxed);
        Ok(())
    });
    let worst = Duration::from_nanos(worst.load(Ordering::Relaxed));
    eprintln!("fuzz {name}: {n} cases, slowest {worst:?}");
    if let Err(e) = result {
        panic!("fuzz {name}: {e}");
    }
}

/// The properties of one parse.
fn check_policy(bytes: &[u8]) -> Option<Policy> {
    let (result, lines) = match policy::parse_bytes(bytes, "p.toml") {
        Ok((p, warnings)) => (Some(p), warnings),
        Err(d) => (None, d),
    };
    let text = String::from_utf8_lossy(bytes);
    let file_lines = text.lines().count() + 1;
    for item in lines.items().iter().chain(lines.warnings()) {
        let (l, c) = lines.line_col(item.span.start);
        assert!(
            l >= 1 && l <= file_lines && c >= 1,
            "{l}:{c} outside the file"
        );
        assert!(!item.message.is_empty());
    }
    if result.is_none() {
        assert!(
            !lines.items().is_empty(),
            "an invalid policy names a problem"
        );
    }
    let shown = lines.to_string();
    let printed: Vec<&str> = shown.lines().collect();
    let total = lines.items().len() + lines.warnings().len();
    assert_eq!(
        printed.len(),
        total.min(PRINT_LIMIT) + usize::from(total > PRINT_LIMIT)
    );
    for l in &printed {
        assert!(l.starts_with("p.toml:"), "{l}");
    }
    assert!(
        !shown.chars().any(|c| c.is_control() && c != '\n'),
        "control character printed: {shown:?}"
    );
    if let Some(p) = &result {
        let r = &p.rollout;
        for (d, b) in [
            (r.step_duration, bounds::STEP_DURATION),
            (r.analysis_interval, bounds::ANALYSIS_INTERVAL),
            (r.deadline, bounds::DEADLINE),
            (r.apply_timeout, bounds::APPLY_TIMEOUT),
        ] {
            assert!(b.check(d).is_none(), "{} accepted: {d:?}", b.key);
        }
        assert!(r.analysis_interval <= r.step_duration);
        assert!(r.warmup < r.deadline && r.no_data_limit <= bounds::MAX);
        assert!(r.steps.windows(2).all(|w| w[0] < w[1]));
    }
    result
}

/// A seed with a byte range replaced by `insert`.
fn splice(seed: &str, cut: usize, len: usize, insert: &[u8]) -> Vec<u8> {
    let mut b = seed.as_bytes().to_vec();
    let cut = cut % (b.len() + 1);
    let end = (cut + len).min(b.len());
    b.splice(cut..end, insert.iter().copied());
    b
}

/// A seed with the value of its `line`-th `key = value` line replaced.
fn replace_value(seed: &str, line: usize, value: &str) -> String {
    let assignments = seed.lines().filter(|l| l.contains(" = ")).count().max(1);
    let target = line % assignments;
    let mut seen = 0;
    seed.lines()
        .map(|l| match l.split_once(" = ") {
            Some((k, _)) => {
                seen += 1;
                if seen - 1 == target {
                    format!("{k} = {value}\n")
                } else {
                    format!("{l}\n")
                }
            }
            None => format!("{l}\n"),
        })
        .collect()
}

fn hostile_size() -> usize {
    if long_run() { 16 * 1024 } else { 4 * 1024 }
}

#[test]
fn fuzz_mutated_policies() {
    let insert = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..16),
        "[\\[\\]=\"',.0-9a-z_ \n{}\\\\#-]{0,24}".prop_map(String::into_bytes),
        proptest::sample::select(HOSTILE_VALUES).prop_map(|v| v.as_bytes().to_vec()),
    ];
    let strategy = (
        proptest::sample::select(SEEDS),
        any::<usize>(),
        0usize..64,
        insert,
    );
    fuzz(
        "mutated policies",
        64,
        strategy,
        |(seed, cut, len, insert)| {
            check_policy(&splice(seed, cut, len, &insert));
        },
    );
}

#[test]
fn fuzz_hostile_values_in_every_key() {
    let strategy = (
        proptest::sample::select(SEEDS),
        proptest::collection::vec(
            (any::<usize>(), proptest::sample::select(HOSTILE_VALUES)),
            1..4,
        ),
    );
    fuzz("hostile values", 64, strategy, |(seed, edits)| {
        let mut src = seed.to_string();
        for (line, value) in edits {
            src = replace_value(&src, line, value);
        }
        check_policy(src.as_bytes());
    });
}

#[test]
fn fuzz_hostile_text() {
    let unit = prop_oneof![
        Just("\\".to_string()),
        Just("\\\\\n".to_string()),
        Just("\"".to_string()),
        Just("'''".to_string()),
        Just("[".to_string()),
        Just("[[metric]]\n".to_string()),
        Just("a = ".to_string()),
        Just("{{".to_string()),
        Just("\u{1b}".to_string()),
        Just("\n".to_string()),
        "\\PC{1,8}",
    ];
    let strategy = proptest::collection::vec(unit, 0..hostile_size() / 4);
    fuzz("hostile text", 32, strategy, |units| {
        let mut s = units.concat();
        let mut end = s.len().min(hostile_size());
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        check_policy(s.as_bytes());
    });
}

/// One arm's observation as a judge may receive it: any shape, any numbers.
fn observation() -> impl Strategy<Value = Observation> {
    let num = prop_oneof![
        4 => 0.0f64..1e6,
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(-1.0),
        1 => Just(0.0),
        1 => Just(1e300),
        1 => any::<f64>(),
    ];
    let nums = proptest::collection::vec(num.clone(), 0..40);
    prop_oneof![
        (num.clone(), num.clone())
            .prop_map(|(events, trials)| Observation::Counts(Counts { events, trials })),
        // Any numbers: what try_new refuses is a missing observation.
        (nums.clone(), nums.clone()).prop_map(|(b, c)| {
            let n = b.len().min(c.len());
            Histogram::try_new(b[..n].to_vec(), c[..n].to_vec())
                .map_or(Observation::Missing, Observation::Histogram)
        }),
        // Well-formed buckets with any counts.
        proptest::collection::vec((0.001f64..1.0, num.clone()), 1..30).prop_map(|v| {
            let mut le = 0.0;
            let (bounds, counts): (Vec<f64>, Vec<f64>) = v
                .into_iter()
                .map(|(step, c)| {
                    le += step;
                    (le, c)
                })
                .unzip();
            Histogram::try_new(bounds, counts).map_or(Observation::Missing, Observation::Histogram)
        }),
        nums.clone().prop_map(Observation::Samples),
        nums.prop_map(Observation::Series),
        num.prop_map(Observation::Scalar),
        Just(Observation::Missing),
    ]
}

fn segment() -> impl Strategy<Value = Segment> {
    let share = prop_oneof![
        4 => 0.0f64..=1.0,
        1 => Just(f64::NAN),
        1 => Just(-0.5),
        1 => Just(2.0),
    ];
    (share, observation(), observation()).prop_map(|(share, baseline, canary)| Segment {
        share,
        baseline,
        canary,
    })
}

#[test]
fn fuzz_judges_inputs() {
    // Every judge of every valid policy, fed windows of any shape and numbers.
    let policies: Vec<Policy> = SEEDS
        .iter()
        .map(|s| policy::parse(s, "seed.toml").unwrap_or_else(|d| panic!("{d}")))
        .collect();
    let specs: Vec<(String, coalmine::analysis::JudgeSpec)> = policies
        .iter()
        .flat_map(|p| p.metrics.iter().map(|m| (m.name.clone(), m.judge.clone())))
        .collect();
    let strategy = (0..specs.len(), proptest::collection::vec(segment(), 1..12));
    fuzz("judges' windows", 64, strategy, |(i, windows)| {
        let (name, spec) = &specs[i];
        let mut judge = MetricJudge::new(spec);
        for w in &windows {
            let v = judge.observe(name, w);
            assert!(!v.reason.is_empty(), "{v:?}");
        }
        let _ = judge.scored(name, 3);
    });
}

#[test]
fn fuzz_offline_judges() {
    let values = proptest::collection::vec(
        prop_oneof![4 => -1e6f64..1e6, 1 => Just(f64::NAN), 1 => Just(f64::INFINITY), 1 => any::<f64>()],
        0..60,
    );
    let strategy = (
        values.clone(),
        values,
        "[-0-9.,eE naNifty\\t\n]{0,80}",
        (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()),
    );
    fuzz(
        "offline judges",
        64,
        strategy,
        |(canary, baseline, text, counts)| {
            let _ = coalmine::cli::judge::parse_numbers(&text, "x.txt");
            let finite = |v: &[f64]| {
                v.iter()
                    .copied()
                    .filter(|x| !x.is_nan())
                    .collect::<Vec<_>>()
            };
            let (c, b) = (finite(&canary), finite(&baseline));
            let _ = mann_whitney_sorted(
                &SortedSample::new(&c),
                &SortedSample::new(&b),
                MannWhitneyConfig {
                    alternative: Alternative::Greater,
                    ..MannWhitneyConfig::default()
                },
            );
            let _ = kayenta::judge(&baseline, &canary, &KayentaConfig::default());
            let (ce, co, be, bo) = counts;
            let t = ErrorTable {
                canary_errors: u64::from(ce % 5000),
                canary_ok: u64::from(co % 5000),
                baseline_errors: u64::from(be % 5000),
                baseline_ok: u64::from(bo % 5000),
            };
            let total = t.canary_errors + t.canary_ok + t.baseline_errors + t.baseline_ok;
            if total <= MAX_TOTAL {
                let _ = fisher_exact(t, Alternative::Greater);
            }
        },
    );
}

/// A `judge latency` windows file as JSON text: well formed (sorted positive bounds, one
/// count per bucket, cumulative or not, shares in [0, 1)), then one time in 4 one value
/// broken; a count list is missing (`null`: no data) one time in 100.
fn windows_file() -> impl Strategy<Value = String> {
    (1usize..6)
        .prop_flat_map(|n| {
            let counts = proptest::option::weighted(
                0.99,
                proptest::collection::vec(prop_oneof![3 => Just(0.0), 4 => 0.0f64..500.0], n + 1),
            );
            let share = prop_oneof![1 => Just(0.0), 4 => 0.001f64..0.5];
            (
                proptest::collection::vec(0.001f64..20.0, n),
                any::<bool>(),
                proptest::collection::vec((share, counts.clone(), counts), 1..12),
                0u8..24,
                any::<prop::sample::Index>(),
            )
        })
        .prop_map(|(mut bounds, cumulative, windows, breakage, at)| {
            bounds.sort_by(f64::total_cmp);
            // Cumulative files count up to each bound (the form Prometheus keeps).
            let form = |v: Option<Vec<f64>>| {
                v.map(|mut v| {
                    if cumulative {
                        for i in 1..v.len() {
                            v[i] += v[i - 1];
                        }
                    }
                    v
                })
            };
            let mut windows: Vec<_> = windows
                .into_iter()
                .map(|(share, b, c)| {
                    serde_json::json!({"share": share, "baseline": form(b), "canary": form(c)})
                })
                .collect();
            let k = at.index(windows.len());
            let w = &mut windows[k];
            match breakage {
                0 => w["share"] = serde_json::json!(1.5),
                1 => w["share"] = serde_json::json!(-0.1),
                2 => w["baseline"] = serde_json::json!([1.0]),
                3 => w["canary"] = serde_json::json!(vec![-1.0; bounds.len() + 1]),
                4 => w["baseline"] = serde_json::json!(vec![1e300; bounds.len() + 1]),
                5 => bounds.reverse(),
                _ => {}
            }
            serde_json::json!({"bounds": bounds, "cumulative": cumulative, "windows": windows})
                .to_string()
        })
}

#[test]
fn fuzz_latency_replay_files() {
    static REPLAYED: AtomicU64 = AtomicU64::new(0);
    // Any windows file, whole or cut and spliced, replayed through both latency tests at
    // any allowed ratio: an error or a JSON answer, never a panic.
    let strategy = (
        windows_file(),
        any::<prop::sample::Index>(),
        0usize..12,
        "[\\[\\]{}:,\"0-9.e -]{0,6}",
        1.0f64..4.0,
        any::<bool>(),
    );
    fuzz(
        "latency replay files",
        64,
        strategy,
        |(text, at, len, insert, allowed, slow)| {
            let cut = at.index(text.len() + 1);
            let spliced = splice(&text, cut, len, insert.as_bytes());
            for bytes in [text.as_bytes(), &spliced[..]] {
                let Ok(segs) = latency::parse_windows("w.json", bytes) else {
                    continue;
                };
                let mut spec = LatencyJudgeSpec::new(0.05);
                spec.allowed_ratio = allowed;
                spec.pass_ratio = allowed * 1.25;
                if slow {
                    spec.test = LatencyTest::SlowThresholds;
                }
                let v = latency::replay(spec, &segs, |_| {});
                assert_eq!(v["windows"].as_u64(), Some(segs.len() as u64));
                REPLAYED.fetch_add(1, Ordering::Relaxed);
            }
        },
    );
    // Many files reach the judge (the property is about the judge, not only the parser):
    // most cases' whole files (about 55 of 64 in 40 runs, never below 47; fewer than 16 is
    // ten standard deviations away, so this does not fail by chance).
    let replayed = REPLAYED.load(Ordering::Relaxed);
    eprintln!("latency replay files: {replayed} replayed");
    assert!(
        replayed >= u64::from(cases(64)) / 4,
        "only {replayed} files replayed"
    );
}
