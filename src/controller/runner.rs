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
use std::time::{Duration, SystemTime};

use futures_util::future::join_all;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::health::{ErrorCounts, Health};
use super::hooks::{Notifier, run_hook};
use super::machine::{
    Command, Decision, Event, Judging, MetricStatus, NO_PREVIEW_SHARE, Phase, Reason, WindowFacts,
    judging, step,
};
use super::readiness::CanaryProbe;
use super::record::{
    MetricRecord, Record, RecordKind, RecordLog, RequestsRecord, SegmentRecord, WindowRecord,
    rfc3339,
};
use super::store::{
    ControlRef, FORMAT, Judges, PolicyRef, RolloutState, Store, StoreError, new_rollout_id,
};
use crate::analysis::mw_judge::score_verdict;
use crate::analysis::observation::Shape;
use crate::analysis::{JudgeSpec, MetricJudge, Observation, Outcome, Segment, Stats};
use crate::metrics::{Fetched, MetricsError, MetricsSource, Window};
use crate::model::Weight;
use crate::policy::hooks::HookWhen;
use crate::policy::{BuiltinSignal, DataSpec, MetricConfig, Policy, Rollout, bounds};
use crate::traffic::TrafficProvider;

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
    /// [`Event::Release`]), the next step is not. An approval for any other step is
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

struct Shell<'a, T, M, S> {
    policy: &'a Policy,
    traffic: &'a T,
    source: &'a M,
    log: Option<RecordLog>,
    observer: &'a mut dyn Observer,
    durable: Option<Durable<'a, S>>,
    rollout_id: String,
    policy_sha256: Option<String>,
    decisions: Option<PathBuf>,
    operator_actions: u64,
    /// The controller's clock when this process took the rollout over (zero for a fresh
    /// start): `now()` continues from the stored offset.
    base: Duration,
    start: Instant,
    wall0: SystemTime,
    weight: Weight,
    judges: Vec<MetricJudge>,
    last: Vec<MetricRecord>,
    ticks: u64,
    /// A window after the switch to 100 % was judged (post_promotion): a promotion after
    /// it was analysed even when no step below 100 % was.
    watched: bool,
    steps_reached: usize,
    log_failed: Option<String>,
    /// Records made since the last save, for a store that keeps them
    /// ([`Store::keeps_records`]): written with the next save, in the same write.
    pending: Vec<String>,
    notifier: Option<Notifier>,
    readiness: Option<CanaryProbe>,
    /// Set when the store refused a write or a fence check (this controller no longer owns
    /// the rollout, or cannot prove it does): from then on nothing is acted on.
    deposed: Option<String>,
    /// A dry run: the provider is never set.
    dry_run: Option<DryRun>,
    /// A dry run's verdict, once reached.
    would: Option<String>,
}

/// Whether a metric's judge compares the arms (as opposed to bounding the canary alone).
fn comparative(m: &MetricConfig) -> bool {
    !matches!(m.judge, JudgeSpec::Threshold(_))
}

/// Whether a metric's data are error counts (for baseline health).
fn counts_errors(m: &MetricConfig) -> bool {
    m.shape == Shape::Counts
        && !m.dry_run
        && matches!(
            m.data,
            DataSpec::Builtin(BuiltinSignal::Errors) | DataSpec::Counts { .. }
        )
}

/// The baseline's error counts of the window: of the metrics counting errors, the one with
/// the highest baseline rate.
#[must_use]
pub fn baseline_errors(
    metrics: &[MetricConfig],
    fetches: &[Result<Fetched, MetricsError>],
) -> Option<ErrorCounts> {
    let mut worst: Option<ErrorCounts> = None;
    for (m, f) in metrics.iter().zip(fetches) {
        let Ok(f) = f else { continue };
        if !counts_errors(m) {
            continue;
        }
        let (mut errors, mut requests, mut any) = (0.0, 0.0, false);
        for seg in &f.segments {
            if let Observation::Counts(c) = &seg.baseline
                && c.events.is_finite()
                && c.trials.is_finite()
            {
                errors += c.events.max(0.0);
                requests += c.trials.max(0.0);
                any = true;
            }
        }
        if !any || requests <= 0.0 {
            continue;
        }
        let rate = errors / requests;
        let better = worst
            .as_ref()
            .is_none_or(|w| rate > w.errors / w.requests.max(f64::MIN_POSITIVE));
        if better {
            worst = Some(ErrorCounts {
                metric: m.name.clone(),
                errors,
                requests,
            });
        }
    }
    worst
}

