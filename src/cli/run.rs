//! `coalmine run POLICY`: one rollout in the foreground.

use std::path::{Path, PathBuf};

use clap::Args;
use tokio::sync::watch;

use super::progress::{Progress, summary};
use super::signals::{TrafficState, watch_signals};
use super::status::{StatusBoard, Tee};
use super::{EXIT_FAILURE, EXIT_INVALID};
use crate::controller::readiness::CanaryProbe;
use crate::controller::{RunOptions, RunReport, run};
use crate::metrics;
use crate::policy::{self, Approval, Policy, TrafficConfig};
use crate::traffic;

/// Arguments of `coalmine run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The policy file (TOML).
    pub policy: PathBuf,
    /// Output options.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// How a rollout reports.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Append decision records (JSON lines) to this file; overrides the policy's `decisions`.
    #[arg(long, value_name = "FILE")]
    pub decisions: Option<PathBuf>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress lines on stderr (the summary is still printed).
    #[arg(long, short)]
    pub quiet: bool,
    /// Serve /health/live, /health/ready, /status, /metrics and the operator's levers POST
    /// /approve, /pause, /resume and /abort on this address while the rollout runs (port 0
    /// picks a free port; the levers are unauthenticated: keep it on loopback).
    #[arg(long, value_name = "ADDR")]
    pub status_addr: Option<std::net::SocketAddr>,
}

/// Reads and validates a policy; prints problems and returns `Err(exit code)`. Warnings are
/// printed too (they never fail the load).
pub(crate) fn load(path: &Path) -> Result<Policy, u8> {
    use std::io::Read;
    let shown = path.display().to_string();
    // Read one byte past the limit, never more: a huge file is refused without being held
    // in memory.
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(policy::MAX_POLICY_BYTES as u64 + 1)
                .read_to_end(&mut bytes)
        })
        .map_err(|e| {
            errln!(
                "error: cannot read policy {}: {e}",
                policy::diag::escape_controls(&shown)
            );
            EXIT_INVALID
        })?;
    match policy::parse_bytes(&bytes, &shown) {
        Ok((p, warnings)) => {
            if !warnings.is_empty() {
                errln!("{warnings}");
            }
            // Before anything can print or record them: the policy's URL credentials,
            // webhook path and token variable names.
            crate::redact::register_policy(&p);
            Ok(p)
        }
        Err(d) => {
            errln!("{d}");
            errln!(
                "error: {} problem(s) in {}",
                d.items().len(),
                policy::diag::escape_controls(&shown)
            );
            Err(EXIT_INVALID)
        }
    }
}

/// Builds the traffic provider (starting the built-in proxy if the policy uses it) and the
/// metrics source. Prints the problem and returns the exit code on failure.
pub(crate) async fn setup(
    policy: &Policy,
    seed: Option<u64>,
) -> Result<(traffic::BuiltTraffic, metrics::AnySource), u8> {
    let built = traffic::build_seeded(&policy.traffic, seed)
        .await
        .map_err(|e| {
            errln!("error: cannot set up traffic provider: {e}");
            EXIT_FAILURE
        })?;
    let source = metrics::build(&policy.source, built.proxy.as_ref()).map_err(|e| {
        errln!("error: cannot set up metrics source: {e}");
        EXIT_FAILURE
    })?;
    Ok((built, source))
}

/// How to present a run.
pub(crate) struct Presentation {
    pub(crate) status_addr: Option<std::net::SocketAddr>,
    pub(crate) decisions: Option<PathBuf>,
    pub(crate) json: bool,
    pub(crate) quiet: bool,
    pub(crate) extra_json: Option<serde_json::Value>,
}

/// Runs the rollout, prints the outcome and returns the exit code.
pub(crate) async fn drive(
    policy: &Policy,
    built: &traffic::BuiltTraffic,
    source: &metrics::AnySource,
    how: Presentation,
) -> u8 {
    if let Some(p) = &built.proxy
        && !how.quiet
    {
        errln!("coalmine: built-in proxy listening on http://{}", p.addr());
    }
    if policy.rollout.approval != Approval::None && how.status_addr.is_none() {
        errln!(
            "error: the policy's [rollout] approval needs --status-addr ADDR, where an operator \
             approves with POST /approve"
        );
        return EXIT_INVALID;
    }
    let (abort_tx, abort_rx) = watch::channel(None);
    let mut traffic_state = TrafficState::default();
    watch_signals(abort_tx.clone(), traffic_state.clone());
    let (mut board, levers) = match how.status_addr {
        Some(_) => {
            let (b, rx) = StatusBoard::new(abort_tx);
            (Some(b), Some(rx))
        }
        None => (None, None),
    };
    if let (Some(b), Some(addr)) = (&board, how.status_addr) {
        match b.serve(addr).await {
            Ok(bound) => errln!("coalmine: status server on http://{bound}"),
            Err(e) => {
                errln!("error: cannot serve status on {addr}: {e}");
                return EXIT_FAILURE;
            }
        }
    }
    let opts = RunOptions {
        decisions: how.decisions,
        abort: Some(abort_rx),
        levers,
        readiness: match &policy.traffic {
            TrafficConfig::Proxy(p) => Some(CanaryProbe::for_proxy(p)),
            _ => None,
        },
    };
    let mut progress = Progress { quiet: how.quiet };
    let mut others = Tee(
        &mut traffic_state,
        board
            .as_mut()
            .map(|b| b as &mut dyn crate::controller::Observer),
    );
    let mut observers = Tee(&mut progress, Some(&mut others));
    let report = match run(policy, &built.provider, source, opts, &mut observers).await {
        Ok(r) => r,
        Err(e) => {
            let cause = std::error::Error::source(&e).map_or(String::new(), |c| format!(": {c}"));
            errln!("error: {e}{cause}");
            return EXIT_FAILURE;
        }
    };
    print_report(&report, how.json, how.extra_json);
    report.exit_code
}

fn print_report(report: &RunReport, json: bool, extra: Option<serde_json::Value>) {
    err!("{}", summary(report));
    if json {
        let mut v = serde_json::to_value(report).unwrap_or_default();
        if let (Some(obj), Some(serde_json::Value::Object(extra))) = (v.as_object_mut(), extra) {
            obj.extend(extra);
        }
        outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    }
}

/// Runs `coalmine run`.
pub(crate) async fn main(args: RunArgs) -> u8 {
    let policy = match load(&args.policy) {
        Ok(p) => p,
        Err(code) => return code,
    };
    for w in policy.warnings() {
        errln!("warning: {w}");
    }
    let (built, source) = match setup(&policy, None).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let how = Presentation {
        status_addr: args.output.status_addr,
        decisions: args.output.decisions,
        json: args.output.json,
        quiet: args.output.quiet,
        extra_json: None,
    };
    let code = drive(&policy, &built, &source, how).await;
    if let Some(p) = built.proxy {
        p.shutdown().await;
    }
    code
}
