//! `coalmine judge latency`: a sequence of histogram windows replayed through the latency
//! judge a policy's latency metric runs (statistics.md §2.5, §2.2), printing JSON.

use std::io::{IsTerminal as _, Read as _};
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::analysis::histogram::Histogram;
use crate::analysis::latency::{LatencyJudge, LatencyJudgeSpec, LatencyTest};
use crate::analysis::observation::{Observation, Segment};
use crate::analysis::verdict::{Outcome, Stats};

/// Windows files larger than this are refused (about a million windows of 30 buckets).
pub const MAX_WINDOWS_BYTES: u64 = 256 << 20;

/// Progress is shown every this many windows.
const PROGRESS_EVERY: usize = 5000;

/// The latency test on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TestArg {
    /// Every bucket of the histograms (the policy default).
    Buckets,
    /// Slow-request rates at the baseline's p50, p90 and p99.
    SlowThresholds,
}

/// Arguments of `judge latency`.
#[derive(Debug, Args)]
pub struct LatencyArgs {
    /// JSON file with the bucket bounds and the windows (`-` reads stdin).
    pub windows: PathBuf,
    /// Allowed slowdown m ≥ 1: the canary fails only when more than m× slower (judged at
    /// the largest margin ≤ m the buckets represent).
    #[arg(long, default_value_t = 1.0)]
    pub allowed_ratio: f64,
    /// A pass needs the slowdown's upper bound below this (default 1.25 × allowed ratio).
    #[arg(long)]
    pub pass_ratio: Option<f64>,
    /// The metric's share of the false-rollback budget, in (0, 0.5).
    #[arg(long, default_value_t = 0.05)]
    pub alpha: f64,
    /// Which latency test.
    #[arg(long, value_enum, default_value_t = TestArg::Buckets)]
    pub test: TestArg,
}

/// The help text after the options: input, output, exit codes.
pub const NOTES: &str = "\
Input: one JSON object
  {\"bounds\": [0.005, 0.01, ...],     finite bucket upper bounds in seconds, increasing;
                                      a +Inf bucket follows the last
   \"cumulative\": false,               optional: true for Prometheus-style counts (each
                                      bucket counts every request at or below its bound)
   \"windows\": [{\"share\": 0.05, \"baseline\": [..], \"canary\": [..]}, ...]}
Each window holds one count per bucket, +Inf included (bounds + 1 numbers), for the
requests of that window only, and the canary's traffic share in force in it. A missing or
null arm is a window without data (never a pass). Leading windows with share 0 are the
baseline's history before the canary had traffic: the buckets test chooses its first bets
from it, and it is no evidence. Replays of 10 000 windows or more show their progress on
stderr when it is a terminal.
Prints {\"test\", \"windows\", \"outcome\", \"first_fail\", \"first_pass\", \"verdict\",
\"trace\"}: outcome is the outcome at the first fail (the e-process is anytime-valid, so
stopping there keeps the guarantee), else the last window's; first_fail / first_pass are
1-based window numbers or null; verdict is the judge's full verdict (reason and numbers) at
that window, as in the rollout record; trace has per window {\"window\", \"outcome\",
\"log_e\", \"baseline_requests\", \"canary_requests\"}.
Exit codes: 0 judged (whatever the outcome); 2 invalid input (unreadable or malformed file,
with line:column; a window whose counts do not fit the bounds, by window number; a bad
option).";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowsFile {
    bounds: Vec<f64>,
    #[serde(default)]
    cumulative: bool,
    windows: Vec<WindowIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowIn {
    share: f64,
    #[serde(default)]
    baseline: Option<Vec<f64>>,
    #[serde(default)]
    canary: Option<Vec<f64>>,
}

/// Reads the windows file (or stdin for `-`), at most [`MAX_WINDOWS_BYTES`].
fn read_input(path: &Path) -> Result<(String, Vec<u8>), String> {
    let name = path.display().to_string();
    let mut bytes = Vec::new();
    let result = if name == "-" {
        std::io::stdin()
            .take(MAX_WINDOWS_BYTES + 1)
            .read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_WINDOWS_BYTES + 1).read_to_end(&mut bytes))
    };
    result.map_err(|e| format!("reading {name}: {e}"))?;
    if bytes.len() as u64 > MAX_WINDOWS_BYTES {
        return Err(format!(
            "{name}: larger than {} MiB; split the replay",
            MAX_WINDOWS_BYTES >> 20
        ));
    }
    Ok((name, bytes))
}

