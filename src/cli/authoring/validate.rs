//! `coalmine validate POLICY...`: parse and check policies; optionally probe reachability.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;

use crate::cli::display::output;
use crate::cli::run::load;
use crate::cli::{EXIT_FAILURE, EXIT_INVALID, EXIT_OK};
use crate::metrics::{self, MetricsSource};
use crate::policy::diag::{Severity, escape_controls};
use crate::policy::{self, Diagnostics, Policy};
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
    /// Print the problems as one JSON list on stdout, each with path, line, column (null
    /// when a problem has no position), severity ("error" or "warning") and message; `[]`
    /// when every file is valid without warnings. The exit code is the same.
    #[arg(long)]
    pub json: bool,
}

/// Why a policy file gave no policy.
#[derive(Debug)]
pub(crate) enum Unread {
    /// The file could not be read: the sentence saying so.
    Io(String),
    /// The file was read and has problems.
    Invalid(Diagnostics),
}

/// Reads a policy file (at most [`policy::MAX_POLICY_BYTES`] and one byte, never more) and
/// validates it; `Ok` carries the warnings. The policy's secrets are registered for
/// redaction before anything can print or record them.
pub(crate) fn read(path: &Path) -> Result<(Policy, Diagnostics), Unread> {
    read_hashed(path).map(|(p, w, _)| (p, w))
}

/// [`read`], with the SHA-256 of the very bytes parsed (the rollout store's policy hash).
pub(crate) fn read_hashed(path: &Path) -> Result<(Policy, Diagnostics, String), Unread> {
    use std::io::Read;
    let shown = path.display().to_string();
    // Read one byte past the limit, never more: a huge file is refused without being held
    // in memory.
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(policy::MAX_POLICY_BYTES as u64 + 1)
                .read_to_end(&mut bytes)
        })
        .map_err(|e| {
            Unread::Io(format!(
                "cannot read policy file {}: {e}; check the path and its permissions",
                escape_controls(&shown)
            ))
        })?;
    let sha = crate::controller::store::policy_sha256(&bytes);
    let (p, warnings) = policy::parse_bytes(&bytes, &shown).map_err(Unread::Invalid)?;
    // Before anything can print or record them: the policy's URL credentials, webhook path
    // and token variable names.
    crate::redact::register_policy(&p);
    Ok((p, warnings, sha))
}

/// The closing sentence after the problems of an invalid policy file.
pub(crate) fn invalid_sentence(path: &Path, errors: usize) -> String {
    let shown = escape_controls(&path.display().to_string()).into_owned();
    format!(
        "policy file {shown} has {errors} problem{} (listed above); fix {} and check again with \
         `coalmine validate {shown}`",
        if errors == 1 { "" } else { "s" },
        if errors == 1 { "it" } else { "them" }
    )
}

/// One problem of `validate --json`.
#[derive(Debug, Serialize)]
struct Problem {
    path: String,
    line: Option<usize>,
    column: Option<usize>,
    severity: Severity,
    message: String,
}

impl Problem {
    fn at(path: &Path, severity: Severity, message: String) -> Self {
        Problem {
            path: path.display().to_string(),
            line: None,
            column: None,
            severity,
            message,
        }
    }

    fn all(path: &Path, d: &Diagnostics) -> impl Iterator<Item = Problem> {
        d.entries().into_iter().map(move |e| Problem {
            line: Some(e.line),
            column: Some(e.column),
            ..Problem::at(path, e.severity, e.message)
        })
    }
}

/// Runs `coalmine validate`.
pub(crate) async fn main(args: ValidateArgs) -> u8 {
    let mut code = EXIT_OK;
    let mut problems: Vec<Problem> = Vec::new();
    for path in &args.policies {
        let policy = if args.json {
            match read(path) {
                Ok((p, warnings)) => {
                    problems.extend(Problem::all(path, &warnings));
                    p
                }
                Err(Unread::Io(message)) => {
                    problems.push(Problem::at(path, Severity::Error, message));
                    code = code.max(EXIT_INVALID);
                    continue;
                }
                Err(Unread::Invalid(d)) => {
                    problems.extend(Problem::all(path, &d));
                    code = code.max(EXIT_INVALID);
                    continue;
                }
            }
        } else {
            match load(path) {
                Ok(p) => p,
                Err(c) => {
                    code = code.max(c);
                    continue;
                }
            }
        };
        if args.json {
            problems.extend(
                policy
                    .warnings()
                    .into_iter()
                    .map(|w| Problem::at(path, Severity::Warning, w)),
            );
        } else {
            print_ok(path, &policy);
        }
        if args.preflight {
            let mut found = Vec::new();
            if !preflight(&policy, path, args.json.then_some(&mut found)).await {
                code = code.max(EXIT_FAILURE);
            }
            problems.extend(
                found
                    .into_iter()
                    .map(|(severity, m)| Problem::at(path, severity, m)),
            );
        }
    }
    if args.json {
        let text = serde_json::to_string_pretty(&problems).unwrap_or_else(|_| "[]".into());
        if let Err(c) = output::write_stdout(format!("{text}\n").as_bytes()) {
            return c;
        }
    } else if code == EXIT_INVALID && args.policies.len() > 1 {
        output::error("some policy files are invalid (their problems are listed above)");
    }
    code
}

