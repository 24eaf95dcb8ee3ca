//! `[source]` and `[[metric]]`: the metrics source, the templates' variables, each metric's data and judge, the scoring.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;
use toml::de::DeValue;

use super::{JUDGES, SOURCE_TYPES, as_table, bounded, take_tag};
use crate::analysis::JudgeSpec;
use crate::analysis::errors::EventJudgeSpec;
use crate::analysis::kayenta::{EffectSizeKind, KayentaConfig};
use crate::analysis::latency::{LatencyJudgeSpec, LatencyTest, Thresholds};
use crate::analysis::mw_judge::{MannWhitneySpec, Scoring};
use crate::analysis::observation::Shape;
use crate::analysis::sequential::Prior;
use crate::analysis::threshold::ThresholdSpec;
use crate::policy::bounds::{self, Bound};
use crate::policy::diag::{Ctx, split, table_value};
use crate::policy::providers;
use crate::policy::raw::{
    METRIC_COMMON_KEYS, RawBuiltin, RawEffectSize, RawHaproxyStats, RawMannWhitney,
    RawMetricCommon, RawOutliers, RawPrometheus, RawScoring, RawSequential, RawThreshold,
};
use crate::policy::template::Template;
use crate::policy::{
    BuiltinSignal, DataSpec, MetricConfig, PrometheusConfig, SourceConfig, TrafficConfig, Variable,
};

pub(super) fn parse_scoring(
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

pub(super) fn parse_source(
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

pub(super) fn parse_prometheus(
    ctx: &mut Ctx,
    rest: &Spanned<DeValue<'_>>,
) -> Option<PrometheusConfig> {
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
pub(super) fn variable(ctx: &mut Ctx, name: &str, v: &Spanned<toml::Value>) -> Option<Variable> {
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

pub(super) fn parse_metrics(
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

pub(super) struct DataChoice {
    data: DataSpec,
    /// Shape the source delivers; `None` for builtin (chosen by the judge).
    shape: Option<Shape>,
}

pub(super) fn template(
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
pub(in crate::policy) fn unknown_placeholders(
    t: &Template,
    known: &[&str],
    shown: &[String],
    what: &str,
) -> Option<String> {
    let unknown: Vec<String> = t
        .placeholders()
        .into_iter()
        .filter(|p| !known.contains(p))
        .map(
            |u| match crate::policy::keys::suggest(u, known.iter().copied()) {
                Some(s) => format!("`{{{{{u}}}}}` (did you mean `{{{{{s}}}}}`?)"),
                None => format!("`{{{{{u}}}}}`"),
            },
        )
        .collect();
    (!unknown.is_empty()).then(|| {
        format!(
            "unknown placeholder {} in {what}; known: {}",
            unknown.join(", "),
            shown.join(", ")
        )
    })
}

pub(super) fn parse_data(
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

pub(super) fn positive(ctx: &mut Ctx, v: Option<&Spanned<f64>>, what: &str) -> Option<f64> {
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

pub(super) fn parse_metric(
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
