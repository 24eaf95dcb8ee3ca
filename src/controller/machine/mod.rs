//! The pure rollout state machine: `step(phase, event, plan) -> (phase, commands)`.
//!
//! No I/O and no clock reads: time arrives inside events as the offset since the rollout
//! started. The async runner ([`super::runner`]) executes the commands and feeds back the
//! results as events. Terminal states are variants, not flags.
//!
//! Phases: Pending → PreChecks → Shifting → Progressing ⇄ Paused → Promoting → (Watching, the
//! post-promotion window) → (KeepingBlue, blue-green's keep_blue) → Promoted;
//! any live phase → RollingBack → RolledBack; PreChecks → NotStarted (the canary was not
//! ready: nothing moved); Failed (no safe state could be reached).

use crate::analysis::Outcome;
use crate::controller::health::{ErrorCounts, Health};
use crate::model::Weight;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

mod step;
mod tick;

pub use step::{judging, step};

/// What a blue-green rollout says about the preview share: no provider offers one (the
/// [`crate::traffic::TrafficProvider`] trait sets weights only), so green takes no traffic
/// before the switch.
pub const NO_PREVIEW_SHARE: &str =
    "no preview share: green is checked by the pre-rollout hooks only";

/// Why a rollout is rolled back (or failed, or never started).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cause", rename_all = "kebab-case")]
pub enum Reason {
    /// A metric's judge failed.
    MetricFailed {
        /// Metric name.
        metric: String,
        /// The judge's reason, with its numbers.
        detail: String,
    },
    /// The rollout was not promoted in time.
    Deadline {
        /// The limit, seconds.
        after_s: f64,
        /// What the last step was still waiting for.
        #[serde(skip_serializing_if = "String::is_empty")]
        waiting: String,
    },
    /// Data was missing for too long.
    NoData {
        /// Metrics without data.
        metrics: Vec<String>,
        /// For how long, seconds.
        for_s: f64,
    },
    /// Metric queries failed too many ticks in a row.
    QueryErrors {
        /// Consecutive ticks with errors.
        ticks: u32,
        /// The last error.
        last: String,
    },
    /// The traffic provider could not apply a weight.
    Provider {
        /// What failed.
        error: String,
    },
    /// An operator or signal stopped the rollout.
    Aborted {
        /// Why.
        why: String,
    },
    /// A pre-rollout check (a hook, or the canary's readiness probe) failed: no traffic was
    /// moved.
    PreCheck {
        /// The check's name.
        hook: String,
        /// What it said.
        detail: String,
    },
    /// A weight the controller did not apply was found in force
    /// (`on_external_change = "rollback"`, or `"adopt"` of 0 %).
    ExternalChange {
        /// The weight found, percent.
        found: Weight,
        /// The weight the controller had applied, percent.
        applied: Weight,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::MetricFailed { metric, detail } => {
                write!(f, "metric `{metric}` failed: {detail}")
            }
            Reason::Deadline { after_s, waiting } => {
                write!(
                    f,
                    "deadline of {} passed before promotion",
                    humantime::format_duration(Duration::from_secs_f64(after_s.round()))
                )?;
                if waiting.is_empty() {
                    Ok(())
                } else {
                    write!(f, "; still waiting for: {waiting}")
                }
            }
            Reason::NoData { metrics, for_s } => write!(
                f,
                "no data for {} ({}) for {for_s:.0}s",
                metrics.join(", "),
                if metrics.len() == 1 {
                    "metric"
                } else {
                    "metrics"
                }
            ),
            Reason::QueryErrors { ticks, last } => {
                write!(
                    f,
                    "metric queries failed {ticks} ticks in a row; last: {last}"
                )
            }
            Reason::Provider { error } => write!(f, "traffic provider failed: {error}"),
            Reason::Aborted { why } => write!(f, "aborted: {why}"),
            Reason::PreCheck { hook, detail } => {
                write!(f, "pre-rollout check `{hook}` failed: {detail}")
            }
            Reason::ExternalChange { found, applied } => write!(
                f,
                "weight {found} in force, but coalmine had applied {applied}: changed outside coalmine"
            ),
        }
    }
}

