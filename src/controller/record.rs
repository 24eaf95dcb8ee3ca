//! Decision records: one JSON line per analysis tick and per transition, written before the
//! controller acts, so the log is an audit trail and a restarted controller knows where it was.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::health::Health;
use super::machine::Decision;
use crate::analysis::histogram::{Histogram, log_bounds};
use crate::analysis::{Counts, Observation, Outcome, Segment, Stats};
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
    /// The window's observations as fetched, in the shape the judge consumes them (one
    /// segment per traffic share), so that a decision log is a complete recording for
    /// replay; empty when the fetch failed. A window that was not judged (the reason says
    /// "not judged this window") still carries them: its baseline counts decided that.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub observed: Vec<SegmentRecord>,
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
    /// When the step's weight came into force, seconds since the rollout started, exactly
    /// as the state machine compares it (ticks; for replay).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_s: Option<f64>,
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
        let file = &mut self.file;
        off_the_workers(|| file.write_all(&line).and_then(|()| file.sync_data()))
    }

    /// The file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Runs blocking file I/O (a write and its fsync) so it does not hold an async worker: on
/// a multi-threaded runtime (`coalmine serve`, many rollouts on two workers) the worker's
/// other tasks move to another thread while this one waits for the disk; elsewhere (one
/// rollout, the tests' current-thread runtimes) it runs as it is.
fn off_the_workers<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// A float in a record that may be NaN or infinite: finite values are JSON numbers,
/// the others the strings `"NaN"`, `"+Inf"` and `"-Inf"` (JSON has no such numbers, and
/// `null` would lose which one it was).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Num(pub f64);