impl<T: TrafficProvider, M: MetricsSource, S: Store> Shell<'_, T, M, S> {
    /// Whether any window was judged (see [`RunReport::analysed`]).
    fn analysed(&self) -> bool {
        self.ticks > 0 && (!self.policy.rollout.blind() || self.watched)
    }

    fn now(&self) -> Duration {
        self.base + Instant::now().saturating_duration_since(self.start)
    }

    /// Writes the rollout's record to the store (when the run is durable). Called before
    /// every command is carried out, so the store never lags behind what was acted on.
    async fn persist(&mut self, phase: &Phase, l: &Loop, last: Option<String>) {
        let Some(d) = &self.durable else { return };
        let state = RolloutState {
            format: FORMAT,
            rollout: self.policy.name.clone(),
            rollout_id: self.rollout_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            revision: d.revision,
            policy: d.policy.clone(),
            phase: phase.clone(),
            steps: self.policy.rollout.steps.len(),
            elapsed: self.now(),
            saved_at: SystemTime::now(),
            started_at: self.wall0,
            weight: self.weight,
            seq: l.seq,
            ticks: self.ticks,
            steps_reached: self.steps_reached,
            first_traffic: l.first_traffic,
            judges: Judges(self.judges.clone()),
            decisions: self.decisions.clone(),
            control: if phase.is_terminal() {
                None
            } else {
                d.control.clone()
            },
            last,
            operator_actions: self.operator_actions,
        };
        match d
            .store
            .save_with_records(&state, d.revision, &self.pending)
            .await
        {
            Ok(rev) => {
                self.pending.clear();
                if let Some(d) = &mut self.durable {
                    d.revision = rev;
                }
            }
            Err(e @ (StoreError::Fenced { .. } | StoreError::Etcd { .. })) => {
                // Not ours any more (or not provably): stop without acting; the owner
                // continues from the last record that was written.
                tracing::warn!(error = %e, "rollout record refused: stopping without acting");
                self.deposed = Some(e.to_string());
            }
            Err(e) => {
                if self.log_failed.is_none() && !phase.is_terminal() {
                    self.log_failed = Some(format!("rollout record unwritable: {e}"));
                }
                tracing::error!(error = %e, "rollout record unwritable");
            }
        }
    }

    fn wall(&self, offset: Duration) -> SystemTime {
        self.wall0 + offset
    }

    fn step_of(phase: &Phase) -> Option<usize> {
        match phase {
            Phase::Shifting { step, .. } | Phase::Confirming { step, .. } => Some(step + 1),
            Phase::Progressing(p) => Some(p.step + 1),
            Phase::Paused(z) => Some(z.progress.step + 1),
            _ => None,
        }
    }

    /// Asks `gates` in order (up to the first no), each yes recorded (`gate-passed`);
    /// returns the first no and what it said. `target` is the step they guard (`None`: a
    /// rollback or blue-retired gate, told and never waited for).
    async fn ask_gates(
        &mut self,
        gates: Vec<crate::policy::gates::Gate>,
        target: Option<usize>,
        phase: &Phase,
    ) -> Option<(String, String)> {
        let plan = &self.policy.rollout;
        for gate in gates {
            let weight = match target {
                Some(i) => plan.steps.get(i).copied().unwrap_or(Weight::FULL),
                None if gate.kind == crate::policy::gates::GateKind::BlueRetired => Weight::FULL,
                None => Weight::ZERO,
            };
            let reason = match phase {
                Phase::RolledBack { reason } => Some(reason.to_string()),
                _ => None,
            };
            let body = serde_json::json!({
                "rollout": self.policy.name,
                "rollout_id": self.rollout_id,
                "gate": gate.name,
                "type": gate.kind.as_str(),
                "phase": phase.name(),
                "step": target.map(|i| i + 1),
                "steps": plan.steps.len(),
                "weight": weight.percent(),
                "weight_in_force": self.weight.percent(),
                "elapsed_s": self.now().as_secs_f64(),
                "reason": reason,
            })
            .to_string();
            let env: Vec<(String, String)> = [
                ("COALMINE_ROLLOUT", self.policy.name.clone()),
                ("COALMINE_GATE", gate.name.clone()),
                ("COALMINE_GATE_TYPE", gate.kind.as_str().to_string()),
                (
                    "COALMINE_STEP",
                    target.map_or(String::new(), |i| (i + 1).to_string()),
                ),
                ("COALMINE_WEIGHT", format!("{}", weight.percent())),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            match super::gates::ask(&gate, &body, &env).await {
                Ok(said) => self.transition(
                    phase,
                    phase,
                    "gate-passed",
                    Some(format!("{} ({}): {said}", gate.name, gate.kind.as_str())),
                ),
                Err(e) => {
                    if target.is_none() {
                        // A rollback or blue-retired gate is told, never waited for.
                        self.transition(
                            phase,
                            phase,
                            "gate-refused",
                            Some(format!("{} ({}): {e}", gate.name, gate.kind.as_str())),
                        );
                        continue;
                    }
                    return Some((gate.name.clone(), e));
                }
            }
        }
        None
    }

    fn record(&mut self, r: &Record) {
        if let Some(log) = &mut self.log
            && let Err(e) = log.write(r)
            && self.log_failed.is_none()
        {
            self.log_failed = Some(format!(
                "decision log {} unwritable: {e}",
                log.path().display()
            ));
        }
        if let Some(d) = &self.durable
            && d.store.keeps_records()
        {
            match serde_json::to_string(r) {
                // Redacted as the file log's lines are.
                Ok(line) => self.pending.push(crate::redact::text(&line).into_owned()),
                Err(e) => tracing::error!(error = %e, "decision record unserializable"),
            }
        }
        self.observer.on_record(r);
        if let Some(n) = &mut self.notifier {
            n.send(r);
        }
    }

    fn transition(&mut self, before: &Phase, after: &Phase, event: &str, detail: Option<String>) {
        let kind = if after.is_terminal() {
            RecordKind::Final
        } else {
            RecordKind::Transition
        };
        self.note(kind, before, after, event, detail, None);
    }

    /// Writes a record of `kind` (a transition, the takeover of a stored rollout, an
    /// operator's action with its actor).
    fn note(
        &mut self,
        kind: RecordKind,
        before: &Phase,
        after: &Phase,
        event: &str,
        detail: Option<String>,
        actor: Option<String>,
    ) {
        let r = self.record_of(kind, before, after, event, detail, actor);
        self.record(&r);
    }

    /// The record [`Self::note`] writes, for a caller that adds to it.
    fn record_of(
        &self,
        kind: RecordKind,
        before: &Phase,
        after: &Phase,
        event: &str,
        detail: Option<String>,
        actor: Option<String>,
    ) -> Record {
        let now = self.now();
        Record {
            kind,
            rollout: self.policy.name.clone(),
            rollout_id: self.rollout_id.clone(),
            version: env!("CARGO_PKG_VERSION"),
            policy_sha256: self.policy_sha256.clone(),
            actor,
            time: rfc3339(self.wall(now)),
            elapsed_s: now.as_secs_f64(),
            phase: before.name(),
            next_phase: after.name(),
            step: Self::step_of(after).or(Self::step_of(before)),
            steps: self.policy.rollout.steps.len(),
            weight: self.weight,
            window: None,
            since_s: None,
            requests: None,
            baseline: None,
            metrics: Vec::new(),
            decision: None,
            event: Some(event.to_string()),
            detail,
        }
    }

    /// Runs the hooks for `when` in order, recording each; returns the first failure.
    async fn run_hooks(
        &mut self,
        when: HookWhen,
        phase: &Phase,
        outcome: &str,
    ) -> Option<(String, String)> {
        let reason = match phase {
            Phase::RolledBack { reason } | Phase::RollingBack { reason, .. } => reason.to_string(),
            _ => String::new(),
        };
        let env: Vec<(String, String)> = [
            ("COALMINE_ROLLOUT", self.policy.name.clone()),
            ("COALMINE_HOOK_WHEN", when.as_str().to_string()),
            ("COALMINE_OUTCOME", outcome.to_string()),
            ("COALMINE_REASON", reason),
            ("COALMINE_WEIGHT", format!("{}", self.weight.percent())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let hooks: Vec<_> = self
            .policy
            .hooks
            .iter()
            .filter(|h| h.when == when)
            .cloned()
            .collect();
        let mut failed = None;
        for hook in hooks {
            let result = run_hook(&hook, &env).await;
            let (event, detail) = match &result {
                Ok(said) => (
                    "hook-ran",
                    format!("{} ({}): {said}", hook.name, when.as_str()),
                ),
                Err(e) => (
                    "hook-failed",
                    format!("{} ({}): {e}", hook.name, when.as_str()),
                ),
            };
            self.transition(phase, phase, event, Some(detail));
            if let Err(e) = result {
                failed = Some((hook.name.clone(), e));
                if when == HookWhen::PreRollout {
                    break;
                }
            }
        }
        failed
    }

    /// Everything that must answer before traffic moves: the provider, the metrics source,
    /// the canary (built-in proxy), then the policy's pre-rollout hooks. Each is recorded;
    /// returns the first failure.
    async fn pre_checks(&mut self, phase: &Phase) -> Option<(String, String)> {
        let limit = self.policy.rollout.apply_timeout;
        let provider = match tokio::time::timeout(limit, self.traffic.preflight()).await {
            Ok(Ok(())) => Ok(format!("provider `{}` answers", self.traffic.name())),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "provider `{}`: no answer within {}",
                self.traffic.name(),
                humantime::format_duration(limit)
            )),
        };
        // The source's own timeouts apply; this is a backstop.
        let source_limit = Duration::from_secs(30);
        let source = match tokio::time::timeout(source_limit, self.source.preflight()).await {
            Ok(Ok(())) => Ok(format!("source `{}` answers", self.source.name())),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "source `{}`: no answer within {}",
                self.source.name(),
                humantime::format_duration(source_limit)
            )),
        };
        for (name, result) in [(CHECK_PROVIDER, provider), (CHECK_SOURCE, source)] {
            if let Some(failed) = self.check_recorded(phase, name, result) {
                return Some(failed);
            }
        }
        if let Some(probe) = self.readiness.clone() {
            let result = probe.check().await;
            if let Some(failed) = self.check_recorded(phase, CHECK_CANARY, result) {
                return Some(failed);
            }
        }
        let failed = self.run_hooks(HookWhen::PreRollout, phase, "pending").await;
        if failed.is_none() {
            self.read_history(phase).await;
        }
        failed
    }

    /// Reads the baseline's latency over `[rollout] baseline_history` before the first
    /// traffic change, for the judges that bet with it (statistics.md §2.5, "History"), and
    /// records what was read, segments included (a backtest replays them). Never stops the
    /// rollout: without it the first window bets with the data-free prior.
    async fn read_history(&mut self, phase: &Phase) {
        let span = self.policy.rollout.baseline_history;
        if span.is_zero() {
            return;
        }
        let end = self.wall(self.now());
        let window = Window {
            seq: 0,
            start: end.checked_sub(span).unwrap_or(end),
            end,
            weight: Weight::ZERO,
        };
        let shown = humantime::format_duration(span);
        // The source's own timeouts apply; this is a backstop.
        let limit = Duration::from_secs(30);
        for (i, m) in self.policy.metrics.iter().enumerate() {
            if !self.judges[i].learns_history() {
                continue;
            }
            let read = tokio::time::timeout(limit, self.source.history(m, &window)).await;
            let (detail, fetched) = match read {
                Ok(Ok(Some(f))) => {
                    let requests: f64 = f
                        .segments
                        .iter()
                        .filter_map(|s| match &s.baseline {
                            Observation::Histogram(h) if s.share == 0.0 => Some(h.total()),
                            _ => None,
                        })
                        .sum();
                    self.judges[i].learn_history(&f.segments);
                    let detail = format!(
                        "`{}`: {requests:.0} baseline requests in the {shown} before the first traffic change; the latency bets use them from the first window on (never as evidence)",
                        m.name
                    );
                    (detail, Some(f))
                }
                Ok(Ok(None)) => (
                    format!(
                        "`{}`: source `{}` cannot look back; the first window bets with the data-free prior",
                        m.name,
                        self.source.name()
                    ),
                    None,
                ),
                Ok(Err(e)) => (
                    format!(
                        "`{}`: not read ({e}); the first window bets with the data-free prior",
                        m.name
                    ),
                    None,
                ),
                Err(_) => (
                    format!(
                        "`{}`: no answer within {}; the first window bets with the data-free prior",
                        m.name,
                        humantime::format_duration(limit)
                    ),
                    None,
                ),
            };
            let mut r = self.record_of(
                RecordKind::Transition,
                phase,
                phase,
                "baseline-history",
                Some(detail),
                None,
            );
            if let Some(f) = fetched {
                r.metrics.push(MetricRecord {
                    metric: m.name.clone(),
                    judge: m.judge.name(),
                    outcome: None,
                    reason: "baseline history".to_string(),
                    stats: Stats::None,
                    dry_run: m.dry_run,
                    error: None,
                    observed: SegmentRecord::all(&f.segments),
                    queries: f.queries,
                });
            }
            self.record(&r);
        }
    }

    fn check_recorded(
        &mut self,
        phase: &Phase,
        name: &str,
        result: Result<String, String>,
    ) -> Option<(String, String)> {
        match result {
            Ok(said) => {
                self.transition(
                    phase,
                    phase,
                    "check-passed",
                    Some(format!("{name}: {said}")),
                );
                None
            }
            Err(e) => {
                self.transition(phase, phase, "check-failed", Some(format!("{name}: {e}")));
                Some((name.to_string(), e))
            }
        }
    }

    /// Records an operator's action (before acting on it) and turns it into the machine's
    /// event; `None` when it is refused (an approval naming another step than the current
    /// one), which is recorded too.
    fn operator(
        &mut self,
        phase: &Phase,
        action: &OperatorAction,
        actor: String,
        reason: &str,
    ) -> Option<Event> {
        self.operator_actions += 1;
        let now = self.now();
        let current = Self::step_of(phase);
        let why = if reason.is_empty() {
            String::new()
        } else {
            format!(": {reason}")
        };
        let after_switch = matches!(phase, Phase::Watching(_) | Phase::KeepingBlue(_));
        let (event, detail) = match action {
            OperatorAction::Promote { full: true, .. } if after_switch => (
                Event::PromoteNow { now },
                if let Phase::Watching(_) = phase {
                    format!("post-promotion window ended now, the promotion stands{why}")
                } else {
                    format!("blue retired now, keep_blue ended{why}")
                },
            ),
            OperatorAction::Promote { step, .. } if current != Some(*step) => {
                let why = format!(
                    "promote names step {step}, the rollout is {}",
                    current.map_or_else(
                        || format!("in phase {}", phase.name()),
                        |c| format!("at step {c}")
                    )
                );
                self.refuse(phase, action, actor, &why);
                return None;
            }
            OperatorAction::Promote { step, full: true } => (
                Event::PromoteNow { now },
                format!(
                    "promote to 100% now from step {step}, skipping the remaining steps and analysis{why}"
                ),
            ),
            OperatorAction::Promote { step, .. } => (
                Event::Release { now },
                format!(
                    "step {step} released{why} (it moves on at the next tick unless a metric fails or evidence is missing)"
                ),
            ),
            OperatorAction::Pause => (
                Event::Pause {
                    why: format!("by {actor}{why}"),
                    now,
                },
                format!("pause{why}"),
            ),
            OperatorAction::Resume => (Event::Resume { now }, format!("resume{why}")),
            OperatorAction::Abort => (
                Event::Abort {
                    why: format!("aborted by {actor}{why}"),
                    now,
                },
                format!("abort{why}"),
            ),
        };
        // A lever the rollout cannot take where it is (a promote while traffic is being
        // shifted, say) is recorded as refused, never as done.
        let ignored = !matches!(event, Event::Abort { .. }) && {
            let (next, cmds) = step(phase.clone(), event.clone(), &self.policy.rollout);
            next == *phase && cmds.is_empty()
        };
        if ignored {
            let why = format!(
                "{} has no effect while the rollout is {}; nothing was done",
                action.name(),
                phase.name()
            );
            self.refuse(phase, action, actor, &why);
            return None;
        }
        self.note(
            RecordKind::Operator,
            phase,
            phase,
            action.name(),
            Some(detail),
            Some(actor),
        );
        Some(event)
    }

    /// Records an operator's action that was refused (`refused: WHY`); nothing is done.
    fn refuse(&mut self, phase: &Phase, action: &OperatorAction, actor: String, why: &str) {
        self.note(
            RecordKind::Operator,
            phase,
            phase,
            action.name(),
            Some(format!("refused: {why}")),
            Some(actor),
        );
    }

    /// Feeds an abort to the machine, records it, and returns the commands.
    fn abort(&mut self, phase: &mut Phase, why: String) -> Vec<Command> {
        let event = Event::Abort {
            why: why.clone(),
            now: self.now(),
        };
        let (next, cmds) = step(phase.clone(), event, &self.policy.rollout);
        self.transition(phase, &next, "aborted", Some(why));
        *phase = next;
        cmds
    }

    /// Checks with the store, right before a traffic change, that this controller still
    /// owns the rollout; `Some(bound)` is how long the ownership is guaranteed, `Err(())`
    /// (with [`Shell::deposed`] set) when it is not.
    async fn fence(&mut self) -> Result<Option<Duration>, ()> {
        let Some(d) = &self.durable else {
            return Ok(None);
        };
        match d.store.fence(&self.policy.name).await {
            Ok(bound) => Ok(bound),
            Err(e) => {
                tracing::warn!(error = %e, "fence check failed: stopping without acting");
                self.deposed = Some(e.to_string());
                Err(())
            }
        }
    }

    /// Sets `weight` and reads it back, both within `limit` (at most `apply_timeout`).
    async fn apply(&mut self, weight: Weight, limit: Duration) -> Event {
        if self.dry_run.is_some() {
            return self.shadow_apply(weight, limit).await;
        }
        let res = tokio::time::timeout(limit, self.traffic.set_weight(weight)).await;
        let failed = |error: String, transient: bool, now: Duration| Event::ApplyFailed {
            weight,
            error,
            transient,
            now,
        };
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return failed(e.to_string(), e.is_transient(), self.now()),
            Err(_) => {
                return failed(
                    format!(
                        "provider `{}`: setting {weight} took longer than {}",
                        self.traffic.name(),
                        humantime::format_duration(limit)
                    ),
                    true,
                    self.now(),
                );
            }
        }
        // Read back what is really in force.
        let before = self.weight;
        match tokio::time::timeout(limit, self.traffic.current()).await {
            Ok(Ok(cur)) => {
                self.weight = cur;
                if self.within_resolution(cur, weight) {
                    Event::Applied {
                        weight,
                        now: self.now(),
                    }
                } else if !self.within_resolution(cur, before) {
                    // Neither ours nor the old weight (which a slow provider may still
                    // show): someone else set it just now.
                    Event::Preempted {
                        weight,
                        found: cur,
                        now: self.now(),
                    }
                } else {
                    failed(
                        format!(
                            "provider `{}`: set {weight} but {cur} is in force",
                            self.traffic.name()
                        ),
                        true,
                        self.now(),
                    )
                }
            }
            Ok(Err(e)) => failed(
                format!("read-back after setting {weight}: {e}"),
                e.is_transient(),
                self.now(),
            ),
            Err(_) => failed(
                format!(
                    "provider `{}`: read-back took longer than {}",
                    self.traffic.name(),
                    humantime::format_duration(limit)
                ),
                true,
                self.now(),
            ),
        }
    }

    /// A dry run's [`Self::apply`]: the provider is only read. The weight in force is the
    /// step's (`Applied`); the promotion and the rollback count as applied without being
    /// set (the machine ends there, the record says `would-…`); any other weight found is
    /// someone else's change.
    async fn shadow_apply(&mut self, weight: Weight, limit: Duration) -> Event {
        match tokio::time::timeout(limit, self.traffic.current()).await {
            Ok(Ok(cur)) => {
                self.weight = cur;
                let now = self.now();
                if self.within_resolution(cur, weight)
                    || weight == Weight::ZERO
                    || weight == Weight::FULL
                {
                    Event::Applied { weight, now }
                } else {
                    Event::Preempted {
                        weight,
                        found: cur,
                        now,
                    }
                }
            }
            Ok(Err(e)) => Event::ApplyFailed {
                weight,
                error: format!("reading the weight in force: {e}"),
                transient: e.is_transient(),
                now: self.now(),
            },
            Err(_) => Event::ApplyFailed {
                weight,
                error: format!(
                    "provider `{}`: reading the weight in force took longer than {}",
                    self.traffic.name(),
                    humantime::format_duration(limit)
                ),
                transient: true,
                now: self.now(),
            },
        }
    }

    fn within_resolution(&self, found: Weight, applied: Weight) -> bool {
        let tol = i32::from(self.traffic.resolution());
        (i32::from(found.bp()) - i32::from(applied.bp())).abs() <= tol
    }

    /// Reads the weight in force back; within the provider's resolution of `applied` it
    /// counts as `applied`. `None` when the provider does not answer in time (nothing is
    /// concluded from silence).
    async fn in_force(&mut self, applied: Weight) -> Option<Weight> {
        let limit = self.policy.rollout.apply_timeout;
        match tokio::time::timeout(limit, self.traffic.current()).await {
            Ok(Ok(cur)) => {
                self.weight = cur;
                Some(if self.within_resolution(cur, applied) {
                    applied
                } else {
                    cur
                })
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading the weight in force failed");
                None
            }
            Err(_) => {
                tracing::warn!("reading the weight in force timed out");
                None
            }
        }
    }

    /// Feeds the judges the fetched window (see [`judge_window`]).
    fn judge(
        &mut self,
        window: &Window,
        fetches: Vec<Result<Fetched, MetricsError>>,
        judging: &Judging,
    ) -> Analysed {
        judge_window(
            self.policy,
            &mut self.judges,
            &self.last,
            window,
            fetches,
            judging,
        )
    }
}

