//! `coalmine judge`: offline judging of two sample files, of event counts or of a sequence
//! of latency histograms, printing JSON.
//!
//! Sample files hold numbers separated by whitespace, commas or newlines (`NaN` allowed).
//! Bad input (an unreadable file, a token that is not a number, a bad option) is reported
//! on stderr, naming the file and the token's position, with exit code 2. Non-finite
//! numbers in the JSON output are written as `null`.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use super::{EXIT_INVALID, EXIT_OK};
use crate::analysis::fisher::{ErrorTable, MAX_TOTAL, fisher_exact};
use crate::analysis::hodges_lehmann;
use crate::analysis::kayenta::{self, Direction, EffectSizeKind, KayentaConfig, NanStrategy};
use crate::analysis::mann_whitney::{
    Alternative, Error as MwError, MannWhitneyConfig, Method, SortedSample, mann_whitney_sorted,
};
use crate::analysis::sequential::beta_mixture;

pub mod latency;

/// Offline judges.
#[derive(Debug, Subcommand)]
pub enum JudgeCommand {
    /// Fixed-share Beta-mixture sequential test on error counts (statistics.md §2.1).
    Counts(CountsArgs),
    /// Mann-Whitney U test of canary against baseline samples, with the Hodges-Lehmann shift.
    #[command(after_help = MW_NOTES, after_long_help = MW_NOTES)]
    MannWhitney(MannWhitneyArgs),
    /// Kayenta-compatible (NetflixACAJudge) classification of canary against baseline series.
    #[command(after_help = KAYENTA_NOTES, after_long_help = KAYENTA_NOTES)]
    Kayenta(KayentaArgs),
    /// Fisher's exact test on canary and baseline error counts.
    #[command(after_help = FISHER_NOTES, after_long_help = FISHER_NOTES)]
    Fisher(FisherArgs),
    /// Replay histogram windows through the sequential latency judge a policy's latency
    /// metric runs (statistics.md §2.5): the verdict per window, the first fail and pass.
    #[command(after_help = latency::NOTES, after_long_help = latency::NOTES)]
    Latency(latency::LatencyArgs),
}

/// Help text shared by the sample-file subcommands.
macro_rules! input_notes {
    () => {
        "\
Input files: numbers separated by whitespace, commas or newlines; NaN (or nan) allowed.
Output: one JSON object on stdout; non-finite numbers (NaN, ±infinity) are written as null.
Exit codes: 0 success; 2 invalid input (unreadable file, a token that is not a number, a bad
option), with the file and the token's position on stderr."
    };
}

