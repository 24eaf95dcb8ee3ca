//! `coalmine validate POLICY...`: parse and check policies; optionally probe reachability.

use std::path::PathBuf;

use clap::Args;

use super::run::load;
use super::{EXIT_FAILURE, EXIT_INVALID, EXIT_OK};
use crate::metrics::{self, MetricsSource};
use crate::policy::diag::escape_controls;
use crate::traffic::{self, TrafficProvider};

/// Arguments of `coalmine validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Policy files (TOML).
    #[arg(required = true)]
    pub policies: Vec<PathBuf>,
    /// Also check that the traffic provider and the metrics source are reachable (starts the
    /// built-in proxy briefly if the policy uses it). Unreachable exits 3.
    #[arg(long)]
    pub preflight: bool,
}

/// Runs `coalmine validate`.
pub(crate) async fn main(args: ValidateArgs) -> u8 {
    let mut code = EXIT_OK;
    for path in &args.policies {
        let policy = match load(path) {
            Ok(p) => p,
            Err(c) => {
                code = code.max(c);
                continue;
            }
        };
        let metrics: Vec<&str> = policy.metrics.iter().map(|m| m.name.as_str()).collect();
        outln!(
            "{}: ok: rollout `{}`, steps {}, traffic {}, metrics {} ({})",
            escape_controls(&path.display().to_string()),
            escape_controls(&policy.name),
            policy
                .rollout
                .steps
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" → "),
            policy.traffic.kind(),
            policy.source.kind(),
            escape_controls(&metrics.join(", "))
        );
        for w in policy.warnings() {
            errln!("{}: warning: {w}", path.display());
        }
        if args.preflight && !preflight(&policy, path).await {
            code = code.max(EXIT_FAILURE);
        }
    }
    if code == EXIT_INVALID {
        errln!("error: invalid policy");
    }
    code
}

/// Fetches every metric once over the last analysis interval, so query errors (PromQL
/// syntax, unaggregated series, histograms without `le`) show before a rollout. Missing
/// data is only reported: the canary may not be deployed yet.
async fn check_queries(
    policy: &crate::policy::Policy,
    source: &metrics::AnySource,
    path: &std::path::Path,
) -> bool {
    let end = std::time::SystemTime::now();
    let window = metrics::Window {
        seq: 0,
        start: end - policy.rollout.analysis_interval,
        end,
        weight: crate::model::Weight::ZERO,
    };
    let mut ok = true;
    for m in &policy.metrics {
        match source.fetch(m, &window).await {
            Ok(f) => {
                let data = |o: &crate::analysis::Observation| {
                    if matches!(o, crate::analysis::Observation::Missing) {
                        "no data now"
                    } else {
                        "data"
                    }
                };
                let arms = f.segments.last().map_or_else(
                    || "no data now".to_string(),
                    |s| match m.shape {
                        // Scalars are judged on the canary alone.
                        crate::analysis::Shape::Scalar => format!("canary {}", data(&s.canary)),
                        _ => format!("baseline {}, canary {}", data(&s.baseline), data(&s.canary)),
                    },
                );
                outln!(
                    "{}: preflight: metric `{}`: queries ok ({arms})",
                    path.display(),
                    m.name
                );
                // What the histogram's buckets cannot resolve of the policy's ratios.
                if let (crate::analysis::JudgeSpec::Latency(spec), Some(s)) =
                    (&m.judge, f.segments.last())
                {
                    let h = match (&s.baseline, &s.canary) {
                        (crate::analysis::Observation::Histogram(h), _)
                        | (_, crate::analysis::Observation::Histogram(h)) => Some(h),
                        _ => None,
                    };
                    for note in h
                        .map(|h| crate::analysis::latency::resolution_notes(spec, h))
                        .unwrap_or_default()
                    {
                        println!("{}: preflight: metric `{}`: {note}", path.display(), m.name);
                    }
                }
            }
            Err(e) => {
                errln!("{}: preflight: metric `{}`: {e}", path.display(), m.name);
                ok = false;
            }
        }
    }
    ok
}

async fn preflight(policy: &crate::policy::Policy, path: &std::path::Path) -> bool {
    let mut ok = true;
    let built = match traffic::build(&policy.traffic).await {
        Ok(b) => b,
        Err(e) => {
            errln!("{}: preflight: traffic: {e}", path.display());
            return false;
        }
    };
    if let Err(e) = built.provider.preflight().await {
        errln!("{}: preflight: traffic: {e}", path.display());
        ok = false;
    }
    match metrics::build(&policy.source, built.proxy.as_ref()) {
        Ok(s) => {
            if let Err(e) = s.preflight().await {
                errln!("{}: preflight: metrics: {e}", path.display());
                ok = false;
            } else {
                ok &= check_queries(policy, &s, path).await;
            }
        }
        Err(e) => {
            errln!("{}: preflight: metrics: {e}", path.display());
            ok = false;
        }
    }
    if ok {
        outln!("{}: preflight ok", path.display());
    }
    if let Some(p) = built.proxy {
        p.shutdown().await;
    }
    ok
}