/// Progress within an analysed step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Index into the plan's steps.
    pub step: usize,
    /// Weight in force.
    pub weight: Weight,
    /// When the weight was applied (offset from the rollout's start).
    pub since: Duration,
    /// Requests per arm in this step (baseline, canary), from comparable windows only.
    pub requests: [f64; 2],
    /// Since when data has been missing, if it is.
    pub no_data_since: Option<Duration>,
    /// Consecutive ticks with query errors.
    pub error_ticks: u32,
    /// An operator approved leaving this step.
    pub approved: bool,
    /// An operator released this step (`coalmine promote`): its remaining time, its request
    /// count and its approval gate are waived; the evidence rules are not.
    #[serde(default)]
    pub released: bool,
    /// Time in this step that does not count toward `step_duration` (windows with an
    /// unhealthy baseline, time paused).
    pub excluded: Duration,
    /// End of the last analysed window (offset from the start).
    pub last_tick: Duration,
    /// The baseline's recent error counts `[errors, requests]`, newest last.
    pub baseline_recent: Vec<[f64; 2]>,
    /// Whether the last assessment found the baseline unhealthy.
    pub baseline_unhealthy: bool,
    /// Time the whole rollout has spent paused (the deadline is extended by it).
    pub paused_for: Duration,
    /// When the step was first otherwise done, so that its planned pause (`[[rollout.step]]
    /// pause = "10m"`) runs from then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_since: Option<Duration>,
}

impl Progress {
    /// A fresh step at `weight`, applied at `now`.
    #[must_use]
    pub fn new(step: usize, weight: Weight, now: Duration, paused_for: Duration) -> Self {
        Progress {
            step,
            weight,
            since: now,
            requests: [0.0, 0.0],
            no_data_since: None,
            error_ticks: 0,
            approved: false,
            released: false,
            excluded: Duration::ZERO,
            last_tick: now,
            baseline_recent: Vec::new(),
            baseline_unhealthy: false,
            paused_for,
            ready_since: None,
        }
    }
}

/// Why a rollout is paused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cause", rename_all = "kebab-case")]
pub enum PauseCause {
    /// A weight the controller did not apply was found in force (`on_external_change =
    /// "pause"`): someone else took over traffic.
    ExternalChange {
        /// The weight found.
        found: Weight,
        /// The weight the controller had applied.
        applied: Weight,
        /// When it applied it (offset from the start).
        applied_at: Duration,
    },
    /// An operator asked for it.
    Operator {
        /// Why.
        why: String,
    },
}

/// A paused rollout: the controller touches no traffic until an operator resumes or aborts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Paused {
    /// The step it was in.
    pub progress: Progress,
    /// Why.
    pub cause: PauseCause,
    /// Since when (offset from the start).
    pub since: Duration,
    /// The weight in force as last read back.
    pub in_force: Weight,
    /// The metrics failing while paused that the operator has been told about.
    pub alerted: Vec<String>,
    /// Paused during blue-green's keep_blue: where it was. The switch and the post-promotion
    /// window are over (and recorded), so a resume goes on with keep_blue, not through them
    /// again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_blue: Option<KeepBlue>,
}

/// The post-promotion window ([`Phase::Watching`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Watch {
    /// When 100 % was in force: the window runs from here for `post_promotion` (offset from
    /// the start; wall time, so a controller's downtime counts toward it).
    pub since: Duration,
    /// Since when data has been missing, if it is.
    #[serde(default)]
    pub no_data_since: Option<Duration>,
    /// Consecutive ticks with query errors.
    #[serde(default)]
    pub error_ticks: u32,
    /// Time the rollout spent paused before the promotion.
    #[serde(default)]
    pub paused_for: Duration,
}

/// Blue-green's `keep_blue` time ([`Phase::KeepingBlue`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeepBlue {
    /// When it began (offset from the start; wall time, so a controller's downtime counts
    /// toward it): it ends `keep_blue` later.
    pub since: Duration,
    /// Time the rollout spent paused before the switch.
    #[serde(default)]
    pub paused_for: Duration,
}

