//! Aggregation per cell, binomial intervals, and the Markdown and JSON outputs.

use std::fmt::Write as _;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;

use serde::Serialize;

use crate::judges::Kind;
use crate::sim::{Assignment, Fault, LatencyModel, Scenario};

/// What one run did.
#[derive(Clone, Copy, Debug)]
pub struct RunResult {
    pub rolled_back: bool,
    pub promoted: bool,
    pub decided: bool,
    pub seconds: f64,
    pub requests: u64,
    pub harm: f64,
}

/// One (judge, scenario) cell.
#[derive(Clone, Debug, Serialize)]
pub struct Cell {
    pub judge: &'static str,
    pub scenario: &'static str,
    pub variant: &'static str,
    pub effect: f64,
    pub share: f64,
    pub rate: f64,
    pub p0: f64,
    pub runs: usize,
    pub rollback_rate: f64,
    pub rollback_rate_ci: [f64; 2],
    pub promote_rate: f64,
    pub median_decision_requests: f64,
    pub p90_decision_requests: f64,
    pub median_decision_seconds: f64,
    pub harm_errors: f64,
    #[serde(skip)]
    kind: Kind,
    #[serde(skip)]
    regression: bool,
}

/// Wilson score interval at 95 %.
pub fn wilson(k: usize, n: usize) -> [f64; 2] {
    if n == 0 {
        return [0.0, 1.0];
    }
    let (k, n) = (k as f64, n as f64);
    let z = 1.959_963_984_540_054_f64;
    let p = k / n;
    let den = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / den;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / den;
    [(centre - half).max(0.0), (centre + half).min(1.0)]
}

fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i]
}

impl Cell {
    pub fn new(kind: Kind, sc: &Scenario, share: f64, runs: &[RunResult]) -> Cell {
        let n = runs.len();
        let rb = runs.iter().filter(|r| r.rolled_back).count();
        let pr = runs.iter().filter(|r| r.promoted).count();
        // Time to decision: over rolled-back runs when the canary is worse, else over all
        // runs that decided.
        let regression = sc.is_regression();
        let decided: Vec<&RunResult> = runs
            .iter()
            .filter(|r| r.decided && (!regression || r.rolled_back))
            .collect();
        let reqs: Vec<f64> = decided.iter().map(|r| r.requests as f64).collect();
        let secs: Vec<f64> = decided.iter().map(|r| r.seconds).collect();
        Cell {
            judge: kind.name(),
            scenario: sc.name,
            variant: sc.variant,
            effect: sc.effect,
            share,
            rate: sc.rate,
            p0: sc.p0,
            runs: n,
            rollback_rate: rb as f64 / n as f64,
            rollback_rate_ci: wilson(rb, n),
            promote_rate: pr as f64 / n as f64,
            median_decision_requests: quantile(reqs.clone(), 0.5),
            p90_decision_requests: quantile(reqs, 0.9),
            median_decision_seconds: quantile(secs, 0.5),
            harm_errors: runs.iter().map(|r| r.harm).sum::<f64>() / n as f64,
            kind,
            regression,
        }
    }

    /// Table order: scenario, variant, effect, rate, p0, share, then judge.
    pub fn order_key(&self) -> (String, u64, u64, u64, u64, Kind) {
        let k = |x: f64| (x * 1e6) as u64;
        (
            format!("{}/{}", self.scenario, self.variant),
            k(self.effect),
            k(self.rate),
            k(self.p0),
            k(self.share),
            self.kind,
        )
    }

    fn same_scenario(&self, o: &Cell) -> bool {
        self.scenario == o.scenario
            && self.variant == o.variant
            && self.effect == o.effect
            && self.rate == o.rate
            && self.p0 == o.p0
            && self.share == o.share
    }
}

/// Deterministic seed per scenario and run, the same for every judge.
pub fn seed(sc: &Scenario, share: f64, run: u64) -> u64 {
    let mut h = DefaultHasher::new();
    (
        sc.name,
        sc.variant,
        sc.effect.to_bits(),
        sc.rate.to_bits(),
        sc.p0.to_bits(),
    )
        .hash(&mut h);
    share.to_bits().hash(&mut h);
    format!("{:?}{:?}", sc.assignment, sc.fault).hash(&mut h);
    run.hash(&mut h);
    h.finish()
}

/// The baseline latency model's p99 (Flagger's tuned bound is 1.5 × this).
pub fn baseline_p99() -> f64 {
    static P99: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *P99.get_or_init(|| {
        let m = std::hint::black_box(LatencyModel::standard_for_report());
        m.quantile(0.99)
    })
}

