//! `coalmine run POLICY`: one rollout in the foreground.

use std::path::{Path, PathBuf};

use clap::Args;
use tokio::sync::watch;

use super::control::StateArgs;
use super::display::output;
use super::display::progress::{Progress, summary};
use super::signals::{TrafficState, watch_signals};
use super::status::{Auth, StatusBoard, Tee};
use super::{EXIT_FAILURE, EXIT_INVALID};
use crate::controller::readiness::CanaryProbe;
use crate::controller::store::{
    ControlRef, FileStore, OwnerLock, PolicyRef, RolloutState, StartPlan, StoreError,
    new_rollout_id, start_plan,
};
use crate::controller::{
    DryRun, Durable, FinalOutcome, Phase, RunOptions, RunReport, run, run_durable,
};
use crate::metrics;
use crate::policy::{self, Approval, Policy, TrafficConfig};
use crate::traffic;

/// Arguments of `coalmine run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The policy file (TOML).
    pub policy: PathBuf,
    /// A shadow rollout: move no traffic (the provider is only read), analyse the split in
    /// force (e.g. an existing canary at 10 %) for as long as the policy's analysed steps
    /// together, and record and print what the rollout would have done and when
    /// (`would-rollback at 42 s: …`, `would-promote at …`). Hooks, gates, approvals, planned
    /// pauses and the notify webhook are not run (the output names them); nothing is kept in
    /// the rollout store. Exit 0 once it has a verdict; the usual codes when the inputs are
    /// broken (3 when the canary has no traffic, or all of it).
    #[arg(long)]
    pub dry_run: bool,
    /// Output options.
    #[command(flatten)]
    pub output: OutputArgs,
    /// Durability options.
    #[command(flatten)]
    pub durable: DurableArgs,
}

/// How `coalmine run` keeps and exposes its rollout.
#[derive(Debug, Args, Default)]
pub struct DurableArgs {
    /// Start over from step 1 (a new rollout id, recorded) even if the store holds an
    /// unfinished or finished run of this rollout, or one of another policy content.
    #[arg(long)]
    pub restart: bool,
    /// The control API's address (default: a free loopback port, recorded in the store for
    /// the operator's verbs). A non-loopback address needs a configured token
    /// (`COALMINE_TOKEN` or `--token-file`).
    #[arg(long, value_name = "ADDR")]
    pub control_addr: Option<std::net::SocketAddr>,
}

/// What a durable run needs beyond the policy: the store, what it holds, the token.
pub(crate) struct DurableRun {
    pub(crate) store: FileStore,
    pub(crate) policy: PolicyRef,
    pub(crate) resume: Option<RolloutState>,
    pub(crate) restart: Option<String>,
    pub(crate) revision: u64,
    pub(crate) auth: Auth,
    pub(crate) control_addr: std::net::SocketAddr,
    pub(crate) _lock: OwnerLock,
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
    /// /promote, /pause, /resume and /abort on this address while the rollout runs (port 0
    /// picks a free port). With `run` this is the control API (`--control-addr`), whose
    /// levers need the bearer token; the demo's levers are unauthenticated: keep it on
    /// loopback.
    #[arg(long, value_name = "ADDR")]
    pub status_addr: Option<std::net::SocketAddr>,
}

/// Reads and validates a policy; prints problems and returns `Err(exit code)`. Warnings are
/// printed too (they never fail the load).
pub(crate) fn load(path: &Path) -> Result<Policy, u8> {
    load_hashed(path).map(|(p, _)| p)
}

/// [`load`], with the SHA-256 of the very bytes parsed.
pub(crate) fn load_hashed(path: &Path) -> Result<(Policy, String), u8> {
    match super::authoring::validate::read_hashed(path) {
        Ok((p, warnings, sha)) => {
            if !warnings.is_empty() {
                errln!("{warnings}");
            }
            Ok((p, sha))
        }
        Err(super::authoring::validate::Unread::Io(message)) => {
            super::display::output::error(&message);
            Err(EXIT_INVALID)
        }
        Err(super::authoring::validate::Unread::Invalid(d)) => {
            errln!("{d}");
            super::display::output::error(&super::authoring::validate::invalid_sentence(
                path,
                d.items().len(),
            ));
            Err(EXIT_INVALID)
        }
    }
}