/// Feeds `policy`'s judges the fetched window, comparative ones only when `judging` admits
/// it, and builds the tick's statuses and records (`last`: the previous tick's records, whose
/// numbers a metric not judged or not fetched keeps showing). The runner's tick, and a
/// backtest's.
#[must_use]
pub fn judge_window(
    policy: &Policy,
    judges: &mut [MetricJudge],
    last: &[MetricRecord],
    window: &Window,
    fetches: Vec<Result<Fetched, MetricsError>>,
    judging: &Judging,
) -> Analysed {
    let mut statuses = Vec::new();
    let mut records = Vec::new();
    let mut requests: Option<[f64; 2]> = None;
    let counts_requests = policy.counts_requests();
    for ((m, judge), res) in policy.metrics.iter().zip(judges.iter_mut()).zip(fetches) {
        let last_stats = || {
            last.iter()
                .find(|r| r.metric == m.name)
                .map_or(Stats::None, |r| r.stats.clone())
        };
        match res {
            Ok(f) => {
                if requests.is_none() && matches!(m.shape, Shape::Counts | Shape::Histogram) {
                    let mut sum = [0.0, 0.0];
                    let mut any = false;
                    for seg in &f.segments {
                        if let Some((b, c)) = seg.trials() {
                            sum[0] += b;
                            sum[1] += c;
                            any = true;
                        }
                    }
                    if any {
                        requests = Some(sum);
                    }
                }
                // A `mann-whitney` metric is advisory on its own: the scorecard over all of
                // them (below) is what the controller acts on, as in Kayenta.
                let scored = matches!(m.judge, JudgeSpec::MannWhitney(_));
                if comparative(m) && !judging.comparative {
                    let why = judging.why.clone().unwrap_or_default();
                    let reason = format!("not judged this window: {why}");
                    statuses.push(MetricStatus {
                        metric: m.name.clone(),
                        outcome: Some(Outcome::Inconclusive),
                        reason: reason.clone(),
                        dry_run: m.dry_run || scored,
                        comparative: true,
                    });
                    records.push(MetricRecord {
                        metric: m.name.clone(),
                        judge: m.judge.name(),
                        outcome: Some(Outcome::Inconclusive),
                        reason,
                        stats: last_stats(),
                        dry_run: m.dry_run,
                        error: None,
                        // Recorded all the same: replay needs them for the baseline's
                        // health, which decides whether a window is judged.
                        observed: SegmentRecord::all(&f.segments),
                        queries: f.queries,
                    });
                    continue;
                }
                let mut verdict = None;
                for seg in &f.segments {
                    verdict = Some(judge.observe(&m.name, seg));
                }
                let v = verdict.unwrap_or_else(|| {
                    judge.observe(
                        &m.name,
                        &Segment {
                            share: window.weight.fraction(),
                            baseline: Observation::Missing,
                            canary: Observation::Missing,
                        },
                    )
                });
                statuses.push(MetricStatus {
                    metric: m.name.clone(),
                    outcome: Some(v.outcome),
                    reason: v.reason.clone(),
                    dry_run: m.dry_run || scored,
                    comparative: comparative(m),
                });
                records.push(MetricRecord {
                    metric: m.name.clone(),
                    judge: v.judge,
                    outcome: Some(v.outcome),
                    reason: v.reason,
                    stats: v.stats,
                    dry_run: m.dry_run,
                    observed: SegmentRecord::all(&f.segments),
                    queries: f.queries,
                    error: None,
                });
            }
            Err(e) => {
                statuses.push(MetricStatus {
                    metric: m.name.clone(),
                    outcome: None,
                    reason: e.to_string(),
                    dry_run: m.dry_run,
                    comparative: comparative(m),
                });
                // Keep the last numbers visible while the source is failing.
                records.push(MetricRecord {
                    metric: m.name.clone(),
                    judge: m.judge.name(),
                    outcome: None,
                    reason: e.to_string(),
                    stats: last_stats(),
                    dry_run: m.dry_run,
                    queries: Vec::new(),
                    error: Some(format!("{}: {e}", e.kind())),
                    observed: Vec::new(),
                });
            }
        }
    }
    if let Some(scoring) = &policy.scoring {
        let v = if judging.comparative {
            let scored: Vec<_> = policy
                .metrics
                .iter()
                .zip(judges.iter())
                .filter(|(m, _)| !m.dry_run)
                .filter_map(|(m, j)| j.scored(&m.name, scoring.min_points))
                .collect();
            Some(score_verdict(&scored, scoring))
        } else {
            None
        };
        let (outcome, reason, judge, stats) = match v {
            Some(v) => (v.outcome, v.reason, v.judge, v.stats),
            None => (
                Outcome::Inconclusive,
                format!(
                    "not judged this window: {}",
                    judging.why.clone().unwrap_or_default()
                ),
                "mann-whitney",
                Stats::None,
            ),
        };
        statuses.push(MetricStatus {
            metric: "score".to_string(),
            outcome: Some(outcome),
            reason: reason.clone(),
            dry_run: false,
            comparative: true,
        });
        records.push(MetricRecord {
            metric: "score".to_string(),
            judge,
            outcome: Some(outcome),
            reason,
            stats,
            dry_run: false,
            queries: Vec::new(),
            error: None,
            observed: Vec::new(),
        });
    }
    // `None` only when no metric of the policy counts requests: then `min_requests`
    // cannot apply. A counting metric without counts this window counts zero.
    let requests = if counts_requests {
        Some(requests.unwrap_or([0.0, 0.0]))
    } else {
        None
    };
    Analysed {
        statuses,
        records,
        requests,
    }
}

