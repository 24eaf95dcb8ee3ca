//! The async shell around the pure state machine: it checks that the provider, the metrics
//! source and the canary are ready, applies weights through the traffic provider, reads the
//! weight in force back every tick, fetches metrics every analysis interval, feeds the
//! judges, records every decision before acting on it, and reports progress to an
//! [`Observer`].
//!
//! Time comes only from tokio's clock, so tests run with paused time. Wall-clock times (for
//! records and for sources that query by time) are derived from it: `start_wall + elapsed`.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::controller::machine::{Command, MetricStatus, Phase, Reason};
use crate::controller::readiness::CanaryProbe;
use crate::controller::record::{MetricRecord, Record};
use crate::controller::store::{ControlRef, PolicyRef, RolloutState, Store, StoreError};
use crate::metrics::MetricsSource;
use crate::model::Weight;
use crate::policy::{Policy, bounds};
use crate::traffic::TrafficProvider;

mod judge;
mod reconcile;
mod shell;

pub use judge::judge_window;
pub use reconcile::Reconciler;
pub use shell::baseline_errors;

/// Receives every record as it is written (progress display, tests).
pub trait Observer: Send {
    /// Called after each record is written to the decision log.
    fn on_record(&mut self, _record: &Record) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct Quiet;

impl Observer for Quiet {}

/// An operator's lever on a running rollout (the control API's POSTs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lever {
    /// Approve leaving the current step (see `[rollout] approval`).
    Approve,
    /// Pause: touch no traffic until resumed.
    Pause {
        /// Why.
        why: String,
    },
    /// Resume a paused rollout.
    Resume,
    /// An operator's action, with who and why (each is recorded before it is acted on).
    Operator {
        /// What.
        action: OperatorAction,
        /// Who: the token's name, or `local`.
        actor: String,
        /// Why, as given.
        reason: String,
    },
    /// An operator's action the control API refused (409) where the rollout was: recorded
    /// in the decision log as refused, nothing else is done (so a phase that changed since
    /// the refusal can never make it act on a lever its caller was told was refused).
    Refused {
        /// What was asked.
        action: OperatorAction,
        /// Who: the token's name, or `local`.
        actor: String,
        /// Why it was refused, as the caller was told.
        why: String,
    },
}

/// What an operator asked for through the control API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OperatorAction {
    /// Release the step named (1-based; the step the operator saw in `status`): its gate,
    /// its remaining time and its request count are waived (the machine's
    /// [`Event::Release`](crate::controller::machine::Event::Release)), the next step is not. An approval for any other step is
    /// refused, so an early approval cannot release a later step. `full` promotes to 100 %
    /// now, skipping the remaining steps and their analysis.
    Promote {
        /// The step released.
        step: usize,
        /// Promote to 100 % now.
        full: bool,
    },
    /// Pause.
    Pause,
    /// Resume.
    Resume,
    /// Roll back.
    Abort,
}

impl OperatorAction {
    fn name(&self) -> &'static str {
        match self {
            OperatorAction::Promote { full: true, .. } => "promote-full",
            OperatorAction::Promote { .. } => "promote",
            OperatorAction::Pause => "pause",
            OperatorAction::Resume => "resume",
            OperatorAction::Abort => "abort",
        }
    }
}

/// How a durable run keeps its record in a [`Store`] (see [`run_durable`]).
#[derive(Debug)]
pub struct Durable<'a, S> {
    /// Where the record goes.
    pub store: &'a S,
    /// This run's id (a new one for a fresh start; the record's on resume).
    pub rollout_id: String,
    /// The policy's file and hash.
    pub policy: PolicyRef,
    /// The record to continue, when resuming.
    pub resume: Option<RolloutState>,
    /// Why the rollout starts over (`--restart`, `retry`), for the `started` record.
    pub restart: Option<String>,
    /// The control API, recorded for the operator's verbs.
    pub control: Option<ControlRef>,
    /// The record's revision in the store (0: none yet).
    pub revision: u64,
}

/// Options of one run.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// Decision log path (overrides the policy's `decisions`).
    pub decisions: Option<PathBuf>,
    /// Set to `Some(reason)` to abort the rollout (it rolls back).
    pub abort: Option<watch::Receiver<Option<String>>>,
    /// Operator levers: approve, pause, resume.
    pub levers: Option<mpsc::UnboundedReceiver<Lever>>,
    /// Probe the canary before the first traffic change (the built-in proxy's readiness).
    pub readiness: Option<CanaryProbe>,
    /// The policy file's SHA-256, for the records (a durable run takes it from its record).
    pub policy_sha256: Option<String>,
    /// A dry run (`coalmine run --dry-run`, see [`super::dry_run`]): the provider is only
    /// read, never set; the policy given is the shadow one.
    pub dry_run: Option<DryRun>,
}

