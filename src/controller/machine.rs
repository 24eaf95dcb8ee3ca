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

use std::fmt::{self, Write as _};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::health::{self, ErrorCounts, Health};
use crate::analysis::Outcome;
use crate::model::Weight;
use crate::policy::{Advance, Approval, OnExternalChange, OnNoData, PlannedPause, Rollout};

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

fn pause_text(c: &PauseCause, at: &dyn Fn(Duration) -> String) -> String {
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

/// Decides, before the judges see a window, whether its comparison with the baseline is
/// evidence: not while paused, not in a window where the weight changed outside the
/// controller, not while the baseline is unhealthy. The runner feeds comparative judges
/// only the windows this admits (so a dead baseline's windows never make a canary look
/// better or worse later), and the machine applies the same rule in [`step`].
#[must_use]
pub fn judging(phase: &Phase, facts: &WindowFacts, plan: &Rollout) -> Judging {
    let yes = |health| Judging {
        comparative: true,
        why: None,
        health,
    };
    let no = |why: String, health| Judging {
        comparative: false,
        why: Some(why),
        health,
    };
    match phase {
        Phase::Paused(z) => no(
            format!("paused ({})", pause_text(&z.cause, &|d| secs(d))),
            Health::Unknown,
        ),
        Phase::Watching(_) => no(
            "after the promotion: no concurrent baseline (the post-promotion window judges threshold guards only)"
                .to_string(),
            Health::Unknown,
        ),
        Phase::KeepingBlue(_) => no(
            "keeping blue after the post-promotion window: nothing is judged".to_string(),
            Health::Unknown,
        ),
        Phase::Progressing(p) => {
            let health = baseline_health(p, facts, plan);
            if let Some(found) = facts.in_force
                && found != p.weight
            {
                no(
                    format!("weight {found} in force, {} applied", p.weight),
                    health,
                )
            } else if health.is_unhealthy() {
                no(health.describe(), health)
            } else {
                yes(health)
            }
        }
        _ => yes(Health::Unknown),
    }
}

/// The baseline's health with this window's counts added to the step's recent ones.
fn baseline_health(p: &Progress, facts: &WindowFacts, plan: &Rollout) -> Health {
    let mut recent = p.baseline_recent.clone();
    let metric = match &facts.baseline_errors {
        Some(c) => {
            health::remember(&mut recent, c);
            c.metric.as_str()
        }
        None => return Health::Unknown,
    };
    health::assess(&recent, plan.baseline_max_error_rate, metric)
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << attempt.min(5))).min(Duration::from_secs(10))
}

fn rollback(reason: Reason, record: bool) -> (Phase, Vec<Command>) {
    let mut cmds = Vec::new();
    if record {
        cmds.push(Command::Record(Decision::Rollback {
            reason: reason.clone(),
        }));
    }
    cmds.push(Command::Apply {
        weight: Weight::ZERO,
        delay: Duration::ZERO,
    });
    (Phase::RollingBack { reason, attempt: 0 }, cmds)
}