/// Where the run loop is between commands.
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

/// One rollout in a controller's hands, as a resumable step over its state: load (a
/// fresh start or the stored record) → decide ([`step`], the only place of decisions) →
/// persist (the store, before acting) → act (the traffic change, the hooks, the checks).
/// [`run`] and [`run_durable`] drive one rollout to its end; a daemon driving many rollouts
/// wakes each one at [`Reconciler::wake_at`] (or on an abort or a lever) and calls
/// [`Reconciler::reconcile`], until [`Reconciler::finished`].
pub struct Reconciler<'a, T, M, S> {
    shell: Shell<'a, T, M, S>,
    l: Loop,
    phase: Phase,
    done: bool,
}

impl<'a, T: TrafficProvider, M: MetricsSource, S: Store> Reconciler<'a, T, M, S> {
    /// Loads the rollout (resumes `durable.resume`, else starts it), decides its first
    /// move, persists it and acts on it: the checks, then the first step's weight, or what a
    /// resumed record says was in progress. `opts.abort` and `opts.levers` are the
    /// caller's to watch (see [`Wake`]).
    ///
    /// # Errors
    /// When the run cannot start (the decision log cannot be opened, the stored record
    /// does not fit the policy).
    #[allow(clippy::too_many_lines)] // the set-up of one rollout, read top to bottom
    pub async fn start(
        policy: &'a Policy,
        traffic: &'a T,
        source: &'a M,
        mut durable: Option<Durable<'a, S>>,
        opts: RunOptions,
        observer: &'a mut dyn Observer,
    ) -> Result<Self, Error> {
        let resume = durable.as_mut().and_then(|d| d.resume.take());
        let path = opts
            .decisions
            .clone()
            .or_else(|| resume.as_ref().and_then(|r| r.decisions.clone()))
            .or_else(|| policy.decisions.clone());
        let log = match &path {
            Some(p) => Some(RecordLog::open(p).map_err(|source| Error::DecisionLog {
                path: p.clone(),
                source,
            })?),
            None => None,
        };
        let plan = &policy.rollout;
        let fresh_judges = || -> Vec<MetricJudge> {
            policy
                .metrics
                .iter()
                .map(|m| MetricJudge::new(&m.judge))
                .collect()
        };
        let judges = match &resume {
            Some(r) if r.judges.0.len() == policy.metrics.len() => r.judges.0.clone(),
            Some(r) => {
                return Err(Error::Unresumable {
                    rollout: policy.name.clone(),
                    why: format!(
                        "it holds {} judges, the policy has {} metrics",
                        r.judges.0.len(),
                        policy.metrics.len()
                    ),
                });
            }
            None => fresh_judges(),
        };
        let rollout_id = match (&durable, &resume) {
            (_, Some(r)) => r.rollout_id.clone(),
            (Some(d), None) => d.rollout_id.clone(),
            (None, None) => new_rollout_id(),
        };
        let policy_sha256 = durable
            .as_ref()
            .map(|d| d.policy.sha256.clone())
            .or(opts.policy_sha256.clone());
        // Time nobody watched the rollout: from the record's last write to now.
        let downtime = resume.as_ref().map_or(Duration::ZERO, |r| {
            SystemTime::now()
                .duration_since(r.saved_at)
                .unwrap_or_default()
        });
        let restart = durable.as_mut().and_then(|d| d.restart.take());
        let mut shell = Shell {
            policy,
            traffic,
            source,
            log,
            observer,
            durable,
            rollout_id,
            policy_sha256,
            decisions: path.clone(),
            operator_actions: resume.as_ref().map_or(0, |r| r.operator_actions),
            base: resume
                .as_ref()
                .map_or(Duration::ZERO, |r| r.elapsed + downtime),
            start: Instant::now(),
            wall0: resume
                .as_ref()
                .map_or_else(SystemTime::now, |r| r.started_at),
            weight: traffic.current().await.unwrap_or(Weight::ZERO),
            judges,
            last: Vec::new(),
            ticks: resume.as_ref().map_or(0, |r| r.ticks),
            watched: false,
            steps_reached: resume.as_ref().map_or(0, |r| r.steps_reached),
            log_failed: None,
            pending: Vec::new(),
            notifier: policy.notify.clone().map(Notifier::new),
            readiness: opts.readiness,
            deposed: None,
            dry_run: opts.dry_run,
            would: None,
        };
        let mut l = Loop {
            queue: VecDeque::new(),
            seq: resume.as_ref().map_or(0, |r| r.seq),
            first_traffic: resume.as_ref().and_then(|r| r.first_traffic),
            next_tick: Instant::now(),
            window_start: shell.now(),
            saved: None,
            paused_for: Duration::ZERO,
        };
        let mut phase = Phase::Pending;
        if let Some(r) = resume {
            // Take the rollout over: read back what is in force and let the machine decide.
            let limit = plan.apply_timeout;
            let found = match tokio::time::timeout(limit, traffic.current()).await {
                Ok(Ok(w)) => Some(w),
                _ => None,
            };
            let now = shell.now();
            let before = r.phase.clone();
            let (next, cmds) = step(
                r.phase,
                Event::Restored {
                    found,
                    applied: r.weight,
                    downtime,
                    now,
                },
                plan,
            );
            let detail = format!(
                "run {} taken over from its record in phase {}{}: weight recorded {}, in force {}; nobody watched for {:.1}s (counted toward the deadline, not toward the step's time)",
                shell.rollout_id,
                before.name(),
                Shell::<T, M, S>::step_of(&before)
                    .map_or(String::new(), |s| format!(" at step {s}")),
                r.weight,
                found.map_or_else(|| "unknown (no answer)".to_string(), |w| w.to_string()),
                downtime.as_secs_f64(),
            );
            shell.note(
                RecordKind::Resumed,
                &before,
                &next,
                "resumed",
                Some(detail),
                None,
            );
            phase = next;
            l.queue.extend(cmds);
            l.next_tick = Instant::now() + plan.analysis_interval;
        } else {
            // Always: the provider and the source must answer before any traffic moves.
            let (next, cmds) = step(
                phase.clone(),
                Event::Start {
                    now: shell.now(),
                    pre_checks: true,
                },
                plan,
            );
            shell.transition(&phase, &next, "started", restart);
            if plan.blue_green() && shell.dry_run.is_none() {
                let detail = format!(
                    "blue-green: green is checked at 0% before one switch to 100%; {NO_PREVIEW_SHARE}"
                );
                shell.transition(&phase, &next, "blue-green", Some(detail));
            }
            if let Some(d) = &shell.dry_run {
                let detail = format!(
                    "dry run: the traffic provider is only read, no weight is set; {}",
                    if d.not_run.is_empty() {
                        "no hook or gate to skip".to_string()
                    } else {
                        format!("not run: {}", d.not_run.join(", "))
                    }
                );
                shell.transition(&phase, &next, "dry-run", Some(detail));
            }
            phase = next;
            l.queue.extend(cmds);
        }

        let mut r = Reconciler {
            shell,
            l,
            phase,
            done: false,
        };
        r.settle().await;
        Ok(r)
    }