const MW_NOTES: &str = concat!(
    "\
Prints {\"u\", \"p_value\", \"estimate\", \"ci\": [lo, hi], \"method\", \"canary_n\", \"baseline_n\"}.
u is Mann-Whitney U of the canary sample (scipy's statistic with x = canary); the p-value is
scipy.stats.mannwhitneyu's for the same options; NaN values are dropped (nan_policy='omit').
estimate and ci are the Hodges-Lehmann shift canary - baseline and its interval at
--confidence, as R's wilcox.test(canary, baseline, conf.int = TRUE): the exact estimate
(median of all pairwise differences) and exact interval when the exact method is used, else
R's asymptotic estimate and interval (continuity-corrected unless --no-continuity). With
--alternative greater or less the interval is one-sided, as in R, and its open end is null.
estimate and ci are null when an arm has infinite values.
",
    input_notes!()
);

const KAYENTA_NOTES: &str = concat!(
    "\
Prints {\"classification\": Pass|High|Low|Nodata|NodataFailMetric, \"critical\", \"estimate\",
\"ci\": [lo, hi], \"ratio\", \"effect_size\", \"reason\", \"canary_n\", \"baseline_n\"}.
estimate and ci are R's asymptotic Hodges-Lehmann shift canary - baseline and its interval
(statistics.md §4); ratio is mean(canary)/mean(baseline), null when a mean is 0; effect_size
is the configured effect size, null when undefined. Both arms constant but different: the
shift is exact (estimate = ci = canary - baseline) and decides High/Low through the usual
gates. An arm with infinite values is Nodata.
",
    input_notes!()
);

const FISHER_NOTES: &str = "\
Table orientation: rows are the arms, canary first (scipy's first row), columns are
error / ok: [[canary_errors, canary_total - canary_errors],
             [baseline_errors, baseline_total - baseline_errors]].
--alternative greater means the canary is worse (its error odds are higher).
Prints {\"p_value\", \"odds_ratio\"} as scipy.stats.fisher_exact on that table; the sample odds
ratio is null when it is infinite (a zero off-diagonal cell) or undefined (an empty row or
column, where the p-value is 1).
Exit codes: 0 success; 2 invalid input (errors above the total, a bad option).";

/// Alternative hypothesis on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AlternativeArg {
    /// The arms differ.
    TwoSided,
    /// The canary is larger (worse for latency and errors).
    Greater,
    /// The canary is smaller.
    Less,
}

impl From<AlternativeArg> for Alternative {
    fn from(a: AlternativeArg) -> Self {
        match a {
            AlternativeArg::TwoSided => Self::TwoSided,
            AlternativeArg::Greater => Self::Greater,
            AlternativeArg::Less => Self::Less,
        }
    }
}

/// p-value method on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    /// scipy's rule: exact when min(n1, n2) <= 8 and there are no ties.
    Auto,
    /// The exact permutation distribution (not corrected for ties).
    Exact,
    /// Normal approximation with tie correction.
    Asymptotic,
}

/// Arguments of `judge mann-whitney`.
#[derive(Debug, Args)]
pub struct MannWhitneyArgs {
    /// File with the baseline samples.
    #[arg(long)]
    pub baseline: PathBuf,
    /// File with the canary samples.
    #[arg(long)]
    pub canary: PathBuf,
    /// Alternative hypothesis for the canary relative to the baseline.
    #[arg(long, value_enum, default_value_t = AlternativeArg::TwoSided)]
    pub alternative: AlternativeArg,
    /// How the p-value is computed.
    #[arg(long, value_enum, default_value_t = MethodArg::Auto)]
    pub method: MethodArg,
    /// No continuity correction (asymptotic p-value and interval).
    #[arg(long)]
    pub no_continuity: bool,
    /// Confidence level of the Hodges-Lehmann interval, in (0, 1).
    #[arg(long, default_value_t = 0.95)]
    pub confidence: f64,
}

/// Which way the canary may not move, on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DirectionArg {
    /// High and Low both fail.
    Either,
    /// Only High fails.
    Increase,
    /// Only Low fails.
    Decrease,
}

/// Effect size on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EffectSizeArg {
    /// mean(canary)/mean(baseline); gates default to 1.
    MeanRatio,
    /// Common-language effect size U/(n1*n2); gates default to 0.5.
    Cles,
}

/// NaN strategy on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NanStrategyArg {
    /// Drop NaN values.
    Remove,
    /// Replace NaN values by 0.
    Replace,
}

/// Outlier handling on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutliersArg {
    /// Keep every value.
    Keep,
    /// Drop values outside the IQR fences (widened to the 1st/99th percentiles), per arm.
    Remove,
}

