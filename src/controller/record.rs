//! Decision records: one JSON line per analysis tick and per transition, written before the
//! controller acts, so the log is an audit trail and a restarted controller knows where it was.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
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
    /// A controller took the rollout over from its stored record (after a restart).
    Resumed,
    /// An operator's action through the control API (with its actor and reason).
    Operator,
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
    /// This run of the rollout (new for each start, restart and retry; kept on resume).
    pub rollout_id: String,
    /// Version of coalmine that wrote the record.
    pub version: &'static str,
    /// SHA-256 of the policy file, when the run knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_sha256: Option<String>,
    /// Who acted (operator records): the token's name, or `local`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
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
    ///
    /// A torn last line (a crash in the middle of a write: no trailing newline) is cut off
    /// with a warning, so the next record starts on a line of its own and is never merged
    /// into the fragment.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        if let Some(cut) = torn_tail(&file)? {
            tracing::warn!(
                path = %path.display(),
                bytes = cut.1 - cut.0,
                "decision log: torn last line removed (a crash during a write)"
            );
            file.set_len(cut.0)?;
            file.sync_data()?;
        }
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

/// When the file does not end with a newline: `(end of the last complete line, file
/// length)`. Reads backwards in blocks, so a long log costs only its tail.
fn torn_tail(file: &File) -> std::io::Result<Option<(u64, u64)>> {
    use std::io::{Seek, SeekFrom};
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    let mut f = file;
    let mut buf = vec![0u8; 8192];
    let mut end = len;
    let mut first = true;
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf[..n])?;
        if first {
            if buf[n - 1] == b'\n' {
                return Ok(None);
            }
            first = false;
        }
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            return Ok(Some((start + i as u64 + 1, len)));
        }
        end = start;
    }
    Ok(Some((0, len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u64) -> Record {
        Record {
            kind: RecordKind::Transition,
            rollout: "r".into(),
            rollout_id: "id".into(),
            version: "0",
            policy_sha256: None,
            actor: None,
            time: String::new(),
            elapsed_s: n as f64,
            phase: "pending",
            next_phase: "pending",
            step: None,
            steps: 1,
            weight: Weight::ZERO,
            window: None,
            requests: None,
            baseline: None,
            metrics: Vec::new(),
            decision: None,
            event: None,
            detail: None,
        }
    }

    #[test]
    fn a_torn_last_line_is_cut_and_never_merged_into_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        let mut log = RecordLog::open(&path).unwrap();
        log.write(&record(1)).unwrap();
        drop(log);
        // A crash in the middle of the second write.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"kind":"tick","rollout":"r","ela"#)
            .unwrap();
        drop(f);
        let mut log = RecordLog::open(&path).unwrap();
        log.write(&record(3)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        for l in lines {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert!(v["elapsed_s"].is_number());
        }
    }

    #[test]
    fn a_log_of_one_torn_line_becomes_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(&path, vec![b'x'; 20_000]).unwrap();
        let _log = RecordLog::open(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }
}
