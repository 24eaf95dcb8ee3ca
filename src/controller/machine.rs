//! The pure rollout state machine: `step(phase, event, plan) -> (phase, commands)`.
//!
//! No I/O and no clock reads: time arrives inside events as the offset since the rollout
//! started. The async runner ([`super::runner`]) executes the commands and feeds back the
//! results as events. Terminal states are variants, not flags.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::analysis::Outcome;
use crate::model::Weight;
use crate::policy::{Advance, Approval, OnNoData, Rollout};

/// Why a rollout is rolled back (or failed).
#[derive(Clone, Debug, PartialEq, Serialize)]
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
    /// A pre-rollout check failed: no traffic was moved.
    PreCheck {
        /// The hook's name.
        hook: String,
        /// What it said.
        detail: String,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::MetricFailed { metric, detail } => {
                write!(f, "metric `{metric}` failed: {detail}")
            }
            Reason::Deadline { after_s } => write!(
                f,
                "deadline of {} passed before promotion",
                humantime::format_duration(Duration::from_secs_f64(after_s.round()))
            ),
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
        }
    }
}

/// Progress within an analysed step.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// Index into the plan's steps.
    pub step: usize,
    /// Weight in force.
    pub weight: Weight,
    /// When the weight was applied (offset from the rollout's start).
    pub since: Duration,
    /// Requests per arm in this step (baseline, canary).
    pub requests: [f64; 2],
    /// Since when data has been missing, if it is.
    pub no_data_since: Option<Duration>,
    /// Consecutive ticks with query errors.
    pub error_ticks: u32,
    /// An operator approved leaving this step.
    pub approved: bool,
}

/// Where a rollout is.
#[derive(Clone, Debug, PartialEq)]
pub enum Phase {
    /// Not started.
    Pending,
    /// Running the pre-rollout checks; no traffic has moved.
    PreChecks,
    /// Waiting for a step's weight to be applied.
    Shifting {
        /// Step index.
        step: usize,
        /// Weight being applied.
        target: Weight,
        /// Failed attempts so far.
        attempt: u32,
    },
    /// A step's weight is in force and analysis runs.
    Progressing(Progress),
    /// Putting 100 % on the canary.
    Promoting {
        /// Failed attempts so far.
        attempt: u32,
    },
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
            Phase::Shifting { .. } => "shifting",
            Phase::Progressing(_) => "progressing",
            Phase::Promoting { .. } => "promoting",
            Phase::Promoted => "promoted",
            Phase::RollingBack { .. } => "rolling-back",
            Phase::RolledBack { .. } => "rolled-back",
            Phase::Failed { .. } => "failed",
        }
    }

    /// Whether the rollout is over.
    #[must_use]
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Phase::Promoted | Phase::RolledBack { .. } | Phase::Failed { .. }
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
    /// An analysis tick.
    Tick {
        /// Offset from the start.
        now: Duration,
        /// Every metric's state.
        metrics: Vec<MetricStatus>,
        /// Requests per arm in this window, when the metrics tell.
        requests: Option<[f64; 2]>,
    },
    /// An operator approved leaving the current step (see `[rollout] approval`).
    Approve {
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
}

