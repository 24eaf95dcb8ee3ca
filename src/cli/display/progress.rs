//! Live progress on stderr (one line per tick and per transition) and the final summary.

use std::fmt::Write as _;
use std::io::Write as _;

use crate::analysis::fmt;
use crate::analysis::{Outcome, Stats};
use crate::cli::display::output::{self, Style, paint};
use crate::controller::record::{MetricRecord, RecordKind};
use crate::controller::runner::not_started_text;
use crate::controller::{Decision, FinalOutcome, Observer, Record, RunReport};

/// The widest a progress line gets without `--verbose`: a 100-column terminal shows each
/// on one line. The detail is in `--verbose` and in the decision records.
pub const WIDTH: usize = 100;

/// Prints records as progress lines on stderr.
#[derive(Debug, Default)]
pub struct Progress {
    /// Print nothing.
    pub quiet: bool,
    /// Every number on every line, however long (`-v`).
    pub verbose: bool,
    /// Colour the decisions and failures (stderr is a terminal, or `--color always`).
    pub color: bool,
}

impl Progress {
    /// Progress as the command line asked for it (`-v`, `--color`, `NO_COLOR`).
    #[must_use]
    pub fn new(quiet: bool) -> Self {
        Progress {
            quiet,
            verbose: output::verbosity() > 0,
            color: output::color(),
        }
    }
}

fn outcome_word(o: Option<Outcome>) -> &'static str {
    match o {
        Some(Outcome::Pass) => "pass",
        Some(Outcome::Fail) => "FAIL",
        Some(Outcome::Inconclusive) => "inconclusive",
        Some(Outcome::NoData) => "nodata",
        None => "error",
    }
}

/// The headline numbers of a metric, short.
fn brief(m: &MetricRecord) -> String {
    match &m.stats {
        Stats::ErrorEvents(s) => format!("e={}", fmt::evalue(s.log_e)),
        Stats::SlowEvents(s) => format!("e={}", fmt::evalue(s.log_e)),
        Stats::Threshold(s) => {
            if s.measure == "rate" {
                fmt::pct(s.value)
            } else {
                fmt::num(s.value)
            }
        }
        Stats::MannWhitney(s) => format!("{:?}", s.classification),
        Stats::Score(s) => format!("score {}", fmt::num(s.score)),
        Stats::None => String::new(),
    }
}

/// Error rates and latency quantiles per arm, from the first metrics that carry them.
fn arms(metrics: &[MetricRecord]) -> String {
    let mut out = String::new();
    if let Some(s) = metrics.iter().find_map(|m| match &m.stats {
        Stats::ErrorEvents(s) => Some(s),
        _ => None,
    }) {
        let _ = write!(
            out,
            "  err b={} c={}",
            fmt::pct(s.baseline_rate),
            fmt::pct(s.canary_rate)
        );
    }
    if let Some(s) = metrics.iter().find_map(|m| match &m.stats {
        Stats::SlowEvents(s) => Some(s),
        _ => None,
    }) {
        for q in s
            .quantiles
            .iter()
            .filter(|q| (q.q - 0.5).abs() < 1e-9 || (q.q - 0.99).abs() < 1e-9)
        {
            let _ = write!(
                out,
                "  p{:.0} b={} c={}",
                q.q * 100.0,
                fmt::secs(q.baseline),
                fmt::secs(q.canary)
            );
        }
    }
    out
}

/// The decision of a tick, as the line ends with it.
fn decision_text(d: Option<&Decision>) -> String {
    match d {
        Some(Decision::Hold { reason }) if reason.is_empty() => "hold".to_string(),
        Some(Decision::Hold { reason }) => format!("hold: {reason}"),
        Some(Decision::Advance { step, weight }) => {
            format!("ADVANCE to step {} ({weight})", step + 1)
        }
        Some(Decision::Promote) => "PROMOTE".to_string(),
        Some(Decision::Rollback { reason }) => format!("ROLLBACK: {reason}"),
        Some(Decision::Pause { reason }) => format!("PAUSE: {reason}"),
        Some(Decision::Adopt { weight }) => format!("ADOPT {weight} (set outside coalmine)"),
        None => String::new(),
    }
}

/// The metrics of a tick in a few words: the failing ones by name, the others counted.
fn metrics_counted(metrics: &[MetricRecord]) -> String {
    let mut parts: Vec<String> = metrics
        .iter()
        .filter(|m| m.outcome == Some(Outcome::Fail))
        .map(|m| {
            let dry = if m.dry_run { " (dry-run)" } else { "" };
            format!("{} FAIL{dry}", m.metric)
        })
        .collect();
    for word in ["pass", "inconclusive", "nodata", "error"] {
        let n = metrics
            .iter()
            .filter(|m| outcome_word(m.outcome) == word)
            .count();
        if n > 0 {
            parts.push(format!("{n} {word}"));
        }
    }
    parts.join(", ")
}

