//! From TOML text to a checked [`Policy`], collecting every problem with its position.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::bounds::{self, Bound};
use super::diag::{Ctx, Diagnostics, split, table_value, take};
use super::gates::GateKind;
use super::providers;
use super::raw::{
    Advance, METRIC_COMMON_KEYS, OnNoData, RawBuiltin, RawEffectSize, RawHaproxyStats,
    RawMannWhitney, RawMetricCommon, RawOutliers, RawPrometheus, RawProxy, RawRollout, RawRoot,
    RawScoring, RawSequential, RawThreshold, Strategy,
};
use super::template::Template;
use super::{
    BuiltinSignal, DataSpec, MetricConfig, Policy, PrometheusConfig, ProxyConfig, Readiness,
    Rollout, SourceConfig, TrafficConfig, Upstream, Variable,
};
use crate::analysis::JudgeSpec;
use crate::analysis::errors::EventJudgeSpec;
use crate::analysis::kayenta::{EffectSizeKind, KayentaConfig};
use crate::analysis::latency::{LatencyJudgeSpec, LatencyTest, Thresholds};
use crate::analysis::mw_judge::{MannWhitneySpec, Scoring};
use crate::analysis::observation::Shape;
use crate::analysis::sequential::Prior;
use crate::analysis::threshold::ThresholdSpec;
use crate::model::Weight;

/// Traffic provider names, for messages.
pub const TRAFFIC_TYPES: &[&str] = &["proxy", "haproxy", "nginx", "exec", "http", "gateway-api"];
/// Metrics source names, for messages.
pub const SOURCE_TYPES: &[&str] = &["builtin", "prometheus", "haproxy"];
/// Judge names, for messages.
pub const JUDGES: &[&str] = &["sequential", "mann-whitney", "threshold"];

/// Largest policy file accepted: real policies are a few KB; anything near this size is the
/// wrong file (or an attack on the parser), and refusing it up front keeps `validate` fast.
pub const MAX_POLICY_BYTES: usize = 1 << 20;

/// Parses and validates a policy. `origin` names the file in messages.
///
/// # Errors
/// Every problem found, each with its position.
pub fn parse(source: &str, origin: &str) -> Result<Policy, Diagnostics> {
    parse_with_warnings(source, origin).map(|(p, _)| p)
}

/// Checks a policy file's bytes (size, UTF-8) and parses it; `Ok` carries the warnings.
///
/// # Errors
/// Every problem found, each with its position: a file larger than [`MAX_POLICY_BYTES`],
/// the first byte that is not UTF-8, or what [`parse_with_warnings`] finds.
pub fn parse_bytes(bytes: &[u8], origin: &str) -> Result<(Policy, Diagnostics), Diagnostics> {
    if bytes.len() > MAX_POLICY_BYTES {
        return Err(Diagnostics::new(
            origin,
            "",
            vec![super::Diagnostic {
                span: 0..0,
                message: format!(
                    "the file is {} bytes, more than the {MAX_POLICY_BYTES} bytes (1 MiB) a policy may have: policies are a few KB of TOML; is this the right file?",
                    bytes.len()
                ),
            }],
        ));
    }
    let source = match std::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => {
            let at = e.valid_up_to();
            // The valid prefix locates the bad byte.
            let prefix = std::str::from_utf8(&bytes[..at]).unwrap_or_default();
            return Err(Diagnostics::new(
                origin,
                prefix,
                vec![super::Diagnostic {
                    span: at..at,
                    message: format!(
                        "invalid UTF-8 (byte 0x{:02x} at offset {at}): a policy must be UTF-8 text",
                        bytes[at]
                    ),
                }],
            ));
        }
    };
    parse_with_warnings(source, origin)
}

