//! From TOML text to a checked [`Policy`], collecting every problem with its position.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::bounds::Bound;
use super::diag::{Ctx, Diagnostics, table_value, take};
use super::raw::RawRoot;
use super::{Policy, SourceConfig, TrafficConfig};
use crate::analysis::JudgeSpec;

mod metrics;
mod rollout;
mod traffic;

pub(super) use metrics::unknown_placeholders;
use metrics::{parse_metrics, parse_scoring, parse_source};
use rollout::parse_rollout;
use traffic::parse_traffic;

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

pub(super) fn as_table<'a, 'i>(
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
pub(super) fn take_tag(
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