/// One arm's counts as a histogram over `bounds` (+Inf included).
fn histogram(
    bounds: &[f64],
    counts: &[f64],
    cumulative: bool,
    arm: &str,
) -> Result<Histogram, String> {
    if counts.len() != bounds.len() {
        return Err(format!(
            "{arm} has {} counts; the {} bounds need {} (the last for +Inf)",
            counts.len(),
            bounds.len() - 1,
            bounds.len()
        ));
    }
    let h = if cumulative {
        Histogram::from_cumulative(bounds.iter().copied().zip(counts.iter().copied()).collect())
    } else {
        Histogram::try_new(bounds.to_vec(), counts.to_vec())
    };
    h.map_err(|e| format!("{arm}: {e}"))
}

/// The segments of a windows file (named `name` in messages), checked.
///
/// # Errors
/// A malformed file (with line:column), bad bounds, or a window whose share or counts do not
/// fit (by 1-based window number).
pub fn parse_windows(name: &str, bytes: &[u8]) -> Result<Vec<Segment>, String> {
    let file: WindowsFile = serde_json::from_slice(bytes).map_err(|e| {
        if e.line() == 0 {
            format!("{name}: {e}")
        } else {
            // serde_json's message ends with " at line L column C": say it as a position.
            let msg = e.to_string();
            let msg = msg
                .rsplit_once(" at line ")
                .map_or(msg.as_str(), |(m, _)| m);
            format!("{name}:{}:{}: {msg}", e.line(), e.column())
        }
    })?;
    if file.bounds.is_empty() {
        return Err(format!(
            "{name}: bounds is empty; give at least one finite bound"
        ));
    }
    if let Some(b) = file.bounds.iter().find(|b| !(b.is_finite() && **b > 0.0)) {
        return Err(format!(
            "{name}: bound {b} is not a positive finite number of seconds (the +Inf bucket is implied)"
        ));
    }
    if let Some((a, b)) = file
        .bounds
        .windows(2)
        .map(|w| (w[0], w[1]))
        .find(|(a, b)| !(a < b))
    {
        return Err(format!("{name}: bounds must increase, but {b} follows {a}"));
    }
    if file.windows.is_empty() {
        return Err(format!("{name}: windows is empty; nothing to judge"));
    }
    let mut bounds = file.bounds;
    bounds.push(f64::INFINITY);
    let arm = |counts: &Option<Vec<f64>>, which: &str| -> Result<Observation, String> {
        counts.as_ref().map_or(Ok(Observation::Missing), |c| {
            histogram(&bounds, c, file.cumulative, which).map(Observation::Histogram)
        })
    };
    file.windows
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let at = |e: String| format!("{name}: window {}: {e}", i + 1);
            if !(0.0..=1.0).contains(&w.share) {
                return Err(at(format!("share {} is not in [0, 1]", w.share)));
            }
            Ok(Segment {
                share: w.share,
                baseline: arm(&w.baseline, "baseline").map_err(at)?,
                canary: arm(&w.canary, "canary").map_err(at)?,
            })
        })
        .collect()
}

/// The judge's settings from the options, checked as a policy's would be.
fn spec(a: &LatencyArgs) -> Result<LatencyJudgeSpec, String> {
    if !(a.alpha > 0.0 && a.alpha < 0.5) {
        return Err(format!("--alpha must be in (0, 0.5), got {}", a.alpha));
    }
    if !(a.allowed_ratio >= 1.0 && a.allowed_ratio.is_finite()) {
        return Err(format!(
            "--allowed-ratio is the slowdown the canary may have, at least 1, got {}",
            a.allowed_ratio
        ));
    }
    let pass = a.pass_ratio.unwrap_or(a.allowed_ratio * 1.25);
    if !(pass > 0.0 && pass.is_finite()) {
        return Err(format!("--pass-ratio must be positive, got {pass}"));
    }
    let mut s = LatencyJudgeSpec::new(a.alpha);
    s.allowed_ratio = a.allowed_ratio;
    s.pass_ratio = pass;
    s.test = match a.test {
        TestArg::Buckets => LatencyTest::Buckets,
        TestArg::SlowThresholds => LatencyTest::SlowThresholds,
    };
    Ok(s)
}