/// Where a rollout is. Serialized into the rollout's stored record (tagged by `phase`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "kebab-case")]
pub enum Phase {
    /// Not started.
    Pending,
    /// Running the pre-rollout checks; no traffic has moved.
    PreChecks,
    /// Asking the gates before the first step (`confirm-rollout`, the first step's own);
    /// no traffic has moved. A refusal holds and asks again at each tick until the deadline.
    /// When the first step is the promotion (`steps = [100]`, blue-green) and `[rollout]
    /// approval` asks for one, it first waits for the operator's approval (`approval`).
    Confirming {
        /// The step the gates guard (0).
        step: usize,
        /// Refusals so far.
        refusals: u32,
        /// Waiting for an operator to approve the promotion; the gates are asked after.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        approval: bool,
    },
    /// Waiting for a step's weight to be applied.
    Shifting {
        /// Step index.
        step: usize,
        /// Weight being applied.
        target: Weight,
        /// Failed attempts so far.
        attempt: u32,
        /// Time the rollout has spent paused so far.
        paused_for: Duration,
    },
    /// A step's weight is in force and analysis runs.
    Progressing(Progress),
    /// Waiting for an operator: nothing is changed, analysis is recorded but not acted on.
    Paused(Paused),
    /// Putting 100 % on the canary.
    Promoting {
        /// Failed attempts so far.
        attempt: u32,
    },
    /// 100 % is in force and the `[rollout] post_promotion` window runs: the canary is still
    /// judged by what needs no concurrent baseline (threshold guards) and a Fail rolls back
    /// to 0; at the window's end the rollout is promoted.
    Watching(Watch),
    /// Blue-green: green has all traffic and the post-promotion window is over; blue stays
    /// deployed for `keep_blue` so that a rollback (`coalmine rollback`) is one switch back.
    /// Nothing is judged; a weight changed outside coalmine is not overridden. At its end
    /// the rollout is promoted and the `blue-retired` gates are told.
    KeepingBlue(KeepBlue),
    /// Done: the canary has all traffic.
    Promoted,
    /// Putting 0 % on the canary.
    RollingBack {
        /// Why.
        reason: Reason,
        /// Failed attempts so far.
        attempt: u32,
    },
    /// Done: the canary has no traffic.
    RolledBack {
        /// Why.
        reason: Reason,
    },
    /// Done before any traffic moved: a pre-rollout check failed (the canary was not ready).
    NotStarted {
        /// Which check and what it said.
        reason: Reason,
    },
    /// Done, unsafely: the controller could not reach a safe state.
    Failed {
        /// What happened and what traffic may be in.
        reason: String,
    },
}

impl Phase {
    /// Short name for records.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::PreChecks => "pre-checks",
            Phase::Confirming { .. } => "confirming",
            Phase::Shifting { .. } => "shifting",
            Phase::Progressing(_) => "progressing",
            Phase::Paused(_) => "paused",
            Phase::Promoting { .. } => "promoting",
            Phase::Watching(_) => "watching",
            Phase::KeepingBlue(_) => "keeping-blue",
            Phase::Promoted => "promoted",
            Phase::RollingBack { .. } => "rolling-back",
            Phase::RolledBack { .. } => "rolled-back",
            Phase::NotStarted { .. } => "not-started",
            Phase::Failed { .. } => "failed",
        }
    }

    /// Whether the rollout is over.
    #[must_use]
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Phase::Promoted
                | Phase::RolledBack { .. }
                | Phase::NotStarted { .. }
                | Phase::Failed { .. }
        )
    }
}

/// One metric's state at a tick, as the machine sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricStatus {
    /// Metric name.
    pub metric: String,
    /// The judge's outcome so far; `None` when the fetch failed this tick.
    pub outcome: Option<Outcome>,
    /// The judge's reason, or the fetch error.
    pub reason: String,
    /// Recorded only, never acted on.
    pub dry_run: bool,
    /// Whether the verdict compares the canary with the baseline (`sequential`, the
    /// `mann-whitney` score), as opposed to an absolute bound on the canary (`threshold`).
    /// Comparative verdicts are not acted on while the baseline is unhealthy.
    pub comparative: bool,
}

/// What the runner learnt about a window besides the verdicts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WindowFacts {
    /// The baseline's error counts in the window, from the metric that counts errors with
    /// the highest baseline rate (`None` when no metric counts errors).
    pub baseline_errors: Option<ErrorCounts>,
    /// The weight the provider reports in force at the end of the window (`None` when it
    /// was not read), already rounded to the applied weight within the provider's
    /// resolution.
    pub in_force: Option<Weight>,
    /// The window's data was discarded (warm-up), with the reason: nothing is judged.
    pub discarded: Option<String>,
}