/// What a dry run knows beyond its shadow policy.
#[derive(Clone, Debug, Default)]
pub struct DryRun {
    /// What the real rollout would run or wait for and the dry run does not
    /// ([`super::dry_run::not_run`]).
    pub not_run: Vec<String>,
}

/// What wakes a rollout between reconcile steps ([`Reconciler::reconcile`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wake {
    /// Its analysis tick is due ([`Reconciler::wake_at`]).
    Tick,
    /// Stop: roll back (a signal, or an abort that bypassed the levers).
    Abort(String),
    /// An operator's lever.
    Lever(Lever),
}

/// Waits for the next tick, an abort or a lever. A closed channel stops counting.
async fn wait(
    next_tick: Instant,
    abort: &mut Option<watch::Receiver<Option<String>>>,
    levers: &mut Option<mpsc::UnboundedReceiver<Lever>>,
) -> Wake {
    let aborted = async {
        match abort.as_mut() {
            Some(rx) => match rx.changed().await {
                Ok(()) => rx.borrow().clone(),
                Err(_) => {
                    *abort = None;
                    None
                }
            },
            None => std::future::pending().await,
        }
    };
    let lever = async {
        match levers.as_mut() {
            Some(rx) => {
                let got = rx.recv().await;
                if got.is_none() {
                    *levers = None;
                }
                got
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = tokio::time::sleep_until(next_tick) => Wake::Tick,
        why = aborted => why.map_or(Wake::Tick, Wake::Abort),
        l = lever => l.map_or(Wake::Tick, Wake::Lever),
    }
}

/// How a rollout ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum FinalOutcome {
    /// The canary has all traffic.
    Promoted,
    /// The canary has no traffic.
    RolledBack {
        /// Why.
        reason: Reason,
    },
    /// Nothing was moved: a pre-rollout check failed (the canary, the provider or the
    /// metrics source was not ready).
    NotStarted {
        /// Which check and what it said.
        reason: Reason,
    },
    /// The controller could not reach a safe state.
    Failed {
        /// What happened.
        reason: String,
    },
}

/// What a run did, for the summary.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunReport {
    /// Rollout name.
    pub rollout: String,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: FinalOutcome,
    /// Process exit code for this outcome.
    pub exit_code: u8,
    /// Seconds from start to end.
    pub duration_s: f64,
    /// Analysis ticks.
    pub ticks: u64,
    /// Whether any window was judged before the end: false after a blind cutover (every step
    /// below 100 % has `analysis = false`, or there is none) or with no tick at all.
    pub analysed: bool,
    /// Highest step reached (1-based).
    pub steps_reached: usize,
    /// Steps in the plan.
    pub steps: usize,
    /// Canary weight in force at the end, percent.
    pub final_weight: Weight,
    /// Each metric's last state.
    pub metrics: Vec<MetricRecord>,
    /// Where the decision records went.
    pub decisions: Option<PathBuf>,
    /// A dry run's verdict: what the rollout would have done and when
    /// (`would-rollback at 42 s: …`); `None` for a real rollout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would: Option<String>,
    /// What a dry run did not run or wait for (hooks, gates, approvals).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_run: Vec<String>,
}

impl FinalOutcome {
    /// 0 promoted, 1 rolled back, 3 not started or failed.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            FinalOutcome::Promoted => 0,
            FinalOutcome::RolledBack { .. } => 1,
            FinalOutcome::NotStarted { .. } | FinalOutcome::Failed { .. } => 3,
        }
    }
}

/// The one-line explanation of a rollout that never started.
#[must_use]
pub fn not_started_text(reason: &Reason) -> String {
    match reason {
        Reason::PreCheck { hook, detail } => match hook.as_str() {
            CHECK_PROVIDER => format!("traffic provider not ready, no traffic was moved: {detail}"),
            CHECK_SOURCE => format!("metrics source not ready, no traffic was moved: {detail}"),
            CHECK_CANARY => format!("canary not ready, no traffic was moved: {detail}"),
            _ => format!(
                "canary not ready, no traffic was moved: pre-rollout check `{hook}` failed: {detail}"
            ),
        },
        other => format!("not started, no traffic was moved: {other}"),
    }
}

/// Names of the built-in pre-rollout checks (hooks are named by the policy).
const CHECK_PROVIDER: &str = "traffic provider";
const CHECK_SOURCE: &str = "metrics source";
const CHECK_CANARY: &str = "canary readiness";