    /// Whether the rollout has ended (nothing more to reconcile: see [`Self::finish`]).
    #[must_use]
    pub fn finished(&self) -> bool {
        self.done
    }

    /// Why this controller stopped acting on the rollout, if it did: the store refused a
    /// write or the fence check before a traffic change (another replica leads, or etcd
    /// could not confirm this one does). A deposed rollout is never finished; drop it
    /// (its owner resumes it from the store).
    #[must_use]
    pub fn deposed(&self) -> Option<&str> {
        self.shell.deposed.as_deref()
    }

    /// When the rollout's next analysis tick is due ([`Wake::Tick`]).
    #[must_use]
    pub fn wake_at(&self) -> Instant {
        self.l.next_tick
    }

    /// Where the rollout is.
    #[must_use]
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// Writes the rollout's record now, as it stands (the judges' state included), for a
    /// controller that stops with the rollout unfinished: the next one resumes from here.
    /// `release` clears the record's control API (no controller runs the rollout any more).
    pub async fn checkpoint(&mut self, release: bool) {
        if release && let Some(d) = &mut self.shell.durable {
            d.control = None;
        }
        let last = Some(self.phase.name().to_string());
        self.shell.persist(&self.phase, &self.l, last).await;
        self.l.saved = Some(self.phase.clone());
    }