/// Arguments of `judge kayenta`.
#[derive(Debug, Args)]
pub struct KayentaArgs {
    /// File with the baseline series values.
    #[arg(long)]
    pub baseline: PathBuf,
    /// File with the canary series values.
    #[arg(long)]
    pub canary: PathBuf,
    /// Confidence level of the Mann-Whitney interval.
    #[arg(long, default_value_t = 0.98)]
    pub confidence: f64,
    /// Fraction of |estimate| the interval must clear.
    #[arg(long, default_value_t = 0.25)]
    pub tolerance: f64,
    /// Which changes of the canary count against it.
    #[arg(long, value_enum, default_value_t = DirectionArg::Either)]
    pub direction: DirectionArg,
    /// Effect size gating High and Low.
    #[arg(long, value_enum, default_value_t = EffectSizeArg::MeanRatio)]
    pub effect_size: EffectSizeArg,
    /// High needs an effect size at least this (default 1 for mean-ratio, 0.5 for cles).
    #[arg(long)]
    pub allowed_increase: Option<f64>,
    /// Low needs an effect size at most this (default 1 for mean-ratio, 0.5 for cles).
    #[arg(long)]
    pub allowed_decrease: Option<f64>,
    /// The metric is critical: its failure or missing data fails the analysis.
    #[arg(long)]
    pub critical: bool,
    /// A critical High is a critical failure when the effect size is at least this.
    #[arg(long)]
    pub critical_increase: Option<f64>,
    /// A critical Low is a critical failure when the effect size is at most this.
    #[arg(long)]
    pub critical_decrease: Option<f64>,
    /// Missing data fails the metric (NodataFailMetric) instead of Nodata.
    #[arg(long)]
    pub must_have_data: bool,
    /// What to do with NaN values.
    #[arg(long, value_enum, default_value_t = NanStrategyArg::Remove)]
    pub nan_strategy: NanStrategyArg,
    /// Outlier handling, per arm.
    #[arg(long, value_enum, default_value_t = OutliersArg::Keep)]
    pub outliers: OutliersArg,
    /// IQR fence factor for --outliers remove.
    #[arg(long, default_value_t = 3.0)]
    pub outlier_factor: f64,
}

/// Arguments of `judge fisher`.
#[derive(Debug, Args)]
pub struct FisherArgs {
    /// Errors on the baseline.
    #[arg(long)]
    pub baseline_errors: u64,
    /// Requests on the baseline.
    #[arg(long)]
    pub baseline_total: u64,
    /// Errors on the canary.
    #[arg(long)]
    pub canary_errors: u64,
    /// Requests on the canary.
    #[arg(long)]
    pub canary_total: u64,
    /// Alternative hypothesis; greater means the canary errs more.
    #[arg(long, value_enum, default_value_t = AlternativeArg::TwoSided)]
    pub alternative: AlternativeArg,
}

/// Arguments of `judge counts`.
#[derive(Debug, Args)]
pub struct CountsArgs {
    /// Errors (events) on the baseline.
    #[arg(long)]
    pub baseline_errors: f64,
    /// Errors (events) on the canary.
    #[arg(long)]
    pub canary_errors: f64,
    /// The canary's traffic share, as a fraction in (0, 1).
    #[arg(long)]
    pub canary_share: f64,
    /// Prior concentration k of the Beta mixture.
    #[arg(long, default_value_t = 100.0)]
    pub prior_k: f64,
    /// Level of the confidence sequence.
    #[arg(long, default_value_t = 0.05)]
    pub alpha: f64,
}

/// Runs a judge command, printing JSON on stdout; returns the exit code.
#[must_use]
pub fn run(cmd: &JudgeCommand) -> u8 {
    match cmd {
        JudgeCommand::Counts(a) => counts(a),
        JudgeCommand::MannWhitney(a) => report(mann_whitney_cmd(a)),
        JudgeCommand::Kayenta(a) => report(kayenta_cmd(a)),
        JudgeCommand::Fisher(a) => report(fisher_cmd(a)),
        JudgeCommand::Latency(a) => report(latency::run(a)),
    }
}

/// Prints the JSON on success, the message on stderr otherwise.
fn report(result: Result<Value, String>) -> u8 {
    match result {
        Ok(v) => {
            outln!("{v}");
            EXIT_OK
        }
        Err(e) => {
            super::display::output::error(&e);
            EXIT_INVALID
        }
    }
}