/// Builds the traffic provider (starting the built-in proxy if the policy uses it) and the
/// metrics source. Prints the problem and returns the exit code on failure.
pub(crate) async fn setup(
    policy: &Policy,
    origin: &str,
    seed: Option<u64>,
) -> Result<(traffic::BuiltTraffic, metrics::AnySource), u8> {
    let built = traffic::build_seeded(&policy.traffic, seed)
        .await
        .map_err(|e| {
            output::error(&format!(
                "{origin}: cannot set up the [traffic] {} provider: {e}; nothing was moved, \
                 check the section (`coalmine validate --preflight {origin}`)",
                policy.traffic.kind()
            ));
            EXIT_FAILURE
        })?;
    let source = metrics::build(&policy.source, built.proxy.as_ref()).map_err(|e| {
        output::error(&format!(
            "{origin}: cannot set up the [metrics] {} source: {e}; nothing was moved, check \
             the section (`coalmine validate --preflight {origin}`)",
            policy.source.kind()
        ));
        EXIT_FAILURE
    })?;
    Ok((built, source))
}

/// How to present a run.
pub(crate) struct Presentation {
    /// The policy file, as messages name it.
    pub(crate) origin: String,
    pub(crate) status_addr: Option<std::net::SocketAddr>,
    pub(crate) decisions: Option<PathBuf>,
    pub(crate) json: bool,
    pub(crate) quiet: bool,
    pub(crate) extra_json: Option<serde_json::Value>,
    /// Keep the rollout in the store and serve the control API (`coalmine run`).
    pub(crate) durable: Option<DurableRun>,
}

/// Runs the rollout, prints the outcome and returns the exit code.
pub(crate) async fn drive(
    policy: &Policy,
    built: &traffic::BuiltTraffic,
    source: &metrics::AnySource,
    how: Presentation,
) -> u8 {
    drive_with(policy, built, source, how, None).await
}