/// The transition function. Events that make no sense in a phase leave it unchanged.
#[must_use]
pub fn step(phase: Phase, event: Event, plan: &Rollout) -> (Phase, Vec<Command>) {
    match (phase, event) {
        (Phase::Pending, Event::Start { pre_checks, .. }) => {
            if pre_checks {
                (Phase::PreChecks, vec![Command::RunPreChecks])
            } else {
                begin(plan)
            }
        }
        (Phase::PreChecks, Event::PreChecksDone { failed, .. }) => match failed {
            None => begin(plan),
            // The canary is not ready: touch nothing (no traffic was moved).
            Some((hook, detail)) => (
                Phase::NotStarted {
                    reason: Reason::PreCheck { hook, detail },
                },
                vec![Command::Finish],
            ),
        },
        (
            phase,
            Event::Restored {
                found,
                applied,
                downtime,
                now,
            },
        ) => restored(phase, found, applied, downtime, now, plan),
        (Phase::Progressing(_) | Phase::Paused(_), Event::PromoteNow { .. }) => (
            Phase::Promoting { attempt: 0 },
            vec![
                Command::Record(Decision::Promote),
                Command::Apply {
                    weight: Weight::FULL,
                    delay: Duration::ZERO,
                },
            ],
        ),
        // Nothing has moved yet: an abort ends it as never started.
        (Phase::Confirming { .. }, Event::Abort { why, .. }) => (
            Phase::NotStarted {
                reason: Reason::Aborted { why },
            },
            vec![Command::Finish],
        ),
        (
            Phase::Confirming {
                step,
                refusals,
                approval,
            },
            Event::Tick { now, .. },
        ) => {
            if now >= plan.deadline {
                let waiting = if approval {
                    "an operator's approval of the promotion".to_string()
                } else {
                    format!("the gates before step {} ({refusals} refusal(s))", step + 1)
                };
                (
                    Phase::NotStarted {
                        reason: Reason::Deadline {
                            after_s: plan.deadline.as_secs_f64(),
                            waiting,
                        },
                    },
                    vec![Command::Finish],
                )
            } else if approval {
                (
                    Phase::Confirming {
                        step,
                        refusals,
                        approval,
                    },
                    vec![Command::Record(Decision::Hold {
                        reason: "ready; waiting for an operator to approve the promotion; no traffic has moved".to_string(),
                    })],
                )
            } else {
                (
                    Phase::Confirming {
                        step,
                        refusals,
                        approval,
                    },
                    vec![
                        Command::Record(Decision::Hold {
                            reason: format!(
                                "asking the gates before step {} again ({refusals} refusal(s)); no traffic has moved",
                                step + 1
                            ),
                        }),
                        Command::RunGates { step },
                    ],
                )
            }
        }
        // The promotion approved (`POST /approve`, or `coalmine promote --step 1`): the gates,
        // then the switch.
        (
            Phase::Confirming { approval: true, .. },
            Event::Approve { .. } | Event::Release { .. },
        ) => confirm_then_shift(plan),
        (
            Phase::Confirming {
                step,
                refusals,
                approval: false,
            },
            Event::GatesDone { refused, .. },
        ) => match refused {
            None => shift_to(step, plan, Duration::ZERO),
            Some((gate, detail)) => (
                Phase::Confirming {
                    step,
                    refusals: refusals + 1,
                    approval: false,
                },
                vec![Command::Notify(Note::GateRefused { gate, detail })],
            ),
        },
        (Phase::Progressing(p), Event::GatesDone { step, refused, .. }) => match refused {
            Some((gate, detail)) => (
                Phase::Progressing(p),
                vec![Command::Notify(Note::GateRefused { gate, detail })],
            ),
            // Still the step the gates were asked for: go on.
            None if step == next_step(p.weight, plan) => {
                advance(step, plan, p.paused_for, Vec::new())
            }
            None => (Phase::Progressing(p), Vec::new()),
        },
        (phase, Event::Abort { why, .. }) if !phase.is_terminal() => match phase {
            Phase::RollingBack { .. } => (phase, Vec::new()),
            _ => rollback(Reason::Aborted { why }, false),
        },
        (
            Phase::Shifting {
                step,
                target,
                paused_for,
                ..
            },
            Event::Applied { weight, now },
        ) if weight == target => (
            Phase::Progressing(Progress::new(step, weight, now, paused_for)),
            Vec::new(),
        ),
        (
            Phase::Shifting {
                step,
                target,
                attempt,
                paused_for,
            },
            Event::ApplyFailed {
                error, transient, ..
            },
        ) => {
            if transient && attempt < plan.apply_retries {
                (
                    Phase::Shifting {
                        step,
                        target,
                        attempt: attempt + 1,
                        paused_for,
                    },
                    vec![Command::Apply {
                        weight: target,
                        delay: backoff(attempt),
                    }],
                )
            } else {
                rollback(Reason::Provider { error }, false)
            }
        }
        // Someone else's change landed between coalmine's and its read-back: as at a tick,
        // never override it (pause by default).
        (
            Phase::Shifting {
                step,
                target,
                paused_for,
                ..
            },
            Event::Preempted { found, now, .. },
        ) => external_change(
            Progress::new(step, target, now, paused_for),
            found,
            now,
            plan,
        ),
        (Phase::Promoting { .. }, Event::Preempted { found, now, .. }) => {
            let last = plan.steps.len().saturating_sub(1);
            external_change(
                Progress::new(last, Weight::FULL, now, Duration::ZERO),
                found,
                now,
                plan,
            )
        }
        (Phase::Progressing(mut p), Event::Approve { .. }) => {
            p.approved = true;
            (Phase::Progressing(p), Vec::new())
        }
        (Phase::Paused(mut z), Event::Approve { .. }) => {
            z.progress.approved = true;
            (Phase::Paused(z), Vec::new())
        }
        (Phase::Progressing(mut p), Event::Release { .. }) => {
            p.approved = true;
            p.released = true;
            (Phase::Progressing(p), Vec::new())
        }
        (Phase::Paused(mut z), Event::Release { .. }) => {
            z.progress.approved = true;
            z.progress.released = true;
            (Phase::Paused(z), Vec::new())
        }
        (Phase::Progressing(p), Event::Pause { why, now }) => {
            let cause = PauseCause::Operator { why };
            let in_force = p.weight;
            (
                Phase::Paused(Paused {
                    progress: p,
                    cause: cause.clone(),
                    since: now,
                    in_force,
                    alerted: Vec::new(),
                    keep_blue: None,
                }),
                vec![Command::Notify(Note::Paused(cause))],
            )
        }
        (Phase::Paused(z), Event::Resume { now }) => resume(z, now),
        (
            Phase::Progressing(p),
            Event::Tick {
                now,
                metrics,
                requests,
                facts,
            },
        ) => tick(p, now, &metrics, requests, &facts, plan),
        (
            Phase::Paused(z),
            Event::Tick {
                now,
                metrics,
                facts,
                ..
            },
        ) => paused_tick(z, now, &metrics, &facts),
        (Phase::Promoting { .. }, Event::Applied { weight, now }) if weight == Weight::FULL => {
            full_in_force(now, plan)
        }
        (
            Phase::Watching(w),
            Event::Tick {
                now,
                metrics,
                facts,
                ..
            },
        ) => watching_tick(w, now, &metrics, &facts, plan),
        // An operator ends the window early: the promotion stands (blue-green keeps blue).
        (Phase::Watching(w), Event::PromoteNow { now }) => {
            let (phase, mut cmds) = window_over(now, w.paused_for, plan);
            cmds.insert(0, Command::Record(Decision::Promote));
            (phase, cmds)
        }
        (Phase::KeepingBlue(k), Event::Tick { now, facts, .. }) => {
            keeping_blue_tick(k, now, &facts, plan)
        }
        // An operator retires blue now.
        (Phase::KeepingBlue(_), Event::PromoteNow { .. }) => (
            Phase::Promoted,
            vec![Command::Record(Decision::Promote), Command::Finish],
        ),
        (
            Phase::Promoting { attempt },
            Event::ApplyFailed {
                error, transient, ..
            },
        ) => {
            if transient && attempt < plan.apply_retries {
                (
                    Phase::Promoting {
                        attempt: attempt + 1,
                    },
                    vec![Command::Apply {
                        weight: Weight::FULL,
                        delay: backoff(attempt),
                    }],
                )
            } else {
                rollback(
                    Reason::Provider {
                        error: format!("promotion to 100% failed: {error}"),
                    },
                    false,
                )
            }
        }
        (Phase::RollingBack { reason, .. }, Event::Applied { weight, .. })
            if weight == Weight::ZERO =>
        {
            (Phase::RolledBack { reason }, vec![Command::Finish])
        }
        (Phase::RollingBack { reason, attempt }, Event::Preempted { weight, found, now }) => step(
            Phase::RollingBack { reason, attempt },
            Event::ApplyFailed {
                weight,
                error: format!("set {weight} but {found} is in force"),
                transient: true,
                now,
            },
            plan,
        ),
        (Phase::Shifting { .. } | Phase::Promoting { .. }, Event::OutOfTime { weight, .. }) => {
            rollback(
                Reason::Deadline {
                    after_s: plan.deadline.as_secs_f64(),
                    waiting: format!("the provider had not applied {weight}"),
                },
                true,
            )
        }
        (Phase::RollingBack { reason, attempt }, Event::OutOfTime { .. }) => (
            Phase::Failed {
                reason: format!(
                    "rollback ({reason}) could not set the canary weight to 0 within the deadline plus apply_timeout {} ({} attempt(s)); traffic may still reach the canary",
                    humantime::format_duration(plan.apply_timeout),
                    attempt + 1
                ),
            },
            vec![Command::Finish],
        ),
        (Phase::RollingBack { reason, attempt }, Event::ApplyFailed { weight, error, .. }) => {
            // Rolling back is the safe state: retry harder than for a step, whatever the
            // error, and fail loudly when it cannot be reached.
            if attempt < plan.apply_retries.saturating_mul(2).max(1) {
                (
                    Phase::RollingBack {
                        reason,
                        attempt: attempt + 1,
                    },
                    vec![Command::Apply {
                        weight,
                        delay: backoff(attempt),
                    }],
                )
            } else {
                (
                    Phase::Failed {
                        reason: format!(
                            "rollback ({reason}) could not set the canary weight to 0 after {} attempts: {error}; traffic may still reach the canary",
                            attempt + 1
                        ),
                    },
                    vec![Command::Finish],
                )
            }
        }
        (phase, _) => (phase, Vec::new()),
    }
}