/// Parses and validates a policy; `Ok` carries the warnings (possibly none).
///
/// # Errors
/// Every problem found, each with its position (warnings included).
pub fn parse_with_warnings(
    source: &str,
    origin: &str,
) -> Result<(Policy, Diagnostics), Diagnostics> {
    let mut ctx = Ctx::default();
    let fail = |ctx: Ctx| {
        Err(Diagnostics::with_warnings(
            origin,
            source,
            ctx.diags,
            ctx.warnings,
        ))
    };
    let (root, errors) = DeTable::parse_recoverable(source);
    if !errors.is_empty() {
        // The parser recovers and reports follow-on errors on the same line; the first one
        // per line is the one to fix.
        let lines = super::diag::LineIndex::new(source);
        let mut lines_seen = BTreeSet::new();
        for e in &errors {
            let span = e.span().unwrap_or(0..0);
            if lines_seen.insert(lines.line(span.start)) {
                let msg = e.message().lines().next().unwrap_or("invalid TOML");
                ctx.error(span, msg.to_string());
            }
        }
        return fail(ctx);
    }
    let root_span = root.span();
    let mut root = root.into_inner();
    let rollout_value = take(&mut root, "rollout");
    let traffic_value = take(&mut root, "traffic");
    let scoring = take(&mut root, "scoring");
    let hook = take(&mut root, "hook");
    let notify = take(&mut root, "notify");
    let metrics = take(&mut root, "metrics");
    let metric_value = take(&mut root, "metric");

    let head: Option<RawRoot> = ctx.de(&table_value(root_span.clone(), root));
    let alpha = head
        .as_ref()
        .and_then(|h| h.alpha.as_ref())
        .map_or(0.05, |a| {
            let v = *a.get_ref();
            if !(v > 0.0 && v <= 0.5) {
                ctx.error(a.span(), format!("alpha must be in (0, 0.5], got {v}"));
            }
            v
        });
    if let Some(h) = &head
        && h.name.get_ref().trim().is_empty()
    {
        ctx.error(h.name.span(), "name must not be empty");
    }

    let rollout = parse_rollout(&mut ctx, rollout_value.as_ref());
    let traffic = match &traffic_value {
        Some(t) => parse_traffic(&mut ctx, t),
        None => {
            ctx.error(
                root_span.start..root_span.start,
                format!(
                    "missing section [traffic]; add one with `type` = one of {}",
                    TRAFFIC_TYPES.join(", ")
                ),
            );
            None
        }
    };
    let src_cfg = match &metrics {
        Some(m) => parse_source(&mut ctx, m, traffic.as_ref()),
        None => Some((SourceConfig::Builtin, root_span.start..root_span.start)),
    };
    if let (Some(t), Some((SourceConfig::Builtin, span))) = (&traffic, &src_cfg)
        && !matches!(t, TrafficConfig::Proxy(_))
    {
        ctx.error(
            span.clone(),
            "metrics type `builtin` reads the built-in proxy's counters and needs [traffic] type = \"proxy\"",
        );
    }
    let metrics = match &metric_value {
        Some(m) => parse_metrics(&mut ctx, m, src_cfg.as_ref().map(|s| &s.0), alpha),
        None => {
            ctx.error(
                root_span.end..root_span.end,
                "no [[metric]] tables: a policy needs at least one metric to judge",
            );
            Vec::new()
        }
    };

    let has_mw = metrics
        .iter()
        .any(|m| matches!(m.judge, JudgeSpec::MannWhitney(_)));
    let scoring = parse_scoring(&mut ctx, scoring.as_ref(), &metrics, has_mw);
    let hooks = super::hooks::parse_hooks(&mut ctx, hook.as_ref());
    let notify = super::hooks::parse_notify(&mut ctx, notify.as_ref());
    // Programs never get the variables that hold coalmine's tokens.
    let token_vars: Vec<&str> = [
        match &src_cfg {
            Some((SourceConfig::Prometheus(p), _)) => p.token.as_ref(),
            _ => None,
        },
        match &traffic {
            Some(TrafficConfig::Http(h)) => h.token.as_ref(),
            _ => None,
        },
    ]
    .into_iter()
    .flatten()
    .filter_map(|s| match s {
        super::Secret::Env(n) => Some(n.as_str()),
        super::Secret::File(_) => None,
    })
    .collect();
    let passed = hooks
        .iter()
        .flat_map(|h| h.env.iter().map(|n| (n, hook.as_ref())));
    let passed = passed.chain(
        match &traffic {
            Some(TrafficConfig::Exec(e)) => e.env.as_slice(),
            _ => &[],
        }
        .iter()
        .map(|n| (n, traffic_value.as_ref())),
    );
    for (name, at) in passed {
        if token_vars.contains(&name.as_str()) {
            let span = at.map_or(root_span.start..root_span.start, |v| {
                v.span().start..v.span().start
            });
            ctx.error(
                span,
                format!("env passes `{name}`, the variable token_env reads: programs coalmine starts never get its credentials"),
            );
        }
    }
    if !ctx.diags.is_empty() {
        return fail(ctx);
    }
    let (Some(head), Some(rollout), Some(traffic), Some((src_cfg, _))) =
        (head, rollout, traffic, src_cfg)
    else {
        return fail(ctx);
    };
    let policy = Policy {
        name: head.name.into_inner(),
        description: head.description,
        alpha,
        decisions: head.decisions.map(PathBuf::from),
        rollout,
        traffic,
        source: src_cfg,
        metrics,
        scoring,
        hooks,
        notify,
    };
    let places = super::lint::Places {
        root: root_span,
        rollout: rollout_value.as_ref(),
        metric: metric_value.as_ref(),
    };
    super::lint::lint(&mut ctx, &policy, &places);
    let warnings = Diagnostics::with_warnings(origin, source, Vec::new(), ctx.warnings);
    Ok((policy, warnings))
}

fn parse_scoring(
    ctx: &mut Ctx,
    v: Option<&Spanned<DeValue<'_>>>,
    metrics: &[MetricConfig],
    has_mw: bool,
) -> Option<Scoring> {
    let Some(v) = v else {
        return has_mw.then(Scoring::default);
    };
    if !has_mw {
        ctx.error(
            v.span(),
            "[scoring] applies to judge = \"mann-whitney\" metrics, and this policy has none",
        );
    }
    let raw: RawScoring = ctx.de(v)?;
    let mut s = Scoring::default();
    let pass = raw.pass.as_ref().map_or(s.cfg.pass, |p| *p.get_ref());
    let marginal = raw
        .marginal
        .as_ref()
        .map_or(s.cfg.marginal, |p| *p.get_ref());
    if !(0.0..=100.0).contains(&pass) || !(0.0..=100.0).contains(&marginal) || marginal > pass {
        ctx.error(
            raw.marginal
                .as_ref()
                .or(raw.pass.as_ref())
                .map_or(v.span(), Spanned::span),
            format!("scores need 0 ≤ marginal ≤ pass ≤ 100, got marginal {marginal}, pass {pass}"),
        );
    }
    s.cfg.pass = pass;
    s.cfg.marginal = marginal;
    if let Some(m) = raw.min_points {
        s.min_points = m;
    }
    if let Some(w) = &raw.weights {
        let groups: BTreeSet<String> = metrics
            .iter()
            .filter_map(|m| match &m.judge {
                JudgeSpec::MannWhitney(s) => Some(s.group.clone()),
                _ => None,
            })
            .collect();
        let total: f64 = w.get_ref().values().sum();
        for (g, x) in w.get_ref() {
            if !groups.contains(g) {
                ctx.error(
                    w.span(),
                    format!("weight for group `{g}`, but no mann-whitney metric is in that group"),
                );
            }
            if !(*x >= 0.0 && x.is_finite()) {
                ctx.error(
                    w.span(),
                    format!("weight of group `{g}` must be a number ≥ 0"),
                );
            }
        }
        if total > 100.0 + 1e-9 {
            ctx.error(
                w.span(),
                format!("group weights add up to {total}, more than 100"),
            );
        }
        s.cfg.group_weights = w.get_ref().clone();
    }
    Some(s)
}