/// A number for the JSON output: non-finite values become null.
fn num(x: f64) -> Value {
    if x.is_finite() { json!(x) } else { Value::Null }
}

/// Parses numbers separated by whitespace, commas or newlines; NaN is allowed.
///
/// # Errors
/// The message names the file and, for a bad token, its position (1-based token number,
/// line and column) and text.
pub fn parse_numbers(text: &str, name: &str) -> Result<Vec<f64>, String> {
    let mut out = Vec::new();
    for (line_no, line) in text.lines().enumerate() {
        let mut col = 0;
        for piece in line.split_inclusive(|c: char| c.is_whitespace() || c == ',') {
            let token = piece.trim_end_matches(|c: char| c.is_whitespace() || c == ',');
            if !token.is_empty() {
                match token.parse::<f64>() {
                    Ok(v) => out.push(v),
                    Err(_) => {
                        return Err(format!(
                            "{name}: token {} (line {}, column {}) is not a number: `{}`",
                            out.len() + 1,
                            line_no + 1,
                            col + 1,
                            token.chars().take(40).collect::<String>()
                        ));
                    }
                }
            }
            col += piece.chars().count();
        }
    }
    Ok(out)
}

fn read_numbers(path: &Path) -> Result<Vec<f64>, String> {
    let name = path.display().to_string();
    let text = std::fs::read(path).map_err(|e| format!("reading {name}: {e}"))?;
    let text = String::from_utf8(text).map_err(|_| format!("{name}: not UTF-8 text"))?;
    parse_numbers(&text, &name)
}

fn check_confidence(c: f64) -> Result<(), String> {
    if c > 0.0 && c < 1.0 {
        Ok(())
    } else {
        Err(format!("--confidence must be in (0, 1), got {c}"))
    }
}

fn mann_whitney_cmd(a: &MannWhitneyArgs) -> Result<Value, String> {
    check_confidence(a.confidence)?;
    let canary = SortedSample::from_vec(read_numbers(&a.canary)?);
    let baseline = SortedSample::from_vec(read_numbers(&a.baseline)?);
    let alternative = Alternative::from(a.alternative);
    let cfg = MannWhitneyConfig {
        alternative,
        method: match a.method {
            MethodArg::Auto => Method::Auto,
            MethodArg::Exact => Method::Exact,
            MethodArg::Asymptotic => Method::Asymptotic,
        },
        continuity: !a.no_continuity,
    };
    let mw = mann_whitney_sorted(&canary, &baseline, cfg).map_err(|e| match e {
        MwError::Empty(_) => {
            let file = if canary.is_empty() {
                &a.canary
            } else {
                &a.baseline
            };
            format!("{e}: {} has no numbers other than NaN", file.display())
        }
        MwError::ExactTooLarge { .. } => e.to_string(),
    })?;
    let shift = if mw.method == Method::Exact {
        hodges_lehmann::exact(&canary, &baseline, a.confidence, alternative)
    } else {
        hodges_lehmann::asymptotic(
            &canary,
            &baseline,
            a.confidence,
            alternative,
            cfg.continuity,
        )
    };
    let (estimate, ci) = match shift {
        Ok(s) => (s.estimate, s.ci),
        Err(hodges_lehmann::Error::NotFinite(_)) => (f64::NAN, (f64::NAN, f64::NAN)),
        Err(e) => return Err(e.to_string()),
    };
    Ok(json!({
        "u": num(mw.u),
        "p_value": num(mw.p_value),
        "estimate": num(estimate),
        "ci": [num(ci.0), num(ci.1)],
        "method": if mw.method == Method::Exact { "exact" } else { "asymptotic" },
        "canary_n": mw.n1,
        "baseline_n": mw.n2,
    }))
}