/// Takes a rollout over from its stored record: continues what the record says was in
/// progress, never overriding a weight that someone else set while nobody watched.
fn restored(
    phase: Phase,
    found: Option<Weight>,
    applied: Weight,
    downtime: Duration,
    now: Duration,
    plan: &Rollout,
) -> (Phase, Vec<Command>) {
    let apply = |weight| Command::Apply {
        weight,
        delay: Duration::ZERO,
    };
    match phase {
        // Nothing has moved yet: the checks run again.
        Phase::Pending | Phase::PreChecks => (Phase::PreChecks, vec![Command::RunPreChecks]),
        // Nothing has moved yet: the gates are asked again.
        Phase::Confirming {
            step,
            refusals,
            approval: false,
        } => (
            Phase::Confirming {
                step,
                refusals,
                approval: false,
            },
            vec![Command::RunGates { step }],
        ),
        // Still waiting for the approval: nothing to ask yet.
        waiting @ Phase::Confirming { approval: true, .. } => (waiting, Vec::new()),
        Phase::Shifting {
            step,
            target,
            paused_for,
            ..
        } => match found {
            // The weight landed before the crash: the step starts now (no second call).
            Some(w) if w == target => (
                Phase::Progressing(Progress::new(step, target, now, paused_for)),
                Vec::new(),
            ),
            Some(w) if w != applied => {
                external_change(Progress::new(step, target, now, paused_for), w, now, plan)
            }
            // Still the weight before the step, or unknown: set it (idempotent).
            _ => (
                Phase::Shifting {
                    step,
                    target,
                    attempt: 0,
                    paused_for,
                },
                vec![apply(target)],
            ),
        },
        Phase::Progressing(mut p) => {
            // The step's time is time analysed: the downtime is not part of it.
            p.excluded += downtime;
            p.last_tick = now;
            match found {
                Some(w) if w != p.weight => external_change(p, w, now, plan),
                _ => (Phase::Progressing(p), Vec::new()),
            }
        }
        Phase::Paused(mut z) => {
            z.progress.last_tick = now;
            if let Some(w) = found {
                z.in_force = w;
            }
            (Phase::Paused(z), Vec::new())
        }
        // The window's start is in the record: it goes on (the downtime counted toward it).
        Phase::Watching(w) => match found {
            Some(f) if f != Weight::FULL => {
                let last = plan.steps.len().saturating_sub(1);
                external_change(
                    Progress::new(last, Weight::FULL, now, w.paused_for),
                    f,
                    now,
                    plan,
                )
            }
            _ => (Phase::Watching(w), Vec::new()),
        },
        // keep_blue's start is in the record: it goes on, with no second switch.
        Phase::KeepingBlue(k) => match found {
            Some(f) if f != Weight::FULL => {
                let last = plan.steps.len().saturating_sub(1);
                let changed = external_change(
                    Progress::new(last, Weight::FULL, now, k.paused_for),
                    f,
                    now,
                    plan,
                );
                paused_in_keep_blue(changed, k)
            }
            _ => (Phase::KeepingBlue(k), Vec::new()),
        },
        Phase::Promoting { .. } => match found {
            Some(w) if w == Weight::FULL => full_in_force(now, plan),
            Some(w) if w != applied => {
                let last = plan.steps.len().saturating_sub(1);
                external_change(
                    Progress::new(last, Weight::FULL, now, Duration::ZERO),
                    w,
                    now,
                    plan,
                )
            }
            _ => (Phase::Promoting { attempt: 0 }, vec![apply(Weight::FULL)]),
        },
        // Rolling back is the safe direction: finish it whatever is in force.
        Phase::RollingBack { reason, .. } => match found {
            Some(w) if w == Weight::ZERO => (Phase::RolledBack { reason }, vec![Command::Finish]),
            _ => (
                Phase::RollingBack { reason, attempt: 0 },
                vec![apply(Weight::ZERO)],
            ),
        },
        done => (done, vec![Command::Finish]),
    }
}