/// `text` cut to `width` characters, ending with `…` when cut.
fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// One progress line for a record, without colour: every number when `verbose`, else at
/// most [`WIDTH`] characters.
#[must_use]
pub fn line(r: &Record, verbose: bool) -> String {
    let head = format!("{:>6.1}s", r.elapsed_s);
    match r.kind {
        RecordKind::Tick => {
            let step = r
                .step
                .map_or(String::new(), |s| format!("step {s}/{}", r.steps));
            let req = r.requests.as_ref().map_or(String::new(), |q| {
                format!("  req b={:.0} c={:.0}", q.step[0], q.step[1])
            });
            let decision = decision_text(r.decision.as_ref());
            let left = format!("{head}  {step} {:>5}{req}", r.weight.to_string());
            if verbose {
                let metrics: Vec<String> = r
                    .metrics
                    .iter()
                    .map(|m| {
                        let b = brief(m);
                        let dry = if m.dry_run { " (dry-run)" } else { "" };
                        if b.is_empty() {
                            format!("{} {}{dry}", m.metric, outcome_word(m.outcome))
                        } else {
                            format!("{} {} {b}{dry}", m.metric, outcome_word(m.outcome))
                        }
                    })
                    .collect();
                return format!(
                    "{left}{}  | {} | {decision}",
                    arms(&r.metrics),
                    metrics.join(", ")
                );
            }
            let named: Vec<String> = r
                .metrics
                .iter()
                .map(|m| {
                    let dry = if m.dry_run { " (dry-run)" } else { "" };
                    format!("{} {}{dry}", m.metric, outcome_word(m.outcome))
                })
                .collect();
            let mut metrics = named.join(", ");
            let total = |m: &str, d: &str| format!("{left}  | {m} | {d}").chars().count();
            if total(&metrics, &decision) > WIDTH {
                metrics = metrics_counted(&r.metrics);
            }
            let room = WIDTH.saturating_sub(total(&metrics, ""));
            let fitted = format!("{left}  | {metrics} | {}", cut(&decision, room));
            cut(&fitted, WIDTH)
        }
        RecordKind::Transition | RecordKind::Final | RecordKind::Resumed | RecordKind::Operator => {
            let event = r.event.as_deref().unwrap_or("event");
            let detail = r
                .detail
                .as_ref()
                .map_or(String::new(), |d| format!(": {d}"));
            let full = format!("{head}  {event} (weight {}){detail}", r.weight);
            if verbose { full } else { cut(&full, WIDTH) }
        }
    }
}

/// Colours the words that matter in a line made by [`line`]: the decision of a tick and
/// failing metrics.
fn painted(text: &str) -> String {
    const WORDS: [(&str, Style); 8] = [
        ("| PROMOTE", Style::Good),
        ("| ROLLBACK", Style::Bad),
        ("| ADVANCE", Style::Good),
        ("| PAUSE", Style::Note),
        ("| ADOPT", Style::Note),
        (" FAIL", Style::Bad),
        ("  promoted", Style::Good),
        ("  rolled-back", Style::Bad),
    ];
    let mut out = text.to_string();
    for (w, style) in WORDS {
        let word = w.trim_start_matches(['|', ' ']);
        let lead = &w[..w.len() - word.len()];
        out = out.replace(w, &format!("{lead}{}", paint(word, style, true)));
    }
    out
}

impl Observer for Progress {
    fn on_record(&mut self, r: &Record) {
        if !self.quiet {
            let text = line(r, self.verbose);
            let text = if self.color { painted(&text) } else { text };
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{text}");
        }
    }
}

