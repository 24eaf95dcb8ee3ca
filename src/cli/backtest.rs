//! `coalmine backtest POLICY --records FILE`: what a policy would have decided, and when, on
//! a recorded rollout's windows, side by side with what really happened; `--prometheus URL
//! --from TIME --to TIME --share W|observed`: on Prometheus's history instead.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::SystemTime;

use clap::Args;

use super::display::output::{error, write_stdout};
use super::run::load;
use super::{EXIT_FAILURE, EXIT_INVALID, EXIT_OK};
use crate::policy::Policy;
use crate::report::backtest::history::{History, Share, backtest_history, parse_time};
use crate::report::backtest::{Backtest, MetricState, Side, backtest};
use crate::report::log::{read_log, select};
use crate::report::{human_duration, num};

/// Arguments of `coalmine backtest`.
#[derive(Debug, Args)]
pub struct BacktestArgs {
    /// The policy to try (TOML); its traffic provider, hooks and notifications are not
    /// used, nor its metrics source with `--records`.
    pub policy: PathBuf,
    /// A decision log whose ticks carry their observations (any `coalmine run` or `demo`
    /// with `--decisions`). A policy whose analysis_interval is a whole multiple of the
    /// recording's judges that many recorded windows joined.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "prometheus",
        conflicts_with = "prometheus"
    )]
    pub records: Option<PathBuf>,
    /// Which rollout of the log: its rollout id, its name, or `NAME#N`.
    #[arg(long, value_name = "ID", requires = "records")]
    pub rollout: Option<String>,
    /// Instead of a log: run the policy's PromQL templates against this Prometheus's
    /// history (instant queries at each window's end), with the policy's `[metrics]` headers,
    /// token and variables.
    #[arg(long, value_name = "URL", requires_all = ["from", "to", "share"])]
    pub prometheus: Option<String>,
    /// The first window's start: RFC 3339 (2024-05-01T10:00:00Z, +02:00 offsets), `now`,
    /// or a time before now (-2h, now-90m). Windows follow the policy's analysis_interval.
    #[arg(
        long,
        value_name = "TIME",
        requires = "prometheus",
        allow_hyphen_values = true
    )]
    pub from: Option<String>,
    /// No window ends after this (same forms as --from; not in the future).
    #[arg(
        long,
        value_name = "TIME",
        requires = "prometheus",
        allow_hyphen_values = true
    )]
    pub to: Option<String>,
    /// The canary's share of the history's requests: its weight in percent (`5`, `12.5%`),
    /// fixed in every window, or `observed`: its part of the requests of the earlier
    /// windows (the policy's first counts or histogram metric).
    #[arg(long, value_name = "W|observed", requires = "prometheus")]
    pub share: Option<String>,
    /// Print the comparison, tick by tick, as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The history to read, from the arguments.
fn history(args: &BacktestArgs, url: &str, now: SystemTime) -> Result<History, String> {
    let time = |flag: &str, v: Option<&String>| {
        parse_time(v.map_or("", String::as_str), now).map_err(|e| format!("--{flag}: {e}"))
    };
    Ok(History {
        url: url.to_string(),
        from: time("from", args.from.as_ref())?,
        to: time("to", args.to.as_ref())?,
        share: Share::parse(args.share.as_deref().unwrap_or(""))?,
    })
}

/// The backtest on Prometheus's history; `Err` carries the exit code after the message.
fn on_history(policy: &Policy, args: &BacktestArgs, url: &str) -> Result<Backtest, u8> {
    let now = SystemTime::now();
    let h = history(args, url, now).map_err(|e| {
        error(&e);
        EXIT_INVALID
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            error(&format!("cannot start the async runtime: {e}"));
            EXIT_FAILURE
        })?;
    runtime
        .block_on(backtest_history(policy, &h, now))
        .map_err(|e| {
            error(&e.to_string());
            if e.is_operational() {
                EXIT_FAILURE
            } else {
                EXIT_INVALID
            }
        })
}

/// Runs `coalmine backtest`: exit 0 when it ran (whatever the policy decided), 2 when the
/// policy, the log or the arguments are invalid or the log is not a recording, 3 when
/// Prometheus does not answer.
#[must_use]
pub fn run(args: &BacktestArgs) -> u8 {
    let Ok(policy) = load(&args.policy) else {
        return EXIT_INVALID;
    };
    let b = if let Some(url) = &args.prometheus {
        match on_history(&policy, args, url) {
            Ok(b) => b,
            Err(code) => return code,
        }
    } else {
        let Some(records) = &args.records else {
            error("give --records FILE or --prometheus URL");
            return EXIT_INVALID;
        };
        let result = read_log(records)
            .and_then(|r| select(r, args.rollout.as_deref()))
            .map_err(|e| e.to_string())
            .and_then(|r| backtest(&policy, &r).map_err(|e| e.to_string()));
        match result {
            Ok(b) => b,
            Err(e) => {
                error(&e);
                return EXIT_INVALID;
            }
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

fn metric_names(sides: &[&Side]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for s in sides {
        for m in &s.metrics {
            if !names.contains(&m.metric) {
                names.push(m.metric.clone());
            }
        }
    }
    names
}

/// The comparison as text: both sides' outcome, decision time and requests, each metric at
/// the decision, and how many ticks decided differently; on Prometheus's history, the
/// policy's side alone, with the decision's wall-clock time.
fn text(b: &Backtest) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "backtest of policy `{}` on {} ({} windows)\n",
        b.policy, b.source, b.windows
    );
    let sim = side_lines(&b.simulated);
    let labels = ["outcome", "decided at", "requests to decision"];
    if let Some(recorded) = &b.recorded {
        let rec = side_lines(recorded);
        let _ = writeln!(out, "{:<24} {:<44} this policy", "", "recorded");
        for (i, l) in labels.iter().enumerate() {
            let _ = writeln!(out, "{l:<24} {:<44} {}", rec[i], sim[i]);
        }
        for n in metric_names(&[recorded, &b.simulated]) {
            let find = |s: &Side| metric_text(s.metrics.iter().find(|m| m.metric == n));
            let _ = writeln!(
                out,
                "{:<24} {:<44} {}",
                format!("  {n}"),
                find(recorded),
                find(&b.simulated)
            );
        }
        let _ = writeln!(out, "\nrecorded:    {}", recorded.reason);
        let _ = writeln!(out, "this policy: {}", b.simulated.reason);
    } else {
        for (i, l) in labels.iter().enumerate() {
            let _ = write!(out, "{l:<24} {}", sim[i]);
            match (&b.simulated.decided_at, i) {
                (Some(at), 1) => {
                    let _ = writeln!(out, " (window ending {at})");
                }
                _ => out.push('\n'),
            }
        }
        for n in metric_names(&[&b.simulated]) {
            let m = b.simulated.metrics.iter().find(|m| m.metric == n);
            let _ = writeln!(out, "{:<24} {}", format!("  {n}"), metric_text(m));
        }
        let _ = writeln!(out, "\nthis policy: {}", b.simulated.reason);
    }
    if let Some(d) = b.differing_ticks {
        let _ = writeln!(
            out,
            "{d} of {} ticks decided differently (--json for every tick)",
            b.ticks.len()
        );
    } else {
        let _ = writeln!(
            out,
            "--json for every tick, with what the judges were given"
        );
    }
    for n in &b.notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}
