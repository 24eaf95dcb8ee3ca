//! What one tick does in each live phase: judge the window's evidence, hold, advance, or roll back.

use super::step::{baseline_health, external_change, ready, rollback, secs};
use super::{
    Command, Decision, KeepBlue, MetricStatus, Note, Paused, Phase, Progress, Reason, Watch,
    WindowFacts, pause_text,
};
use crate::analysis::Outcome;
use crate::controller::health::{self};
use crate::model::Weight;
use crate::policy::{Advance, OnNoData, Rollout};
use std::fmt::Write as _;
use std::time::Duration;

/// A tick while paused: recorded, never acted on (a human has control of traffic).
pub(super) fn paused_tick(
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

pub(super) fn hold(p: Progress, reason: String, mut notes: Vec<Command>) -> (Phase, Vec<Command>) {
    notes.insert(0, Command::Record(Decision::Hold { reason }));
    (Phase::Progressing(p), notes)
}

#[allow(clippy::too_many_lines)] // one decision, read top to bottom
pub(super) fn tick(
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
pub(super) fn full_in_force(now: Duration, plan: &Rollout) -> (Phase, Vec<Command>) {
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
pub(super) fn watching_tick(
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
pub(super) fn window_over(
    now: Duration,
    paused_for: Duration,
    plan: &Rollout,
) -> (Phase, Vec<Command>) {
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
pub(super) fn changed_at_full(
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
pub(super) fn paused_in_keep_blue(
    (phase, cmds): (Phase, Vec<Command>),
    k: KeepBlue,
) -> (Phase, Vec<Command>) {
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
pub(super) fn keeping_blue_tick(
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
pub(super) fn unanalysed_tick(
    mut p: Progress,
    now: Duration,
    plan: &Rollout,
) -> (Phase, Vec<Command>) {
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