/// The first planned step whose weight is above `weight` (the plan's length when none is:
/// promote). Steps increase, so from a planned step this is the next one; from an adopted
/// weight it is the first step above it, wherever that was in the plan.
fn next_step(weight: Weight, plan: &Rollout) -> usize {
    plan.steps
        .iter()
        .position(|w| *w > weight)
        .unwrap_or(plan.steps.len())
}

fn shift_to(step: usize, plan: &Rollout, paused_for: Duration) -> (Phase, Vec<Command>) {
    match plan.steps.get(step) {
        Some(&w) if w < Weight::FULL => (
            Phase::Shifting {
                step,
                target: w,
                attempt: 0,
                paused_for,
            },
            vec![Command::Apply {
                weight: w,
                delay: Duration::ZERO,
            }],
        ),
        // The last step (or a 100 % step) promotes.
        _ => (
            Phase::Promoting { attempt: 0 },
            vec![Command::Apply {
                weight: Weight::FULL,
                delay: Duration::ZERO,
            }],
        ),
    }
}

fn secs(d: Duration) -> String {
    format!("{:.0}s", d.as_secs_f64())
}

/// A weight in force that the controller did not apply: never override it silently.
fn external_change(
    p: Progress,
    found: Weight,
    now: Duration,
    plan: &Rollout,
) -> (Phase, Vec<Command>) {
    let applied = p.weight;
    match plan.on_external_change {
        OnExternalChange::Pause => {
            let cause = PauseCause::ExternalChange {
                found,
                applied,
                applied_at: p.since,
            };
            let reason = format!(
                "{}; waiting for an operator",
                pause_text(&cause, &|d| secs(d))
            );
            (
                Phase::Paused(Paused {
                    progress: p,
                    cause: cause.clone(),
                    since: now,
                    in_force: found,
                    alerted: Vec::new(),
                    keep_blue: None,
                }),
                vec![
                    Command::Record(Decision::Pause { reason }),
                    Command::Notify(Note::Paused(cause)),
                ],
            )
        }
        OnExternalChange::Rollback => rollback(Reason::ExternalChange { found, applied }, true),
        OnExternalChange::Adopt => {
            let note = Command::Notify(Note::Adopted { found, applied });
            let record = Command::Record(Decision::Adopt { weight: found });
            if found == Weight::ZERO {
                // Someone took the canary out: that is a rollback already in force.
                (
                    Phase::RolledBack {
                        reason: Reason::ExternalChange { found, applied },
                    },
                    vec![record, note, Command::Finish],
                )
            } else if found == Weight::FULL {
                (Phase::Promoted, vec![record, note, Command::Finish])
            } else {
                // The step is the last planned one at or below the weight found.
                let step = next_step(found, plan).saturating_sub(1);
                let mut q = Progress::new(step, found, now, p.paused_for);
                q.approved = p.approved;
                (Phase::Progressing(q), vec![record, note])
            }
        }
    }
}