#[expect(
    clippy::disallowed_methods,
    reason = "wall-clock time of the benchmark itself"
)]
pub fn now() -> std::time::Instant {
    std::time::Instant::now()
}

fn fmt_n(x: f64) -> String {
    if x.is_nan() {
        "–".into()
    } else if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e4 {
        format!("{:.0}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn describe(c: &Cell) -> String {
    let mut s = c.scenario.to_string();
    if !c.variant.is_empty() {
        let _ = write!(s, " ({})", c.variant);
    }
    s
}

fn effect(c: &Cell) -> String {
    if c.scenario == "aa" || c.scenario == "missing-data" || c.scenario == "baseline-breaks" {
        "–".into()
    } else if c.variant == "new-errors" {
        format!("+{}×p0", c.effect)
    } else if c.variant.starts_with("bimodal") {
        format!("{:.0}% +200ms", c.effect * 100.0)
    } else {
        format!("×{}", c.effect)
    }
}

/// Median requests to a rollback of `c` over those of the `oracle` judge in the same
/// scenario (regressions only; not for the oracles themselves).
fn oracle_ratio(cells: &[Cell], c: &Cell, oracle: Kind) -> Option<f64> {
    if !c.regression || matches!(c.kind, Kind::Oracle | Kind::OracleMetricAlpha) {
        return None;
    }
    let o = cells
        .iter()
        .find(|o| o.kind == oracle && o.same_scenario(c))?
        .median_decision_requests;
    (o > 0.0).then(|| c.median_decision_requests / o)
}

/// Renders the table and writes the files.
pub fn write(
    cells: &[Cell],
    quick: bool,
    aa_runs: usize,
    power_runs: usize,
    started: std::time::Instant,
) {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## Accuracy ({} mode: {aa_runs} runs per no-regression cell, {power_runs} per regression cell; 95% Wilson intervals)\n",
        if quick { "quick" } else { "full" }
    );
    let _ = writeln!(
        md,
        "| scenario | effect | req/s | p0 | share | judge | rollback % [95% CI] | promote % | median req to decision | p90 req | median s | harm (excess errors) | vs oracle | vs oracle at metric α |"
    );
    let _ = writeln!(
        md,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for c in cells {
        let ratio = |oracle: Kind| match oracle_ratio(cells, c, oracle) {
            Some(r) if r.is_nan() => "never".to_string(),
            Some(r) => format!("{r:.2}×"),
            None => String::new(),
        };
        let (ratio, fair) = (ratio(Kind::Oracle), ratio(Kind::OracleMetricAlpha));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.0}% | {} | {:.1} [{:.1}, {:.1}] | {:.1} | {} | {} | {} | {:.1} | {ratio} | {fair} |",
            describe(c),
            effect(c),
            c.rate,
            c.p0,
            c.share * 100.0,
            c.judge,
            c.rollback_rate * 100.0,
            c.rollback_rate_ci[0] * 100.0,
            c.rollback_rate_ci[1] * 100.0,
            c.promote_rate * 100.0,
            fmt_n(c.median_decision_requests),
            fmt_n(c.p90_decision_requests),
            if c.median_decision_seconds.is_nan() {
                "–".into()
            } else {
                format!("{:.0}", c.median_decision_seconds)
            },
            c.harm_errors,
        );
    }
    let _ = writeln!(
        md,
        "\n*vs oracle*: median requests to a rollback over those of `oracle-sprt`, Wald's SPRT told the true parameters at the policy's whole α (0.05). *vs oracle at metric α*: over those of `oracle-sprt-metric-alpha`, the same SPRT at the α the policy's split gives the metric the scenario changes (latency 0.01, error rate 0.04): a metric tested at α_m needs evidence ln(1/α_m) whatever the test, so only this ratio compares tests at equal levels; the first also counts the cost of the split. Issue 15's latency targets are judged on the second. `oracle-monotone-metric-alpha` (latency only) is the product of the best non-decreasing e-value for the true distributions, rejected at 1/α of the metric's α and never accepted: no test valid for every canary at most as slow as the baseline grows faster, so its ratio, printed as the *one-sided limit* in the targets, is the best a valid latency test can reach (docs/statistics.md §2.5)."
    );
    let _ = writeln!(md, "\n{}", targets(cells, quick));
    let _ = writeln!(
        md,
        "\nRun time: {:.0} s. Command: `{}cargo bench --bench accuracy`.",
        started.elapsed().as_secs_f64(),
        if quick { "COALMINE_BENCH=quick " } else { "" }
    );
    print!("{md}");
    // COALMINE_BENCH_OUT: another directory (exploratory runs beside a published one).
    let dir = std::env::var_os("COALMINE_BENCH_OUT").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/coalmine-bench"),
        PathBuf::from,
    );
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("accuracy.md"), &md);
    let json = serde_json::json!({
        "mode": if quick { "quick" } else { "full" },
        "cells": cells,
    });
    let _ = std::fs::write(
        dir.join("accuracy.json"),
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    );
    eprintln!("wrote {}", dir.join("accuracy.json").display());
}