/// Errors that stop a run before it starts.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The decision log cannot be opened.
    #[error("cannot open decision log {path}")]
    DecisionLog {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The stored record cannot be continued.
    #[error("rollout `{rollout}`: the stored record cannot be resumed: {why}")]
    Unresumable {
        /// The rollout.
        rollout: String,
        /// Why.
        why: String,
    },
    /// The rollout store failed before the rollout started.
    #[error("rollout store")]
    Store(#[from] StoreError),
}

/// What one analysis tick gathered.
#[derive(Debug)]
pub struct Analysed {
    /// Each metric's state, for the state machine.
    pub statuses: Vec<MetricStatus>,
    /// Each metric's record.
    pub records: Vec<MetricRecord>,
    /// Requests per arm in the window (`None` when no metric counts requests).
    pub requests: Option<[f64; 2]>,
}

/// Time the rollout has spent paused by `now`, where the phase tells.
fn paused_total(phase: &Phase, now: Duration) -> Option<Duration> {
    match phase {
        Phase::Progressing(p) => Some(p.paused_for),
        Phase::Paused(z) => Some(bounds::plus(
            z.progress.paused_for,
            now.saturating_sub(z.since),
        )),
        Phase::Shifting { paused_for, .. } => Some(*paused_for),
        _ => None,
    }
}

/// Where the run loop is between commands.
struct Loop {
    queue: VecDeque<Command>,
    seq: u64,
    first_traffic: Option<Duration>,
    next_tick: Instant,
    window_start: Duration,
    /// The phase last written to the store.
    saved: Option<Phase>,
    /// Time the rollout has spent paused, as last seen in its phase.
    paused_for: Duration,
}

/// Runs one rollout to the end (nothing stored: see [`run_durable`]).
///
/// # Errors
/// Only when the run cannot start (the decision log cannot be opened); everything that
/// happens during the rollout ends in a [`RunReport`].
pub async fn run<T: TrafficProvider, M: MetricsSource>(
    policy: &Policy,
    traffic: &T,
    source: &M,
    opts: RunOptions,
    observer: &mut dyn Observer,
) -> Result<RunReport, Error> {
    run_inner::<T, M, NoStore>(policy, traffic, source, None, opts, observer).await
}

/// Runs one rollout to the end, keeping its record in a store: load → decide → persist →
/// act. The record is written before every command is carried out (a traffic change, a
/// hook, the checks), so a controller killed at any moment is continued by the next one
/// from where it was (`durable.resume`), without repeating a step.
///
/// # Errors
/// When the run cannot start (the decision log cannot be opened, the stored record does
/// not fit the policy); everything that happens during the rollout ends in a [`RunReport`].
pub async fn run_durable<T: TrafficProvider, M: MetricsSource, S: Store>(
    policy: &Policy,
    traffic: &T,
    source: &M,
    durable: Durable<'_, S>,
    opts: RunOptions,
    observer: &mut dyn Observer,
) -> Result<RunReport, Error> {
    run_inner(policy, traffic, source, Some(durable), opts, observer).await
}

/// The store of a run that keeps nothing.
struct NoStore;

impl Store for NoStore {
    type Guard = ();
    async fn load(&self, _: &str) -> Result<Option<RolloutState>, StoreError> {
        Ok(None)
    }
    async fn save(&self, _: &RolloutState, expected: u64) -> Result<u64, StoreError> {
        Ok(expected + 1)
    }
    async fn list(&self) -> Result<Vec<RolloutState>, StoreError> {
        Ok(Vec::new())
    }
    async fn acquire(&self, _: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

async fn run_inner<T: TrafficProvider, M: MetricsSource, S: Store>(
    policy: &Policy,
    traffic: &T,
    source: &M,
    durable: Option<Durable<'_, S>>,
    mut opts: RunOptions,
    observer: &mut dyn Observer,
) -> Result<RunReport, Error> {
    let mut abort = opts.abort.take();
    let mut levers = opts.levers.take();
    // Boxed: the steps' futures are large (the judges, the fetches), the loop's stays small.
    let mut r = Box::pin(Reconciler::start(
        policy, traffic, source, durable, opts, observer,
    ))
    .await?;
    while !r.finished() {
        if let Some(why) = r.deposed() {
            return Err(Error::Store(StoreError::Fenced {
                rollout: policy.name.clone(),
                why: why.to_string(),
            }));
        }
        let wake = wait(r.wake_at(), &mut abort, &mut levers).await;
        Box::pin(r.reconcile(wake)).await;
    }
    Ok(Box::pin(r.finish()).await)
}
