//! One rollout as a Markdown summary, for a pull request or a ticket: the outcome, each
//! metric's last state, the timeline and the ticks where something was decided.

use std::fmt::Write as _;

use super::html::{event_detail, headline};
use super::log::Rollout;
use super::{Summary, human_duration, num};

/// Escapes a table cell: pipes, newlines, and the characters that start markup.
fn cell(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\n', '\r'], " ")
        .replace('<', "&lt;")
}

/// Renders the summary.
#[must_use]
pub fn render(r: &Rollout) -> String {
    let s = Summary::of(r);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## coalmine rollout `{}`: {}{}\n",
        s.label.replace('`', "'"),
        s.outcome_text(),
        s.exit_code
            .map_or(String::new(), |c| format!(" (exit {c})"))
    );
    if !s.reason.is_empty() {
        let _ = writeln!(out, "**Reason:** {}\n", cell(&s.reason));
    }
    out.push_str("| | |\n|---|---|\n");
    let mut row = |k: &str, v: String| {
        let _ = writeln!(out, "| {k} | {} |", cell(&v));
    };
    row("policy", s.name.clone());
    if let Some(h) = &s.policy_hash {
        row("policy hash", h.clone());
    }
    if let Some(id) = &s.id {
        row("rollout id", id.clone());
    }
    row("started", s.started.clone());
    row(
        "duration",
        format!(
            "{}, {} analysis ticks",
            human_duration(s.duration_s),
            s.ticks
        ),
    );
    row(
        "steps",
        format!(
            "{} of {} reached, final weight {}%",
            s.steps_reached, s.steps, s.final_weight
        ),
    );
    row(
        "records",
        format!("{} lines {}–{}", r.path.display(), s.lines.0, s.lines.1),
    );

    // Each metric's last state.
    let mut last: Vec<&super::log::LogMetric> = Vec::new();
    for t in r.ticks() {
        for m in &t.metrics {
            match last.iter().position(|x| x.metric == m.metric) {
                Some(i) => last[i] = m,
                None => last.push(m),
            }
        }
    }
    if !last.is_empty() {
        out.push_str("\n### Metrics at the last tick\n\n| metric | judge | outcome | statistic | interval |\n|---|---|---|---|---|\n");
        for m in last {
            let (stat, interval) = headline(m);
            let outcome = m.outcome.as_deref().unwrap_or("error");
            let _ = writeln!(
                out,
                "| {}{} | {} | **{}** | {} | {} |",
                cell(&m.metric),
                if m.dry_run { " (dry run)" } else { "" },
                cell(&m.judge),
                cell(outcome),
                cell(&stat),
                cell(&interval)
            );
        }
    }

    out.push_str("\n### Timeline\n\n| after | event | weight | detail |\n|---:|---|---:|---|\n");
    for x in r.records.iter().filter(|x| !x.is_tick()) {
        let _ = writeln!(
            out,
            "| {} | {} | {}% | {} |",
            human_duration(x.elapsed_s),
            cell(x.event.as_deref().unwrap_or(&x.kind)),
            x.weight,
            cell(&event_detail(x))
        );
    }

    let decided: Vec<(usize, &super::log::LogRecord)> = r
        .ticks()
        .enumerate()
        .filter(|(_, t)| !matches!(t.action(), None | Some("hold")))
        .collect();
    if !decided.is_empty() {
        out.push_str("\n### Decisions other than hold\n\n| tick | after | weight | requests b / c | decision | reason |\n|---:|---:|---:|---|---|---|\n");
        for (i, t) in decided {
            let req = t.requests.as_ref().map_or("–".to_string(), |q| {
                format!("{} / {}", num(Some(q.step[0])), num(Some(q.step[1])))
            });
            let _ = writeln!(
                out,
                "| {} | {} | {}% | {} | {} | {} |",
                i + 1,
                human_duration(t.elapsed_s),
                t.weight,
                cell(&req),
                t.action().unwrap_or(""),
                cell(&t.decision_text())
            );
        }
    }
    out
}