fn resume(z: Paused, now: Duration) -> (Phase, Vec<Command>) {
    let paused = now.saturating_sub(z.since);
    if let Some(k) = z.keep_blue {
        // Paused during keep_blue: it goes on where it was (the pause does not count toward
        // it); green gets 100 % back if the outside weight is still in force.
        let k = KeepBlue {
            since: k.since + paused,
            paused_for: k.paused_for + paused,
        };
        let mut cmds = vec![Command::Notify(Note::Resumed {
            weight: Weight::FULL,
        })];
        if z.in_force != Weight::FULL {
            cmds.push(Command::Apply {
                weight: Weight::FULL,
                delay: Duration::ZERO,
            });
        }
        return (Phase::KeepingBlue(k), cmds);
    }
    let mut p = z.progress;
    p.paused_for += paused;
    p.excluded += paused;
    p.last_tick = now;
    let note = Command::Notify(Note::Resumed { weight: p.weight });
    if p.weight == Weight::FULL {
        // Paused while promoting: the promotion goes on.
        (
            Phase::Promoting { attempt: 0 },
            vec![
                note,
                Command::Apply {
                    weight: Weight::FULL,
                    delay: Duration::ZERO,
                },
            ],
        )
    } else if z.in_force == p.weight {
        (Phase::Progressing(p), vec![note])
    } else {
        // The operator resumed the plan: put the step's weight back; the step starts over.
        (
            Phase::Shifting {
                step: p.step,
                target: p.weight,
                attempt: 0,
                paused_for: p.paused_for,
            },
            vec![
                note,
                Command::Apply {
                    weight: p.weight,
                    delay: Duration::ZERO,
                },
            ],
        )
    }
}

/// A tick while paused: recorded, never acted on (a human has control of traffic).
fn paused_tick(
    mut z: Paused,
    now: Duration,
    metrics: &[MetricStatus],
    facts: &WindowFacts,
) -> (Phase, Vec<Command>) {
    if let Some(w) = facts.in_force {
        z.in_force = w;
    }
    z.progress.last_tick = now;
    let mut reason = format!(
        "paused for {}: {}; waiting for an operator (resume or abort)",
        secs(now.saturating_sub(z.since)),
        pause_text(&z.cause, &|d| secs(d))
    );
    let failing: Vec<&MetricStatus> = metrics
        .iter()
        .filter(|m| !m.dry_run && m.outcome == Some(Outcome::Fail))
        .collect();
    let mut cmds = Vec::new();
    if !failing.is_empty() {
        let names: Vec<&str> = failing.iter().map(|m| m.metric.as_str()).collect();
        let _ = write!(
            reason,
            "; not acted on while paused: {} failing",
            names.join(", ")
        );
        // Tell the operator once per metric: they may not be watching.
        let new: Vec<(String, String)> = failing
            .iter()
            .filter(|m| !z.alerted.contains(&m.metric))
            .map(|m| (m.metric.clone(), m.reason.clone()))
            .collect();
        if !new.is_empty() {
            z.alerted.extend(new.iter().map(|(m, _)| m.clone()));
            cmds.push(Command::Notify(Note::FailingWhilePaused { metrics: new }));
        }
    }
    cmds.insert(0, Command::Record(Decision::Hold { reason }));
    (Phase::Paused(z), cmds)
}

fn hold(p: Progress, reason: String, mut notes: Vec<Command>) -> (Phase, Vec<Command>) {
    notes.insert(0, Command::Record(Decision::Hold { reason }));
    (Phase::Progressing(p), notes)
}