/// What happened.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Begin the rollout.
    Start {
        /// Offset from the start.
        now: Duration,
        /// Whether pre-rollout checks must pass before traffic moves.
        pre_checks: bool,
    },
    /// The pre-rollout checks finished.
    PreChecksDone {
        /// The first failed check and what it said, if any failed.
        failed: Option<(String, String)>,
        /// Offset from the start.
        now: Duration,
    },
    /// A weight is in force (set and read back).
    Applied {
        /// The weight.
        weight: Weight,
        /// Offset from the start.
        now: Duration,
    },
    /// Setting a weight failed.
    ApplyFailed {
        /// The weight.
        weight: Weight,
        /// What failed.
        error: String,
        /// Whether a retry may help.
        transient: bool,
        /// Offset from the start.
        now: Duration,
    },
    /// A weight was set, but the read-back found another that is neither it nor the one
    /// in force before: someone changed traffic at the same moment.
    Preempted {
        /// The weight set.
        weight: Weight,
        /// The weight found in force.
        found: Weight,
        /// Offset from the start.
        now: Duration,
    },
    /// The time for moving traffic ran out before the provider applied the weight: for
    /// forward moves at the deadline, for a rollback one `apply_timeout` after it. A hung
    /// provider never keeps a rollout running past the deadline plus `apply_timeout`.
    OutOfTime {
        /// The weight that was to be set.
        weight: Weight,
        /// Offset from the start.
        now: Duration,
    },
    /// An analysis tick.
    Tick {
        /// Offset from the start.
        now: Duration,
        /// Every metric's state.
        metrics: Vec<MetricStatus>,
        /// Requests per arm in this window; `None` when no metric of the policy counts
        /// requests (then `min_requests` does not apply).
        requests: Option<[f64; 2]>,
        /// Baseline health, the weight read back, warm-up.
        facts: WindowFacts,
    },
    /// The gates before step `step` were asked ([`Command::RunGates`]).
    GatesDone {
        /// The step they guard (`steps.len()`: the promotion).
        step: usize,
        /// The first gate that said no and what it said; `None`: every gate said yes.
        refused: Option<(String, String)>,
        /// Offset from the start.
        now: Duration,
    },
    /// An operator approved leaving the current step (see `[rollout] approval`).
    Approve {
        /// Offset from the start.
        now: Duration,
    },
    /// An operator released the current step (`coalmine promote` without `--full`): at
    /// the next tick it moves on to the next step (or promotes from the last one) without
    /// waiting for the rest of the step's time, its `min_requests` or an approval, unless a
    /// metric fails (that rolls back, as always), data are missing or erroring, or the
    /// baseline is unhealthy (then it waits for the evidence as usual). A paused rollout
    /// stays paused until resumed. The next step is not released: it bakes in full.
    Release {
        /// Offset from the start.
        now: Duration,
    },
    /// An operator asked to pause: nothing moves until resumed.
    Pause {
        /// Why.
        why: String,
        /// Offset from the start.
        now: Duration,
    },
    /// An operator asked a paused rollout to go on.
    Resume {
        /// Offset from the start.
        now: Duration,
    },
    /// An operator or a signal asked to stop: roll back.
    Abort {
        /// Why.
        why: String,
        /// Offset from the start.
        now: Duration,
    },
    /// An operator asked to promote now (`coalmine promote --full`): the remaining steps
    /// and their analysis are skipped.
    PromoteNow {
        /// Offset from the start.
        now: Duration,
    },
    /// A controller took the rollout over from its stored record (after a restart or a
    /// crash of the previous owner).
    Restored {
        /// The weight the provider reports in force now (`None`: it did not answer).
        found: Option<Weight>,
        /// The weight last known in force when the record was written.
        applied: Weight,
        /// Time nobody watched the rollout (from the record's write to now). It counts
        /// toward the deadline, not toward the step's time (the step's time is time
        /// analysed).
        downtime: Duration,
        /// Offset from the start (downtime included).
        now: Duration,
    },
}

/// What the tick decided.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Decision {
    /// Stay at this step.
    Hold {
        /// What is still missing.
        reason: String,
    },
    /// Move to the next step.
    Advance {
        /// Next step index (0-based).
        step: usize,
        /// Its weight, percent.
        weight: Weight,
    },
    /// Put all traffic on the canary.
    Promote,
    /// Put all traffic back on the baseline.
    Rollback {
        /// Why.
        reason: Reason,
    },
    /// Stop acting and wait for an operator.
    Pause {
        /// Why, with what was found.
        reason: String,
    },
    /// Take the weight found in force as the step's weight (`on_external_change = "adopt"`).
    Adopt {
        /// The weight found, percent.
        weight: Weight,
    },
}