fn as_table<'a, 'i>(
    ctx: &mut Ctx,
    v: &'a Spanned<DeValue<'i>>,
    what: &str,
) -> Option<&'a DeTable<'i>> {
    if let DeValue::Table(t) = v.get_ref() {
        Some(t)
    } else {
        ctx.error(v.span(), format!("{what} must be a table"));
        None
    }
}

/// Removes the string tag `key` from a table, reporting a missing or non-string tag.
fn take_tag(
    ctx: &mut Ctx,
    table: &mut DeTable<'_>,
    key: &str,
    span: &Range<usize>,
    what: &str,
    default: Option<&str>,
) -> Option<Spanned<String>> {
    match take(table, key) {
        Some(v) => {
            if let Some(s) = v.get_ref().as_str() {
                Some(Spanned::new(v.span(), s.to_string()))
            } else {
                ctx.error(v.span(), format!("`{key}` of {what} must be a string"));
                None
            }
        }
        None => {
            if let Some(d) = default {
                return Some(Spanned::new(span.start..span.start, d.to_string()));
            }
            ctx.error(span.start..span.start, format!("{what} needs `{key}`"));
            None
        }
    }
}

pub(super) fn dur(
    v: Option<&Spanned<super::raw::Dur>>,
    default: Duration,
) -> (Duration, Range<usize>) {
    v.map_or((default, 0..0), |d| (d.get_ref().0, d.span()))
}

/// A duration key: its value (or `default`) and span; a value outside `bound` is reported
/// with the bound's reason (defaults are not checked: they are in range by construction).
pub(super) fn bounded(
    ctx: &mut Ctx,
    v: Option<&Spanned<super::raw::Dur>>,
    default: Duration,
    bound: &Bound,
) -> (Duration, Range<usize>) {
    let (d, span) = dur(v, default);
    if v.is_some()
        && let Some(problem) = bound.check(d)
    {
        ctx.error(span.clone(), problem);
    }
    (d, span)
}

/// The least time the analysed steps can take: the first step ends no earlier than one
/// analysis interval after the warm-up, and every step lasts its duration rounded up to
/// whole analysis intervals (a step ends at the first tick at or after `step_duration`).
fn time_budget(sd: Duration, ai: Duration, warmup: Duration, analysed: u64) -> Duration {
    let step = bounds::round_up(sd, ai);
    let first = step.max(bounds::plus(warmup, ai));
    bounds::plus(first, bounds::times(step, analysed.saturating_sub(1)))
}