#[allow(clippy::too_many_lines)] // one decision, read top to bottom
fn tick(
    mut p: Progress,
    now: Duration,
    metrics: &[MetricStatus],
    requests: Option<[f64; 2]>,
    facts: &WindowFacts,
    plan: &Rollout,
) -> (Phase, Vec<Command>) {
    let window = now.saturating_sub(p.last_tick);
    p.last_tick = now;
    if let Some(found) = facts.in_force
        && found != p.weight
    {
        return external_change(p, found, now, plan);
    }
    if !plan.analysed(p.step) {
        return unanalysed_tick(p, now, plan);
    }
    if let Some(why) = &facts.discarded {
        return hold(p, why.clone(), Vec::new());
    }
    let health = baseline_health(&p, facts, plan);
    if let Some(c) = &facts.baseline_errors {
        health::remember(&mut p.baseline_recent, c);
    }
    let unhealthy = health.is_unhealthy();
    let mut notes = Vec::new();
    if unhealthy != p.baseline_unhealthy {
        notes.push(Command::Notify(if unhealthy {
            Note::BaselineUnhealthy(health.clone())
        } else {
            Note::BaselineHealthy(health.clone())
        }));
        p.baseline_unhealthy = unhealthy;
    }
    let live: Vec<&MetricStatus> = metrics.iter().filter(|m| !m.dry_run).collect();
    // Verdicts that count: absolute guards always; comparisons only with a healthy
    // baseline (against a broken one, neither a Fail nor a Pass is evidence).
    let counted: Vec<&MetricStatus> = live
        .iter()
        .copied()
        .filter(|m| !(unhealthy && m.comparative))
        .collect();
    if let Some(m) = counted.iter().find(|m| m.outcome == Some(Outcome::Fail)) {
        let (phase, mut cmds) = rollback(
            Reason::MetricFailed {
                metric: m.metric.clone(),
                detail: m.reason.clone(),
            },
            true,
        );
        // The record first, then the notes, then the traffic change.
        cmds.splice(1..1, notes);
        return (phase, cmds);
    }
    let errors: Vec<&&MetricStatus> = live.iter().filter(|m| m.outcome.is_none()).collect();
    if errors.is_empty() {
        p.error_ticks = 0;
    } else {
        p.error_ticks += 1;
    }
    let no_data: Vec<String> = live
        .iter()
        .filter(|m| matches!(m.outcome, None | Some(Outcome::NoData)))
        .map(|m| m.metric.clone())
        .collect();
    let missing_for = if no_data.is_empty() {
        p.no_data_since = None;
        Duration::ZERO
    } else {
        now.saturating_sub(*p.no_data_since.get_or_insert(now))
    };
    if unhealthy {
        p.excluded += window;
    } else if let Some(r) = requests {
        p.requests[0] += r[0].max(0.0);
        p.requests[1] += r[1].max(0.0);
    }

    let mut waiting: Vec<String> = Vec::new();
    if unhealthy {
        waiting.push(health.describe());
    }
    if !errors.is_empty() {
        waiting.push(format!(
            "query errors ({} in a row{})",
            p.error_ticks,
            if plan.error_limit > 0 {
                format!(", limit {}", plan.error_limit)
            } else {
                String::new()
            }
        ));
    }
    if !no_data.is_empty() {
        waiting.push(format!("no data for {}", no_data.join(", ")));
    }
    let all_pass = !counted.is_empty() && counted.iter().all(|m| m.outcome == Some(Outcome::Pass));
    let elapsed = now.saturating_sub(p.since).saturating_sub(p.excluded);
    let duration = plan.duration_of(p.step);
    if elapsed < duration && !(plan.early_pass && all_pass && !unhealthy) && !p.released {
        waiting.push(format!("step time {} of {}", secs(elapsed), secs(duration)));
    }
    let min = plan.min_requests_of(p.step) as f64;
    if requests.is_some() && (p.requests[0] < min || p.requests[1] < min) && !p.released {
        waiting.push(format!(
            "requests baseline {:.0}, canary {:.0} of {min:.0} per arm",
            p.requests[0], p.requests[1]
        ));
    }
    if plan.advance == Advance::Pass {
        let not_passing: Vec<&str> = live
            .iter()
            .filter(|m| m.outcome != Some(Outcome::Pass))
            .map(|m| m.metric.as_str())
            .collect();
        if !not_passing.is_empty() {
            waiting.push(format!("not yet passing: {}", not_passing.join(", ")));
        }
    }

    // The deadline counts the controller's own time: time paused (a human in charge) is
    // added to it.
    if now.saturating_sub(p.paused_for) >= plan.deadline {
        let (phase, mut cmds) = rollback(
            Reason::Deadline {
                after_s: plan.deadline.as_secs_f64(),
                waiting: waiting.join("; "),
            },
            true,
        );
        cmds.splice(1..1, notes);
        return (phase, cmds);
    }
    if plan.error_limit > 0 && p.error_ticks >= plan.error_limit {
        let (phase, mut cmds) = rollback(
            Reason::QueryErrors {
                ticks: p.error_ticks,
                last: format!("{}: {}", errors[0].metric, errors[0].reason),
            },
            true,
        );
        cmds.splice(1..1, notes);
        return (phase, cmds);
    }
    if !no_data.is_empty()
        && plan.on_no_data == OnNoData::Rollback
        && missing_for >= plan.no_data_limit
    {
        let (phase, mut cmds) = rollback(
            Reason::NoData {
                metrics: no_data,
                for_s: missing_for.as_secs_f64(),
            },
            true,
        );
        cmds.splice(1..1, notes);
        return (phase, cmds);
    }
    if !waiting.is_empty() {
        p.ready_since = None;
        return hold(p, waiting.join("; "), notes);
    }
    ready(p, now, plan, notes)
}

/// 100 % is in force at `now`: the post-promotion window starts, or (without one) the
/// rollout is promoted.
fn full_in_force(now: Duration, plan: &Rollout) -> (Phase, Vec<Command>) {
    if plan.post_promotion.is_zero() {
        window_over(now, Duration::ZERO, plan)
    } else {
        (
            Phase::Watching(Watch {
                since: now,
                no_data_since: None,
                error_ticks: 0,
                paused_for: Duration::ZERO,
            }),
            Vec::new(),
        )
    }
}