/// [`drive`], as a dry run when `dry_run` is given.
async fn drive_with(
    policy: &Policy,
    built: &traffic::BuiltTraffic,
    source: &metrics::AnySource,
    how: Presentation,
    dry_run: Option<DryRun>,
) -> u8 {
    if let Some(p) = &built.proxy
        && !how.quiet
    {
        errln!("coalmine: built-in proxy listening on http://{}", p.addr());
    }
    if policy.rollout.approval != Approval::None
        && how.status_addr.is_none()
        && how.durable.is_none()
    {
        output::error(&format!(
            "{}: [rollout] approval needs --status-addr ADDR, where an operator approves with \
             POST /approve; add it, e.g. --status-addr 127.0.0.1:9900",
            how.origin
        ));
        return EXIT_INVALID;
    }
    let (abort_tx, abort_rx) = watch::channel(None);
    let mut traffic_state = TrafficState::default();
    watch_signals(abort_tx.clone(), traffic_state.clone());
    let serve_at = how
        .durable
        .as_ref()
        .map(|d| d.control_addr)
        .or(how.status_addr);
    let (mut board, levers) = match serve_at {
        Some(_) => {
            let (b, rx) = StatusBoard::new(abort_tx);
            let b = match &how.durable {
                Some(d) => b.with_auth(d.auth.clone()),
                None => b,
            };
            (Some(b), Some(rx))
        }
        None => (None, None),
    };
    let mut control = None;
    if let (Some(b), Some(addr)) = (&board, serve_at) {
        match b.serve(addr).await {
            Ok(bound) => {
                // One server: status, health, metrics and (with the token) the levers.
                errln!("coalmine: status server on http://{bound}");
                control = Some(ControlRef {
                    addr: bound,
                    pid: std::process::id(),
                });
            }
            Err(e) => {
                output::error(&format!(
                    "cannot serve the status server on --status-addr {addr}: {e}; choose a free \
                     port (port 0 picks one)"
                ));
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
        policy_sha256: None,
        dry_run,
    };
    let mut progress = Progress::new(how.quiet);
    let mut others = Tee(
        &mut traffic_state,
        board
            .as_mut()
            .map(|b| b as &mut dyn crate::controller::Observer),
    );
    let mut observers = Tee(&mut progress, Some(&mut others));
    let result = match how.durable {
        Some(d) => {
            let durable = Durable {
                store: &d.store,
                rollout_id: new_rollout_id(),
                policy: d.policy,
                resume: d.resume,
                restart: d.restart,
                control,
                revision: d.revision,
            };
            run_durable(
                policy,
                &built.provider,
                source,
                durable,
                opts,
                &mut observers,
            )
            .await
        }
        None => run(policy, &built.provider, source, opts, &mut observers).await,
    };
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let cause = std::error::Error::source(&e).map_or(String::new(), |c| format!(": {c}"));
            output::error(&format!(
                "{e}{cause}; nothing was moved: choose a writable --decisions FILE"
            ));
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

/// The exit code of a finished rollout's stored outcome.
fn finished_code(phase: &Phase) -> u8 {
    match phase {
        Phase::Promoted => FinalOutcome::Promoted.exit_code(),
        Phase::RolledBack { reason } => FinalOutcome::RolledBack {
            reason: reason.clone(),
        }
        .exit_code(),
        _ => EXIT_FAILURE,
    }
}

/// Takes the rollout's owner lock and decides from its record whether to start, resume or
/// refuse. Prints the problem and returns `Err(exit code)` when it does not run.
pub(crate) fn prepare(
    state: &StateArgs,
    policy: &Policy,
    path: &Path,
    sha: String,
    restart: Option<String>,
    control_addr: Option<std::net::SocketAddr>,
) -> Result<DurableRun, u8> {
    let addr = control_addr.unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    if !addr.ip().is_loopback() && !state.token_configured() {
        errln!(
            "error: the control API on {addr} is not loopback: configure its token first \
             (COALMINE_TOKEN or --token-file), a generated one is for this machine only"
        );
        return Err(EXIT_INVALID);
    }
    let store = state.store();
    let lock = match store.acquire_blocking(&policy.name) {
        Ok(l) => l,
        Err(e @ StoreError::Locked { .. }) => {
            errln!("error: {e}; not starting a second controller");
            return Err(EXIT_FAILURE);
        }
        Err(e) => {
            errln!("error: {e}");
            return Err(EXIT_FAILURE);
        }
    };
    let stored = match store.load_blocking(&policy.name) {
        Ok(s) => s,
        Err(e @ StoreError::Damaged { .. }) if restart.is_some() => {
            errln!("warning: {e}; starting over (--restart)");
            None
        }
        Err(e) => {
            errln!("error: {e}; `coalmine run --restart` starts the rollout over");
            return Err(EXIT_FAILURE);
        }
    };
    let revision = stored.as_ref().map_or(0, |s| s.revision);
    let (resume, restart) = match start_plan(stored.as_ref(), &sha, restart.is_some()) {
        StartPlan::Fresh { restart: why } => (
            None,
            restart.map(|r| format!("{r}; {}", why.unwrap_or_default())),
        ),
        StartPlan::Resume => (stored, None),
        StartPlan::PolicyChanged { recorded } => {
            errln!(
                "error: rollout `{}` was started with another policy content (sha256 {}…, now {}…): \
                 resume it with the policy it started with, or start over from step 1 with --restart",
                policy.name,
                &recorded[..recorded.len().min(12)],
                &sha[..12],
            );
            return Err(EXIT_INVALID);
        }
        StartPlan::Finished { phase } => {
            let s = stored.as_ref().map(|s| &s.phase);
            errln!(
                "coalmine: rollout `{}` already finished ({phase}); not run again: `coalmine run --restart` starts it over",
                policy.name
            );
            return Err(s.map_or(EXIT_FAILURE, finished_code));
        }
    };
    let auth = state.auth(true).map_err(|e| {
        errln!("error: {e}");
        EXIT_FAILURE
    })?;
    Ok(DurableRun {
        store,
        policy: PolicyRef {
            path: Some(path.display().to_string()),
            sha256: sha,
            text: None,
        },
        resume,
        restart,
        revision,
        auth,
        control_addr: addr,
        _lock: lock,
    })
}

/// Runs `coalmine run`.
pub(crate) async fn main(args: RunArgs, state: &StateArgs) -> u8 {
    let (policy, sha) = match load_hashed(&args.policy) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let origin = policy::diag::escape_controls(&args.policy.display().to_string()).into_owned();
    for w in policy.warnings() {
        output::warning(&format!("{origin}: {w}"));
    }
    if args.dry_run {
        return dry_run(&policy, &origin, args.output).await;
    }
    let restart = args.durable.restart.then(|| "--restart".to_string());
    let durable = match prepare(
        state,
        &policy,
        &args.policy,
        sha,
        restart,
        args.durable.control_addr.or(args.output.status_addr),
    ) {
        Ok(d) => d,
        Err(code) => return code,
    };
    main_with(&policy, args.output, durable).await
}

/// Runs `coalmine run --dry-run` (see [`crate::controller::dry_run`]).
async fn dry_run(policy: &Policy, origin: &str, output: OutputArgs) -> u8 {
    use crate::traffic::TrafficProvider as _;
    let (built, source) = match setup(policy, origin, None).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let limit = policy.rollout.apply_timeout;
    let code = match tokio::time::timeout(limit, built.provider.current()).await {
        Ok(Ok(w)) if w > crate::model::Weight::ZERO && w < crate::model::Weight::FULL => {
            if !output.quiet {
                errln!(
                    "coalmine: dry run of `{}`: analysing the split in force ({w} on the canary); \
                     no weight is set",
                    policy.name
                );
            }
            let shadow = crate::controller::dry_run::shadow_policy(policy, w);
            let not_run = crate::controller::dry_run::not_run(policy);
            let how = Presentation {
                origin: origin.to_string(),
                status_addr: output.status_addr,
                decisions: output.decisions,
                json: output.json,
                quiet: output.quiet,
                extra_json: None,
                durable: None,
            };
            drive_with(&shadow, &built, &source, how, Some(DryRun { not_run })).await
        }
        Ok(Ok(w)) => {
            output::error(&format!(
                "{origin}: nothing to analyse: {w} is in force on the canary (a dry run analyses \
                 the split in force and moves no traffic; put the canary on part of the traffic \
                 first)"
            ));
            EXIT_FAILURE
        }
        Ok(Err(e)) => {
            output::error(&format!(
                "{origin}: cannot read the weight in force from the [traffic] {} provider: {e}",
                policy.traffic.kind()
            ));
            EXIT_FAILURE
        }
        Err(_) => {
            output::error(&format!(
                "{origin}: the [traffic] {} provider did not say the weight in force within {}",
                policy.traffic.kind(),
                humantime::format_duration(limit)
            ));
            EXIT_FAILURE
        }
    };
    if let Some(p) = built.proxy {
        p.shutdown().await;
    }
    code
}

/// Runs a prepared durable rollout (`run`, `retry`).
pub(crate) async fn main_with(policy: &Policy, output: OutputArgs, durable: DurableRun) -> u8 {
    let origin =
        policy::diag::escape_controls(durable.policy.path.as_deref().unwrap_or(&policy.name))
            .into_owned();
    let (built, source) = match setup(policy, &origin, None).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    // The built-in proxy lives in this process: a restarted one starts where the rollout
    // was, not at 0 (that would be a change nobody asked for).
    if let (Some(p), Some(r)) = (&built.proxy, &durable.resume) {
        p.state().set_weight(r.weight);
    }
    let how = Presentation {
        origin,
        status_addr: output.status_addr,
        decisions: output.decisions,
        json: output.json,
        quiet: output.quiet,
        extra_json: None,
        durable: Some(durable),
    };
    let code = drive(policy, &built, &source, how).await;
    if let Some(p) = built.proxy {
        p.shutdown().await;
    }
    code
}

/// Arguments of `coalmine retry`.
#[derive(Debug, Args)]
pub struct RetryArgs {
    /// The rolled-back rollout to start again from step 1 (with its recorded policy file).
    pub rollout: String,
    /// Output options.
    #[command(flatten)]
    pub output: OutputArgs,
    /// The control API's address (as for `run`).
    #[arg(long, value_name = "ADDR")]
    pub control_addr: Option<std::net::SocketAddr>,
}

/// Runs `coalmine retry`: a rolled-back rollout again from step 1, with a new rollout id.
pub(crate) async fn retry(mut args: RetryArgs, state: &StateArgs) -> u8 {
    let stored = match state.store().load_blocking(&args.rollout) {
        Ok(Some(s)) => s,
        Ok(None) => {
            errln!(
                "error: no rollout `{}` in {}",
                args.rollout,
                state.dir().display()
            );
            return EXIT_INVALID;
        }
        Err(e) => {
            errln!("error: {e}");
            return EXIT_FAILURE;
        }
    };
    let reason = match &stored.phase {
        Phase::RolledBack { reason } | Phase::NotStarted { reason } => reason.to_string(),
        Phase::Failed { reason } => reason.clone(),
        other => {
            errln!(
                "error: rollout `{}` is {}: only a rolled-back rollout is retried",
                args.rollout,
                other.name()
            );
            return EXIT_INVALID;
        }
    };
    let Some(path) = stored.policy.path.as_deref().map(PathBuf::from) else {
        errln!(
            "error: rollout `{}` has no recorded policy file",
            args.rollout
        );
        return EXIT_INVALID;
    };
    let (policy, sha) = match load_hashed(&path) {
        Ok(p) => p,
        Err(code) => return code,
    };
    if policy.name != args.rollout {
        errln!(
            "error: {} now names rollout `{}`, not `{}`",
            path.display(),
            policy.name,
            args.rollout
        );
        return EXIT_INVALID;
    }
    let why = format!(
        "retry of run {} ({}: {reason})",
        stored.rollout_id,
        stored.phase.name()
    );
    if args.output.decisions.is_none() {
        args.output.decisions.clone_from(&stored.decisions);
    }
    let durable = match prepare(state, &policy, &path, sha, Some(why), args.control_addr) {
        Ok(d) => d,
        Err(code) => return code,
    };
    main_with(&policy, args.output, durable).await
}