/// Something to tell the operator: the runner writes a transition record with this event
/// (and the webhook hears it).
#[derive(Clone, Debug, PartialEq)]
pub enum Note {
    /// The baseline became unhealthy: comparisons are not trusted until it recovers.
    BaselineUnhealthy(Health),
    /// The baseline recovered.
    BaselineHealthy(Health),
    /// The rollout paused.
    Paused(PauseCause),
    /// Metrics failed while paused: not acted on (a human has control), but told.
    FailingWhilePaused {
        /// The failing metrics and what they said.
        metrics: Vec<(String, String)>,
    },
    /// An operator resumed it.
    Resumed {
        /// The weight the controller puts back in force (or keeps).
        weight: Weight,
    },
    /// A gate said no: the rollout holds and asks again at the next tick.
    GateRefused {
        /// The gate.
        gate: String,
        /// What it said.
        detail: String,
    },
    /// A weight found in force was adopted.
    Adopted {
        /// The weight found.
        found: Weight,
        /// The weight the controller had applied.
        applied: Weight,
    },
}

impl Note {
    /// The record's `event`.
    #[must_use]
    pub fn event(&self) -> &'static str {
        match self {
            Note::BaselineUnhealthy(_) => "baseline-unhealthy",
            Note::BaselineHealthy(_) => "baseline-healthy",
            Note::Paused(_) => "paused",
            Note::FailingWhilePaused { .. } => "failing-while-paused",
            Note::Resumed { .. } => "resumed",
            Note::Adopted { .. } => "adopted",
            Note::GateRefused { .. } => "gate-refused",
        }
    }

    /// The record's `detail`; `at` renders an offset from the start as a time.
    #[must_use]
    pub fn detail(&self, at: &dyn Fn(Duration) -> String) -> String {
        match self {
            Note::BaselineUnhealthy(h) => format!(
                "{}; holding: nothing advances or promotes, comparative verdicts are not acted on (threshold guards and the deadline still are)",
                h.describe()
            ),
            Note::BaselineHealthy(h) => h.describe(),
            Note::Paused(c) => format!(
                "{}; waiting for an operator (POST /resume or /abort); the deadline is suspended",
                pause_text(c, at)
            ),
            Note::FailingWhilePaused { metrics } => format!(
                "while paused (not acted on, an operator has control): {}",
                metrics
                    .iter()
                    .map(|(m, why)| format!("metric `{m}` failed: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Note::Resumed { weight } => format!("resumed by an operator at {weight}"),
            Note::GateRefused { gate, detail } => format!(
                "gate `{gate}` said no: {detail}; holding, asking again at the next tick (the deadline applies)"
            ),
            Note::Adopted { found, applied } => {
                format!("weight {found} in force, {applied} applied by coalmine: adopted {found}")
            }
        }
    }
}

pub(super) fn pause_text(c: &PauseCause, at: &dyn Fn(Duration) -> String) -> String {
    match c {
        PauseCause::ExternalChange {
            found,
            applied,
            applied_at,
        } => format!(
            "weight {found} in force, {applied} applied at {}: changed outside coalmine",
            at(*applied_at)
        ),
        PauseCause::Operator { why } => format!("paused by an operator: {why}"),
    }
}

/// What the runner must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Run the pre-rollout checks and report with [`Event::PreChecksDone`].
    RunPreChecks,
    /// Ask the gates before step `step` (in order, up to the first no) and report with
    /// [`Event::GatesDone`].
    RunGates {
        /// The step they guard (`steps.len()` or a 100 % step: the promotion).
        step: usize,
    },
    /// Write a tick's decision record (always first, before acting).
    Record(Decision),
    /// Write a transition record for this note (before any traffic change that follows).
    Notify(Note),
    /// Set the weight, after waiting `delay` (retry backoff).
    Apply {
        /// Weight to put in force.
        weight: Weight,
        /// Wait before trying.
        delay: Duration,
    },
    /// The rollout is over.
    Finish,
}

/// Whether a window's comparative verdicts count, and if not why.
#[derive(Clone, Debug, PartialEq)]
pub struct Judging {
    /// Feed and act on comparative judges (sequential, mann-whitney) for this window.
    pub comparative: bool,
    /// Why not, when not.
    pub why: Option<String>,
    /// The baseline's health, for the record.
    pub health: Health,
}
