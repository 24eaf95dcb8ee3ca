//! `COALMINE_BENCH_WINDOWS=DIR`: the latency metric's windows of the first [`RUNS`] runs of
//! every latency cell judged by `sequential`, written to DIR as `coalmine judge latency`
//! files (README, "coalmine judge"). Each file is read back and replayed through that
//! command's code, and its first fail must be the window where the live judge failed: the
//! offline replay and the benchmark judge the same windows the same way.

use std::path::Path;

use coalmine::analysis::latency::LatencyJudgeSpec;
use coalmine::analysis::{Histogram, Observation, Segment};
use coalmine::cli::judge::latency;
use serde_json::{Value, json};

/// Runs recorded per cell.
pub const RUNS: u64 = 3;

/// The windows of one run, as the live latency judge saw them.
#[derive(Default)]
pub struct Recording {
    segs: Vec<Segment>,
    live_fail: Option<usize>,
}

impl Recording {
    /// The baseline's history before the canary had traffic.
    pub fn history(&mut self, b: &Histogram) {
        self.segs.push(Segment {
            share: 0.0,
            baseline: Observation::Histogram(b.clone()),
            canary: Observation::Missing,
        });
    }

    /// One window the live judge observed, and whether it failed there.
    pub fn window(&mut self, seg: Segment, failed: bool) {
        self.segs.push(seg);
        if failed && self.live_fail.is_none() {
            self.live_fail = Some(self.segs.len());
        }
    }

    /// Writes `DIR/NAME.json` and replays it with `spec`.
    ///
    /// # Errors
    /// The file cannot be written or read back, or the replay's first fail is not the live
    /// judge's.
    pub fn finish(self, dir: &Path, name: &str, spec: &LatencyJudgeSpec) -> Result<(), String> {
        let Some(bounds) = self.segs.iter().find_map(|s| match &s.baseline {
            Observation::Histogram(h) => Some(h.bounds().to_vec()),
            _ => None,
        }) else {
            return Ok(());
        };
        let counts = |o: &Observation| match o {
            Observation::Histogram(h) => json!(h.counts()),
            _ => Value::Null,
        };
        let windows: Vec<Value> = self
            .segs
            .iter()
            .map(|s| json!({"share": s.share, "baseline": counts(&s.baseline), "canary": counts(&s.canary)}))
            .collect();
        let finite = &bounds[..bounds.len() - 1];
        let text = json!({"bounds": finite, "windows": windows}).to_string();
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, &text).map_err(|e| format!("{}: {e}", path.display()))?;
        let back = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let segs = latency::parse_windows(&path.display().to_string(), &back)?;
        let replayed = latency::replay(spec.clone(), &segs, |_| {});
        let offline = replayed["first_fail"].as_u64().map(|n| n as usize);
        if offline == self.live_fail {
            Ok(())
        } else {
            Err(format!(
                "{}: the live judge first failed at window {:?}, the replay at {offline:?}",
                path.display(),
                self.live_fail
            ))
        }
    }
}

/// A file name for a cell's run: scenario, variant, effect, share and run
/// (`latency-tail-x2-buckets-x1.5-w0.05-run0`).
pub fn name(scenario: &str, variant: &str, effect: f64, share: f64, run: u64) -> String {
    let slug: String = variant
        .replace('×', "x")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                ' '
            }
        })
        .collect();
    let mut variant = slug.split_whitespace().collect::<Vec<_>>().join("-");
    if !variant.is_empty() {
        variant.push('-');
    }
    format!("{scenario}-{variant}x{effect}-w{share}-run{run}")
}