/// The numbers column of the summary table for one metric.
fn statistic(m: &MetricRecord) -> (String, String) {
    match &m.stats {
        Stats::ErrorEvents(s) => (
            format!(
                "e={} (fails at {}), p={}; canary {} vs baseline {}",
                fmt::evalue(s.log_e),
                fmt::evalue(s.log_threshold),
                fmt::num(s.p_value),
                fmt::pct(s.canary_rate),
                fmt::pct(s.baseline_rate)
            ),
            format!(
                "ratio {} {:.1}% CS {}",
                fmt::num(s.ratio),
                (1.0 - s.alpha) * 100.0,
                fmt::interval(s.ci_ratio[0], s.ci_ratio[1])
            ),
        ),
        Stats::SlowEvents(s) => {
            let ci = s
                .quantiles
                .iter()
                .map(|q| {
                    let iv = |v: [f64; 2]| format!("[{}, {}]", fmt::secs(v[0]), fmt::secs(v[1]));
                    format!(
                        "p{} canary {} baseline {}",
                        q.q * 100.0,
                        iv(q.canary_ci),
                        iv(q.baseline_ci)
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            (
                format!(
                    "e={} (fails at {}), p={}",
                    fmt::evalue(s.log_e),
                    fmt::evalue(s.log_threshold),
                    fmt::num(s.p_value)
                ),
                ci,
            )
        }
        Stats::Threshold(s) => (
            format!(
                "{} {}",
                s.measure,
                if s.measure == "rate" {
                    fmt::pct(s.value)
                } else {
                    fmt::num(s.value)
                }
            ),
            format!(
                "bounds [{}, {}], failing windows {}/{}",
                s.min.map_or("-".to_string(), fmt::num),
                s.max.map_or("-".to_string(), fmt::num),
                s.failures,
                s.failure_limit
            ),
        ),
        Stats::MannWhitney(s) => (
            format!(
                "{:?}, estimate {} (canary − baseline), n {}/{}",
                s.classification,
                fmt::num(s.estimate),
                s.canary_n,
                s.baseline_n
            ),
            format!("CI {}", fmt::interval(s.ci[0], s.ci[1])),
        ),
        Stats::Score(s) => (
            format!(
                "score {} (pass ≥ {}, marginal ≥ {})",
                fmt::num(s.score),
                fmt::num(s.pass),
                fmt::num(s.marginal)
            ),
            s.groups
                .iter()
                .map(|(g, v)| format!("{g} {}", fmt::num(*v)))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        Stats::None => (String::new(), String::new()),
    }
}

/// The human summary of a run.
#[must_use]
pub fn summary(r: &RunReport) -> String {
    let mut out = String::new();
    let (verdict, style) = match &r.outcome {
        FinalOutcome::Promoted if !r.analysed => ("PROMOTED WITHOUT ANALYSIS", Style::Note),
        FinalOutcome::Promoted => ("PROMOTED", Style::Good),
        FinalOutcome::RolledBack { .. } => ("ROLLED BACK", Style::Bad),
        FinalOutcome::NotStarted { .. } => ("NOT STARTED", Style::Note),
        FinalOutcome::Failed { .. } => ("FAILED", Style::Bad),
    };
    if let Some(would) = &r.would {
        let _ = writeln!(
            out,
            "\ncoalmine: rollout `{}` DRY RUN ({} ticks): {would}\nnothing was changed: the canary weight in force is {}",
            r.rollout, r.ticks, r.final_weight
        );
        if !r.not_run.is_empty() {
            let _ = writeln!(out, "not run (dry run): {}", r.not_run.join(", "));
        }
    } else {
        let verdict = paint(verdict, style, output::color());
        let _ = writeln!(
            out,
            "\ncoalmine: rollout `{}` {verdict} after {:.1}s (step {} of {}, {} ticks); canary weight now {}",
            r.rollout, r.duration_s, r.steps_reached, r.steps, r.ticks, r.final_weight
        );
    }
    match &r.outcome {
        _ if r.would.is_some() => {}
        FinalOutcome::Promoted if !r.analysed => {
            let _ = writeln!(
                out,
                "a blind cutover: nothing was analysed, so this promotion says nothing about the canary"
            );
        }
        FinalOutcome::RolledBack { reason } => {
            let _ = writeln!(out, "reason: {reason}");
        }
        FinalOutcome::NotStarted { reason } => {
            let _ = writeln!(out, "reason: {}", not_started_text(reason));
        }
        FinalOutcome::Failed { reason } => {
            let _ = writeln!(out, "reason: {reason}");
        }
        FinalOutcome::Promoted => {}
    }
    let rows: Vec<[String; 5]> = r
        .metrics
        .iter()
        .map(|m| {
            let (stat, interval) = statistic(m);
            let name = if m.dry_run {
                format!("{} (dry-run)", m.metric)
            } else {
                m.metric.clone()
            };
            [
                name,
                m.judge.to_string(),
                outcome_word(m.outcome).to_string(),
                stat,
                interval,
            ]
        })
        .collect();
    let header = ["metric", "judge", "outcome", "statistic", "interval"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let fmt_row = |cells: &[String]| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let _ = writeln!(out, "{}", fmt_row(&header.map(String::from)));
    for row in &rows {
        let _ = writeln!(out, "{}", fmt_row(row));
    }
    if let Some(p) = &r.decisions {
        let _ = writeln!(out, "decision records: {}", p.display());
    }
    out
}
