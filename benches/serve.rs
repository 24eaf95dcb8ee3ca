//! `coalmine serve` at scale (issue 12): N concurrent rollouts in one daemon on 2 cores (a
//! benchmark, not a test: it prints and writes numbers and asserts only that the run
//! happened).
//!
//! The daemon is the library's [`Daemon`] on a 2-worker tokio runtime, with in-process
//! fakes: a mock traffic provider and a source answering every fetch with the window's
//! traffic at the weight in force (2 000 requests per window, 1 % errors and the same
//! log-normal latency in both arms), so every rollout promotes (the A/A case). Each rollout
//! runs the 10-metric policy of the tick and store benchmarks (`benches/common/ten_metrics.rs`:
//! 4 error-rate and 3 latency metrics with the sequential judge, 3 threshold guards) over
//! steps 10 %, 50 %, 100 %, 3 ticks per analysed step; the N rollouts are applied evenly
//! over one analysis interval (as submissions arrive), so their ticks are spread.
//!
//! Measured, per store, each in a fresh process (so CPU and memory are that store's run
//! alone): tick lateness (due time to the rollout's task waking) and tick duration, p50,
//! p99, max; CPU seconds of the process (user + system, `/proc/self/stat`) per rollout-tick
//! and per rollout; peak RSS (`VmHWM`, reset before the rollouts through `clear_refs`) over
//! the RSS before them, per rollout; every store write's latency, p50, p99, max. Stores:
//! the embedded [`FileStore`] on the disk under `target/` (with the decision logs of
//! `serve --store DIR` next to it), and etcd when the `etcd` binary is installed (one
//! member on a free loopback port, a temporary data directory; decision records in etcd).
//!
//! Run with `cargo bench --bench serve` (N = 1000, analysis interval 5 s, about two minutes
//! per store); `COALMINE_BENCH_ROLLOUTS=N` sets N; `COALMINE_BENCH=quick` is a smoke run
//! (N = 100, interval 1 s). Output: a Markdown table on stdout and in
//! `target/coalmine-bench/serve.md`, and `target/coalmine-bench/serve.json`.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/it/etcd/server.rs"]
#[allow(dead_code)]
mod server;
#[path = "common/ten_metrics.rs"]
#[allow(dead_code)]
mod ten_metrics;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coalmine::analysis::{Counts, Observation, Segment};
use coalmine::cli::serve::{Build, Built, Config, Daemon, Role};
use coalmine::controller::store::etcd::{
    EtcdClient, EtcdConfig, EtcdStore, LeaderOptions, Leadership,
};
use coalmine::controller::store::{FileStore, Store, Timed};
use coalmine::metrics::{Fetched, MetricsError, MetricsSource, Window};
use coalmine::policy::{MetricConfig, Policy};
use coalmine::traffic::mock::MockTrafficProvider;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

/// The child process runs one store's measurement when this variable says which.
const CHILD: &str = "COALMINE_BENCH_SERVE_STORE";

/// Requests per analysis window, both arms together.
const REQUESTS: f64 = 2000.0;

/// How the run is sized.
#[derive(Clone, Copy, Debug)]
struct Plan {
    rollouts: usize,
    interval: Duration,
    quick: bool,
}

