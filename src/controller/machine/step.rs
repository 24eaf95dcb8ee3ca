//! The transitions: an event in a phase, to the next phase and its commands.

use super::tick::{
    full_in_force, hold, keeping_blue_tick, paused_in_keep_blue, paused_tick, tick, watching_tick,
    window_over,
};
use super::{
    Command, Decision, Event, Judging, KeepBlue, Note, PauseCause, Paused, Phase, Progress, Reason,
    WindowFacts, pause_text,
};
use crate::controller::health::{self, Health};
use crate::model::Weight;
use crate::policy::{Approval, OnExternalChange, PlannedPause, Rollout};
use std::time::Duration;

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
pub(super) fn baseline_health(p: &Progress, facts: &WindowFacts, plan: &Rollout) -> Health {
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

pub(super) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << attempt.min(5))).min(Duration::from_secs(10))
}

pub(super) fn rollback(reason: Reason, record: bool) -> (Phase, Vec<Command>) {
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
pub(super) fn restored(
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
pub(super) fn next_step(weight: Weight, plan: &Rollout) -> usize {
    plan.steps
        .iter()
        .position(|w| *w > weight)
        .unwrap_or(plan.steps.len())
}

pub(super) fn shift_to(step: usize, plan: &Rollout, paused_for: Duration) -> (Phase, Vec<Command>) {
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

pub(super) fn secs(d: Duration) -> String {
    format!("{:.0}s", d.as_secs_f64())
}

/// A weight in force that the controller did not apply: never override it silently.
pub(super) fn external_change(
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

pub(super) fn resume(z: Paused, now: Duration) -> (Phase, Vec<Command>) {
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

/// A step whose evidence is complete: its planned pause, then the operator's approval,
/// then the next step (or the promotion).
pub(super) fn ready(
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
pub(super) fn advance(
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
pub(super) fn begin(plan: &Rollout) -> (Phase, Vec<Command>) {
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
pub(super) fn confirm_then_shift(plan: &Rollout) -> (Phase, Vec<Command>) {
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