fn kayenta_cmd(a: &KayentaArgs) -> Result<Value, String> {
    let cfg = KayentaConfig {
        confidence: a.confidence,
        tolerance: a.tolerance,
        direction: match a.direction {
            DirectionArg::Either => Direction::Either,
            DirectionArg::Increase => Direction::Increase,
            DirectionArg::Decrease => Direction::Decrease,
        },
        effect_size: match a.effect_size {
            EffectSizeArg::MeanRatio => EffectSizeKind::MeanRatio,
            EffectSizeArg::Cles => EffectSizeKind::Cles,
        },
        allowed_increase: a.allowed_increase,
        allowed_decrease: a.allowed_decrease,
        critical: a.critical,
        critical_increase: a.critical_increase,
        critical_decrease: a.critical_decrease,
        must_have_data: a.must_have_data,
        nan_strategy: match a.nan_strategy {
            NanStrategyArg::Remove => NanStrategy::Remove,
            NanStrategyArg::Replace => NanStrategy::Replace,
        },
        remove_outliers: a.outliers == OutliersArg::Remove,
        outlier_factor: a.outlier_factor,
    };
    cfg.validate().map_err(|e| format!("invalid option: {e}"))?;
    let canary = read_numbers(&a.canary)?;
    let baseline = read_numbers(&a.baseline)?;
    let r = kayenta::judge(&baseline, &canary, &cfg);
    Ok(json!({
        "classification": r.classification,
        "critical": r.critical,
        "estimate": num(r.estimate),
        "ci": [num(r.ci.0), num(r.ci.1)],
        "ratio": r.ratio.map_or(Value::Null, num),
        "effect_size": r.effect_size.map_or(Value::Null, num),
        "reason": r.reason,
        "canary_n": r.canary_n,
        "baseline_n": r.baseline_n,
    }))
}

fn fisher_cmd(a: &FisherArgs) -> Result<Value, String> {
    let table = ErrorTable::from_totals(
        a.canary_errors,
        a.canary_total,
        a.baseline_errors,
        a.baseline_total,
    )
    .ok_or_else(|| {
        format!(
            "errors must not exceed the total (canary {} of {}, baseline {} of {})",
            a.canary_errors, a.canary_total, a.baseline_errors, a.baseline_total
        )
    })?;
    let total = [a.canary_total, a.baseline_total]
        .iter()
        .try_fold(0u64, |s, &v| s.checked_add(v));
    if total.is_none_or(|n| n > MAX_TOTAL) {
        return Err(format!("totals above {MAX_TOTAL} in all are not supported"));
    }
    let r = fisher_exact(table, a.alternative.into());
    Ok(json!({"p_value": num(r.p_value), "odds_ratio": num(r.odds_ratio)}))
}

fn counts(a: &CountsArgs) -> u8 {
    if let Some(r) = beta_mixture(
        a.baseline_errors,
        a.canary_errors,
        a.canary_share,
        a.prior_k,
        a.alpha,
    ) {
        let ci = [r.ci_ratio.0, r.ci_ratio.1];
        outln!(
            "{}",
            json!({"log_e": r.log_e, "p_value": r.p_value, "ci_ratio": ci})
        );
        EXIT_OK
    } else {
        errln!(
            "error: counts must be finite and non-negative, --canary-share in (0, 1), \
             --prior-k positive and --alpha in (0, 1)"
        );
        EXIT_INVALID
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_separators_nan_and_reports_positions() {
        let v = parse_numbers("1, 2\n3,,4\tNaN nan\n-inf 1e3", "f").unwrap();
        assert_eq!(v.len(), 8);
        assert!(v[4].is_nan() && v[5].is_nan() && v[6] == f64::NEG_INFINITY && v[7] == 1e3);
        let e = parse_numbers("1 2\n3 x4 5", "data.txt").unwrap_err();
        assert_eq!(
            e,
            "data.txt: token 4 (line 2, column 3) is not a number: `x4`"
        );
        assert_eq!(parse_numbers("", "f").unwrap(), Vec::<f64>::new());
    }
}