/// One step's percentage, checked against the previous one.
fn step_weight(ctx: &mut Ctx, p: &Spanned<f64>, prev: Option<f64>) -> Option<Weight> {
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
fn parse_plan(
    ctx: &mut Ctx,
    tables: &[Spanned<super::raw::RawStep>],
    at: Range<usize>,
) -> (Vec<Weight>, Vec<super::StepSpec>) {
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
                return Some(super::PlannedPause::UntilPromoted);
            }
            match humantime::parse_duration(text) {
                Ok(d) if !d.is_zero() && d <= bounds::MAX => Some(super::PlannedPause::For(d)),
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
            super::gates::GateKind::ConfirmPromotion
        } else if steps.is_empty() {
            super::gates::GateKind::ConfirmRollout
        } else {
            super::gates::GateKind::ConfirmStep
        };
        let gates = super::gates::parse_gates(
            ctx,
            raw.gate.as_deref().unwrap_or_default(),
            Some(kind),
            &mut names,
        );
        steps.push(w);
        plan.push(super::StepSpec {
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
fn plan_budget(r: &Rollout, ai: Duration, warmup: Duration) -> (Duration, Duration) {
    let (mut total, mut budget) = (Duration::ZERO, Duration::ZERO);
    for (i, w) in r.steps.iter().enumerate() {
        if *w >= Weight::FULL {
            break;
        }
        let mut d = r.duration_of(i);
        if let Some(super::PlannedPause::For(p)) = r.spec(i).pause {
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
const BLUE_GREEN_DEADLINE: Duration = Duration::from_secs(600);

fn parse_rollout(ctx: &mut Ctx, v: Option<&Spanned<DeValue<'_>>>) -> Option<Rollout> {
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
    r.gates = super::gates::parse_gates(
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
        super::DEFAULT_BASELINE_HISTORY,
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
fn keep_blue(ctx: &mut Ctx, raw: &RawRollout, blue_green: bool) -> Duration {
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
fn rollout_safety(ctx: &mut Ctx, raw: &RawRollout, r: &mut Rollout) {
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

fn parse_upstream(ctx: &mut Ctx, s: &Spanned<String>, what: &str) -> Option<Upstream> {
    let url = s.get_ref().trim();
    let Some(rest) = url.strip_prefix("http://") else {
        ctx.error(
            s.span(),
            format!("{what} must be an http:// URL such as http://127.0.0.1:9001, got `{url}`"),
        );
        return None;
    };
    let authority = rest.split('/').next().unwrap_or("");
    let ok = match authority.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    };
    if !ok {
        ctx.error(
            s.span(),
            format!("{what} needs a host and a port, e.g. http://127.0.0.1:9001, got `{url}`"),
        );
        return None;
    }
    Some(Upstream {
        url: url.to_string(),
        authority: authority.to_string(),
    })
}

/// Most request headers `max_headers` may allow (hyper keeps them per request).
const MAX_HEADERS_LIMIT: i64 = 10_000;

/// The proxy's client-side limits: `header_read_timeout`, `idle_timeout`, `max_headers`.
fn proxy_limits(ctx: &mut Ctx, raw: &RawProxy) -> (Duration, Duration, usize) {
    let (header, hspan) = dur(
        raw.header_read_timeout.as_ref(),
        crate::net::DEFAULT_HEADER_READ_TIMEOUT,
    );
    if header.is_zero() {
        ctx.error(
            hspan,
            "header_read_timeout must be positive (it closes connections whose request head is too slow)",
        );
    }
    let (idle, ispan) = dur(raw.idle_timeout.as_ref(), crate::net::DEFAULT_IDLE_TIMEOUT);
    if idle.is_zero() {
        ctx.error(
            ispan,
            "idle_timeout must be positive (it closes kept-alive connections without requests)",
        );
    }
    let mut max_headers = crate::net::DEFAULT_MAX_HEADERS;
    if let Some(m) = &raw.max_headers {
        match usize::try_from(*m.get_ref()) {
            Ok(n) if (1..=MAX_HEADERS_LIMIT).contains(m.get_ref()) => max_headers = n,
            _ => ctx.error(
                m.span(),
                format!(
                    "max_headers must be between 1 and {MAX_HEADERS_LIMIT}, got {}",
                    m.get_ref()
                ),
            ),
        }
    }
    (header, idle, max_headers)
}

fn parse_traffic(ctx: &mut Ctx, v: &Spanned<DeValue<'_>>) -> Option<TrafficConfig> {
    let mut table = as_table(ctx, v, "[traffic]")?.clone();
    let span = v.span();
    let kind = take_tag(ctx, &mut table, "type", &span, "[traffic]", None)?;
    let rest = table_value(span, table);
    match kind.get_ref().as_str() {
        "proxy" => {
            let raw: RawProxy = ctx.de(&rest)?;
            let listen = raw.listen.get_ref().parse::<SocketAddr>();
            if listen.is_err() {
                ctx.error(
                    raw.listen.span(),
                    format!(
                        "listen must be an address such as 127.0.0.1:8080, got `{}`",
                        raw.listen.get_ref()
                    ),
                );
            }
            let baseline = parse_upstream(ctx, &raw.baseline, "baseline");
            let canary = parse_upstream(ctx, &raw.canary, "canary");
            let (timeout, _) = bounded(
                ctx,
                raw.upstream_timeout.as_ref(),
                Duration::from_secs(30),
                &Bound::timeout("upstream_timeout"),
            );
            let readiness = parse_readiness(ctx, &raw);
            let limits = proxy_limits(ctx, &raw);
            Some(TrafficConfig::Proxy(ProxyConfig {
                upstream_timeout: timeout,
                readiness: readiness?,
                header_read_timeout: limits.0,
                idle_timeout: limits.1,
                max_headers: limits.2,
                ..ProxyConfig::new(listen.ok()?, baseline?, canary?)
            }))
        }
        "haproxy" => providers::haproxy(ctx, &rest).map(TrafficConfig::Haproxy),
        "nginx" => providers::nginx(ctx, &rest).map(TrafficConfig::Nginx),
        "exec" => providers::exec(ctx, &rest).map(TrafficConfig::Exec),
        "http" => providers::http(ctx, &rest).map(TrafficConfig::Http),
        "gateway-api" => providers::gateway_api(ctx, &rest).map(TrafficConfig::GatewayApi),
        other => {
            ctx.error(
                kind.span(),
                format!(
                    "unknown traffic provider `{other}`; expected one of {}",
                    TRAFFIC_TYPES.join(", ")
                ),
            );
            None
        }
    }
}

/// The canary readiness probe of the built-in proxy (`readiness_*` keys).
fn parse_readiness(ctx: &mut Ctx, raw: &RawProxy) -> Option<Readiness> {
    let before = ctx.diags.len();
    let mut r = Readiness::default();
    if let Some(p) = &raw.readiness_path {
        let path = p.get_ref().trim();
        if path.starts_with('/') && !path.contains(char::is_whitespace) {
            r.path = path.to_string();
        } else {
            ctx.error(
                p.span(),
                format!("readiness_path must be a path starting with `/`, e.g. \"/healthz\", got `{path}`"),
            );
        }
    }
    if let Some(list) = &raw.readiness_statuses {
        for s in list.get_ref() {
            match u16::try_from(*s.get_ref()) {
                Ok(code) if (100..=599).contains(&code) => r.statuses.push(code),
                _ => ctx.error(
                    s.span(),
                    format!(
                        "readiness status {} is not an HTTP status (100 to 599)",
                        s.get_ref()
                    ),
                ),
            }
        }
    }
    let (t, tspan) = dur(raw.readiness_timeout.as_ref(), r.timeout);
    if t.is_zero() {
        ctx.error(tspan, "readiness_timeout must be positive");
    }
    r.timeout = t;
    if let Some(a) = &raw.readiness_attempts {
        if *a.get_ref() == 0 {
            ctx.error(a.span(), "readiness_attempts must be at least 1");
        }
        r.attempts = *a.get_ref();
    }
    (ctx.diags.len() == before).then_some(r)
}

fn parse_source(
    ctx: &mut Ctx,
    v: &Spanned<DeValue<'_>>,
    traffic: Option<&TrafficConfig>,
) -> Option<(SourceConfig, Range<usize>)> {
    let mut table = as_table(ctx, v, "[metrics]")?.clone();
    let span = v.span();
    let kind = take_tag(ctx, &mut table, "type", &span, "[metrics]", None)?;
    let rest = table_value(span, table);
    let cfg = match kind.get_ref().as_str() {
        "builtin" => {
            let _: RawBuiltin = ctx.de(&rest)?;
            SourceConfig::Builtin
        }
        "prometheus" => SourceConfig::Prometheus(parse_prometheus(ctx, &rest)?),
        "haproxy" => {
            let _: RawHaproxyStats = ctx.de(&rest)?;
            match traffic {
                Some(TrafficConfig::Haproxy(h)) => SourceConfig::Haproxy(h.clone()),
                Some(_) => {
                    ctx.error(
                        kind.span(),
                        "metrics type `haproxy` reads the counters of the [traffic] HAProxy and needs [traffic] type = \"haproxy\"",
                    );
                    return None;
                }
                None => return None,
            }
        }
        other => {
            ctx.error(
                kind.span(),
                format!(
                    "unknown metrics source `{other}`; expected one of {}",
                    SOURCE_TYPES.join(", ")
                ),
            );
            return None;
        }
    };
    Some((cfg, kind.span()))
}

fn parse_prometheus(ctx: &mut Ctx, rest: &Spanned<DeValue<'_>>) -> Option<PrometheusConfig> {
    let raw: RawPrometheus = ctx.de(rest)?;
    let before = ctx.diags.len();
    let url = raw.url.get_ref().trim().trim_end_matches('/').to_string();
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
        ctx.error(
            raw.url.span(),
            format!(
                "url must be an http:// or https:// URL such as http://127.0.0.1:9090, got `{url}`"
            ),
        );
    }
    let token = providers::secret(
        ctx,
        raw.token.as_ref(),
        raw.token_env.as_ref(),
        raw.token_file.as_ref(),
    );
    if token.is_some() {
        providers::one_credential(ctx, &raw.url, "url");
        if raw
            .headers
            .iter()
            .flatten()
            .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        {
            ctx.error(
                raw.url.span(),
                "both a bearer token (token_env/token_file) and an `Authorization` header are configured; keep one",
            );
        }
    }
    let (timeout, _) = bounded(
        ctx,
        raw.timeout.as_ref(),
        Duration::from_secs(10),
        &Bound::timeout("timeout"),
    );
    let series_step = raw
        .series_step
        .as_ref()
        .map(|s| bounded(ctx, Some(s), Duration::ZERO, &bounds::SERIES_STEP).0);
    let mut variables = BTreeMap::new();
    for (name, v) in raw.variables.unwrap_or_default() {
        if let Some(var) = variable(ctx, &name, &v) {
            variables.insert(name, var);
        }
    }
    for reserved in ["arm", "window"] {
        if variables.contains_key(reserved) {
            ctx.error(
                rest.span(),
                format!("variable `{reserved}` is reserved: coalmine sets it for each query"),
            );
        }
    }
    // Returned even with problems, so the metrics are still checked against this source.
    let _ = before;
    Some(PrometheusConfig {
        url,
        timeout,
        token,
        headers: raw.headers.unwrap_or_default().into_iter().collect(),
        variables,
        ca_file: raw.ca_file.map(|f| PathBuf::from(f.into_inner())),
        series_step,
    })
}

/// A `[metrics.variables]` entry: a string, or `{ baseline = "..", canary = ".." }`.
fn variable(ctx: &mut Ctx, name: &str, v: &Spanned<toml::Value>) -> Option<Variable> {
    let text = |v: Option<&toml::Value>| v.and_then(toml::Value::as_str).map(str::to_string);
    match v.get_ref() {
        toml::Value::String(s) => return Some(Variable::Same(s.clone())),
        toml::Value::Table(t) if t.len() == 2 => {
            if let (Some(baseline), Some(canary)) = (text(t.get("baseline")), text(t.get("canary")))
            {
                return Some(Variable::PerArm { baseline, canary });
            }
        }
        _ => {}
    }
    ctx.error(
        v.span(),
        format!(
            "variable `{name}` must be a string or a table with two strings, e.g. {name} = {{ baseline = \"stable\", canary = \"canary\" }}"
        ),
    );
    None
}

fn parse_metrics(
    ctx: &mut Ctx,
    v: &Spanned<DeValue<'_>>,
    source: Option<&SourceConfig>,
    alpha: f64,
) -> Vec<MetricConfig> {
    let DeValue::Array(items) = v.get_ref() else {
        ctx.error(
            v.span(),
            "`metric` must be an array of tables: write [[metric]]",
        );
        return Vec::new();
    };
    if items.is_empty() {
        ctx.error(
            v.span(),
            "no metrics: a policy needs at least one [[metric]]",
        );
    }
    let mut out: Vec<(MetricConfig, Option<f64>)> = Vec::new();
    let mut names: BTreeSet<String> = BTreeSet::new();
    for item in items {
        let Some(m) = parse_metric(ctx, item, source) else {
            continue;
        };
        if !names.insert(m.0.name.clone()) {
            ctx.error(item.span(), format!("duplicate metric name `{}`", m.0.name));
        }
        out.push(m);
    }
    // Split α: explicit per-metric α first, the rest shared equally.
    let explicit: f64 = out.iter().filter_map(|(_, a)| *a).sum();
    let shared = out
        .iter()
        .filter(|(m, a)| a.is_none() && m.judge.alpha().is_some())
        .count();
    if explicit >= alpha && shared > 0 {
        ctx.error(
            v.span(),
            format!("per-metric alpha values add up to {explicit}, leaving nothing of the policy's alpha {alpha} for {shared} other sequential metric(s)"),
        );
    } else if explicit > alpha + 1e-12 {
        ctx.error(
            v.span(),
            format!(
                "per-metric alpha values add up to {explicit}, more than the policy's alpha {alpha}"
            ),
        );
    }
    let each = if shared > 0 {
        (alpha - explicit) / shared as f64
    } else {
        0.0
    };
    out.into_iter()
        .map(|(mut m, a)| {
            let a = a.unwrap_or(each);
            match &mut m.judge {
                JudgeSpec::Events(s) => s.alpha = a,
                JudgeSpec::Latency(s) => s.alpha = a,
                JudgeSpec::Threshold(_) | JudgeSpec::MannWhitney(_) => {}
            }
            m
        })
        .collect()
}

struct DataChoice {
    data: DataSpec,
    /// Shape the source delivers; `None` for builtin (chosen by the judge).
    shape: Option<Shape>,
}

fn template(
    ctx: &mut Ctx,
    s: &Spanned<String>,
    vars: &BTreeMap<String, Variable>,
    needs_arm: bool,
) -> Option<Template> {
    let t = match Template::parse(s.get_ref()) {
        Ok(t) => t,
        Err(e) => {
            ctx.error(s.span(), format!("bad query template: {e}"));
            return None;
        }
    };
    // Unknown names first: a misspelt `{{arm}}` is the likely reason a query has none.
    let known: Vec<&str> = ["arm", "window"]
        .into_iter()
        .chain(vars.keys().map(String::as_str))
        .collect();
    let shown: Vec<String> = known
        .iter()
        .map(|k| match vars.get(*k) {
            Some(v) if v.is_per_arm() => format!("{k} (per arm)"),
            _ => (*k).to_string(),
        })
        .collect();
    if let Some(problem) = unknown_placeholders(&t, &known, &shown, "query") {
        ctx.error(
            s.span(),
            format!("{problem} (define more under [metrics.variables])"),
        );
        return None;
    }
    if needs_arm
        && !t
            .placeholders()
            .iter()
            .any(|p| *p == "arm" || vars.get(*p).is_some_and(Variable::is_per_arm))
    {
        ctx.error(
            s.span(),
            "query has no `{{arm}}` (nor a per-arm variable): both arms would get the same data; select each arm's series with it, e.g. track=\"{{arm}}\"",
        );
        return None;
    }
    Some(t)
}

/// "unknown placeholder `{{x}}` in WHAT (did you mean `{{y}}`?); known: ..." for the names
/// of `t` not in `known` (`shown` is how the known names are listed).
pub(super) fn unknown_placeholders(
    t: &Template,
    known: &[&str],
    shown: &[String],
    what: &str,
) -> Option<String> {
    let unknown: Vec<String> = t
        .placeholders()
        .into_iter()
        .filter(|p| !known.contains(p))
        .map(|u| match super::keys::suggest(u, known.iter().copied()) {
            Some(s) => format!("`{{{{{u}}}}}` (did you mean `{{{{{s}}}}}`?)"),
            None => format!("`{{{{{u}}}}}`"),
        })
        .collect();
    (!unknown.is_empty()).then(|| {
        format!(
            "unknown placeholder {} in {what}; known: {}",
            unknown.join(", "),
            shown.join(", ")
        )
    })
}

fn parse_data(
    ctx: &mut Ctx,
    c: &RawMetricCommon,
    source: &SourceConfig,
    span: &Range<usize>,
) -> Option<DataChoice> {
    let queries: Vec<(&str, &Spanned<String>)> = [
        ("events", &c.events),
        ("trials", &c.trials),
        ("histogram", &c.histogram),
        ("series", &c.series),
        ("query", &c.query),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
    .collect();
    match source {
        SourceConfig::Builtin | SourceConfig::Haproxy(_) => {
            let kind = source.kind();
            let signals = if kind == "haproxy" {
                "builtin = \"errors\""
            } else {
                "builtin = \"errors\" or \"latency\""
            };
            for (k, v) in &queries {
                ctx.error(
                    v.span(),
                    format!("`{k}` is a query for [metrics] type = \"prometheus\"; the {kind} source takes {signals}"),
                );
            }
            let Some(b) = &c.builtin else {
                ctx.error(
                    span.start..span.start,
                    format!("metric `{}` needs {signals}", c.name.get_ref()),
                );
                return None;
            };
            let signal = match b.get_ref().as_str() {
                "errors" => BuiltinSignal::Errors,
                "latency" if kind == "haproxy" => {
                    ctx.error(
                        b.span(),
                        "the haproxy source has per-server error counters but no latency histogram; judge latency with [metrics] type = \"prometheus\"",
                    );
                    return None;
                }
                "latency" => BuiltinSignal::Latency,
                other => {
                    ctx.error(
                        b.span(),
                        format!("unknown builtin signal `{other}`; expected errors or latency"),
                    );
                    return None;
                }
            };
            queries.is_empty().then_some(DataChoice {
                data: DataSpec::Builtin(signal),
                shape: None,
            })
        }
        SourceConfig::Prometheus(p) => {
            if let Some(b) = &c.builtin {
                ctx.error(
                    b.span(),
                    "`builtin` needs [metrics] type = \"builtin\"; with Prometheus give events + trials, histogram, series or query",
                );
                return None;
            }
            let vars = &p.variables;
            let has = |k: &str| queries.iter().any(|(q, _)| *q == k);
            let kinds = usize::from(has("events") || has("trials"))
                + usize::from(has("histogram"))
                + usize::from(has("series"))
                + usize::from(has("query"));
            if kinds != 1 {
                ctx.error(
                    span.start..span.start,
                    format!(
                        "metric `{}` needs exactly one of: events + trials (counts), histogram, series, query (scalar); found {}",
                        c.name.get_ref(),
                        if queries.is_empty() { "none".to_string() } else { queries.iter().map(|q| q.0).collect::<Vec<_>>().join(", ") }
                    ),
                );
                return None;
            }
            if has("events") != has("trials") {
                let (k, v) = queries[0];
                ctx.error(
                    v.span(),
                    format!("`{k}` needs its partner: counts take both events and trials"),
                );
                return None;
            }
            if let (Some(e), Some(t)) = (&c.events, &c.trials) {
                let e = template(ctx, e, vars, true);
                let t = template(ctx, t, vars, true);
                return Some(DataChoice {
                    data: DataSpec::Counts {
                        events: e?,
                        trials: t?,
                    },
                    shape: Some(Shape::Counts),
                });
            }
            let (k, v) = queries[0];
            // A scalar is judged on the canary alone; every other shape compares the arms.
            let t = template(ctx, v, vars, k != "query")?;
            let (data, shape) = match k {
                "histogram" => (DataSpec::Histogram(t), Shape::Histogram),
                "series" => (DataSpec::Series(t), Shape::Series),
                _ => (DataSpec::Scalar(t), Shape::Scalar),
            };
            Some(DataChoice {
                data,
                shape: Some(shape),
            })
        }
    }
}

fn positive(ctx: &mut Ctx, v: Option<&Spanned<f64>>, what: &str) -> Option<f64> {
    let v = v?;
    let x = *v.get_ref();
    if x > 0.0 && x.is_finite() {
        Some(x)
    } else {
        ctx.error(
            v.span(),
            format!("{what} must be a positive number, got {x}"),
        );
        None
    }
}

fn parse_metric(
    ctx: &mut Ctx,
    item: &Spanned<DeValue<'_>>,
    source: Option<&SourceConfig>,
) -> Option<(MetricConfig, Option<f64>)> {
    let mut table = as_table(ctx, item, "each [[metric]]")?.clone();
    let span = item.span();
    let judge = take_tag(
        ctx,
        &mut table,
        "judge",
        &span,
        "[[metric]]",
        Some("sequential"),
    );
    let common_table = split(&mut table, METRIC_COMMON_KEYS);
    let common: Option<RawMetricCommon> = ctx.de(&table_value(span.clone(), common_table));
    let options = table_value(span.clone(), table);
    let judge = judge?;
    let common = common?;
    let before = ctx.diags.len();
    let data = parse_data(ctx, &common, source?, &span);
    let builtin_shape = |signal: BuiltinSignal| match signal {
        BuiltinSignal::Errors => Shape::Counts,
        BuiltinSignal::Latency => Shape::Histogram,
    };
    let (spec, alpha, shape) = match judge.get_ref().as_str() {
        "sequential" => {
            let raw: RawSequential = ctx.de(&options)?;
            let alpha = raw.alpha.as_ref().and_then(|a| {
                let v = *a.get_ref();
                if v > 0.0 && v < 0.5 {
                    Some(v)
                } else {
                    ctx.error(a.span(), format!("alpha must be in (0, 0.5), got {v}"));
                    None
                }
            });
            let allowed = positive(ctx, raw.allowed_ratio.as_ref(), "allowed_ratio");
            let pass = positive(ctx, raw.pass_ratio.as_ref(), "pass_ratio");
            let prior = raw.prior.as_ref().and_then(|p| {
                let r = p.get_ref();
                if r.min_ratio > 1.0
                    && r.max_ratio > r.min_ratio
                    && r.max_ratio.is_finite()
                    && (1..=200).contains(&r.points)
                {
                    Some(Prior::log_geometric(r.min_ratio, r.max_ratio, r.points))
                } else {
                    ctx.error(
                        p.span(),
                        "prior needs 1 < min_ratio < max_ratio and 1 to 200 points",
                    );
                    None
                }
            });
            let share = raw.share.unwrap_or_default();
            let data = data.as_ref()?;
            let shape = match (&data.data, data.shape) {
                (DataSpec::Builtin(s), _) => builtin_shape(*s),
                (_, Some(s)) => s,
                (_, None) => return None,
            };
            let spec = match shape {
                Shape::Counts => {
                    for (k, v) in [
                        ("quantiles", raw.quantiles.as_ref().map(Spanned::span)),
                        ("thresholds", raw.thresholds.as_ref().map(Spanned::span)),
                        ("test", raw.test.as_ref().map(Spanned::span)),
                    ] {
                        if let Some(s) = v {
                            ctx.error(
                                s,
                                format!("`{k}` applies to latency histograms, not to counts"),
                            );
                        }
                    }
                    let mut s = EventJudgeSpec::new(0.0);
                    s.share = share;
                    if let Some(p) = prior.clone() {
                        s.prior = p;
                    }
                    if let Some(a) = allowed {
                        s.allowed_ratio = a;
                    }
                    s.pass_ratio = pass.unwrap_or(s.allowed_ratio * 1.5);
                    JudgeSpec::Events(s)
                }
                Shape::Histogram => {
                    let mut s = LatencyJudgeSpec::new(0.0);
                    s.share = share;
                    if let Some(p) = prior {
                        s.prior = p;
                    }
                    if let Some(a) = allowed {
                        if a < 1.0 {
                            ctx.error(
                                raw.allowed_ratio.as_ref().map_or(span.clone(), Spanned::span),
                                format!("allowed_ratio for latency is the slowdown the canary may have, at least 1, got {a}"),
                            );
                        }
                        s.allowed_ratio = a;
                    }
                    s.pass_ratio = pass.unwrap_or(s.allowed_ratio * 1.25);
                    // Fixed thresholds belong to the slow-thresholds test, which they select
                    // when no test is named.
                    s.test = match raw.test.as_ref().map(|t| (t, t.get_ref().as_str())) {
                        None if raw.thresholds.is_some() => LatencyTest::SlowThresholds,
                        None | Some((_, "buckets")) => LatencyTest::Buckets,
                        Some((_, "slow-thresholds")) => LatencyTest::SlowThresholds,
                        Some((t, other)) => {
                            ctx.error(
                                t.span(),
                                format!("unknown latency test `{other}`: expected \"buckets\" or \"slow-thresholds\""),
                            );
                            LatencyTest::Buckets
                        }
                    };
                    if let (LatencyTest::Buckets, Some(t)) = (s.test, &raw.thresholds) {
                        ctx.error(
                            t.span(),
                            "`thresholds` applies to test = \"slow-thresholds\", not to \"buckets\"",
                        );
                    }
                    match (&raw.quantiles, &raw.thresholds) {
                        (Some(q), Some(_)) => {
                            ctx.error(q.span(), "give quantiles or thresholds, not both");
                        }
                        (Some(q), None) => {
                            if q.get_ref().is_empty()
                                || q.get_ref().iter().any(|x| !(*x > 0.0 && *x < 1.0))
                            {
                                ctx.error(q.span(), "quantiles must be a non-empty list of numbers in (0, 1), e.g. [0.5, 0.9, 0.99]");
                            }
                            s.thresholds = Thresholds::Quantiles(q.get_ref().clone());
                            s.report_quantiles.clone_from(q.get_ref());
                        }
                        (None, Some(t)) => {
                            if t.get_ref().is_empty() {
                                ctx.error(t.span(), "thresholds must be a non-empty list of positive durations, e.g. [\"100ms\", \"500ms\"]");
                            }
                            if let Some(problem) = t
                                .get_ref()
                                .iter()
                                .find_map(|d| bounds::LATENCY_THRESHOLD.check(d.0))
                            {
                                ctx.error(t.span(), problem);
                            }
                            s.thresholds = Thresholds::Fixed(
                                t.get_ref().iter().map(|d| d.0.as_secs_f64()).collect(),
                            );
                        }
                        (None, None) => {}
                    }
                    JudgeSpec::Latency(s)
                }
                other => {
                    ctx.error(
                        span.start..span.start,
                        format!(
                            "judge `sequential` takes counts (events + trials) or a histogram; metric `{}` gives {}",
                            common.name.get_ref(),
                            other.as_str()
                        ),
                    );
                    return None;
                }
            };
            (spec, alpha, shape)
        }
        "mann-whitney" => {
            let raw: RawMannWhitney = ctx.de(&options)?;
            let data = data.as_ref()?;
            let shape = match (&data.data, data.shape) {
                (DataSpec::Builtin(_), _) => Shape::Series,
                (_, Some(s)) => s,
                (_, None) => return None,
            };
            let mut cfg = KayentaConfig::default();
            if let Some(c) = &raw.confidence {
                cfg.confidence = *c.get_ref();
            }
            if let Some(t) = &raw.tolerance {
                cfg.tolerance = *t.get_ref();
            }
            if let Some(d) = raw.direction {
                cfg.direction = d;
            }
            if let Some(e) = raw.effect_size {
                cfg.effect_size = match e {
                    RawEffectSize::MeanRatio => EffectSizeKind::MeanRatio,
                    RawEffectSize::Cles => EffectSizeKind::Cles,
                };
            }
            cfg.allowed_increase = raw.allowed_increase.as_ref().map(|x| *x.get_ref());
            cfg.allowed_decrease = raw.allowed_decrease.as_ref().map(|x| *x.get_ref());
            cfg.critical = raw.critical.unwrap_or(false);
            cfg.critical_increase = raw.critical_increase.as_ref().map(|x| *x.get_ref());
            cfg.critical_decrease = raw.critical_decrease.as_ref().map(|x| *x.get_ref());
            cfg.must_have_data = raw.must_have_data.unwrap_or(false);
            if let Some(n) = raw.nan_strategy {
                cfg.nan_strategy = n;
            }
            cfg.remove_outliers = matches!(raw.outliers, Some(RawOutliers::Remove));
            if let Some(f) = &raw.outlier_factor {
                cfg.outlier_factor = *f.get_ref();
            }
            if let Err(e) = cfg.validate() {
                let at = [&raw.confidence, &raw.tolerance, &raw.outlier_factor]
                    .into_iter()
                    .flatten()
                    .map(Spanned::span)
                    .next()
                    .unwrap_or(span.start..span.start);
                ctx.error(at, e);
            }
            let spec = MannWhitneySpec {
                cfg,
                group: raw.group.unwrap_or_else(|| common.name.get_ref().clone()),
                muted: raw.muted.unwrap_or(false),
            };
            (JudgeSpec::MannWhitney(spec), None, shape)
        }
        "threshold" => {
            let raw: RawThreshold = ctx.de(&options)?;
            let mut s = ThresholdSpec {
                min: raw.min.as_ref().map(|v| *v.get_ref()),
                max: raw.max.as_ref().map(|v| *v.get_ref()),
                ..ThresholdSpec::default()
            };
            if s.min.is_none() && s.max.is_none() {
                ctx.error(
                    span.start..span.start,
                    format!(
                        "threshold metric `{}` needs min, max or both",
                        common.name.get_ref()
                    ),
                );
            }
            if let (Some(lo), Some(hi)) = (&raw.min, &raw.max)
                && lo.get_ref() > hi.get_ref()
            {
                ctx.error(
                    lo.span(),
                    format!("min {} is above max {}", lo.get_ref(), hi.get_ref()),
                );
            }
            for b in [&raw.min, &raw.max].into_iter().flatten() {
                if !b.get_ref().is_finite() {
                    ctx.error(b.span(), "bounds must be finite numbers");
                }
            }
            let data = data.as_ref()?;
            let shape = match (&data.data, data.shape) {
                (DataSpec::Builtin(s), _) => builtin_shape(*s),
                (_, Some(s)) => s,
                (_, None) => return None,
            };
            if let Some(q) = &raw.quantile {
                let v = *q.get_ref();
                if shape != Shape::Histogram {
                    ctx.error(q.span(), "`quantile` applies to histograms");
                } else if !(v > 0.0 && v < 1.0) {
                    ctx.error(q.span(), format!("quantile must be in (0, 1), got {v}"));
                }
                s.quantile = v;
            }
            if let Some(f) = &raw.failure_limit {
                if *f.get_ref() == 0 {
                    ctx.error(f.span(), "failure_limit must be at least 1");
                }
                s.failure_limit = *f.get_ref();
            }
            if let Some(c) = raw.count_failures {
                s.count = c;
            }
            if let Some(m) = &raw.min_trials {
                let v = *m.get_ref();
                if !(v >= 0.0 && v.is_finite()) {
                    ctx.error(m.span(), "min_trials must be a non-negative number");
                }
                s.min_trials = v;
            }
            (JudgeSpec::Threshold(s), None, shape)
        }
        other => {
            ctx.error(
                judge.span(),
                format!(
                    "unknown judge `{other}`; expected one of {}",
                    JUDGES.join(", ")
                ),
            );
            return None;
        }
    };
    if ctx.diags.len() != before {
        return None;
    }
    let data = data?;
    Some((
        MetricConfig {
            name: common.name.into_inner(),
            description: common.description,
            data: data.data,
            shape,
            judge: spec,
            dry_run: common.dry_run,
        },
        alpha,
    ))
}
