//! Reading decision logs: JSON lines as written by the controller ([`crate::controller::record`]),
//! checked line by line, and split into rollouts.
//!
//! Reading is lenient about what it does not need (fields added later are ignored, optional
//! ones may be absent) and strict about what it does: a line that is not JSON (a torn write),
//! or JSON that is not a decision record, is an error naming `file:line`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::controller::Reason;
use crate::controller::record::SegmentRecord;

/// Why a decision log cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The file cannot be read.
    #[error("cannot read decision log {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line is not JSON: a torn or truncated write, or not a decision log at all.
    #[error("{path}:{line}: not a JSON line ({message}); a torn write, or not a decision log")]
    Torn {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The parser's message.
        message: String,
    },
    /// A JSON line that is not a decision record.
    #[error("{path}:{line}: not a decision record: {message}")]
    NotARecord {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The file has no records.
    #[error("{path}: no decision records")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// Several rollouts and none chosen.
    #[error("{path}: {} rollouts in one file ({}); choose one with --rollout", .rollouts.len(), .rollouts.join(", "))]
    Ambiguous {
        /// The file.
        path: PathBuf,
        /// Each rollout's label and first line.
        rollouts: Vec<String>,
    },
    /// The chosen rollout is not in the file.
    #[error("{path}: no rollout `{wanted}` (found: {})", .rollouts.join(", "))]
    NoSuchRollout {
        /// The file.
        path: PathBuf,
        /// What was asked for.
        wanted: String,
        /// What there is.
        rollouts: Vec<String>,
    },
}

/// The window a tick analysed.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct LogWindow {
    /// Sequence number.
    pub seq: u64,
    /// Start, RFC 3339.
    #[serde(default)]
    pub start: String,
    /// End, RFC 3339.
    #[serde(default)]
    pub end: String,
}

/// Requests per arm, `[baseline, canary]`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct LogRequests {
    /// In the window.
    pub window: [f64; 2],
    /// In the step so far.
    #[serde(default)]
    pub step: [f64; 2],
}

/// One metric at one tick.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct LogMetric {
    /// Metric name.
    pub metric: String,
    /// Judge name.
    #[serde(default)]
    pub judge: String,
    /// Outcome (`pass`, `fail`, `inconclusive`, `nodata`); `None` when the fetch failed.
    #[serde(default)]
    pub outcome: Option<String>,
    /// The judge's reason, or the fetch error.
    #[serde(default)]
    pub reason: String,
    /// The judge's numbers (by `kind`), as written.
    #[serde(default)]
    pub stats: serde_json::Value,
    /// Recorded only, never acted on.
    #[serde(default)]
    pub dry_run: bool,
    /// The fetch error, if any.
    #[serde(default)]
    pub error: Option<String>,
    /// The observations the judge consumed (recordings made for replay).
    #[serde(default)]
    pub observed: Vec<SegmentRecord>,
}

impl LogMetric {
    /// A number from the stats, `None` when absent or not finite (written as `null`).
    #[must_use]
    pub fn stat(&self, key: &str) -> Option<f64> {
        self.stats.get(key).and_then(serde_json::Value::as_f64)
    }

    /// The stats' `kind` (`error-events`, `slow-events`, `threshold`, `mann-whitney`,
    /// `score`, `none`).
    #[must_use]
    pub fn kind(&self) -> &str {
        self.stats
            .get("kind")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("none")
    }

    /// A `[lo, hi]` pair from the stats; `null` ends are unbounded.
    #[must_use]
    pub fn pair(&self, key: &str) -> Option<(Option<f64>, Option<f64>)> {
        pair(self.stats.get(key)?)
    }
}

/// A `[lo, hi]` JSON pair; `null` ends are `None`.
#[must_use]
pub fn pair(v: &serde_json::Value) -> Option<(Option<f64>, Option<f64>)> {
    let a = v.as_array()?;
    if a.len() != 2 {
        return None;
    }
    Some((a[0].as_f64(), a[1].as_f64()))
}

