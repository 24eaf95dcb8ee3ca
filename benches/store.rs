//! The rollout store (issue 11): the cost of persisting one tick's rollout record and of
//! resuming a rollout, for a 10-metric policy whose judges have seen 50 windows (4 error
//! rates and 3 latency histograms with the sequential judge, 3 threshold guards, as in
//! `benches/tick.rs`).
//!
//! - `encode`: the record to bytes (JSON, the judges in CBOR/base64, the checksum line).
//! - `persist one tick`: [`FileStore::save_blocking`]: read the revision, encode, write a
//!   temporary file, fsync, rename, fsync the directory; what `coalmine run` does before
//!   acting, once per tick. On the disk under `target/` (not tmpfs, where fsync is free).
//! - `decode`: bytes to the record, judges included (checksum, JSON, CBOR).
//! - `resume`: [`FileStore::load_blocking`] and taking the owner lock, what a restarted
//!   `coalmine run` does before it reads the weight in force back.

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use coalmine::analysis::MetricJudge;
use coalmine::controller::Phase;
use coalmine::controller::machine::Progress;
use coalmine::controller::store::{
    self, FORMAT, FileStore, Judges, PolicyRef, RolloutState, new_rollout_id, policy_sha256,
};
use coalmine::model::Weight;
use criterion::{Criterion, criterion_group, criterion_main};

#[path = "common/ten_metrics.rs"]
mod ten_metrics;
use ten_metrics::policy;

/// Ten judges after 50 windows of 1 000 requests at 25 %.
fn judges() -> Vec<MetricJudge> {
    policy()
        .into_iter()
        .map(|(spec, seg)| {
            let mut j = MetricJudge::new(&spec);
            for _ in 0..50 {
                j.observe("m", &seg);
            }
            j
        })
        .collect()
}

fn state() -> RolloutState {
    let w = Weight::try_from_percent(25.0).expect("weight");
    let mut p = Progress::new(1, w, Duration::from_secs(300), Duration::ZERO);
    p.requests = [37_500.0, 12_500.0];
    RolloutState {
        format: FORMAT,
        rollout: "checkout".to_string(),
        rollout_id: new_rollout_id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        revision: 0,
        policy: PolicyRef {
            path: Some("checkout.toml".to_string()),
            sha256: policy_sha256(b"name = 'checkout'"),
            text: None,
        },
        phase: Phase::Progressing(p),
        steps: 3,
        elapsed: Duration::from_secs(350),
        saved_at: SystemTime::now(),
        started_at: SystemTime::now(),
        weight: w,
        seq: 50,
        ticks: 50,
        steps_reached: 2,
        first_traffic: Some(Duration::from_secs(1)),
        judges: Judges(judges()),
        decisions: None,
        control: None,
        last: Some("progressing".to_string()),
        operator_actions: 0,
    }
}

fn bench(c: &mut Criterion) {
    let s = state();
    let bytes = store::encode(&s).expect("encode");
    println!(
        "rollout record, 10 judges after 50 windows: {} bytes",
        bytes.len()
    );
    for (i, kind) in [(0, "error-rate"), (4, "latency"), (7, "threshold")] {
        let one = Judges(vec![s.judges.0[i].clone()]);
        let text = serde_json::to_string(&one).expect("encode a judge");
        println!("  one {kind} judge: {} bytes (base64 of CBOR)", text.len());
    }
    c.bench_function("encode a rollout record, 10 judges", |b| {
        b.iter(|| black_box(store::encode(black_box(&s)).expect("encode")));
    });
    c.bench_function("decode a rollout record, 10 judges", |b| {
        b.iter(|| black_box(store::decode(black_box(&bytes)).expect("decode")));
    });
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a directory");
    let fs = FileStore::new(dir.path());
    let mut rev = fs.save_blocking(&s, 0).expect("first save");
    let mut g = c.benchmark_group("file store");
    g.sample_size(30);
    g.bench_function("persist one tick (atomic write, 2 fsyncs)", |b| {
        b.iter(|| {
            rev = fs.save_blocking(black_box(&s), rev).expect("save");
        });
    });
    g.bench_function("resume: lock and load, 10 judges", |b| {
        b.iter(|| {
            let lock = fs.acquire_blocking("checkout").expect("lock");
            let loaded = fs
                .load_blocking("checkout")
                .expect("load")
                .expect("a record");
            black_box((lock, loaded))
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
