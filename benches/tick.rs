//! One analysis tick of a 10-metric policy (design budget: < 1 ms of CPU): 4 error-rate and
//! 3 latency metrics with the sequential judge (confidence sequences on, as `coalmine run`
//! computes them), and 3 threshold guards, each fed one window of 1 000 requests.

use std::hint::black_box;

use coalmine::analysis::latency::{LatencyJudgeSpec, LatencyTest};
use coalmine::analysis::{JudgeSpec, MetricJudge, Observation, Segment};
use criterion::{Criterion, criterion_group, criterion_main};

#[path = "common/ten_metrics.rs"]
mod ten_metrics;
use ten_metrics::policy;

fn tick(c: &mut Criterion) {
    let metrics = policy();
    let mut judges: Vec<MetricJudge> = metrics.iter().map(|(s, _)| MetricJudge::new(s)).collect();
    // Warm: a rollout some way in.
    for _ in 0..50 {
        for (j, (_, seg)) in judges.iter_mut().zip(&metrics) {
            j.observe("m", seg);
        }
    }
    // CPU time (not wall time: the machine is shared) of one tick, from the thread's own
    // user + system time in /proc (Linux), over enough ticks for its 10 ms resolution.
    if let Some(start) = thread_cpu_seconds() {
        let n = 3000;
        for _ in 0..n {
            for (j, (_, seg)) in judges.iter_mut().zip(&metrics) {
                black_box(j.observe("m", black_box(seg)));
            }
        }
        if let Some(end) = thread_cpu_seconds() {
            println!(
                "analysis tick, 10 metrics: {:.0} µs of CPU per tick ({n} ticks)",
                (end - start) / f64::from(n) * 1e6
            );
        }
    }
    c.bench_function("analysis tick, 10 metrics", |b| {
        b.iter(|| {
            for (j, (_, seg)) in judges.iter_mut().zip(&metrics) {
                black_box(j.observe("m", black_box(seg)));
            }
        });
    });
    // Where the time goes: one metric of each kind (first error, first latency, first
    // threshold metric of the policy above), and the latency metric with the other test.
    for (name, i) in [("error-rate", 0), ("latency", 4), ("threshold", 7)] {
        let mut j = judges[i].clone();
        let seg = &metrics[i].1;
        c.bench_function(&format!("one {name} metric"), |b| {
            b.iter(|| black_box(j.observe("m", black_box(seg))));
        });
    }
    let mut spec = LatencyJudgeSpec::new(0.005);
    spec.test = LatencyTest::SlowThresholds;
    let mut j = MetricJudge::new(&JudgeSpec::Latency(spec));
    let seg = &metrics[4].1;
    for _ in 0..50 {
        j.observe("m", seg);
    }
    c.bench_function("one latency metric, test = slow-thresholds", |b| {
        b.iter(|| black_box(j.observe("m", black_box(seg))));
    });
    replay(c, seg);
}

/// `coalmine judge latency` on 1 000 windows like `seg` (163 buckets): parsing the file
/// and replaying it, the speed the README quotes.
fn replay(c: &mut Criterion, seg: &Segment) {
    use coalmine::cli::judge::latency::{parse_windows, replay};
    let (Observation::Histogram(b), Observation::Histogram(k)) = (&seg.baseline, &seg.canary)
    else {
        panic!("the ten-metric policy's latency window is a histogram pair");
    };
    let window =
        serde_json::json!({"share": seg.share, "baseline": b.counts(), "canary": k.counts()});
    let bounds = &b.bounds()[..b.bounds().len() - 1];
    let text = serde_json::json!({"bounds": bounds, "windows": vec![window; 1000]}).to_string();
    c.bench_function("judge latency, 1000 windows of 163 buckets", |bch| {
        bch.iter(|| {
            let segs = parse_windows("w.json", black_box(text.as_bytes())).expect("valid");
            black_box(replay(LatencyJudgeSpec::new(0.05), &segs, |_| {}))
        });
    });
}

/// This thread's user + system CPU time in seconds (Linux `/proc/thread-self/stat`).
fn thread_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ") ".
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // Clock ticks per second: 100 on Linux.
    Some(ticks / 100.0)
}

criterion_group!(benches, tick);
criterion_main!(benches);