/// One line of a decision log, as far as reports and backtests need it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct LogRecord {
    /// 1-based line in the file (not in the JSON).
    #[serde(skip)]
    pub line: usize,
    /// `tick`, `transition`, `final`, `resumed` or `operator`.
    pub kind: String,
    /// Rollout (policy) name.
    pub rollout: String,
    /// Rollout id, where the log carries one (logs of coalmine before durable rollouts
    /// have none).
    #[serde(default)]
    pub rollout_id: Option<String>,
    /// SHA-256 of the policy file, where the log carries it.
    #[serde(default, alias = "policy_hash")]
    pub policy_sha256: Option<String>,
    /// coalmine's version, where the log carries it.
    #[serde(default)]
    pub version: Option<String>,
    /// Who acted (operator records).
    #[serde(default)]
    pub actor: Option<String>,
    /// Wall-clock time, RFC 3339.
    #[serde(default)]
    pub time: String,
    /// Seconds since the rollout started.
    pub elapsed_s: f64,
    /// Phase before the record's decision.
    #[serde(default)]
    pub phase: String,
    /// Phase after it.
    #[serde(default)]
    pub next_phase: String,
    /// Current step (1-based).
    #[serde(default)]
    pub step: Option<usize>,
    /// Steps in the plan.
    #[serde(default)]
    pub steps: usize,
    /// Canary weight in force, percent.
    #[serde(default)]
    pub weight: f64,
    /// Analysed window (ticks).
    #[serde(default)]
    pub window: Option<LogWindow>,
    /// When the step's weight came into force (ticks).
    #[serde(default)]
    pub since_s: Option<f64>,
    /// Requests (ticks).
    #[serde(default)]
    pub requests: Option<LogRequests>,
    /// The baseline's health (ticks whose error counts tell), as written.
    #[serde(default)]
    pub baseline: Option<serde_json::Value>,
    /// Metrics (ticks).
    #[serde(default)]
    pub metrics: Vec<LogMetric>,
    /// The decision (ticks), as written.
    #[serde(default)]
    pub decision: Option<serde_json::Value>,
    /// What happened (transitions, final).
    #[serde(default)]
    pub event: Option<String>,
    /// Details of the event.
    #[serde(default)]
    pub detail: Option<String>,
}

impl LogRecord {
    /// Whether this is an analysis tick.
    #[must_use]
    pub fn is_tick(&self) -> bool {
        self.kind == "tick"
    }

    /// The decision's action (`hold`, `advance`, `promote`, `rollback`), if a tick.
    #[must_use]
    pub fn action(&self) -> Option<&str> {
        self.decision.as_ref()?.get("action")?.as_str()
    }

    /// The decision's reason in words: a hold's reason, a rollback's cause and detail, an
    /// advance's target.
    #[must_use]
    pub fn decision_text(&self) -> String {
        let Some(d) = &self.decision else {
            return String::new();
        };
        let s = |k: &str| d.get(k).and_then(serde_json::Value::as_str).unwrap_or("");
        match self.action().unwrap_or("") {
            "hold" | "pause" => s("reason").to_string(),
            "advance" => format!(
                "to step {} ({}%)",
                d.get("step")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0)
                    + 1,
                d.get("weight")
                    .and_then(serde_json::Value::as_f64)
                    .unwrap_or(0.0)
            ),
            "promote" => "all traffic to the canary".to_string(),
            "rollback" => d.get("reason").map(reason_text).unwrap_or_default(),
            "adopt" => format!(
                "the weight found in force, {}%, becomes the step's",
                d.get("weight")
                    .and_then(serde_json::Value::as_f64)
                    .unwrap_or(0.0)
            ),
            other => other.to_string(),
        }
    }
}

/// A rollback reason (`{"cause": ..., ...}`) in words, as the controller says it; the
/// cause's name when the record's reason is of a shape this version does not know.
#[must_use]
pub fn reason_text(r: &serde_json::Value) -> String {
    match serde_json::from_value::<Reason>(r.clone()) {
        Ok(reason) => reason.to_string(),
        Err(_) => r
            .get("cause")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("unknown")
            .to_string(),
    }
}

/// The records of one rollout, in file order.
#[derive(Clone, Debug, PartialEq)]
pub struct Rollout {
    /// The rollout's name.
    pub name: String,
    /// Its id, where the log carries one.
    pub id: Option<String>,
    /// Which run of this name it is in the file (1-based), for logs without ids.
    pub run: usize,
    /// The file it came from.
    pub path: PathBuf,
    /// Its records.
    pub records: Vec<LogRecord>,
}

impl Rollout {
    /// `name`, `name#2` for the second run of a name, or `name (id)`.
    #[must_use]
    pub fn label(&self) -> String {
        match &self.id {
            Some(id) => format!("{} ({id})", self.name),
            None if self.run > 1 => format!("{}#{}", self.name, self.run),
            None => self.name.clone(),
        }
    }

