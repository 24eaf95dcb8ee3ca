//! `[rollout]`: the steps, their gates and pauses, the time budget, blue-green.

use std::collections::BTreeSet;
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;
use toml::de::DeValue;

use super::{as_table, bounded, dur};
use crate::model::Weight;
use crate::policy::Rollout;
use crate::policy::bounds::{self, Bound};
use crate::policy::diag::Ctx;
use crate::policy::gates::GateKind;
use crate::policy::raw::{Advance, OnNoData, RawRollout, Strategy};

/// The least time the analysed steps can take: the first step ends no earlier than one
/// analysis interval after the warm-up, and every step lasts its duration rounded up to
/// whole analysis intervals (a step ends at the first tick at or after `step_duration`).
pub(super) fn time_budget(sd: Duration, ai: Duration, warmup: Duration, analysed: u64) -> Duration {
    let step = bounds::round_up(sd, ai);
    let first = step.max(bounds::plus(warmup, ai));
    bounds::plus(first, bounds::times(step, analysed.saturating_sub(1)))
}

/// One step's percentage, checked against the previous one.
pub(super) fn step_weight(ctx: &mut Ctx, p: &Spanned<f64>, prev: Option<f64>) -> Option<Weight> {
    let pct = *p.get_ref();
    match Weight::try_from_percent(pct) {
        Ok(w) if w > Weight::ZERO => {
            if let Some(q) = prev
                && pct <= q
            {
                ctx.error(
                    p.span(),
                    format!("step weights must increase ({pct} after {q})"),
                );
            }
            Some(w)
        }
        _ => {
            ctx.error(
                p.span(),
                format!("step weight {pct} must be a percentage in (0, 100]"),
            );
            None
        }
    }
}

/// `[[rollout.step]]` tables: the weights, and each step's own settings.
pub(super) fn parse_plan(
    ctx: &mut Ctx,
    tables: &[Spanned<crate::policy::raw::RawStep>],
    at: Range<usize>,
) -> (Vec<Weight>, Vec<crate::policy::StepSpec>) {
    let (mut steps, mut plan) = (Vec::new(), Vec::new());
    let mut names = BTreeSet::new();
    if tables.is_empty() {
        ctx.error(at.start..at.start, "[[rollout.step]] must not be empty");
    }
    let mut prev: Option<f64> = None;
    for t in tables {
        let raw = t.get_ref();
        let Some(w) = step_weight(ctx, &raw.weight, prev) else {
            continue;
        };
        prev = Some(*raw.weight.get_ref());
        let duration = raw.duration.as_ref().map(|d| {
            let (d, span) = dur(Some(d), Duration::ZERO);
            if let Some(problem) = bounds::STEP_DURATION.check(d) {
                ctx.error(span, problem.replace("step_duration", "duration"));
            }
            d
        });
        let pause = raw.pause.as_ref().and_then(|p| {
            let text = p.get_ref().trim();
            if text == "until-promoted" {
                return Some(crate::policy::PlannedPause::UntilPromoted);
            }
            match humantime::parse_duration(text) {
                Ok(d) if !d.is_zero() && d <= bounds::MAX => Some(crate::policy::PlannedPause::For(d)),
                _ => {
                    ctx.error(
                        p.span(),
                        format!(
                            "pause `{text}` must be a duration such as \"10m\" (up to 30 days) or \"until-promoted\""
                        ),
                    );
                    None
                }
            }
        });
        let kind = if w >= Weight::FULL {
            crate::policy::gates::GateKind::ConfirmPromotion
        } else if steps.is_empty() {
            crate::policy::gates::GateKind::ConfirmRollout
        } else {
            crate::policy::gates::GateKind::ConfirmStep
        };
        let gates = crate::policy::gates::parse_gates(
            ctx,
            raw.gate.as_deref().unwrap_or_default(),
            Some(kind),
            &mut names,
        );
        steps.push(w);
        plan.push(crate::policy::StepSpec {
            duration,
            min_requests: raw.min_requests,
            pause,
            unanalysed: raw.analysis == Some(false),
            gates,
        });
    }
    (steps, plan)
}