    /// One reconcile step: feeds `wake` to the machine (a tick analyses the window that
    /// ended; an early tick does nothing), persists what it decided, then acts on it until
    /// the rollout waits again or has ended.
    pub async fn reconcile(&mut self, wake: Wake) {
        if self.done || self.shell.deposed.is_some() {
            return;
        }
        self.decide(wake).await;
        self.settle().await;
    }

    /// Carries out the queued commands, persisting the state before each one; `true` once
    /// the machine said the rollout is finished.
    #[allow(clippy::too_many_lines)] // one match over the commands
    async fn act(&mut self) -> bool {
        let Reconciler {
            shell, l, phase, ..
        } = self;
        let policy = shell.policy;
        let plan = &policy.rollout;
        loop {
            // Persist before acting: the store always knows what is about to be done
            // (and keeps the records that led here, when it keeps records).
            if l.saved.as_ref() != Some(&*phase) || !shell.pending.is_empty() {
                shell
                    .persist(phase, l, Some(phase.name().to_string()))
                    .await;
                l.saved = Some(phase.clone());
            }
            if shell.deposed.is_some() {
                l.queue.clear();
                return false;
            }
            let Some(cmd) = l.queue.pop_front() else {
                return false;
            };
            if let Some(p) = paused_total(&*phase, shell.now()) {
                l.paused_for = p;
            }
            match cmd {
                Command::Apply { weight, delay } => {
                    // Forward moves must end by the deadline, a rollback one apply_timeout
                    // after it (time paused is added, as the deadline's own rule does).
                    let rolling_back = matches!(phase, Phase::RollingBack { .. });
                    // A rollback may come from the post-promotion window or keep_blue, after
                    // the deadline.
                    let end = bounds::plus(
                        bounds::plus(plan.deadline, l.paused_for),
                        if rolling_back {
                            bounds::plus(
                                plan.apply_timeout,
                                bounds::plus(plan.post_promotion, plan.keep_blue),
                            )
                        } else {
                            Duration::ZERO
                        },
                    );
                    let left = end.saturating_sub(shell.now());
                    if !delay.is_zero() {
                        tokio::time::sleep(delay.min(left)).await;
                    }
                    let mut left = end.saturating_sub(shell.now());
                    if matches!(phase, Phase::RollingBack { attempt: 0, .. }) {
                        // A rollback always gets one full attempt, whenever it starts.
                        left = left.max(plan.apply_timeout);
                    }
                    let event = if left.is_zero() {
                        Event::OutOfTime {
                            weight,
                            now: shell.now(),
                        }
                    } else {
                        // The fence, right before the provider call, which it also bounds:
                        // the call is given up before the ownership could lapse.
                        let Ok(bound) = shell.fence().await else {
                            l.queue.clear();
                            return false;
                        };
                        let limit = left.min(plan.apply_timeout);
                        shell
                            .apply(weight, bound.map_or(limit, |b| limit.min(b)))
                            .await
                    };
                    if l.first_traffic.is_none()
                        && matches!(event, Event::Applied { weight, .. } if weight.bp() > 0)
                    {
                        l.first_traffic = Some(shell.now());
                    }
                    let (label, detail) = match &event {
                        Event::Applied { .. } => ("weight-applied", None),
                        Event::ApplyFailed { error, .. } => ("apply-failed", Some(error.clone())),
                        Event::OutOfTime { weight, .. } => {
                            ("out-of-time", Some(format!("no time left to set {weight}")))
                        }
                        Event::Preempted { weight, found, .. } => (
                            "preempted",
                            Some(format!(
                                "set {weight}, then {found} was in force: changed outside coalmine"
                            )),
                        ),
                        _ => ("event", None),
                    };
                    let (n, c) = step(phase.clone(), event, plan);
                    if matches!(
                        n,
                        Phase::Promoted | Phase::Watching(_) | Phase::KeepingBlue(_)
                    ) {
                        shell.steps_reached = plan.steps.len();
                    }
                    if let Phase::Watching(_) | Phase::KeepingBlue(_) = &n {
                        l.next_tick = Instant::now() + plan.analysis_interval;
                        l.window_start = shell.now();
                    }
                    if let Phase::Progressing(p) = &n {
                        shell.steps_reached = shell.steps_reached.max(p.step + 1);
                        // A new step: the next window starts now.
                        l.next_tick = Instant::now() + plan.analysis_interval;
                        l.window_start = shell.now();
                    }
                    let detail = match (&n, detail) {
                        (Phase::Watching(_), None) => Some(format!(
                            "100% in force; judging it for post_promotion {} with the threshold guards (comparisons are not judged: no concurrent baseline), rolling back on a Fail",
                            humantime::format_duration(plan.post_promotion)
                        )),
                        (Phase::KeepingBlue(_), None) => Some(keeping_blue_text(plan)),
                        (Phase::Promoted, None) if !shell.analysed() => Some(
                            "without analysis: a blind cutover, nothing was analysed".to_string(),
                        ),
                        (Phase::RolledBack { reason }, None) => Some(reason.to_string()),
                        (Phase::Failed { reason }, _) => Some(reason.clone()),
                        (_, d) => d,
                    };
                    let label = match &n {
                        Phase::Promoted if shell.dry_run.is_some() => "would-promote",
                        Phase::RolledBack { .. } if shell.dry_run.is_some() => "would-rollback",
                        Phase::Promoted => "promoted",
                        Phase::RolledBack { .. } => "rolled-back",
                        Phase::Failed { .. } => "failed",
                        Phase::Progressing(_) if shell.dry_run.is_some() => "weight-in-force",
                        Phase::Watching(_) => "post-promotion",
                        Phase::KeepingBlue(_) => "keeping-blue",
                        _ => label,
                    };
                    let detail = match label {
                        "would-promote" | "would-rollback" => {
                            let why = detail.unwrap_or_else(|| {
                                format!(
                                    "the evidence was complete at the weight in force {}",
                                    shell.weight
                                )
                            });
                            let would =
                                format!("{label} at {:.0} s: {why}", shell.now().as_secs_f64());
                            shell.would = Some(would.clone());
                            Some(format!("{would}; nothing was changed (dry run)"))
                        }
                        _ => detail,
                    };
                    shell.transition(&*phase, &n, label, detail);
                    *phase = n;
                    l.queue.extend(c);
                }
                Command::Finish => return true,
                Command::Record(_) => {}
                Command::Notify(note) => {
                    let wall0 = shell.wall0;
                    let at = move |d: Duration| rfc3339(wall0 + d);
                    let detail = note.detail(&at);
                    shell.transition(&*phase, &*phase, note.event(), Some(detail));
                }
                Command::RunGates { step: target } => {
                    let gates = plan.gates_before(target).into_iter().cloned().collect();
                    let refused = shell.ask_gates(gates, Some(target), &*phase).await;
                    if refused.is_some() && matches!(phase, Phase::Confirming { .. }) {
                        // Asked again at the next tick.
                        l.next_tick = Instant::now() + plan.analysis_interval;
                    }
                    let event = Event::GatesDone {
                        step: target,
                        refused,
                        now: shell.now(),
                    };
                    let (n, c) = step(phase.clone(), event, plan);
                    *phase = n;
                    l.queue.extend(c);
                }
                Command::RunPreChecks => {
                    let failed = shell.pre_checks(&*phase).await;
                    let event = Event::PreChecksDone {
                        failed,
                        now: shell.now(),
                    };
                    let (n, c) = step(phase.clone(), event, plan);
                    match &n {
                        Phase::NotStarted { reason } => {
                            shell.transition(
                                &*phase,
                                &n,
                                "not-started",
                                Some(not_started_text(reason)),
                            );
                        }
                        Phase::PreChecks => {}
                        _ => shell.transition(&*phase, &n, "checks-passed", None),
                    }
                    *phase = n;
                    l.queue.extend(c);
                }
            }
        }
    }