    /// The analysis ticks.
    #[must_use = "an iterator does nothing unless consumed"]
    pub fn ticks(&self) -> impl DoubleEndedIterator<Item = &LogRecord> {
        self.records.iter().filter(|r| r.is_tick())
    }

    /// The final record, if the rollout ended.
    #[must_use]
    pub fn final_record(&self) -> Option<&LogRecord> {
        self.records.iter().rev().find(|r| r.kind == "final")
    }

    /// The first record's line.
    #[must_use]
    pub fn first_line(&self) -> usize {
        self.records.first().map_or(0, |r| r.line)
    }

    /// Whether `wanted` names this rollout: its id, its label, or its name when unique.
    fn matches(&self, wanted: &str) -> bool {
        self.id.as_deref() == Some(wanted) || self.label() == wanted || self.name == wanted
    }
}

impl fmt::Display for Rollout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at {}:{}",
            self.label(),
            self.path.display(),
            self.first_line()
        )
    }
}

/// Parses a decision log's text; `path` names it in errors.
///
/// Rollouts are told apart by name and, where present, rollout id; records of one name
/// without ids are split into runs at each `started` record (`--decisions` appends).
///
/// # Errors
/// [`LogError::Torn`], [`LogError::NotARecord`] or [`LogError::Empty`].
pub fn parse_log(text: &str, path: &Path) -> Result<Vec<Rollout>, LogError> {
    let mut rollouts: Vec<Rollout> = Vec::new();
    // (name, id) -> index of its open rollout in `rollouts`.
    let mut open: Vec<((String, Option<String>), usize)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| LogError::Torn {
            path: path.to_path_buf(),
            line: n,
            message: e.to_string(),
        })?;
        let not_record = |message: String| LogError::NotARecord {
            path: path.to_path_buf(),
            line: n,
            message,
        };
        let Some(obj) = value.as_object() else {
            return Err(not_record("a JSON line that is not an object".to_string()));
        };
        for key in ["kind", "rollout", "elapsed_s"] {
            if !obj.contains_key(key) {
                return Err(not_record(format!("no `{key}` field")));
            }
        }
        let mut rec: LogRecord =
            serde_json::from_value(value).map_err(|e| not_record(e.to_string()))?;
        if !matches!(
            rec.kind.as_str(),
            "tick" | "transition" | "final" | "resumed" | "operator"
        ) {
            return Err(not_record(format!(
                "`kind` is `{}`, expected tick, transition, final, resumed or operator",
                rec.kind
            )));
        }
        rec.line = n;
        let key = (rec.rollout.clone(), rec.rollout_id.clone());
        let starts = rec.event.as_deref() == Some("started");
        let slot = open.iter().position(|(k, _)| *k == key);
        let index = match slot {
            Some(s) if !starts || rec.rollout_id.is_some() => open[s].1,
            _ => {
                let run = rollouts.iter().filter(|r| r.name == rec.rollout).count() + 1;
                rollouts.push(Rollout {
                    name: rec.rollout.clone(),
                    id: rec.rollout_id.clone(),
                    run,
                    path: path.to_path_buf(),
                    records: Vec::new(),
                });
                let idx = rollouts.len() - 1;
                match slot {
                    Some(s) => open[s].1 = idx,
                    None => open.push((key, idx)),
                }
                idx
            }
        };
        rollouts[index].records.push(rec);
    }
    if rollouts.is_empty() {
        return Err(LogError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(rollouts)
}

/// Reads a decision log from a file.
///
/// # Errors
/// [`LogError::Read`] and those of [`parse_log`].
pub fn read_log(path: &Path) -> Result<Vec<Rollout>, LogError> {
    let text = std::fs::read_to_string(path).map_err(|source| LogError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_log(&text, path)
}

/// Picks one rollout: the one asked for, or the only one.
///
/// # Errors
/// [`LogError::Ambiguous`] for several rollouts without `wanted`, [`LogError::NoSuchRollout`]
/// when `wanted` matches none (or a name that several runs share).
pub fn select(rollouts: Vec<Rollout>, wanted: Option<&str>) -> Result<Rollout, LogError> {
    let path = rollouts.first().map(|r| r.path.clone()).unwrap_or_default();
    let labels = || rollouts.iter().map(ToString::to_string).collect::<Vec<_>>();
    match wanted {
        None if rollouts.len() == 1 => Ok(rollouts.into_iter().next().expect("one")),
        None => Err(LogError::Ambiguous {
            rollouts: labels(),
            path,
        }),
        Some(w) => {
            let hits: Vec<usize> = (0..rollouts.len())
                .filter(|i| rollouts[*i].matches(w))
                .collect();
            // An exact label or id wins over a name several runs share.
            let exact: Vec<usize> = hits
                .iter()
                .copied()
                .filter(|i| rollouts[*i].id.as_deref() == Some(w) || rollouts[*i].label() == w)
                .collect();
            let pick = match (hits.len(), exact.len()) {
                (1, _) => Some(hits[0]),
                (_, 1) => Some(exact[0]),
                _ => None,
            };
            match pick {
                Some(i) => Ok(rollouts.into_iter().nth(i).expect("index in range")),
                None => Err(LogError::NoSuchRollout {
                    wanted: w.to_string(),
                    rollouts: labels(),
                    path,
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(kind: &str, rollout: &str, event: Option<&str>, t: f64) -> String {
        let ev = event.map_or(String::new(), |e| format!(r#","event":"{e}""#));
        format!(
            r#"{{"kind":"{kind}","rollout":"{rollout}","time":"","elapsed_s":{t},"phase":"p","next_phase":"p","steps":3,"weight":5.0{ev}}}"#
        )
    }

    #[test]
    fn runs_of_one_name_split_at_started() {
        let text = [
            line("transition", "demo", Some("started"), 0.0),
            line("tick", "demo", None, 1.0),
            line("final", "demo", Some("promoted"), 2.0),
            line("transition", "demo", Some("started"), 0.0),
            line("tick", "demo", None, 1.0),
            line("transition", "other", Some("started"), 0.0),
        ]
        .join("\n");
        let p = Path::new("d.jsonl");
        let r = parse_log(&text, p).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].records.len(), 3);
        assert_eq!(r[1].label(), "demo#2");
        assert_eq!(r[1].first_line(), 4);
        let err = select(r.clone(), None).unwrap_err().to_string();
        assert_eq!(
            err,
            "d.jsonl: 3 rollouts in one file (demo at d.jsonl:1, demo#2 at d.jsonl:4, other at d.jsonl:6); choose one with --rollout"
        );
        assert_eq!(select(r.clone(), Some("demo#2")).unwrap().first_line(), 4);
        assert_eq!(select(r.clone(), Some("other")).unwrap().first_line(), 6);
        // `demo` names two runs: exact label `demo` is the first.
        assert_eq!(select(r.clone(), Some("demo")).unwrap().first_line(), 1);
        assert!(matches!(
            select(r, Some("nope")),
            Err(LogError::NoSuchRollout { .. })
        ));
    }

    #[test]
    fn ids_tell_interleaved_rollouts_apart() {
        let with_id = |id: &str, t: f64| {
            line("tick", "demo", None, t)
                .replace("\"kind\"", &format!("\"rollout_id\":\"{id}\",\"kind\""))
        };
        let text = [with_id("a", 1.0), with_id("b", 1.0), with_id("a", 2.0)].join("\n");
        let r = parse_log(&text, Path::new("x")).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].records.len(), 2);
        assert_eq!(select(r, Some("b")).unwrap().label(), "demo (b)");
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let p = Path::new("r.jsonl");
        let good = line("tick", "demo", None, 1.0);
        let torn = format!("{good}\n{}", &good[..good.len() / 2]);
        assert!(
            parse_log(&torn, p)
                .unwrap_err()
                .to_string()
                .starts_with("r.jsonl:2: not a JSON line")
        );
        let cases = [
            (
                "[1,2]",
                "r.jsonl:1: not a decision record: a JSON line that is not an object",
            ),
            (
                r#"{"level":"info","msg":"hi"}"#,
                "r.jsonl:1: not a decision record: no `kind` field",
            ),
            (
                r#"{"kind":"x","rollout":"a","elapsed_s":1}"#,
                "r.jsonl:1: not a decision record: `kind` is `x`, expected tick, transition, final, resumed or operator",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse_log(text, p).unwrap_err().to_string(), want);
        }
        let e = parse_log(r#"{"kind":"tick","rollout":"a","elapsed_s":"soon"}"#, p).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("r.jsonl:1: not a decision record: invalid type"),
            "{e}"
        );
        assert_eq!(
            parse_log("\n\n", p).unwrap_err().to_string(),
            "r.jsonl: no decision records"
        );
    }
}