/// The README targets for the default judge, checked on these cells.
fn targets(cells: &[Cell], quick: bool) -> String {
    let seq = |c: &&Cell| c.kind == Kind::Sequential;
    let mut out = String::from("Targets for `sequential`:\n");
    // 1. False rollbacks ≤ 5 % (upper CI ≤ 6 %) where assignment is per request.
    let fr: Vec<&Cell> = cells
        .iter()
        .filter(seq)
        .filter(|c| {
            (c.scenario == "aa" || c.scenario == "improvement")
                && !c.variant.contains("per-instance")
                && !c.variant.contains("share+")
        })
        .collect();
    let worst = fr.iter().map(|c| c.rollback_rate_ci[1]).fold(0.0, f64::max);
    let worst_rate = fr.iter().map(|c| c.rollback_rate).fold(0.0, f64::max);
    let rates_ok = worst_rate <= 0.05;
    let ok1 = rates_ok && fr.iter().all(|c| c.rollback_rate_ci[1] <= 0.06);
    let verdict = if ok1 {
        "MET"
    } else if quick && rates_ok {
        // 400 runs give intervals of about ±2 points: the bound is for the full mode.
        "rates MET, bound not judged in quick mode"
    } else {
        "NOT MET"
    };
    let _ = writeln!(
        out,
        "- false rollbacks on A/A and improvements ≤ 5% (upper 95% bound ≤ 6%) in {} per-request cells: {verdict} (worst rate {:.1}%, worst upper bound {:.1}%)",
        fr.len(),
        worst_rate * 100.0,
        worst * 100.0
    );
    // 2. Never promotes with missing data.
    let md: Vec<&Cell> = cells
        .iter()
        .filter(seq)
        .filter(|c| c.scenario == "missing-data")
        .collect();
    let ok2 = md.iter().all(|c| c.promote_rate == 0.0);
    let _ = writeln!(
        out,
        "- never promotes with missing data: {}",
        if ok2 { "MET" } else { "NOT MET" }
    );
    // 2b. Never promotes against a broken baseline (every judge goes through the machine).
    let bb: Vec<&Cell> = cells
        .iter()
        .filter(|c| c.scenario == "baseline-breaks")
        .collect();
    let worst_bb = bb.iter().map(|c| c.promote_rate).fold(0.0, f64::max);
    let _ = writeln!(
        out,
        "- never promotes against a baseline that breaks mid-rollout ({} cells, every judge): {} (worst promote rate {:.1}%)",
        bb.len(),
        if !bb.is_empty() && worst_bb == 0.0 {
            "MET"
        } else {
            "NOT MET"
        },
        worst_bb * 100.0
    );
    // 3. Median requests within 2× the oracle for error ratios ≥ 1.5 at a 5 % first step.
    let mut worst_ratio: f64 = 0.0;
    let mut n3 = 0;
    for c in cells.iter().filter(seq).filter(|c| {
        c.scenario == "errors"
            && c.variant.is_empty()
            && c.effect >= 1.5
            && (c.share - 0.05).abs() < 1e-9
    }) {
        if let Some(o) = cells
            .iter()
            .find(|o| o.kind == Kind::Oracle && o.same_scenario(c))
        {
            worst_ratio = worst_ratio.max(c.median_decision_requests / o.median_decision_requests);
            n3 += 1;
        }
    }
    let _ = writeln!(
        out,
        "- median requests to rollback within 2× the oracle (error ratio ≥ 1.5, 5% first step, {n3} cells): {} (worst {:.2}×)",
        if n3 > 0 && worst_ratio <= 2.0 {
            "MET"
        } else {
            "NOT MET"
        },
        worst_ratio
    );
    // 3b. Classic ×2 buckets never loosen the policy's allowed slowdown (issue 10): with
    // allowed_ratio 1.1 a ×1.5 slower canary is rolled back.
    let coarse: Vec<&Cell> = cells
        .iter()
        .filter(seq)
        .filter(|c| c.regression && c.variant.contains("allowed 1.1"))
        .collect();
    let at_15: Vec<&&Cell> = coarse
        .iter()
        .filter(|c| c.scenario == "latency" && c.effect == 1.5)
        .collect();
    let ok3b = !at_15.is_empty() && at_15.iter().all(|c| c.rollback_rate >= 0.95);
    let listed: Vec<String> = coarse
        .iter()
        .map(|c| {
            format!(
                "{} {}: {:.1}%",
                c.scenario,
                effect(c),
                c.rollback_rate * 100.0
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "- on ×2 buckets with allowed_ratio 1.1 (judged at ×1.0), a ×1.5 slower canary is rolled back in ≥ 95% of runs: {} (rolled back: {})",
        if ok3b { "MET" } else { "NOT MET" },
        listed.join(", ")
    );
    // 4′. Latency against the oracle (issue 15), for the default latency test and the
    // slow-threshold one, on the built-in buckets and on ×2 buckets.
    let body = |c: &Cell| c.scenario == "latency" && [1.1, 1.25, 1.5].contains(&c.effect);
    let shape = |c: &Cell| {
        c.scenario == "latency-tail"
            || (c.scenario == "latency" && c.variant.starts_with("bimodal"))
    };
    for (kind, label) in [
        (Kind::Sequential, "sequential"),
        (Kind::SequentialSlowThresholds, "sequential-slow-thresholds"),
    ] {
        for coarse in [false, true] {
            for (what, pred, limit) in [
                (
                    "body shifts ×1.1, ×1.25, ×1.5",
                    &body as &dyn Fn(&Cell) -> bool,
                    2.0,
                ),
                (
                    "tail-only and bimodal",
                    &shape as &dyn Fn(&Cell) -> bool,
                    3.0,
                ),
            ] {
                // Judged against the oracle at the α the metric is tested at (equal
                // levels); the ratio to the oracle at the policy's whole α, which also
                // counts the cost of the policy's α split, is shown next to it.
                let judged: Vec<(&Cell, f64, Option<f64>)> = cells
                    .iter()
                    .filter(|c| {
                        c.kind == kind
                            && pred(c)
                            && !c.variant.contains("allowed")
                            && !c.variant.contains("default buckets")
                            && c.variant.contains("×2 buckets") == coarse
                    })
                    .filter_map(|c| {
                        let fair = oracle_ratio(cells, c, Kind::OracleMetricAlpha)?;
                        Some((c, fair, oracle_ratio(cells, c, Kind::Oracle)))
                    })
                    .collect();
                if judged.is_empty() {
                    continue;
                }
                let met = judged.iter().all(|(_, r, _)| *r <= limit);
                let ratios: Vec<String> = judged
                    .iter()
                    .map(|(c, r, whole)| {
                        let ok = if *r <= limit { "" } else { " over" };
                        let whole = whole.map_or(String::new(), |w| format!("; {w:.2}× at α 0.05"));
                        // The limit of a one-sided test on the same cell (the best
                        // non-decreasing bet, told the true distributions).
                        let one_sided = cells
                            .iter()
                            .find(|o| o.kind == Kind::OracleMonotone && o.same_scenario(c))
                            .and_then(|o| oracle_ratio(cells, o, Kind::OracleMetricAlpha))
                            .map_or(String::new(), |m| format!("; one-sided limit {m:.2}×"));
                        format!(
                            "{} {}: {r:.2}×{ok}{whole}{one_sided}",
                            c.scenario,
                            effect(c)
                        )
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "- `{label}`{}: median requests to rollback ≤ {limit}× the oracle at the metric's α for {what}: {} ({})",
                    if coarse { " on ×2 buckets" } else { "" },
                    if met { "MET" } else { "NOT MET" },
                    ratios.join(", ")
                );
            }
        }
    }
    // 4. More regressions caught with less harm than Kayenta- and Flagger-style.
    let mut wins = 0;
    let mut total = 0;
    for c in cells.iter().filter(seq).filter(|c| c.regression) {
        for other in [Kind::Kayenta, Kind::Flagger] {
            if let Some(o) = cells.iter().find(|o| o.kind == other && o.same_scenario(c)) {
                total += 1;
                if c.rollback_rate >= o.rollback_rate && c.harm_errors <= o.harm_errors + 1e-9 {
                    wins += 1;
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "- catches at least as many regressions with no more harm than Kayenta- and Flagger-style: {wins} of {total} comparisons"
    );
    let _ = (Assignment::PerRequest, Fault::None);
    out
}
