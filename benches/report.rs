//! `coalmine report` on a 24-hour rollout at a 15 s interval: 5,760 ticks of a 10-metric
//! policy (4 error-rate and 3 latency metrics with the sequential judge, 3 threshold guards),
//! each tick with its recorded observations. The log is made by the real judges and written
//! as the controller writes it; the bench reads it back and renders HTML and Markdown.

use std::hint::black_box;
use std::path::Path;

use coalmine::analysis::errors::EventJudgeSpec;
use coalmine::analysis::histogram::{Histogram, log_bounds, log_bucket_index};
use coalmine::analysis::latency::LatencyJudgeSpec;
use coalmine::analysis::threshold::ThresholdSpec;
use coalmine::analysis::{Counts, JudgeSpec, MetricJudge, Observation, Segment};
use coalmine::controller::Decision;
use coalmine::controller::record::{
    MetricRecord, Record, RecordKind, RequestsRecord, SegmentRecord, WindowRecord,
};
use coalmine::model::Weight;
use coalmine::report::log::{parse_log, select};
use coalmine::report::{html, markdown};
use criterion::{Criterion, criterion_group, criterion_main};

const TICKS: usize = 5_760;
const INTERVAL: f64 = 15.0;

fn histogram(n: usize, median: f64, shift: usize) -> Histogram {
    let bounds = log_bounds();
    let mut counts = vec![0.0; bounds.len()];
    for i in 0..n {
        let u = (i as f64 + 0.5) / n as f64;
        let x = median * (0.5 * coalmine::analysis::special::norm_ppf(u)).exp();
        let b = (log_bucket_index(x) + shift).min(bounds.len() - 1);
        counts[b] += 1.0;
    }
    Histogram::try_new(bounds, counts).expect("histogram")
}

fn specs() -> Vec<(String, JudgeSpec)> {
    let mut v = Vec::new();
    for i in 0..4 {
        v.push((
            format!("errors-{i}"),
            JudgeSpec::Events(EventJudgeSpec::new(0.005)),
        ));
    }
    for i in 0..3 {
        v.push((
            format!("latency-{i}"),
            JudgeSpec::Latency(LatencyJudgeSpec::new(0.005)),
        ));
    }
    for i in 0..3 {
        let spec = ThresholdSpec {
            max: Some(0.05),
            ..ThresholdSpec::default()
        };
        v.push((format!("guard-{i}"), JudgeSpec::Threshold(spec)));
    }
    v
}

/// A day of ticks at 25 %, as JSON lines.
fn log() -> String {
    let specs = specs();
    let mut judges: Vec<MetricJudge> = specs.iter().map(|(_, s)| MetricJudge::new(s)).collect();
    let mut out = String::new();
    let record = |kind, t: f64| Record {
        kind,
        rollout: "day".into(),
        rollout_id: "bench".into(),
        version: "0",
        policy_sha256: Some("0".repeat(64)),
        actor: None,
        time: "2026-01-01T00:00:00.000Z".into(),
        elapsed_s: t,
        phase: "progressing",
        next_phase: "progressing",
        step: Some(1),
        steps: 2,
        weight: Weight::try_from_percent(25.0).expect("weight"),
        window: None,
        since_s: None,
        requests: None,
        baseline: None,
        metrics: Vec::new(),
        decision: None,
        event: Some("weight-applied".into()),
        detail: None,
    };
    let mut line = |r: &Record| {
        out.push_str(&serde_json::to_string(r).expect("record"));
        out.push('\n');
    };
    line(&record(RecordKind::Transition, 0.0));
    for k in 0..TICKS {
        // Load and error counts vary a little from window to window.
        let wobble = (k % 7) as f64;
        let counts = Segment {
            share: 0.25,
            baseline: Observation::Counts(Counts {
                events: 3.0 + wobble % 3.0,
                trials: 750.0 + wobble,
            }),
            canary: Observation::Counts(Counts {
                events: 1.0 + wobble % 2.0,
                trials: 250.0 + wobble,
            }),
        };
        let latency = Segment {
            share: 0.25,
            baseline: Observation::Histogram(histogram(750, 0.05, 0)),
            canary: Observation::Histogram(histogram(250, 0.05, k % 2)),
        };
        let t = INTERVAL * (k + 1) as f64;
        let mut r = record(RecordKind::Tick, t);
        r.event = None;
        r.window = Some(WindowRecord {
            seq: k as u64,
            start: "2026-01-01T00:00:00.000Z".into(),
            end: "2026-01-01T00:00:15.000Z".into(),
        });
        r.since_s = Some(0.0);
        r.requests = Some(RequestsRecord {
            window: [750.0, 250.0],
            step: [750.0 * (k + 1) as f64, 250.0 * (k + 1) as f64],
        });
        for ((name, _), j) in specs.iter().zip(judges.iter_mut()) {
            let seg = if name.starts_with("latency") {
                &latency
            } else {
                &counts
            };
            let v = j.observe(name, seg);
            r.metrics.push(MetricRecord {
                metric: name.clone(),
                judge: v.judge,
                outcome: Some(v.outcome),
                reason: v.reason,
                stats: v.stats,
                dry_run: false,
                queries: Vec::new(),
                error: None,
                observed: SegmentRecord::all(std::slice::from_ref(seg)),
            });
        }
        r.decision = Some(Decision::Hold {
            reason: "step time 1h of 24h".into(),
        });
        line(&r);
    }
    out
}

fn bench(c: &mut Criterion) {
    let text = log();
    let path = Path::new("day.jsonl");
    let rollout = || select(parse_log(&text, path).expect("log"), None).expect("one rollout");
    let r = rollout();
    let page = html::render(&r);
    let md = markdown::render(&r);
    println!(
        "24 h at 15 s: {} ticks, 10 metrics: log {:.1} MB, HTML report {:.0} kB, Markdown {:.1} kB",
        r.ticks().count(),
        text.len() as f64 / 1e6,
        page.len() as f64 / 1e3,
        md.len() as f64 / 1e3
    );
    let mut g = c.benchmark_group("report, 24 h at 15 s, 10 metrics");
    g.sample_size(10);
    g.bench_function("read the log", |b| b.iter(|| black_box(rollout())));
    g.bench_function("render HTML", |b| b.iter(|| black_box(html::render(&r))));
    g.bench_function("render Markdown", |b| {
        b.iter(|| black_box(markdown::render(&r)));
    });
    g.bench_function("read and render HTML", |b| {
        b.iter(|| black_box(html::render(&rollout())));
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