/// With `[[rollout.step]]`: the steps below 100 % take at least the sum of their durations
/// and timed pauses (the least total), and each is rounded up to whole analysis intervals,
/// the first no earlier than one interval after the warm-up (the budget).
pub(super) fn plan_budget(r: &Rollout, ai: Duration, warmup: Duration) -> (Duration, Duration) {
    let (mut total, mut budget) = (Duration::ZERO, Duration::ZERO);
    for (i, w) in r.steps.iter().enumerate() {
        if *w >= Weight::FULL {
            break;
        }
        let mut d = r.duration_of(i);
        if let Some(crate::policy::PlannedPause::For(p)) = r.spec(i).pause {
            d = bounds::plus(d, p);
        }
        total = bounds::plus(total, d);
        let mut rounded = bounds::round_up(d, ai);
        if i == 0 {
            rounded = rounded.max(bounds::plus(warmup, ai));
        }
        budget = bounds::plus(budget, rounded);
    }
    (total, budget.max(bounds::plus(warmup, ai)))
}

/// The default deadline of a blue-green rollout: time for its checks and gates at 0 % and
/// the switch (the post-promotion window and keep_blue come after it).
pub(super) const BLUE_GREEN_DEADLINE: Duration = Duration::from_secs(600);

pub(super) fn parse_rollout(ctx: &mut Ctx, v: Option<&Spanned<DeValue<'_>>>) -> Option<Rollout> {
    let default_steps = || {
        [5.0, 25.0, 100.0]
            .iter()
            .map(|p| Weight::try_from_percent(*p).expect("constant"))
            .collect::<Vec<_>>()
    };
    let Some(v) = v else {
        return Some(Rollout::with_steps(default_steps()));
    };
    as_table(ctx, v, "[rollout]")?;
    let raw: RawRollout = ctx.de(v)?;
    let before = ctx.diags.len();
    let mut steps = Vec::new();
    let mut plan = Vec::new();
    let strategy = raw
        .strategy
        .as_ref()
        .map_or(Strategy::Canary, |s| *s.get_ref());
    let blue_green = strategy == Strategy::BlueGreen;
    if blue_green {
        let at = raw
            .steps
            .as_ref()
            .map(Spanned::span)
            .or_else(|| raw.step.as_ref().and_then(|t| t.first()).map(Spanned::span));
        if let Some(at) = at {
            ctx.error(
                at,
                "blue-green switches 0 → 100 once; steps make no sense (remove steps / [[rollout.step]], or use strategy = \"canary\")",
            );
        }
    }
    match (&raw.steps, &raw.step) {
        _ if blue_green => steps = vec![Weight::FULL],
        (Some(s), Some(_)) => ctx.error(
            s.span(),
            "give steps = [...] or [[rollout.step]] tables, not both",
        ),
        (None, None) => steps = default_steps(),
        (None, Some(tables)) => (steps, plan) = parse_plan(ctx, tables, v.span()),
        (Some(s), None) if s.get_ref().is_empty() => {
            ctx.error(
                s.span(),
                "steps must not be empty; e.g. steps = [5, 25, 100]",
            );
        }
        (Some(s), None) => {
            let mut prev: Option<f64> = None;
            for p in s.get_ref() {
                if let Some(w) = step_weight(ctx, p, prev) {
                    steps.push(w);
                }
                prev = Some(*p.get_ref());
            }
        }
    }
    let mut r = Rollout::with_steps(steps);
    let mut names: BTreeSet<String> = r
        .plan
        .iter()
        .chain(&plan)
        .flat_map(|s| s.gates.iter().map(|g| g.name.clone()))
        .collect();
    r.gates = crate::policy::gates::parse_gates(
        ctx,
        raw.gate.as_deref().unwrap_or_default(),
        None,
        &mut names,
    );
    r.plan = plan;
    let (sd, sd_span) = bounded(
        ctx,
        raw.step_duration.as_ref(),
        r.step_duration,
        &bounds::STEP_DURATION,
    );
    let (ai, ai_span) = bounded(
        ctx,
        raw.analysis_interval.as_ref(),
        r.analysis_interval,
        &bounds::ANALYSIS_INTERVAL,
    );
    if ai > sd && !sd.is_zero() {
        ctx.error(
            ai_span.clone(),
            format!(
                "analysis_interval {} is longer than step_duration {}",
                humantime::format_duration(ai),
                humantime::format_duration(sd)
            ),
        );
    }
    r.step_duration = sd;
    r.analysis_interval = ai;
    let analysed = r.steps.iter().filter(|w| **w < Weight::FULL).count().max(1) as u64;
    let (wu, wu_span) = bounded(
        ctx,
        raw.warmup.as_ref(),
        Duration::ZERO,
        &Bound {
            min: Duration::ZERO,
            ..Bound::positive("warmup")
        },
    );
    let (min_total, budget) = if blue_green {
        // Nothing is analysed before the switch: the deadline covers the checks and the
        // gates at 0 % and the switch itself (the window and keep_blue come after it).
        (Duration::ZERO, Duration::ZERO)
    } else if r.plan.is_empty() {
        (
            bounds::times(sd, analysed),
            time_budget(sd, ai, wu, analysed),
        )
    } else {
        plan_budget(&r, ai, wu)
    };
    let default_deadline = if blue_green {
        BLUE_GREEN_DEADLINE
    } else {
        bounds::times(budget, 3).max(Duration::from_secs(60))
    };
    let (dl, dl_span) = bounded(
        ctx,
        raw.deadline.as_ref(),
        default_deadline,
        &bounds::DEADLINE,
    );
    let at = if raw.deadline.is_some() {
        dl_span.clone()
    } else if raw.step_duration.is_some() {
        sd_span.clone()
    } else {
        v.span().start..v.span().start
    };
    if dl < min_total {
        let what = if raw.deadline.is_some() {
            format!("deadline {}", humantime::format_duration(dl))
        } else {
            format!("the longest deadline {}", humantime::format_duration(dl))
        };
        let steps = if r.plan.is_empty() {
            format!(
                "{analysed} analysed step(s) × step_duration {}",
                humantime::format_duration(sd)
            )
        } else {
            "the steps' durations and timed pauses".to_string()
        };
        ctx.error(
            at,
            format!(
                "{what} is shorter than {steps} = {}",
                humantime::format_duration(min_total)
            ),
        );
    } else if dl < budget {
        ctx.warn(
            at,
            format!(
                "the rollout can never promote: deadline {} is shorter than the {} its analysed steps take at least ({analysed} step(s) of step_duration {}, each rounded up to whole analysis intervals of {}; the first ends no earlier than one interval after warmup {})",
                humantime::format_duration(dl),
                humantime::format_duration(budget),
                humantime::format_duration(sd),
                humantime::format_duration(ai),
                humantime::format_duration(wu)
            ),
        );
    }
    r.deadline = dl;
    if let Some(m) = raw.min_requests {
        r.min_requests = m;
    }
    r.advance = raw.advance.unwrap_or(Advance::NoFail);
    r.on_no_data = raw.on_no_data.unwrap_or(OnNoData::Hold);
    let (nd, nd_span) = bounded(
        ctx,
        raw.no_data_limit.as_ref(),
        bounds::times(ai, 10),
        &Bound {
            min: ai,
            why_min: "the limit must outlast one analysis interval, or a single late scrape would act",
            ..Bound::positive("no_data_limit")
        },
    );
    r.no_data_limit = nd;
    if let Some(e) = raw.error_limit {
        r.error_limit = e;
    }
    if let Some(n) = raw.apply_retries {
        r.apply_retries = n;
    }
    let (at, _) = bounded(
        ctx,
        raw.apply_timeout.as_ref(),
        r.apply_timeout,
        &bounds::APPLY_TIMEOUT,
    );
    r.apply_timeout = at;
    r.approval = raw.approval.unwrap_or_default();
    if wu >= r.deadline && wu <= bounds::MAX {
        ctx.error(
            wu_span,
            format!(
                "warmup {} must be shorter than the deadline {}",
                humantime::format_duration(wu),
                humantime::format_duration(r.deadline)
            ),
        );
    }
    if r.on_no_data == OnNoData::Rollback && nd >= r.deadline {
        ctx.warn(
            nd_span,
            format!(
                "on_no_data = \"rollback\" never applies: no_data_limit {} is not shorter than the deadline {}",
                humantime::format_duration(nd),
                humantime::format_duration(r.deadline)
            ),
        );
    }
    r.warmup = wu;
    (r.baseline_history, _) = bounded(
        ctx,
        raw.baseline_history.as_ref(),
        crate::policy::DEFAULT_BASELINE_HISTORY,
        &Bound {
            min: Duration::ZERO,
            max: Duration::from_secs(3600),
            why_max: "an hour-old baseline says little about the next minutes' latency",
            ..Bound::positive("baseline_history")
        },
    );
    let (pp, _) = bounded(
        ctx,
        raw.post_promotion.as_ref(),
        Duration::ZERO,
        &Bound {
            min: Duration::ZERO,
            ..Bound::positive("post_promotion")
        },
    );
    r.post_promotion = pp;
    r.strategy = strategy;
    r.keep_blue = keep_blue(ctx, &raw, blue_green);
    rollout_safety(ctx, &raw, &mut r);
    (ctx.diags.len() == before).then_some(r)
}