    /// Acts until the rollout waits for its next wake-up or has ended; a decision log or a
    /// store that stopped taking records, or a phase with nothing to wait for, rolls back.
    async fn settle(&mut self) {
        loop {
            let ended = self.act().await;
            if self.shell.deposed.is_some() {
                return;
            }
            if ended || self.phase.is_terminal() {
                self.done = true;
                return;
            }
            if let Some(why) = self.shell.log_failed.take() {
                let c = self.shell.abort(&mut self.phase, why);
                self.l.queue.extend(c);
                continue;
            }
            if !matches!(
                self.phase,
                Phase::Progressing(_)
                    | Phase::Paused(_)
                    | Phase::Confirming { .. }
                    | Phase::Watching(_)
                    | Phase::KeepingBlue(_)
            ) {
                // Nothing to wait for (a rejected event left the phase unchanged): stop safely.
                let why = format!("controller stuck in phase {}", self.phase.name());
                let c = self.shell.abort(&mut self.phase, why);
                self.l.queue.extend(c);
                continue;
            }
            return;
        }
    }

    /// Feeds one wake-up to the machine and queues the commands it decided (the tick's
    /// record is written before any of them is carried out).
    #[allow(clippy::too_many_lines)] // the analysis of one window, read top to bottom
    async fn decide(&mut self, wake: Wake) {
        let Reconciler {
            shell, l, phase, ..
        } = self;
        let policy = shell.policy;
        let source = shell.source;
        let plan = &policy.rollout;
        match wake {
            Wake::Abort(why) => {
                l.queue.extend(shell.abort(phase, why));
                return;
            }
            Wake::Lever(lever) => {
                let now = shell.now();
                if let Some(p) = paused_total(&*phase, now) {
                    l.paused_for = p;
                }
                let (event, label) = match lever {
                    Lever::Approve => (Event::Approve { now }, "approved"),
                    Lever::Pause { why } => (Event::Pause { why, now }, "pause-requested"),
                    Lever::Resume => (Event::Resume { now }, "resume-requested"),
                    Lever::Refused { action, actor, why } => {
                        shell.operator_actions += 1;
                        shell.refuse(phase, &action, actor, &format!("{why}; nothing was done"));
                        return;
                    }
                    Lever::Operator {
                        action,
                        actor,
                        reason,
                    } => {
                        let Some(event) = shell.operator(&*phase, &action, actor, &reason) else {
                            return;
                        };
                        if let Event::Abort { why, .. } = event {
                            l.queue.extend(shell.abort(phase, why));
                            return;
                        }
                        (event, action.name())
                    }
                };
                let (n, c) = step(phase.clone(), event, plan);
                shell.transition(&*phase, &n, label, None);
                *phase = n;
                l.queue.extend(c);
                return;
            }
            Wake::Tick => {}
        }
        if Instant::now() < l.next_tick {
            return;
        }
        if let Phase::Confirming { .. } = &*phase {
            // No traffic has moved: nothing to analyse, the gates are asked again.
            let event = Event::Tick {
                now: shell.now(),
                metrics: Vec::new(),
                requests: None,
                facts: WindowFacts::default(),
            };
            let (n, c) = step(phase.clone(), event, plan);
            if let Phase::NotStarted { reason } = &n {
                shell.transition(&*phase, &n, "not-started", Some(reason.to_string()));
            }
            *phase = n;
            l.queue.extend(c);
            l.next_tick = Instant::now() + plan.analysis_interval;
            return;
        }
        if let Phase::KeepingBlue(_) = &*phase {
            // Nothing is judged: only the weight in force is read (never overridden).
            let in_force = shell.in_force(Weight::FULL).await;
            let event = Event::Tick {
                now: shell.now(),
                metrics: Vec::new(),
                requests: None,
                facts: WindowFacts {
                    in_force,
                    ..WindowFacts::default()
                },
            };
            let (n, c) = step(phase.clone(), event, plan);
            if let Phase::Promoted = &n {
                let detail = format!(
                    "keep_blue of {} ended: blue is retired (the blue-retired gates are told), green keeps 100%",
                    humantime::format_duration(plan.keep_blue)
                );
                shell.transition(&*phase, &n, "promoted", Some(detail));
            }
            *phase = n;
            l.queue.extend(c);
            l.next_tick = Instant::now() + plan.analysis_interval;
            l.window_start = shell.now();
            return;
        }
        let (step_before, step_requests_before, applied, step_since) = match &*phase {
            Phase::Progressing(p) => (p.step, p.requests, p.weight, Some(p.since)),
            Phase::Paused(z) => (
                z.progress.step,
                z.progress.requests,
                z.progress.weight,
                Some(z.progress.since),
            ),
            Phase::Watching(w) => {
                shell.watched = true;
                (
                    plan.steps.len().saturating_sub(1),
                    [0.0, 0.0],
                    Weight::FULL,
                    Some(w.since),
                )
            }
            // settle() leaves no other phase waiting for a tick.
            _ => return,
        };
        // Analyse the window that just ended.
        let now = shell.now();
        let window = Window {
            seq: l.seq,
            start: shell.wall(l.window_start),
            end: shell.wall(now),
            weight: applied,
        };
        l.seq += 1;
        shell.ticks += 1;
        let fetches = join_all(policy.metrics.iter().map(|m| source.fetch(m, &window))).await;
        // What weight is in force, read as late as possible before deciding: a change by
        // someone else between this read and the next traffic change cannot be seen (that
        // would need compare-and-set from the provider), so the gap is kept to the decision
        // and its record.
        let in_force = shell.in_force(applied).await;
        // A window that starts inside the warm-up is discarded whole (it was still fetched:
        // sources keep their windows contiguous).
        let warming = l
            .first_traffic
            .is_some_and(|t| l.window_start < t + plan.warmup);
        let unanalysed = !plan.analysed(step_before);
        let mut facts = WindowFacts {
            baseline_errors: baseline_errors(&policy.metrics, &fetches),
            in_force,
            discarded: None,
        };
        let now = shell.now();
        let (analysed, health) = if warming || unanalysed {
            let since = now.saturating_sub(l.first_traffic.unwrap_or(now));
            facts.discarded = Some(if unanalysed {
                format!(
                    "step {} has analysis = false: data discarded, nothing judged",
                    step_before + 1
                )
            } else {
                format!(
                    "warming up: {:.0}s of {:.0}s, data discarded",
                    since.as_secs_f64(),
                    plan.warmup.as_secs_f64()
                )
            });
            facts.baseline_errors = None;
            let empty = Analysed {
                statuses: Vec::new(),
                records: Vec::new(),
                requests: None,
            };
            (empty, Health::Unknown)
        } else {
            let j = judging(&*phase, &facts, plan);
            (shell.judge(&window, fetches, &j), j.health)
        };
        let (n, c) = step(
            phase.clone(),
            Event::Tick {
                now,
                metrics: analysed.statuses,
                requests: analysed.requests,
                facts,
            },
            plan,
        );
        let decision = c.iter().find_map(|c| match c {
            Command::Record(d) => Some(d.clone()),
            _ => None,
        });
        let step_requests = match &n {
            Phase::Progressing(p) => p.requests,
            Phase::Paused(z) => z.progress.requests,
            _ => {
                let r = analysed.requests.unwrap_or([0.0, 0.0]);
                [
                    step_requests_before[0] + r[0],
                    step_requests_before[1] + r[1],
                ]
            }
        };
        let r = Record {
            kind: RecordKind::Tick,
            rollout: policy.name.clone(),
            rollout_id: shell.rollout_id.clone(),
            version: env!("CARGO_PKG_VERSION"),
            policy_sha256: shell.policy_sha256.clone(),
            actor: None,
            time: rfc3339(shell.wall(now)),
            elapsed_s: now.as_secs_f64(),
            phase: phase.name(),
            next_phase: n.name(),
            step: Some(step_before + 1),
            steps: plan.steps.len(),
            weight: shell.weight,
            window: Some(WindowRecord {
                seq: window.seq,
                start: rfc3339(window.start),
                end: rfc3339(window.end),
            }),
            since_s: step_since.map(|d| d.as_secs_f64()),
            requests: analysed.requests.map(|w| RequestsRecord {
                window: w,
                step: step_requests,
            }),
            baseline: (health != Health::Unknown).then_some(health),
            metrics: analysed.records.clone(),
            decision: decision.clone().or(Some(Decision::Hold {
                reason: String::new(),
            })),
            event: None,
            detail: None,
        };
        // Written before acting on it.
        shell.record(&r);
        match (&*phase, &n) {
            (Phase::Watching(_), Phase::Promoted) => {
                let detail = format!(
                    "the post-promotion window of {} ended without a Fail: 100% stays on the canary",
                    humantime::format_duration(plan.post_promotion)
                );
                shell.transition(&*phase, &n, "promoted", Some(detail));
            }
            (Phase::Watching(_), Phase::KeepingBlue(_)) => {
                let detail = format!(
                    "the post-promotion window of {} ended without a Fail; {}",
                    humantime::format_duration(plan.post_promotion),
                    keeping_blue_text(plan)
                );
                shell.transition(&*phase, &n, "keeping-blue", Some(detail));
            }
            _ => {}
        }
        if !analysed.records.is_empty() {
            shell.last = analysed.records;
        }
        *phase = n;
        l.queue.extend(c);
        l.next_tick += plan.analysis_interval;
        if l.next_tick < Instant::now() {
            l.next_tick = Instant::now() + plan.analysis_interval;
        }
        l.window_start = now;
    }

