//! `coalmine judge`: offline judging of two sample files or of event counts, printing JSON.

use clap::{Args, Subcommand};
use serde_json::json;

use super::{EXIT_INVALID, EXIT_OK};
use crate::analysis::sequential::beta_mixture;

/// Offline judges.
#[derive(Debug, Subcommand)]
pub enum JudgeCommand {
    /// Fixed-share Beta-mixture sequential test on error counts (statistics.md §2.1).
    Counts(CountsArgs),
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
    }
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
        println!(
            "{}",
            json!({"log_e": r.log_e, "p_value": r.p_value, "ci_ratio": ci})
        );
        EXIT_OK
    } else {
        eprintln!(
            "error: counts must be finite and non-negative, --canary-share in (0, 1), \
             --prior-k positive and --alpha in (0, 1)"
        );
        EXIT_INVALID
    }
}