/// `keep_blue`, and the blue-green-only settings (`keep_blue`, `blue-retired` gates) in a
/// policy without `strategy = "blue-green"`.
pub(super) fn keep_blue(ctx: &mut Ctx, raw: &RawRollout, blue_green: bool) -> Duration {
    let (kb, kb_span) = bounded(
        ctx,
        raw.keep_blue.as_ref(),
        Duration::ZERO,
        &Bound {
            min: Duration::ZERO,
            ..Bound::positive("keep_blue")
        },
    );
    if blue_green {
        return kb;
    }
    // "0s" (its default) is harmless anywhere; a time to keep blue is not.
    if raw.keep_blue.is_some() && !kb.is_zero() {
        ctx.error(
            kb_span,
            "keep_blue needs strategy = \"blue-green\" (it is how long blue stays deployed after the switch)",
        );
    }
    for g in raw.gate.as_deref().unwrap_or_default() {
        if let Some(k) = g.get_ref().kind()
            && *k.get_ref() == GateKind::BlueRetired
        {
            ctx.error(
                k.span(),
                "a blue-retired gate needs strategy = \"blue-green\" (it is told when blue stops being kept for a rollback)",
            );
        }
    }
    Duration::ZERO
}

/// `baseline_max_error_rate`, `on_external_change` and `early_pass`.
pub(super) fn rollout_safety(ctx: &mut Ctx, raw: &RawRollout, r: &mut Rollout) {
    if let Some(b) = &raw.baseline_max_error_rate {
        let v = *b.get_ref();
        if v > 0.0 && v <= 1.0 {
            r.baseline_max_error_rate = v;
        } else {
            ctx.error(
                b.span(),
                format!(
                    "baseline_max_error_rate must be in (0, 1] (1 turns the check off), got {v}"
                ),
            );
        }
    }
    r.on_external_change = raw.on_external_change.unwrap_or_default();
    r.early_pass = raw.early_pass.unwrap_or(false);
}