impl Plan {
    fn from_env() -> Plan {
        let quick = std::env::var("COALMINE_BENCH").is_ok_and(|v| v == "quick");
        let rollouts = std::env::var("COALMINE_BENCH_ROLLOUTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if quick { 100 } else { 1000 });
        let interval = Duration::from_secs(if quick { 1 } else { 5 });
        Plan {
            rollouts,
            interval,
            quick,
        }
    }

    /// 3 analysis ticks per analysed step.
    fn step(&self) -> Duration {
        self.interval * 3
    }
}

/// The policy of rollout `name`: the 10 metrics of `ten_metrics.rs` on builtin signals.
fn policy(name: &str, plan: &Plan) -> String {
    let mut s = format!(
        "name = \"{name}\"\nalpha = 0.05\n[rollout]\nsteps = [10, 50, 100]\n\
         step_duration = \"{}s\"\nanalysis_interval = \"{}s\"\nmin_requests = 100\n\
         deadline = \"30m\"\n[traffic]\ntype = \"proxy\"\nlisten = \"127.0.0.1:0\"\n\
         baseline = \"http://127.0.0.1:1\"\ncanary = \"http://127.0.0.1:2\"\n",
        plan.step().as_secs(),
        plan.interval.as_secs()
    );
    for i in 0..4 {
        let _ = write!(
            s,
            "[[metric]]\nname = \"errors-{i}\"\nbuiltin = \"errors\"\njudge = \"sequential\"\nalpha = 0.005\n"
        );
    }
    for i in 0..3 {
        let _ = write!(
            s,
            "[[metric]]\nname = \"latency-{i}\"\nbuiltin = \"latency\"\njudge = \"sequential\"\nalpha = 0.005\n"
        );
    }
    for i in 0..3 {
        let _ = write!(
            s,
            "[[metric]]\nname = \"ceiling-{i}\"\nbuiltin = \"errors\"\njudge = \"threshold\"\nmax = 0.05\n"
        );
    }
    s
}

/// One window's observations at one weight: errors (counts) and latency (histograms).
struct Shape {
    errors: Segment,
    latency: Segment,
}

impl Shape {
    fn at(share: f64) -> Shape {
        let (nb, nc) = (REQUESTS * (1.0 - share), REQUESTS * share);
        let counts = |n: f64| {
            Observation::Counts(Counts {
                events: (n * 0.01).round(),
                trials: n.round(),
            })
        };
        let hist = |n: f64| Observation::Histogram(ten_metrics::histogram(n as usize, 0.05));
        Shape {
            errors: Segment {
                share,
                baseline: counts(nb),
                canary: counts(nc),
            },
            latency: Segment {
                share,
                baseline: hist(nb),
                canary: hist(nc),
            },
        }
    }
}

/// The shapes by weight (basis points), made once per weight for every rollout.
#[derive(Default)]
struct Shapes(Mutex<HashMap<u16, Arc<Shape>>>);

impl Shapes {
    fn at(&self, w: coalmine::model::Weight) -> Arc<Shape> {
        let mut m = self.0.lock().unwrap();
        m.entry(w.bp())
            .or_insert_with(|| Arc::new(Shape::at(w.fraction())))
            .clone()
    }
}

/// The in-process source: the window's traffic at the weight in force.
struct Source(Arc<Shapes>);

impl MetricsSource for Source {
    fn name(&self) -> &'static str {
        "bench"
    }

    async fn fetch(&self, metric: &MetricConfig, window: &Window) -> Result<Fetched, MetricsError> {
        let shape = self.0.at(window.weight);
        let seg = if metric.name.starts_with("latency") {
            shape.latency.clone()
        } else {
            shape.errors.clone()
        };
        Ok(Fetched {
            segments: vec![seg],
            queries: Vec::new(),
        })
    }
}

/// Builds the fakes for every rollout.
#[derive(Default)]
struct Fakes(Arc<Shapes>);

impl Build for Fakes {
    type Traffic = MockTrafficProvider;
    type Source = Source;

    async fn build(&self, _: &Policy) -> Result<Built<MockTrafficProvider, Source>, String> {
        Ok(Built {
            traffic: MockTrafficProvider::new(),
            source: Source(self.0.clone()),
            proxy: None,
            readiness: None,
        })
    }
}

/// Where the store under measurement puts each write's exact time (seconds).
fn exact(writes: &Arc<Mutex<Vec<f64>>>) -> impl Fn(Duration) + Send + Sync + 'static {
    let writes = writes.clone();
    move |d| writes.lock().unwrap().push(d.as_secs_f64())
}

/// This process's user + system CPU seconds (`/proc/self/stat`, 100 ticks a second).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// A `/proc/self/status` field in MB (`VmRSS`, `VmHWM`).
fn status_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// p50, p99, max of `v` in milliseconds.
fn quantiles_ms(v: &mut [f64]) -> Value {
    if v.is_empty() {
        return json!(null);
    }
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize] * 1000.0;
    json!({ "n": v.len(), "p50": q(0.5), "p99": q(0.99), "max": v[v.len() - 1] * 1000.0 })
}

