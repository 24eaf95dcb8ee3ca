//! Decision records: one JSON line per analysis tick and per transition, written before the
//! controller acts, so the log is an audit trail and a restarted controller knows where it was.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use super::health::Health;
use super::machine::Decision;
use crate::analysis::{Outcome, Stats};
use crate::metrics::RenderedQuery;
use crate::model::Weight;

/// What a record is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordKind {
    /// An analysis tick with its decision.
    Tick,
    /// A traffic change or another state change.
    Transition,
    /// The end of the rollout.
    Final,
}

/// The window a tick analysed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WindowRecord {
    /// Sequence number.
    pub seq: u64,
    /// Start, RFC 3339.
    pub start: String,
    /// End, RFC 3339.
    pub end: String,
}

/// Requests per arm, `[baseline, canary]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RequestsRecord {
    /// In this window.
    pub window: [f64; 2],
    /// In this step so far.
    pub step: [f64; 2],
}

/// One metric at one tick.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricRecord {
    /// Metric name.
    pub metric: String,
    /// Judge name.
    pub judge: &'static str,
    /// The judge's outcome so far; `null` when the fetch failed this tick.
    pub outcome: Option<Outcome>,
    /// The judge's reason with its numbers, or the fetch error.
    pub reason: String,
    /// The numbers.
    pub stats: Stats,
    /// Recorded only, never acted on.
    pub dry_run: bool,
    /// The queries sent.
    pub queries: Vec<RenderedQuery>,
    /// The fetch error, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One line of the decision log.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Record {
    /// What the record is about.
    pub kind: RecordKind,
    /// Rollout name.
    pub rollout: String,
    /// Wall-clock time, RFC 3339.
    pub time: String,
    /// Seconds since the rollout started.
    pub elapsed_s: f64,
    /// Phase before this record's decision.
    pub phase: &'static str,
    /// Phase after it.
    pub next_phase: &'static str,
    /// Current step (1-based), if in one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    /// Number of steps in the plan.
    pub steps: usize,
    /// Canary weight in force, percent.
    pub weight: Weight,
    /// Analysed window (ticks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowRecord>,
    /// Requests (ticks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<RequestsRecord>,
    /// The baseline's health, when error counts tell (ticks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Health>,
    /// Metrics (ticks).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricRecord>,
    /// The decision (ticks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// What happened (transitions, final).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// Details of the event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// RFC 3339 with milliseconds.
#[must_use]
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Appends records to a JSON-lines file, syncing each line to disk.
#[derive(Debug)]
pub struct RecordLog {
    path: PathBuf,
    file: File,
}

impl RecordLog {
    /// Opens `path` for appending (creating it and its directory).
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(RecordLog {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Writes one record as one line and syncs it.
    ///
    /// # Errors
    /// When the write or the sync fails.
    pub fn write(&mut self, r: &Record) -> std::io::Result<()> {
        let line = serde_json::to_string(r).map_err(std::io::Error::other)?;
        // The last line of defence: no secret known to the process reaches the log.
        let mut line = crate::redact::text(&line).into_owned().into_bytes();
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()
    }

    /// The file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}