    /// Runs the outcome's hooks and returns the report (the record was persisted when the
    /// machine ended the rollout; once more here if it was not).
    pub async fn finish(self) -> RunReport {
        let Reconciler {
            mut shell,
            l,
            phase,
            ..
        } = self;
        let policy = shell.policy;
        let plan = &policy.rollout;
        if l.saved.as_ref() != Some(&phase) || !shell.pending.is_empty() {
            shell
                .persist(&phase, &l, Some(phase.name().to_string()))
                .await;
        }
        match &phase {
            // A dry run acts on nothing (its shadow policy has no hooks or gates anyway).
            _ if shell.dry_run.is_some() => {}
            Phase::Promoted => {
                shell
                    .run_hooks(HookWhen::Promoted, &phase, "promoted")
                    .await;
                if plan.blue_green() {
                    let told: Vec<_> = plan
                        .gates
                        .iter()
                        .filter(|g| g.kind == crate::policy::gates::GateKind::BlueRetired)
                        .cloned()
                        .collect();
                    shell.ask_gates(told, None, &phase).await;
                }
            }
            Phase::RolledBack { .. } => {
                shell
                    .run_hooks(HookWhen::RolledBack, &phase, "rolled-back")
                    .await;
                let told: Vec<_> = plan
                    .gates
                    .iter()
                    .filter(|g| g.kind == crate::policy::gates::GateKind::Rollback)
                    .cloned()
                    .collect();
                shell.ask_gates(told, None, &phase).await;
            }
            _ => {}
        }
        // The hooks' and gates' records, for a store that keeps them.
        if !shell.pending.is_empty() && shell.deposed.is_none() {
            shell
                .persist(&phase, &l, Some(phase.name().to_string()))
                .await;
        }
        if let Some(n) = &mut shell.notifier {
            n.flush().await;
        }
        let outcome = match &phase {
            Phase::Promoted => FinalOutcome::Promoted,
            Phase::RolledBack { reason } => FinalOutcome::RolledBack {
                reason: reason.clone(),
            },
            Phase::NotStarted { reason } => FinalOutcome::NotStarted {
                reason: reason.clone(),
            },
            Phase::Failed { reason } => FinalOutcome::Failed {
                reason: reason.clone(),
            },
            other => FinalOutcome::Failed {
                reason: format!("controller stopped in phase {}", other.name()),
            },
        };
        let exit_code = match (&shell.dry_run, &outcome) {
            // A dry run that reached a verdict did what it was asked.
            (Some(_), FinalOutcome::Promoted | FinalOutcome::RolledBack { .. }) => 0,
            _ => outcome.exit_code(),
        };
        RunReport {
            rollout: policy.name.clone(),
            exit_code,
            outcome,
            duration_s: shell.now().as_secs_f64(),
            ticks: shell.ticks,
            analysed: shell.analysed(),
            steps_reached: shell.steps_reached,
            steps: plan.steps.len(),
            final_weight: shell.weight,
            metrics: shell.last,
            decisions: shell.decisions.clone(),
            would: shell.would.clone(),
            not_run: shell.dry_run.map(|d| d.not_run).unwrap_or_default(),
        }
    }
}

/// What keep_blue means, for the records.
fn keeping_blue_text(plan: &Rollout) -> String {
    format!(
        "100% on green; blue stays deployed for keep_blue {} (nothing is judged; `coalmine rollback` switches back to blue meanwhile), then the blue-retired gates are told",
        humantime::format_duration(plan.keep_blue)
    )
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