/// Runs the rollouts on `store` and measures; the results as JSON.
async fn measure<S: Store + 'static>(
    store: S,
    role: watch::Receiver<Role>,
    decisions: Option<PathBuf>,
    plan: Plan,
    writes: Arc<Mutex<Vec<f64>>>,
) -> Value {
    let mut cfg = Config::new(b"bench".to_vec(), "bench");
    cfg.decisions_dir = decisions;
    let d = Daemon::new(store, Fakes::default(), role, cfg);
    let ticks: Arc<Mutex<Vec<(f64, f64)>>> = Arc::default();
    let t = ticks.clone();
    d.on_tick(move |tt| {
        t.lock()
            .unwrap()
            .push((tt.lateness.as_secs_f64(), tt.duration.as_secs_f64()));
    });
    let names: Vec<String> = (0..plan.rollouts)
        .map(|i| format!("bench-{i:04}"))
        .collect();
    let texts: Vec<String> = names.iter().map(|n| policy(n, &plan)).collect();
    // The RSS before the rollouts, and the peak reset to it (Linux: "5" resets VmHWM).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss0 = status_mb("VmRSS");
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut refused = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        tokio::time::sleep_until(t0 + plan.interval * i as u32 / plan.rollouts as u32).await;
        if let Err(e) = d.apply(text, None, true).await {
            refused.push(format!("{}: {e}", names[i]));
        }
    }
    let applied_s = t0.elapsed().as_secs_f64();
    // Until every rollout ended (bounded: far beyond its two steps).
    let limit = plan.step() * 2 * 4 + plan.interval * 4 + Duration::from_secs(60);
    let mut outcomes: HashMap<&'static str, usize> = HashMap::new();
    let unfinished = loop {
        outcomes.clear();
        let mut unfinished = 0;
        for n in &names {
            match d.outcome(n) {
                Some(o) => *outcomes.entry(o).or_default() += 1,
                None => unfinished += 1,
            }
        }
        if unfinished == refused.len() || t0.elapsed() > limit {
            break unfinished;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let hwm = status_mb("VmHWM");
    d.stand_down().await;
    let ticks = std::mem::take(&mut *ticks.lock().unwrap());
    let n_ticks = ticks.len();
    let (mut late, mut took): (Vec<f64>, Vec<f64>) = ticks.into_iter().unzip();
    let mut writes = std::mem::take(&mut *writes.lock().unwrap());
    json!({
        "rollouts": plan.rollouts,
        "refused": refused.iter().take(5).collect::<Vec<_>>(),
        "refused_count": refused.len(),
        "unfinished": unfinished - refused.len(),
        "outcomes": outcomes,
        "apply_seconds": applied_s,
        "wall_seconds": wall,
        "ticks": n_ticks,
        "lateness_ms": quantiles_ms(&mut late),
        "tick_ms": quantiles_ms(&mut took),
        "cpu_seconds": cpu,
        "cpu_ms_per_tick": cpu / n_ticks.max(1) as f64 * 1000.0,
        "cpu_ms_per_rollout": cpu / plan.rollouts as f64 * 1000.0,
        "rss_before_mb": rss0,
        "rss_peak_mb": hwm,
        "rss_mb_per_rollout": (hwm - rss0) / plan.rollouts as f64,
        "store_writes_ms": quantiles_ms(&mut writes),
    })
}

/// Compacts etcd's history up to its current revision every `every`, as an operator's
/// `--auto-compaction-retention` would (each tick rewrites every rollout's record: without
/// compaction 1000 rollouts fill etcd's 2 GB quota within minutes).
async fn compact_every(url: String, every: Duration) {
    coalmine::traffic::install_tls_provider();
    let base = format!("http://{}", url.trim_start_matches("etcd://"));
    let http = reqwest::Client::new();
    loop {
        tokio::time::sleep(every).await;
        let Ok(r) = http
            .post(format!("{base}/v3/kv/range"))
            .body(r#"{"key":"Lw==","count_only":true}"#)
            .send()
            .await
        else {
            continue;
        };
        let Ok(v) = r.json::<Value>().await else {
            continue;
        };
        let Some(rev) = v["header"]["revision"].as_str().map(str::to_string) else {
            continue;
        };
        let _ = http
            .post(format!("{base}/v3/kv/compaction"))
            .body(json!({ "revision": rev }).to_string())
            .send()
            .await;
    }
}

/// The child: one store's run; prints its JSON as the last line on stdout.
fn child(which: &str, plan: Plan) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let out = rt.block_on(async {
        let writes: Arc<Mutex<Vec<f64>>> = Arc::default();
        if which == "file" {
            let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a directory");
            let store = Timed::new(FileStore::new(dir.path()), exact(&writes));
            let role = watch::channel(Role::Leader).1;
            let mut v = measure(
                store,
                role,
                Some(dir.path().join("decisions")),
                plan,
                writes,
            )
            .await;
            let rec = std::fs::metadata(dir.path().join("rollouts/bench-0000.json"))
                .map_or(0, |m| m.len());
            v["record_bytes"] = json!(rec);
            v
        } else {
            let url = which.strip_prefix("etcd=").expect("etcd=URL");
            let client = Arc::new(
                EtcdClient::new(&EtcdConfig::from_url(url).expect("url")).expect("client"),
            );
            let prefix = "/coalmine-bench/";
            let leadership = Arc::new(Leadership::start(
                client.clone(),
                prefix,
                LeaderOptions {
                    id: "bench".into(),
                    addr: None,
                    ttl: Duration::from_secs(10),
                },
            ));
            for _ in 0..200 {
                if leadership.is_leader() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(
                leadership.is_leader(),
                "the benchmark never became etcd's leader"
            );
            let store = Timed::new(
                EtcdStore::new(client, prefix, leadership.clone()),
                exact(&writes),
            );
            let role = watch::channel(Role::Leader).1;
            let compactor = tokio::spawn(compact_every(url.to_string(), Duration::from_secs(5)));
            let v = measure(store, role, None, plan, writes).await;
            compactor.abort();
            leadership.resign().await;
            v
        }
    });
    println!("{out}");
}

/// Runs one store's measurement in a fresh process of this benchmark.
fn run_child(which: &str) -> Value {
    let out = std::process::Command::new(std::env::current_exe().expect("the bench binary"))
        .env(CHILD, which)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("the child runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "the {which} run printed no result ({e}, {}):\n{text}",
            out.status
        )
    })
}