/// Replays `segs` through a judge of `spec`: the JSON `judge latency` prints. `on_window`
/// is told the 1-based number of each window judged (for progress).
pub fn replay(spec: LatencyJudgeSpec, segs: &[Segment], mut on_window: impl FnMut(usize)) -> Value {
    let test = spec.test.as_str();
    let mut judge = LatencyJudge::new(spec);
    let history = segs.iter().take_while(|s| s.share == 0.0).count();
    judge.learn_history(&segs[..history]);
    let (mut first_fail, mut first_pass, mut decided) = (None, None, None);
    let mut trace = Vec::with_capacity(segs.len() - history);
    let mut last = None;
    for (i, seg) in segs.iter().enumerate().skip(history) {
        let v = judge.observe("latency", seg);
        let window = i + 1;
        on_window(window);
        let (log_e, nb, nc) = match &v.stats {
            Stats::SlowEvents(s) => (s.log_e, s.baseline_requests, s.canary_requests),
            _ => (f64::NAN, f64::NAN, f64::NAN),
        };
        trace.push(json!({
            "window": window,
            "outcome": v.outcome,
            "log_e": super::num(log_e),
            "baseline_requests": super::num(nb),
            "canary_requests": super::num(nc),
        }));
        if v.outcome == Outcome::Pass && first_pass.is_none() {
            first_pass = Some(window);
        }
        if v.outcome == Outcome::Fail && first_fail.is_none() {
            first_fail = Some(window);
            decided = Some(v.clone());
        }
        last = Some(v);
    }
    let verdict = decided.or(last);
    json!({
        "test": test,
        "windows": segs.len(),
        "history_windows": history,
        "outcome": verdict.as_ref().map(|v| v.outcome),
        "first_fail": first_fail,
        "first_pass": first_pass,
        "verdict": verdict,
        "trace": trace,
    })
}

/// `judge latency`.
pub fn run(a: &LatencyArgs) -> Result<Value, String> {
    let spec = spec(a)?;
    let (name, bytes) = read_input(&a.windows)?;
    let segs = parse_windows(&name, &bytes)?;
    drop(bytes);
    // Long replays (about 9 000 windows a second, benches/tick.rs) show how far they are on a
    // terminal.
    let total = segs.len();
    let show = total >= 2 * PROGRESS_EVERY && std::io::stderr().is_terminal();
    let v = replay(spec, &segs, |n| {
        if show && n % PROGRESS_EVERY == 0 {
            err!("\rjudge latency: {n} of {total} windows");
        }
    });
    if show {
        err!("\r{:width$}\r", "", width = 60);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Segment>, String> {
        parse_windows("w.json", text.as_bytes())
    }

    #[test]
    fn malformed_files_name_the_position_or_the_window() {
        let e =
            parse("{\"bounds\": [0.1, 0.2],\n \"windows\": [ {\"share\": 0.5,, }]}").unwrap_err();
        assert!(e.starts_with("w.json:2:"), "{e}");
        let e = parse(
            r#"{"bounds": [0.1], "windows": [{"share": 0.05, "baseline": [1, 2], "canary": [1]}]}"#,
        )
        .unwrap_err();
        assert_eq!(
            e,
            "w.json: window 1: canary has 1 counts; the 1 bounds need 2 (the last for +Inf)"
        );
        let e = parse(r#"{"bounds": [0.2, 0.1], "windows": [{"share": 0.05}]}"#).unwrap_err();
        assert!(e.contains("bounds must increase"), "{e}");
        let e = parse(r#"{"bounds": [0.1], "windows": [{"share": 1.5}]}"#).unwrap_err();
        assert!(e.contains("window 1: share 1.5"), "{e}");
        let e = parse(r#"{"bounds": [0.1], "windows": [{"share": 0.1, "baseline": [1, -1]}]}"#)
            .unwrap_err();
        assert!(e.starts_with("w.json: window 1: baseline"), "{e}");
        let e = parse(r#"{"bounds": [0.1], "windowz": []}"#).unwrap_err();
        assert!(e.contains("unknown field `windowz`"), "{e}");
        let e = parse(
            r#"{"bounds": [0.1], "cumulative": true, "windows": [{"share": 0.1, "baseline": [5, 3]}]}"#,
        )
        .unwrap_err();
        assert!(e.contains("window 1: baseline"), "{e}");
    }

    #[test]
    fn cumulative_counts_are_the_same_windows() {
        let per = parse(
            r#"{"bounds": [0.1, 0.2], "windows": [{"share": 0.1, "baseline": [1, 2, 3], "canary": [0, 1, 0]}]}"#,
        )
        .unwrap();
        let cum = parse(
            r#"{"bounds": [0.1, 0.2], "cumulative": true, "windows": [{"share": 0.1, "baseline": [1, 3, 6], "canary": [0, 1, 1]}]}"#,
        )
        .unwrap();
        assert_eq!(per, cum);
    }
}