impl Serialize for Num {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = self.0;
        if v.is_finite() {
            s.serialize_f64(v)
        } else if v.is_nan() {
            s.serialize_str("NaN")
        } else if v > 0.0 {
            s.serialize_str("+Inf")
        } else {
            s.serialize_str("-Inf")
        }
    }
}

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Num;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number or one of \"NaN\", \"+Inf\", \"-Inf\"")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Num, E> {
                Ok(Num(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Num, E> {
                Ok(Num(v as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Num, E> {
                Ok(Num(v as f64))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Num, E> {
                match v {
                    "NaN" => Ok(Num(f64::NAN)),
                    "+Inf" | "Inf" => Ok(Num(f64::INFINITY)),
                    "-Inf" => Ok(Num(f64::NEG_INFINITY)),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// The bucket bounds of a recorded histogram: `"log"` for the built-in proxy's 163
/// log-spaced bounds ([`log_bounds`]), otherwise every upper bound (`"+Inf"` last).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BoundsRecord {
    /// A named set of bounds; only `"log"` is defined.
    Named(String),
    /// The bounds themselves.
    List(Vec<Num>),
}

/// A histogram with only its non-empty buckets: `n` holds `[bucket index, count]` pairs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistogramRecord {
    /// The bucket bounds.
    pub le: BoundsRecord,
    /// Non-zero buckets as `[index into le, count]`, in increasing index order.
    pub n: Vec<(usize, Num)>,
}

/// One arm's observation in a record: `{"counts": [events, trials]}`,
/// `{"histogram": {...}}`, `{"samples": [...]}`, `{"series": [...]}`, `{"scalar": x}` or
/// `"missing"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObservationRecord {
    /// Events and trials.
    Counts([Num; 2]),
    /// Sparse histogram.
    Histogram(HistogramRecord),
    /// Raw values.
    Samples(Vec<Num>),
    /// One value per time step.
    Series(Vec<Num>),
    /// One value.
    Scalar(Num),
    /// No data in the window.
    Missing,
}

/// Both arms' observations for one traffic share, as a judge consumed them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SegmentRecord {
    /// The canary's assignment probability for these requests (0..=1).
    pub share: Num,
    /// The baseline's observation.
    pub baseline: ObservationRecord,
    /// The canary's observation.
    pub canary: ObservationRecord,
}

/// A recorded observation that cannot be turned back into one.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ObservedError {
    /// A named bound set other than `"log"`.
    #[error("unknown histogram bounds `{0}` (expected \"log\" or a list of bounds)")]
    UnknownBounds(String),
    /// A bucket index past the bounds.
    #[error("histogram bucket {index} out of range (there are {buckets} buckets)")]
    BucketOutOfRange {
        /// The index.
        index: usize,
        /// Number of buckets.
        buckets: usize,
    },
    /// Bounds or counts the histogram type refuses.
    #[error("histogram: {0}")]
    Histogram(#[from] crate::analysis::histogram::HistogramError),
    /// A share outside 0..=1.
    #[error("share {0} is outside 0..=1")]
    Share(f64),
}

fn builtin_bounds() -> &'static [f64] {
    static B: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    B.get_or_init(log_bounds)
}

fn nums(v: &[f64]) -> Vec<Num> {
    v.iter().copied().map(Num).collect()
}

fn floats(v: &[Num]) -> Vec<f64> {
    v.iter().map(|n| n.0).collect()
}

impl From<&Observation> for ObservationRecord {
    fn from(o: &Observation) -> Self {
        match o {
            Observation::Counts(c) => ObservationRecord::Counts([Num(c.events), Num(c.trials)]),
            Observation::Histogram(h) => {
                let le = if h.bounds() == builtin_bounds() {
                    BoundsRecord::Named("log".to_string())
                } else {
                    BoundsRecord::List(nums(h.bounds()))
                };
                let n = h
                    .counts()
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| **c != 0.0)
                    .map(|(i, c)| (i, Num(*c)))
                    .collect();
                ObservationRecord::Histogram(HistogramRecord { le, n })
            }
            Observation::Samples(v) => ObservationRecord::Samples(nums(v)),
            Observation::Series(v) => ObservationRecord::Series(nums(v)),
            Observation::Scalar(v) => ObservationRecord::Scalar(Num(*v)),
            Observation::Missing => ObservationRecord::Missing,
        }
    }
}

impl TryFrom<&ObservationRecord> for Observation {
    type Error = ObservedError;

    fn try_from(o: &ObservationRecord) -> Result<Self, ObservedError> {
        Ok(match o {
            ObservationRecord::Counts([e, t]) => Observation::Counts(Counts {
                events: e.0,
                trials: t.0,
            }),
            ObservationRecord::Histogram(h) => {
                let bounds = match &h.le {
                    BoundsRecord::Named(n) if n == "log" => builtin_bounds().to_vec(),
                    BoundsRecord::Named(n) => return Err(ObservedError::UnknownBounds(n.clone())),
                    BoundsRecord::List(b) => floats(b),
                };
                let mut counts = vec![0.0; bounds.len()];
                for (i, c) in &h.n {
                    let slot = counts.get_mut(*i).ok_or(ObservedError::BucketOutOfRange {
                        index: *i,
                        buckets: bounds.len(),
                    })?;
                    *slot += c.0;
                }
                Observation::Histogram(Histogram::try_new(bounds, counts)?)
            }
            ObservationRecord::Samples(v) => Observation::Samples(floats(v)),
            ObservationRecord::Series(v) => Observation::Series(floats(v)),
            ObservationRecord::Scalar(v) => Observation::Scalar(v.0),
            ObservationRecord::Missing => Observation::Missing,
        })
    }
}

impl From<&Segment> for SegmentRecord {
    fn from(s: &Segment) -> Self {
        SegmentRecord {
            share: Num(s.share),
            baseline: (&s.baseline).into(),
            canary: (&s.canary).into(),
        }
    }
}

impl SegmentRecord {
    /// Every segment of a fetch, for [`MetricRecord::observed`].
    #[must_use]
    pub fn all(segments: &[Segment]) -> Vec<SegmentRecord> {
        segments.iter().map(SegmentRecord::from).collect()
    }
}

impl TryFrom<&SegmentRecord> for Segment {
    type Error = ObservedError;

    fn try_from(s: &SegmentRecord) -> Result<Self, ObservedError> {
        if !(0.0..=1.0).contains(&s.share.0) {
            return Err(ObservedError::Share(s.share.0));
        }
        Ok(Segment {
            share: s.share.0,
            baseline: Observation::try_from(&s.baseline)?,
            canary: Observation::try_from(&s.canary)?,
        })
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
            since_s: None,
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

    fn roundtrip(seg: &Segment) -> Segment {
        let json = serde_json::to_string(&SegmentRecord::from(seg)).unwrap();
        let back: SegmentRecord = serde_json::from_str(&json).unwrap();
        Segment::try_from(&back).unwrap()
    }

    #[test]
    fn observations_round_trip_bit_for_bit() {
        let mut counts = vec![0.0; 163];
        counts[7] = 3.0;
        counts[40] = 1234.0;
        counts[162] = 1.0;
        let builtin = Histogram::try_new(log_bounds(), counts).unwrap();
        let prom = Histogram::from_cumulative(vec![
            (0.005, 0.1 + 0.2),
            (0.1, 7.000_000_000_000_001),
            (f64::INFINITY, 9.5),
        ])
        .unwrap();
        let cases = [
            Segment {
                share: 0.05,
                baseline: Observation::Counts(Counts {
                    events: 1.0 / 3.0,
                    trials: 2_999.999_999_7,
                }),
                canary: Observation::Missing,
            },
            Segment {
                share: 1.0 / 7.0,
                baseline: Observation::Histogram(builtin),
                canary: Observation::Histogram(prom),
            },
            Segment {
                share: 0.25,
                baseline: Observation::Series(vec![1.5, f64::NAN, 1e-300, f64::INFINITY]),
                canary: Observation::Samples(vec![f64::NEG_INFINITY, 0.1]),
            },
            Segment {
                share: 0.0,
                baseline: Observation::Scalar(f64::NAN),
                canary: Observation::Scalar(0.012_345_678_901_234_567),
            },
        ];
        for seg in &cases {
            let back = roundtrip(seg);
            // NaN != NaN: compare the debug text, which spells every bit that matters here.
            assert_eq!(format!("{back:?}"), format!("{seg:?}"));
        }
    }

    #[test]
    fn histograms_are_sparse_and_name_the_builtin_bounds() {
        let mut counts = vec![0.0; 163];
        counts[12] = 4.0;
        let seg = Segment {
            share: 0.5,
            baseline: Observation::Histogram(Histogram::try_new(log_bounds(), counts).unwrap()),
            canary: Observation::Counts(Counts {
                events: 2.0,
                trials: 10.0,
            }),
        };
        let json = serde_json::to_string(&SegmentRecord::from(&seg)).unwrap();
        assert_eq!(
            json,
            r#"{"share":0.5,"baseline":{"histogram":{"le":"log","n":[[12,4.0]]}},"canary":{"counts":[2.0,10.0]}}"#
        );
    }

    #[test]
    fn broken_recordings_are_errors_not_panics() {
        let bad = [
            r#"{"share":0.5,"baseline":{"histogram":{"le":"lin","n":[]}},"canary":"missing"}"#,
            r#"{"share":0.5,"baseline":{"histogram":{"le":"log","n":[[163,1]]}},"canary":"missing"}"#,
            r#"{"share":0.5,"baseline":{"histogram":{"le":[2,1],"n":[]}},"canary":"missing"}"#,
            r#"{"share":0.5,"baseline":{"histogram":{"le":["+Inf"],"n":[[0,-1]]}},"canary":"missing"}"#,
            r#"{"share":1.5,"baseline":"missing","canary":"missing"}"#,
        ];
        for b in bad {
            let r: SegmentRecord = serde_json::from_str(b).unwrap();
            assert!(Segment::try_from(&r).is_err(), "{b}");
        }
        assert!(serde_json::from_str::<SegmentRecord>(r#"{"share":"inf"}"#).is_err());
    }
}
