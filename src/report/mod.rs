//! Reports of rollouts from their decision logs.
//!
//! [`log`] reads decision logs (checked line by line, split into rollouts); [`html`]
//! renders one rollout as a self-contained HTML page with inline SVG plots ([`svg`]),
//! [`markdown`] as a summary for a pull request or a ticket. [`backtest`] feeds a recorded
//! rollout's windows through a policy on a simulated clock.

pub mod backtest;
pub mod html;
pub mod log;
pub mod markdown;
pub mod svg;

use log::{LogRecord, Rollout};

/// The facts of a rollout shown at the top of every report.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// `name`, `name#2` or `name (id)`.
    pub label: String,
    /// The rollout (policy) name.
    pub name: String,
    /// Rollout id, when recorded.
    pub id: Option<String>,
    /// Policy hash, when recorded.
    pub policy_hash: Option<String>,
    /// coalmine's version, when recorded.
    pub version: Option<String>,
    /// Wall-clock time of the first record.
    pub started: String,
    /// `promoted`, `rolled-back`, `not-started`, `failed`, or `unfinished`.
    pub outcome: String,
    /// Why it ended (the final record's detail).
    pub reason: String,
    /// The exit code `coalmine run` gave (none while unfinished).
    pub exit_code: Option<u8>,
    /// Seconds from the first to the last record.
    pub duration_s: f64,
    /// Analysis ticks.
    pub ticks: usize,
    /// Highest step reached (1-based).
    pub steps_reached: usize,
    /// Steps in the plan.
    pub steps: usize,
    /// Canary weight at the end, percent.
    pub final_weight: f64,
    /// The tick that decided (promote or rollback), if any.
    pub decided_at: Option<usize>,
    /// First and last line in the file.
    pub lines: (usize, usize),
}

impl Summary {
    /// The summary of `r`.
    #[must_use]
    pub fn of(r: &Rollout) -> Self {
        let first = r.records.first();
        let last = r.records.last();
        let fin = r.final_record();
        let outcome = fin
            .and_then(|f| f.event.clone())
            .unwrap_or_else(|| "unfinished".to_string());
        let exit_code = match outcome.as_str() {
            "promoted" => Some(0),
            "rolled-back" => Some(1),
            "failed" | "not-started" => Some(3),
            _ => None,
        };
        let mut steps_reached = r.records.iter().filter_map(|x| x.step).max().unwrap_or(0);
        let steps = r.records.iter().map(|x| x.steps).max().unwrap_or(0);
        if outcome == "promoted" {
            steps_reached = steps;
        }
        let reason = fin
            .and_then(|f| f.detail.clone())
            .or_else(|| {
                // The decisive tick's reason, if the final record has none.
                r.ticks()
                    .rev()
                    .find(|t| matches!(t.action(), Some("rollback" | "promote")))
                    .map(LogRecord::decision_text)
            })
            .unwrap_or_default();
        let decided_at = r
            .ticks()
            .enumerate()
            .filter(|(_, t)| matches!(t.action(), Some("rollback" | "promote")))
            .map(|(i, _)| i)
            .last();
        let field = |f: fn(&LogRecord) -> Option<String>| r.records.iter().find_map(f);
        Summary {
            label: r.label(),
            name: r.name.clone(),
            id: r.id.clone(),
            policy_hash: field(|x| x.policy_sha256.clone()),
            version: field(|x| x.version.clone()),
            started: first.map(|x| x.time.clone()).unwrap_or_default(),
            outcome,
            reason,
            exit_code,
            duration_s: last.map_or(0.0, |x| x.elapsed_s),
            ticks: r.ticks().count(),
            steps_reached,
            steps,
            final_weight: last.map_or(0.0, |x| x.weight),
            decided_at,
            lines: (r.first_line(), last.map_or(0, |x| x.line)),
        }
    }

    /// The outcome in words.
    #[must_use]
    pub fn outcome_text(&self) -> &'static str {
        match self.outcome.as_str() {
            "promoted" => "promoted",
            "rolled-back" => "rolled back",
            "failed" => "failed",
            "not-started" => "not started",
            _ => "unfinished",
        }
    }
}

/// Seconds in a short human form: `9.0 s`, `4 min 10 s`, `2 h 05 min`.
#[must_use]
pub fn human_duration(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "–".to_string();
    }
    if s < 60.0 {
        return format!("{s:.1} s");
    }
    let t = s.round() as u64;
    if t < 3600 {
        format!("{} min {:02} s", t / 60, t % 60)
    } else {
        format!("{} h {:02} min", t / 3600, (t % 3600) / 60)
    }
}

/// A number in a short form with its significant digits: `0.00512`, `7.62`, `151`, `1 234`.
#[must_use]
pub fn num(v: Option<f64>) -> String {
    match v {
        None => "–".to_string(),
        Some(v) if !v.is_finite() => if v > 0.0 { "∞" } else { "–∞" }.to_string(),
        Some(v) if v.abs() >= 1000.0 => {
            let s = format!("{:.0}", v.abs());
            let mut out = String::new();
            for (i, c) in s.chars().enumerate() {
                if i > 0 && (s.len() - i).is_multiple_of(3) {
                    out.push('\u{202f}');
                }
                out.push(c);
            }
            if v < 0.0 { format!("-{out}") } else { out }
        }
        Some(0.0) => "0".to_string(),
        Some(v) if v.fract() == 0.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 1.0 => format!("{v:.2}"),
        Some(v) => {
            let digits = (-v.abs().log10().floor()) as usize + 2;
            format!("{v:.digits$}")
        }
    }
}