/// What the runner must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Run the pre-rollout checks and report with [`Event::PreChecksDone`].
    RunPreChecks,
    /// Write a tick's decision record (always first, before acting).
    Record(Decision),
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
                shift_to(0, plan)
            }
        }
        (Phase::PreChecks, Event::PreChecksDone { failed, .. }) => match failed {
            None => shift_to(0, plan),
            // Nothing moved; setting 0 makes sure of it (idempotent).
            Some((hook, detail)) => rollback(Reason::PreCheck { hook, detail }, false),
        },
        (phase, Event::Abort { why, .. }) if !phase.is_terminal() => match phase {
            Phase::RollingBack { .. } => (phase, Vec::new()),
            _ => rollback(Reason::Aborted { why }, false),
        },
        (Phase::Shifting { step, target, .. }, Event::Applied { weight, now })
            if weight == target =>
        {
            (
                Phase::Progressing(Progress {
                    step,
                    weight,
                    since: now,
                    requests: [0.0, 0.0],
                    no_data_since: None,
                    error_ticks: 0,
                    approved: false,
                }),
                Vec::new(),
            )
        }
        (
            Phase::Shifting {
                step,
                target,
                attempt,
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
        (Phase::Progressing(mut p), Event::Approve { .. }) => {
            p.approved = true;
            (Phase::Progressing(p), Vec::new())
        }
        (
            Phase::Progressing(p),
            Event::Tick {
                now,
                metrics,
                requests,
            },
        ) => tick(p, now, &metrics, requests, plan),
        (Phase::Promoting { .. }, Event::Applied { weight, .. }) if weight == Weight::FULL => {
            (Phase::Promoted, vec![Command::Finish])
        }
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

fn shift_to(step: usize, plan: &Rollout) -> (Phase, Vec<Command>) {
    match plan.steps.get(step) {
        Some(&w) if w < Weight::FULL => (
            Phase::Shifting {
                step,
                target: w,
                attempt: 0,
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

fn tick(
    mut p: Progress,
    now: Duration,
    metrics: &[MetricStatus],
    requests: Option<[f64; 2]>,
    plan: &Rollout,
) -> (Phase, Vec<Command>) {
    if let Some(r) = requests {
        p.requests[0] += r[0].max(0.0);
        p.requests[1] += r[1].max(0.0);
    }
    let live: Vec<&MetricStatus> = metrics.iter().filter(|m| !m.dry_run).collect();
    if let Some(m) = live.iter().find(|m| m.outcome == Some(Outcome::Fail)) {
        return rollback(
            Reason::MetricFailed {
                metric: m.metric.clone(),
                detail: m.reason.clone(),
            },
            true,
        );
    }
    if now >= plan.deadline {
        return rollback(
            Reason::Deadline {
                after_s: plan.deadline.as_secs_f64(),
            },
            true,
        );
    }
    let errors: Vec<&&MetricStatus> = live.iter().filter(|m| m.outcome.is_none()).collect();
    if errors.is_empty() {
        p.error_ticks = 0;
    } else {
        p.error_ticks += 1;
        if plan.error_limit > 0 && p.error_ticks >= plan.error_limit {
            return rollback(
                Reason::QueryErrors {
                    ticks: p.error_ticks,
                    last: format!("{}: {}", errors[0].metric, errors[0].reason),
                },
                true,
            );
        }
    }
    let no_data: Vec<String> = live
        .iter()
        .filter(|m| matches!(m.outcome, None | Some(Outcome::NoData)))
        .map(|m| m.metric.clone())
        .collect();
    if no_data.is_empty() {
        p.no_data_since = None;
    } else {
        let since = *p.no_data_since.get_or_insert(now);
        let missing_for = now.saturating_sub(since);
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
    let mut waiting: Vec<String> = Vec::new();
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
    let elapsed = now.saturating_sub(p.since);
    if elapsed < plan.step_duration {
        waiting.push(format!(
            "step time {} of {}",
            secs(elapsed),
            secs(plan.step_duration)
        ));
    }
    let min = plan.min_requests as f64;
    if p.requests[0] < min || p.requests[1] < min {
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
    if !waiting.is_empty() {
        return (
            Phase::Progressing(p),
            vec![Command::Record(Decision::Hold {
                reason: waiting.join("; "),
            })],
        );
    }
    let next = p.step + 1;
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
        return (
            Phase::Progressing(p),
            vec![Command::Record(Decision::Hold {
                reason: format!("ready; waiting for an operator to approve the {what}"),
            })],
        );
    }
    let (phase, mut cmds) = shift_to(next, plan);
    let decision = match &phase {
        Phase::Promoting { .. } => Decision::Promote,
        _ => Decision::Advance {
            step: next,
            weight: plan.steps[next],
        },
    };
    cmds.insert(0, Command::Record(decision));
    (phase, cmds)
}