/// The `path: ok: ...` line and the policy's warnings.
fn print_ok(path: &Path, policy: &Policy) {
    let metrics: Vec<&str> = policy.metrics.iter().map(|m| m.name.as_str()).collect();
    let steps = if policy.rollout.blue_green() {
        "blue-green (one switch 0 → 100%)".to_string()
    } else {
        format!(
            "steps {}",
            policy
                .rollout
                .steps
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" → ")
        )
    };
    outln!(
        "{}: ok: rollout `{}`, {steps}, traffic {}, metrics {} ({})",
        escape_controls(&path.display().to_string()),
        escape_controls(&policy.name),
        policy.traffic.kind(),
        policy.source.kind(),
        escape_controls(&metrics.join(", "))
    );
    for w in policy.warnings() {
        errln!(
            "{}: {}: {w}",
            path.display(),
            output::paint("warning", output::Style::Note, output::color())
        );
    }
}

/// Where preflight results go: stdout and stderr, or (with `--json`) the problems and the
/// warnings (what the policy asks that the data cannot honour), into a list.
struct Report<'a> {
    path: &'a Path,
    json: Option<&'a mut Vec<(Severity, String)>>,
}

impl Report<'_> {
    fn ok(&self, what: &str) {
        if self.json.is_none() {
            outln!("{}: preflight{what}", self.path.display());
        }
    }

    /// A finding that does not fail the check but changes what the policy means (printed
    /// with the passing checks, kept as a warning with `--json`).
    fn note(&mut self, what: &str) {
        match &mut self.json {
            Some(list) => list.push((Severity::Warning, format!("preflight: {what}"))),
            None => outln!("{}: preflight: {what}", self.path.display()),
        }
    }

    fn problem(&mut self, what: &str) {
        match &mut self.json {
            Some(list) => list.push((Severity::Error, format!("preflight: {what}"))),
            None => errln!("{}: preflight: {what}", self.path.display()),
        }
    }
}

/// Fetches every metric once over the last analysis interval, so query errors (PromQL
/// syntax, unaggregated series, histograms without `le`) show before a rollout. Missing
/// data is only reported: the canary may not be deployed yet.
async fn check_queries(policy: &Policy, source: &metrics::AnySource, out: &mut Report<'_>) -> bool {
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
                out.ok(&format!(": metric `{}`: queries ok ({arms})", m.name));
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
                        out.note(&format!("metric `{}`: {note}", m.name));
                    }
                }
            }
            Err(e) => {
                out.problem(&format!("metric `{}`: {e}", m.name));
                ok = false;
            }
        }
    }
    ok
}

/// Checks that the provider and the source answer; problems go to stderr, or into `json`
/// (with the notes).
async fn preflight(
    policy: &Policy,
    path: &Path,
    json: Option<&mut Vec<(Severity, String)>>,
) -> bool {
    let mut out = Report { path, json };
    let mut ok = true;
    let built = match traffic::build(&policy.traffic).await {
        Ok(b) => b,
        Err(e) => {
            out.problem(&format!("traffic: {e}"));
            return false;
        }
    };
    if let Err(e) = built.provider.preflight().await {
        out.problem(&format!("traffic: {e}"));
        ok = false;
    }
    match metrics::build(&policy.source, built.proxy.as_ref()) {
        Ok(s) => {
            if let Err(e) = s.preflight().await {
                out.problem(&format!("metrics: {e}"));
                ok = false;
            } else {
                ok &= check_queries(policy, &s, &mut out).await;
            }
        }
        Err(e) => {
            out.problem(&format!("metrics: {e}"));
            ok = false;
        }
    }
    if ok {
        out.ok(" ok");
    }
    if let Some(p) = built.proxy {
        p.shutdown().await;
    }
    ok
}