fn uptime() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn row(store: &str, v: &Value) -> String {
    let q = |k: &str, f: &str| v[k][f].as_f64().map_or("-".into(), |x| format!("{x:.1}"));
    format!(
        "| {store} | {} | {} | {} / {} / {} | {} / {} / {} | {:.2} | {:.0} | {:.0} | {:.2} | {} / {} / {} |",
        v["rollouts"],
        v["ticks"],
        q("lateness_ms", "p50"),
        q("lateness_ms", "p99"),
        q("lateness_ms", "max"),
        q("tick_ms", "p50"),
        q("tick_ms", "p99"),
        q("tick_ms", "max"),
        v["cpu_ms_per_tick"].as_f64().unwrap_or(0.0),
        v["cpu_ms_per_rollout"].as_f64().unwrap_or(0.0),
        v["rss_peak_mb"].as_f64().unwrap_or(0.0),
        v["rss_mb_per_rollout"].as_f64().unwrap_or(0.0),
        q("store_writes_ms", "p50"),
        q("store_writes_ms", "p99"),
        q("store_writes_ms", "max"),
    )
}

fn main() {
    let plan = Plan::from_env();
    if let Ok(which) = std::env::var(CHILD) {
        child(&which, plan);
        return;
    }
    let load_before = uptime();
    let mut results = vec![("file", run_child("file"))];
    let etcd = if common::find_tool("etcd").is_some() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let e = rt.block_on(server::Etcd::start(1)).expect("etcd starts");
        results.push(("etcd", run_child(&format!("etcd={}", e.url()))));
        drop(e);
        None
    } else {
        Some("etcd: skipped (no etcd binary)")
    };
    let load_after = uptime();
    let mut md = format!(
        "coalmine serve: {} concurrent rollouts in one daemon, 2 tokio workers on {} cores, \
         10 metrics, analysis interval {} s, steps 10/50/100 % with 3 ticks each{}\n\
         load average (1, 5, 15 min) before: {load_before}; after: {load_after}\n\n\
         | store | rollouts | ticks | lateness ms p50 / p99 / max | tick ms p50 / p99 / max \
         | CPU ms per tick | CPU ms per rollout | peak RSS MB | MB per rollout | store write ms p50 / p99 / max |\n\
         |---|---:|---:|---|---|---:|---:|---:|---:|---|\n",
        plan.rollouts,
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        plan.interval.as_secs(),
        if plan.quick { " (quick mode)" } else { "" },
    );
    for (store, v) in &results {
        md += &row(store, v);
        md.push('\n');
    }
    if let Some(skip) = etcd {
        md += skip;
        md.push('\n');
    }
    for (store, v) in &results {
        let _ = write!(
            md,
            "\n{store}: outcomes {}, refused {}, unfinished {}, applied in {:.1} s, ran {:.1} s, \
             CPU {:.1} s, RSS before {:.0} MB{}\n",
            v["outcomes"],
            v["refused_count"],
            v["unfinished"],
            v["apply_seconds"].as_f64().unwrap_or(0.0),
            v["wall_seconds"].as_f64().unwrap_or(0.0),
            v["cpu_seconds"].as_f64().unwrap_or(0.0),
            v["rss_before_mb"].as_f64().unwrap_or(0.0),
            v.get("record_bytes")
                .map_or(String::new(), |b| format!(", one rollout record {b} bytes")),
        );
    }
    print!("{md}");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/coalmine-bench");
    std::fs::create_dir_all(&dir).expect("target/coalmine-bench");
    std::fs::write(dir.join("serve.md"), &md).expect("serve.md");
    let all = json!({
        "plan": { "rollouts": plan.rollouts, "interval_s": plan.interval.as_secs(), "quick": plan.quick },
        "load_before": load_before,
        "load_after": load_after,
        "stores": results.iter().map(|(s, v)| (s.to_string(), v.clone())).collect::<serde_json::Map<_, _>>(),
        "etcd": etcd.unwrap_or("measured"),
    });
    std::fs::write(
        dir.join("serve.json"),
        serde_json::to_string_pretty(&all).expect("json"),
    )
    .expect("serve.json");
    for (store, v) in &results {
        assert!(
            v["ticks"].as_u64().unwrap_or(0) > 0,
            "{store}: no tick ran: {v}"
        );
    }
}