/// A tick of the post-promotion window: threshold guards judge the canary at 100 %; a Fail
/// (or the query-error limit, or `on_no_data = "rollback"`) rolls back to 0; the window's end
/// promotes.
fn watching_tick(
    mut w: Watch,
    now: Duration,
    metrics: &[MetricStatus],
    facts: &WindowFacts,
    plan: &Rollout,
) -> (Phase, Vec<Command>) {
    if let Some(changed) = changed_at_full(facts, w.paused_for, now, plan) {
        return changed;
    }
    let counted: Vec<&MetricStatus> = metrics
        .iter()
        .filter(|m| !m.dry_run && !m.comparative)
        .collect();
    if let Some(m) = counted.iter().find(|m| m.outcome == Some(Outcome::Fail)) {
        return rollback(
            Reason::MetricFailed {
                metric: m.metric.clone(),
                detail: format!(
                    "{} (after the promotion, {} into the post-promotion window)",
                    m.reason,
                    secs(now.saturating_sub(w.since))
                ),
            },
            true,
        );
    }
    let errors: Vec<&&MetricStatus> = counted.iter().filter(|m| m.outcome.is_none()).collect();
    if errors.is_empty() {
        w.error_ticks = 0;
    } else {
        w.error_ticks += 1;
        if plan.error_limit > 0 && w.error_ticks >= plan.error_limit {
            return rollback(
                Reason::QueryErrors {
                    ticks: w.error_ticks,
                    last: format!("{}: {}", errors[0].metric, errors[0].reason),
                },
                true,
            );
        }
    }
    let no_data: Vec<String> = counted
        .iter()
        .filter(|m| matches!(m.outcome, None | Some(Outcome::NoData)))
        .map(|m| m.metric.clone())
        .collect();
    if no_data.is_empty() {
        w.no_data_since = None;
    } else {
        let missing_for = now.saturating_sub(*w.no_data_since.get_or_insert(now));
        if plan.on_no_data == OnNoData::Rollback && missing_for >= plan.no_data_limit {
            return rollback(
                Reason::NoData {
                    metrics: no_data,
                    for_s: missing_for.as_secs_f64(),
                },
                true,
            );
        }
    }
    let watched = now.saturating_sub(w.since);
    if watched >= plan.post_promotion {
        let (phase, mut cmds) = window_over(now, w.paused_for, plan);
        let then = if matches!(phase, Phase::KeepingBlue(_)) {
            format!("keeping blue for {}", secs(plan.keep_blue))
        } else {
            "promoted".to_string()
        };
        cmds.insert(
            0,
            Command::Record(Decision::Hold {
                reason: format!(
                    "post-promotion window of {} ended without a Fail: {then}",
                    secs(plan.post_promotion)
                ),
            }),
        );
        return (phase, cmds);
    }
    let mut reason = format!(
        "post-promotion window {} of {}: 100% on the canary; {}",
        secs(watched),
        secs(plan.post_promotion),
        if counted.is_empty() {
            "no threshold guard to judge it (comparisons need a concurrent baseline)".to_string()
        } else {
            format!(
                "judged by {} (comparisons are not: no concurrent baseline)",
                counted
                    .iter()
                    .map(|m| m.metric.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    if !no_data.is_empty() {
        let _ = write!(reason, "; no data for {}", no_data.join(", "));
    }
    (
        Phase::Watching(w),
        vec![Command::Record(Decision::Hold { reason })],
    )
}

/// 100 % is in force and nothing is judged any more (the post-promotion window ended, or
/// there is none): blue-green keeps blue for `keep_blue`, anything else is promoted.
fn window_over(now: Duration, paused_for: Duration, plan: &Rollout) -> (Phase, Vec<Command>) {
    if plan.blue_green() && !plan.keep_blue.is_zero() {
        (
            Phase::KeepingBlue(KeepBlue {
                since: now,
                paused_for,
            }),
            Vec::new(),
        )
    } else {
        (Phase::Promoted, vec![Command::Finish])
    }
}

/// After the switch to 100 % (the post-promotion window, keep_blue): a weight in force
/// other than 100 % was set outside coalmine; it is not overridden.
fn changed_at_full(
    facts: &WindowFacts,
    paused_for: Duration,
    now: Duration,
    plan: &Rollout,
) -> Option<(Phase, Vec<Command>)> {
    let found = facts.in_force.filter(|f| *f != Weight::FULL)?;
    let last = plan.steps.len().saturating_sub(1);
    Some(external_change(
        Progress::new(last, Weight::FULL, now, paused_for),
        found,
        now,
        plan,
    ))
}

/// A pause (a weight changed outside coalmine) during keep_blue remembers keep_blue, for
/// the resume.
fn paused_in_keep_blue((phase, cmds): (Phase, Vec<Command>), k: KeepBlue) -> (Phase, Vec<Command>) {
    match phase {
        Phase::Paused(mut z) => {
            z.keep_blue = Some(k);
            (Phase::Paused(z), cmds)
        }
        other => (other, cmds),
    }
}

/// A tick of blue-green's `keep_blue`: nothing is judged; a weight changed outside coalmine
/// is not overridden; its end promotes (the runner then tells the `blue-retired` gates).
fn keeping_blue_tick(
    k: KeepBlue,
    now: Duration,
    facts: &WindowFacts,
    plan: &Rollout,
) -> (Phase, Vec<Command>) {
    if let Some(changed) = changed_at_full(facts, k.paused_for, now, plan) {
        return paused_in_keep_blue(changed, k);
    }
    let kept = now.saturating_sub(k.since);
    if kept >= plan.keep_blue {
        return (
            Phase::Promoted,
            vec![
                Command::Record(Decision::Hold {
                    reason: format!(
                        "keep_blue of {} ended: blue retired, green stays at 100%",
                        secs(plan.keep_blue)
                    ),
                }),
                Command::Finish,
            ],
        );
    }
    (
        Phase::KeepingBlue(k),
        vec![Command::Record(Decision::Hold {
            reason: format!(
                "keeping blue {} of {}: 100% on green, nothing is judged; `coalmine rollback` switches back to blue",
                secs(kept),
                secs(plan.keep_blue)
            ),
        })],
    )
}

/// A tick of a step with `analysis = false`: nothing is judged (the runner discarded the
/// window); it ends after its duration, its pause and its approval.
fn unanalysed_tick(mut p: Progress, now: Duration, plan: &Rollout) -> (Phase, Vec<Command>) {
    let elapsed = now.saturating_sub(p.since).saturating_sub(p.excluded);
    let duration = plan.duration_of(p.step);
    if now.saturating_sub(p.paused_for) >= plan.deadline {
        return rollback(
            Reason::Deadline {
                after_s: plan.deadline.as_secs_f64(),
                waiting: String::new(),
            },
            true,
        );
    }
    if elapsed < duration && !p.released {
        p.ready_since = None;
        return hold(
            p,
            format!(
                "step time {} of {} (analysis = false: this step only moves traffic, nothing is judged)",
                secs(elapsed),
                secs(duration)
            ),
            Vec::new(),
        );
    }
    ready(p, now, plan, Vec::new())
}

/// A step whose evidence is complete: its planned pause, then the operator's approval,
/// then the next step (or the promotion).
fn ready(
    mut p: Progress,
    now: Duration,
    plan: &Rollout,
    notes: Vec<Command>,
) -> (Phase, Vec<Command>) {
    let since = *p.ready_since.get_or_insert(now);
    match plan.spec(p.step).pause {
        Some(PlannedPause::UntilPromoted) if !(p.released || p.approved) => {
            let step = p.step + 1;
            return hold(
                p,
                format!(
                    "paused until promoted (planned pause of step {step}): waiting for `coalmine promote` (metrics are still judged; the deadline applies)"
                ),
                notes,
            );
        }
        Some(PlannedPause::For(d)) if !p.released && now.saturating_sub(since) < d => {
            let waited = now.saturating_sub(since);
            return hold(
                p,
                format!("planned pause {} of {}", secs(waited), secs(d)),
                notes,
            );
        }
        _ => {}
    }
    let next = next_step(p.weight, plan);
    let promotes = plan.steps.get(next).is_none_or(|w| *w >= Weight::FULL);
    let needs_approval = match plan.approval {
        Approval::None => false,
        Approval::Promotion => promotes,
        Approval::EveryStep => true,
    };
    if needs_approval && !p.approved {
        let what = if promotes {
            "promotion".to_string()
        } else {
            format!("step {} ({})", next + 1, plan.steps[next])
        };
        return hold(
            p,
            format!("ready; waiting for an operator to approve the {what}"),
            notes,
        );
    }
    let gates = plan.gates_before(next);
    if !gates.is_empty() {
        let names: Vec<&str> = gates.iter().map(|g| g.name.as_str()).collect();
        let what = if next >= plan.steps.len() || plan.steps[next] >= Weight::FULL {
            "the promotion".to_string()
        } else {
            format!("step {} ({})", next + 1, plan.steps[next])
        };
        let (phase, mut cmds) = hold(
            p,
            format!("ready; asking gate(s) {} before {what}", names.join(", ")),
            notes,
        );
        cmds.push(Command::RunGates { step: next });
        return (phase, cmds);
    }
    advance(next, plan, p.paused_for, notes)
}

/// Moves on to step `next` (or promotes), recording the decision first.
fn advance(
    next: usize,
    plan: &Rollout,
    paused_for: Duration,
    notes: Vec<Command>,
) -> (Phase, Vec<Command>) {
    let (phase, mut cmds) = shift_to(next, plan, paused_for);
    let decision = match &phase {
        Phase::Promoting { .. } => Decision::Promote,
        _ => Decision::Advance {
            step: next,
            weight: plan.steps[next],
        },
    };
    cmds.insert(0, Command::Record(decision));
    cmds.splice(1..1, notes);
    (phase, cmds)
}

/// After the checks: the gates before the first step, if any, else its weight.
fn begin(plan: &Rollout) -> (Phase, Vec<Command>) {
    // The first step is the promotion (a cutover, blue-green): an approval asked for the
    // promotion (or every step) is asked before it, as when leaving an analysed step.
    let promotes = plan.steps.first().is_none_or(|w| *w >= Weight::FULL);
    if promotes && plan.approval != Approval::None {
        return (
            Phase::Confirming {
                step: 0,
                refusals: 0,
                approval: true,
            },
            vec![Command::Record(Decision::Hold {
                reason:
                    "ready; waiting for an operator to approve the promotion; no traffic has moved"
                        .to_string(),
            })],
        );
    }
    confirm_then_shift(plan)
}

/// The gates before the first step, if any, then its weight.
fn confirm_then_shift(plan: &Rollout) -> (Phase, Vec<Command>) {
    if plan.gates_before(0).is_empty() {
        shift_to(0, plan, Duration::ZERO)
    } else {
        (
            Phase::Confirming {
                step: 0,
                refusals: 0,
                approval: false,
            },
            vec![Command::RunGates { step: 0 }],
        )
    }
}
