//! `coalmine backtest POLICY --records FILE`: what a policy would have decided, and when, on
//! a recorded rollout's windows, side by side with what really happened.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;

use super::output::{error, write_stdout};
use super::run::load;
use super::{EXIT_INVALID, EXIT_OK};
use crate::report::backtest::{Backtest, MetricState, Side, backtest};
use crate::report::log::{read_log, select};
use crate::report::{human_duration, num};

/// Arguments of `coalmine backtest`.
#[derive(Debug, Args)]
pub struct BacktestArgs {
    /// The policy to try (TOML); its traffic provider, metrics source, hooks and
    /// notifications are not used.
    pub policy: PathBuf,
    /// A decision log whose ticks carry their observations (any `coalmine run` or `demo`
    /// with `--decisions`).
    #[arg(long, value_name = "FILE")]
    pub records: PathBuf,
    /// Which rollout of the log: its rollout id, its name, or `NAME#N`.
    #[arg(long, value_name = "ID")]
    pub rollout: Option<String>,
    /// Print the comparison, tick by tick, as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Runs `coalmine backtest`: exit 0 when it ran (whatever either side decided), 2 when the
/// policy or the log is invalid or the log is not a recording.
#[must_use]
pub fn run(args: &BacktestArgs) -> u8 {
    let Ok(policy) = load(&args.policy) else {
        return EXIT_INVALID;
    };
    let result = read_log(&args.records)
        .and_then(|r| select(r, args.rollout.as_deref()))
        .map_err(|e| e.to_string())
        .and_then(|r| backtest(&policy, &r).map_err(|e| e.to_string()));
    let b = match result {
        Ok(b) => b,
        Err(e) => {
            error(&e);
            return EXIT_INVALID;
        }
    };
    let out = if args.json {
        let mut s = serde_json::to_string_pretty(&b).unwrap_or_default();
        s.push('\n');
        s
    } else {
        text(&b)
    };
    match write_stdout(out.as_bytes()) {
        Ok(()) => EXIT_OK,
        Err(code) => code,
    }
}

fn side_lines(s: &Side) -> [String; 4] {
    [
        s.outcome.clone(),
        match (s.decided_tick, s.seconds) {
            (Some(t), Some(sec)) => format!("tick {t}, after {}", human_duration(sec)),
            _ => "–".to_string(),
        },
        format!(
            "{} (baseline {}, canary {})",
            num(Some(s.requests[0] + s.requests[1])),
            num(Some(s.requests[0])),
            num(Some(s.requests[1]))
        ),
        String::new(),
    ]
}

fn metric_text(m: Option<&MetricState>) -> String {
    let Some(m) = m else {
        return "–".to_string();
    };
    let o = m.outcome.as_deref().unwrap_or("error");
    match (m.log_e, m.log_threshold) {
        (Some(e), Some(t)) => format!("{o}, ln e {} of {}", num(Some(e)), num(Some(t))),
        _ => o.to_string(),
    }
}

/// The comparison as text: both sides' outcome, decision time and requests, each metric at
/// the decision, and how many ticks decided differently.
fn text(b: &Backtest) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "backtest of policy `{}` on {} ({} windows)\n",
        b.policy, b.source, b.windows
    );
    let rec = side_lines(&b.recorded);
    let sim = side_lines(&b.simulated);
    let _ = writeln!(out, "{:<24} {:<44} this policy", "", "recorded");
    for (i, l) in ["outcome", "decided at", "requests to decision"]
        .iter()
        .enumerate()
    {
        let _ = writeln!(out, "{l:<24} {:<44} {}", rec[i], sim[i]);
    }
    let mut names: Vec<&str> = b
        .recorded
        .metrics
        .iter()
        .map(|m| m.metric.as_str())
        .collect();
    for m in &b.simulated.metrics {
        if !names.contains(&m.metric.as_str()) {
            names.push(&m.metric);
        }
    }
    for n in names {
        let find = |s: &Side| metric_text(s.metrics.iter().find(|m| m.metric == n));
        let _ = writeln!(
            out,
            "{:<24} {:<44} {}",
            format!("  {n}"),
            find(&b.recorded),
            find(&b.simulated)
        );
    }
    let _ = writeln!(out, "\nrecorded:    {}", b.recorded.reason);
    let _ = writeln!(out, "this policy: {}", b.simulated.reason);
    let _ = writeln!(
        out,
        "{} of {} ticks decided differently (--json for every tick)",
        b.differing_ticks,
        b.ticks.len()
    );
    for n in &b.notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}
