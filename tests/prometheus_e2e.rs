//! End to end against a real Prometheus (Debian's `prometheus` package): the test starts the
//! demo services (`coalmine demo-services`, sending load to the rollout's proxy port),
//! Prometheus on a free loopback port scraping them every second, and `coalmine run` on a
//! generated policy, then checks exit codes and decision records.
//!
//! Without a `prometheus` binary these tests fail under `CI=true` and print a loud skip
//! otherwise.

// Real processes on the wall clock: tokio's pausable time has nothing to pause here, and the
// harness is plain blocking code.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::{Guard, free_port, refusing_addr, require_tool};

const BIN: &str = env!("CARGO_BIN_EXE_coalmine");

/// A plain HTTP/1.0 GET: `(status, body)`, `None` when nothing answers.
fn http_get(addr: SocketAddr, path_and_query: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Some((status, body))
}

/// The demo services, started with `coalmine demo-services`.
struct Services {
    _proc: Guard,
    baseline: SocketAddr,
    canary: SocketAddr,
}

fn start_services(scenario: &str, extra: &[&str], load_to: SocketAddr) -> Services {
    let mut proc = Guard::spawn(
        Command::new(BIN)
            .args(["demo-services", "--scenario", scenario])
            .args(extra)
            .args(["--baseline", "127.0.0.1:0", "--canary", "127.0.0.1:0"])
            .args(["--load-to", &load_to.to_string(), "--rps", "250"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let stdout = proc.0.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let addr = |arm: &str| -> SocketAddr {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("demo-services printed no {arm} address: {e}"));
        line.strip_prefix(&format!("{arm} http://"))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected line from demo-services: {line}"))
    };
    let baseline = addr("baseline");
    let canary = addr("canary");
    Services {
        _proc: proc,
        baseline,
        canary,
    }
}

/// A Prometheus server on a free loopback port with its own config and storage.
struct Prometheus {
    bin: PathBuf,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    proc: Option<Guard>,
    /// `--web.config.file` (TLS), if any.
    web_config: Option<PathBuf>,
}

impl Prometheus {
    fn start(bin: PathBuf, targets: &[SocketAddr]) -> Prometheus {
        let mut p = Prometheus::new(bin, targets);
        p.spawn();
        p.wait_scraped(Duration::from_secs(30));
        p
    }

    /// Configured, not started.
    fn new(bin: PathBuf, targets: &[SocketAddr]) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        std::fs::write(
            dir.path().join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: demo\n    static_configs:\n      - targets: [{}]\n",
                list.join(", ")
            ),
        )
        .expect("write prometheus.yml");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        Prometheus {
            bin,
            dir,
            addr,
            proc: None,
            web_config: None,
        }
    }

    fn spawn(&mut self) {
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("prometheus.log"))
            .expect("prometheus log");
        self.proc = Some(Guard::spawn(
            Command::new(&self.bin)
                .arg(format!(
                    "--config.file={}",
                    d.join("prometheus.yml").display()
                ))
                .arg(format!("--storage.tsdb.path={}", d.join("data").display()))
                .arg(format!("--web.listen-address={}", self.addr))
                .args(
                    self.web_config
                        .iter()
                        .map(|w| format!("--web.config.file={}", w.display())),
                )
                .stdout(Stdio::null())
                .stderr(log),
        ));
    }

    fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Waits until both targets have a sample older than a window (3 s, the 2 s window and a
    /// scrape), so a window's counts (`c - c offset 2s`) have both edges.
    fn wait_scraped(&self, limit: Duration) {
        let start = Instant::now();
        let q = "/api/v1/query?query=count(up%20offset%203s)";
        while start.elapsed() < limit {
            if let Some((200, body)) = http_get(self.addr, q)
                && body.contains(r#""value":["#)
                && body.contains(r#","2"]"#)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let log =
            std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default();
        panic!(
            "prometheus on {} did not scrape both targets within {limit:?}; log:\n{log}",
            self.addr
        );
    }

    fn url(&self) -> String {
        let scheme = if self.web_config.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }
}

/// Limits of a generated policy.
struct Limits {
    error_limit: u32,
    no_data_limit: &'static str,
}

const LIMITS: Limits = Limits {
    error_limit: 3,
    no_data_limit: "20s",
};

fn policy(dir: &Path, proxy: SocketAddr, s: &Services, prom: &Prometheus, l: &Limits) -> PathBuf {
    let text = format!(
        r#"name = "e2e"
alpha = 0.005

[rollout]
steps = [10, 50, 100]
step_duration = "6s"
analysis_interval = "2s"
min_requests = 30
deadline = "50s"
on_no_data = "rollback"
no_data_limit = "{ndl}"
error_limit = {el}

[traffic]
type = "proxy"
listen = "{proxy}"
baseline = "http://{b}"
canary = "http://{c}"

[metrics]
type = "prometheus"
url = "{url}"
timeout = "3s"
token_env = "COALMINE_E2E_TOKEN"

[metrics.headers]
X-Coalmine-Test = "e2e"

[metrics.variables]
job = "demo"

[[metric]]
name = "errors"
events = 'sum(increase(coalmine_demo_requests_total{{job="{{{{job}}}}",track="{{{{arm}}}}",code=~"5.."}}[{{{{window}}}}])) or vector(0)'
trials = 'sum(increase(coalmine_demo_requests_total{{job="{{{{job}}}}",track="{{{{arm}}}}"}}[{{{{window}}}}]))'

[[metric]]
name = "latency"
histogram = 'sum by (le) (increase(coalmine_demo_request_duration_seconds_bucket{{job="{{{{job}}}}",track="{{{{arm}}}}"}}[{{{{window}}}}]))'
allowed_ratio = 1.1

[[metric]]
name = "error-ceiling"
judge = "threshold"
query = '(sum(rate(coalmine_demo_requests_total{{track="{{{{arm}}}}",code=~"5.."}}[{{{{window}}}}])) or vector(0)) / sum(rate(coalmine_demo_requests_total{{track="{{{{arm}}}}"}}[{{{{window}}}}]))'
max = 0.5
"#,
        ndl = l.no_data_limit,
        el = l.error_limit,
        b = s.baseline,
        c = s.canary,
        url = prom.url(),
    );
    let path = dir.join("policy.toml");
    std::fs::write(&path, text).expect("write policy");
    path
}

/// A running `coalmine run`.
struct Run {
    proc: Guard,
    decisions: PathBuf,
    stderr: PathBuf,
}

impl Run {
    fn start(dir: &Path, policy: &Path) -> Run {
        let decisions = dir.join("decisions.jsonl");
        let stderr = dir.join("run.stderr");
        let proc = Guard::spawn(
            Command::new(BIN)
                .arg("run")
                .arg(policy)
                .arg("--decisions")
                .arg(&decisions)
                .env("COALMINE_STATE_DIR", dir.join("state"))
                .env("COALMINE_E2E_TOKEN", "e2e-secret")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&stderr).expect("stderr file")),
        );
        Run {
            proc,
            decisions,
            stderr,
        }
    }

    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.decisions)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn ticks(&self) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["kind"] == "tick")
            .collect()
    }

    /// Waits for a tick in which every metric had data.
    fn wait_for_data(&self, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            let with_data = self.ticks().iter().any(|t| {
                t["metrics"].as_array().is_some_and(|ms| {
                    ms.iter()
                        .all(|m| m["outcome"].is_string() && m["outcome"] != "nodata")
                })
            });
            if with_data {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no tick with data within {limit:?}\n{}", self.diagnostics());
    }

    /// Waits for the exit code.
    fn finish(&mut self, limit: Duration) -> i32 {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.proc.0.try_wait() {
                return status.code().unwrap_or(-1);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.proc.kill();
        panic!(
            "coalmine run did not finish within {limit:?}\n{}",
            self.diagnostics()
        );
    }

    fn diagnostics(&self) -> String {
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        format!("--- coalmine run stderr ---\n{err}")
    }

    fn final_record(&self) -> Value {
        self.records()
            .into_iter()
            .rfind(|r| r["kind"] == "final")
            .unwrap_or_else(|| panic!("no final record\n{}", self.diagnostics()))
    }
}

/// What happens to Prometheus during a rollout.
#[derive(Clone, Copy)]
enum Outage {
    None,
    /// Stopped once the rollout has had a tick with data.
    Stop,
    /// Stopped, then started again on the same port and storage after this long.
    Restart(Duration),
}

/// A finished rollout, with everything it ran against (kept alive until the checks end).
struct Finished {
    run: Run,
    code: i32,
    /// Ticks recorded before Prometheus was stopped.
    ticks_before_outage: usize,
    _env: (tempfile::TempDir, Services, Prometheus),
}

/// Runs one rollout of the generated policy against `scenario`; `None` to skip.
fn rollout(test: &str, scenario: &str, limits: &Limits, outage: Outage) -> Option<Finished> {
    rollout_on(test, scenario, &[], limits, outage)
}

/// [`rollout`] with extra `demo-services` arguments (e.g. its histogram's buckets).
fn rollout_on(
    test: &str,
    scenario: &str,
    extra: &[&str],
    limits: &Limits,
    outage: Outage,
) -> Option<Finished> {
    let bin = require_tool("prometheus", "prometheus")?;
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let proxy = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let services = start_services(scenario, extra, proxy);
    let mut prom = Prometheus::start(bin, &[services.baseline, services.canary]);
    let policy = policy(dir.path(), proxy, &services, &prom, limits);
    let ready = started.elapsed();
    let mut run = Run::start(dir.path(), &policy);
    let mut ticks_before_outage = usize::MAX;
    if !matches!(outage, Outage::None) {
        run.wait_for_data(Duration::from_secs(20));
        ticks_before_outage = run.ticks().len();
        prom.stop();
    }
    if let Outage::Restart(after) = outage {
        std::thread::sleep(after);
        prom.spawn();
    }
    let code = run.finish(Duration::from_secs(60));
    if std::env::var_os("COALMINE_E2E_SHOW").is_some() {
        eprintln!("{test}:\n{}", run.diagnostics());
    }
    if std::env::var_os("COALMINE_E2E_TIMES").is_some() {
        eprintln!(
            "{test}: ready after {ready:.1?}, finished after {:.1?}",
            started.elapsed()
        );
    }
    Some(Finished {
        run,
        code,
        ticks_before_outage,
        _env: (dir, services, prom),
    })
}

fn decisions_of(ticks: &[Value]) -> Vec<String> {
    ticks
        .iter()
        .map(|t| t["decision"]["action"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn healthy_canary_promotes_with_queries_recorded() {
    let Some(f) = rollout("healthy", "healthy", &LIMITS, Outage::None) else {
        return;
    };
    assert_eq!(f.code, 0, "expected a promotion\n{}", f.run.diagnostics());
    assert_eq!(f.run.final_record()["next_phase"], "promoted");
    let ticks = f.run.ticks();
    // The first tick whose fetch succeeded (a slow machine may time out once).
    let first = ticks
        .iter()
        .map(|t| &t["metrics"][0])
        .find(|m| m["error"].is_null())
        .expect("a tick with a successful fetch");
    let queries: Vec<&str> = first["queries"]
        .as_array()
        .expect("queries")
        .iter()
        .filter_map(|q| q["query"].as_str())
        .collect();
    assert_eq!(queries.len(), 4, "{first}");
    // The policy's increase() is evaluated as the counter's exact difference over the window
    // (and the record shows the query that was sent).
    let selector = r#"coalmine_demo_requests_total{job="demo",track="canary"}"#;
    assert!(
        queries[3].starts_with(&format!("sum(clamp_min(last_over_time({selector}["))
            && queries[3].contains(&format!("last_over_time({selector}[")),
        "{queries:?}"
    );
    // Data came from Prometheus: requests were counted per arm, as whole numbers of
    // requests (Prometheus's extrapolated increase() gives fractions, and more evidence than
    // there were requests: that once rolled this identical canary back at e = 17,151).
    let counts: Vec<f64> = ticks
        .iter()
        .filter_map(|t| t["requests"]["window"].as_array())
        .flatten()
        .filter_map(Value::as_f64)
        .collect();
    assert!(
        counts.iter().all(|c| c.fract() == 0.0),
        "fractional counts: {counts:?}"
    );
    let requests: f64 = ticks
        .iter()
        .filter_map(|t| t["requests"]["window"][1].as_f64())
        .sum();
    assert!(requests > 30.0, "canary requests {requests}");
}

fn assert_rolled_back_by(f: &Finished, metric: &str) {
    assert_eq!(f.code, 1, "expected a rollback\n{}", f.run.diagnostics());
    let reason = &f.run.final_record()["detail"];
    assert!(
        reason
            .as_str()
            .is_some_and(|r| r.contains(&format!("metric `{metric}` failed"))),
        "{reason}\n{}",
        f.run.diagnostics()
    );
}

#[test]
fn erroring_canary_rolls_back_naming_the_metric() {
    if let Some(f) = rollout("errors", "errors", &LIMITS, Outage::None) {
        assert_rolled_back_by(&f, "errors");
    }
}

/// A classic histogram doubling at each bound: it cannot place a bound at 1.1 × τ.
const COARSE: &[&str] = &[
    "--buckets",
    "0.005,0.01,0.02,0.04,0.08,0.16,0.32,0.64,1.28,2.56",
];

#[test]
fn coarse_buckets_a_canary_1_5x_slower_under_allowed_ratio_1_1_rolls_back() {
    // Issue 10: on ×2 buckets the canary's bound m·τ was rounded up to the next bucket, and
    // "up to 10 % slower" behaved like "up to 2× slower": this canary was promoted. It is
    // now judged at the largest margin the buckets represent (×1.0), and says so.
    let Some(f) = rollout_on("coarse-latency", "latency", COARSE, &LIMITS, Outage::None) else {
        return;
    };
    assert_rolled_back_by(&f, "latency");
    let said = f
        .run
        .ticks()
        .iter()
        .filter_map(|t| t["metrics"].as_array())
        .flatten()
        .filter(|m| m["metric"] == "latency")
        .any(|m| m.to_string().contains("finer than the histogram's buckets"));
    assert!(
        said,
        "the records say at which margin it judged\n{}",
        f.run.diagnostics()
    );
}

#[test]
fn coarse_buckets_a_canary_slower_in_its_tail_only_rolls_back() {
    // The slowest 5 % twice as slow, the median unchanged, on ×2 buckets: the all-buckets
    // test finds it where the body's quantiles say nothing.
    if let Some(f) = rollout_on("coarse-tail", "latency-tail", COARSE, &LIMITS, Outage::None) {
        assert_rolled_back_by(&f, "latency");
    }
}

#[test]
fn coarse_buckets_a_healthy_canary_promotes() {
    if let Some(f) = rollout_on("coarse-healthy", "healthy", COARSE, &LIMITS, Outage::None) {
        assert_eq!(f.code, 0, "expected a promotion\n{}", f.run.diagnostics());
    }
}

#[test]
fn slow_canary_rolls_back() {
    if let Some(f) = rollout("latency", "latency", &LIMITS, Outage::None) {
        assert_rolled_back_by(&f, "latency");
    }
}

#[test]
fn prometheus_stopped_holds_then_rolls_back_at_the_error_limit() {
    let Some(f) = rollout("stopped", "healthy", &LIMITS, Outage::Stop) else {
        return;
    };
    assert_eq!(f.code, 1, "expected a rollback\n{}", f.run.diagnostics());
    let after = f.run.ticks().split_off(f.ticks_before_outage);
    let actions = decisions_of(&after);
    assert!(
        actions.iter().all(|a| a == "hold" || a == "rollback"),
        "advanced or promoted without Prometheus: {actions:?}"
    );
    assert_eq!(actions.last().map(String::as_str), Some("rollback"));
    let last = after.last().expect("ticks after the stop");
    assert_eq!(
        last["decision"]["reason"]["cause"], "query-errors",
        "{last}"
    );
    assert_eq!(last["decision"]["reason"]["ticks"], 3);
    assert!(
        last["metrics"][0]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("unreachable: ")),
        "{last}"
    );
    assert!(
        !f.run
            .records()
            .iter()
            .any(|r| r["next_phase"] == "promoted"),
        "promoted while Prometheus was down"
    );
}

#[test]
fn prometheus_stopped_rolls_back_at_the_no_data_limit_when_errors_are_tolerated() {
    let limits = Limits {
        error_limit: 0,
        no_data_limit: "5s",
    };
    let Some(f) = rollout("no-data-limit", "healthy", &limits, Outage::Stop) else {
        return;
    };
    assert_eq!(f.code, 1, "expected a rollback\n{}", f.run.diagnostics());
    let fin = f.run.final_record();
    let detail = fin["detail"].as_str().unwrap_or("");
    assert!(
        detail.starts_with("no data for errors, latency, error-ceiling"),
        "{fin}"
    );
}

#[test]
fn prometheus_restarted_in_time_lets_the_rollout_finish() {
    let limits = Limits {
        error_limit: 5,
        no_data_limit: "20s",
    };
    let outage = Outage::Restart(Duration::from_millis(2500));
    let Some(f) = rollout("restarted", "healthy", &limits, outage) else {
        return;
    };
    assert_eq!(f.code, 0, "expected a promotion\n{}", f.run.diagnostics());
    let errored = f
        .run
        .ticks()
        .iter()
        .filter(|t| t["metrics"][0]["error"].is_string())
        .count();
    assert!(
        errored >= 1,
        "the outage was not seen\n{}",
        f.run.diagnostics()
    );
}

/// `coalmine validate --preflight PATH` with the policy's token set.
fn validate_preflight(path: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["validate", "--preflight"])
        .args(extra)
        .arg(path)
        .env("COALMINE_E2E_TOKEN", "e2e-secret")
        .output()
        .expect("run coalmine")
}

#[test]
fn validate_preflight_evaluates_every_query() {
    let Some(bin) = require_tool("prometheus", "prometheus") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let proxy = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let services = start_services("healthy", &[], proxy);
    let prom = Prometheus::start(bin, &[services.baseline, services.canary]);
    let path = policy(dir.path(), proxy, &services, &prom, &LIMITS);
    let out = validate_preflight(&path, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for m in ["errors", "latency", "error-ceiling"] {
        assert!(
            stdout.contains(&format!("metric `{m}`: queries ok")),
            "{stdout}"
        );
    }
    // The demo's buckets (…, 20, 25, 30, 40, 50, 75 ms, …) are at least 1.2× apart, finer
    // than the policy's allowed_ratio 1.1 nowhere: preflight says at which margin it judges.
    assert!(
        stdout.contains(
            "metric `latency`: allowed_ratio 1.1 is finer than the histogram's buckets (×"
        ) && stdout.contains("judged at ×1.0"),
        "{stdout}"
    );
    // With --json the same note is a warning (it was dropped before), and nothing else is
    // reported for a healthy setup.
    let out = validate_preflight(&path, &["--json"]);
    assert_eq!(out.status.code(), Some(0));
    let problems: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let problems = problems.as_array().expect("a list");
    assert!(
        problems.iter().any(|p| p["severity"] == "warning"
            && p["message"]
                .as_str()
                .is_some_and(|m| m.contains("allowed_ratio 1.1 is finer"))),
        "{problems:?}"
    );
    assert!(
        problems.iter().all(|p| p["severity"] != "error"),
        "{problems:?}"
    );
    // A PromQL syntax error shows Prometheus's message and the rendered query before any
    // traffic moves.
    let text = std::fs::read_to_string(&path).expect("policy");
    std::fs::write(&path, text.replace("sum by (le) (", "sum by (le) ((")).expect("policy");
    let out = validate_preflight(&path, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("metric `latency`: query rejected: Prometheus says bad_data")
            && stderr.contains("parse error")
            && stderr.contains("track=\"baseline\""),
        "{stderr}"
    );
}

/// Writes a private CA and a server certificate for 127.0.0.1 signed by it; returns the
/// paths of the CA certificate, the server certificate and its key.
fn private_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
        .expect("CA certificate");
    let key = KeyPair::generate().expect("server key");
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("server params")
        .signed_by(&key, &ca)
        .expect("server certificate");
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca.pem()).expect("write CA");
    std::fs::write(&paths.1, cert.pem()).expect("write certificate");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write key");
    (paths.0, paths.1, paths.2)
}

#[test]
fn tls_with_a_private_ca_file() {
    let Some(bin) = require_tool("prometheus", "prometheus") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, cert, key) = private_ca(dir.path());
    let web = dir.path().join("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
            cert.display(),
            key.display()
        ),
    )
    .expect("write web config");
    let proxy = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let services = start_services("healthy", &[], proxy);
    let mut prom = Prometheus::new(bin, &[services.baseline, services.canary]);
    prom.web_config = Some(web);
    prom.spawn();
    let plain = policy(dir.path(), proxy, &services, &prom, &LIMITS);
    assert!(prom.url().starts_with("https://"));
    let text = std::fs::read_to_string(&plain).expect("policy");
    let with_ca = dir.path().join("with-ca.toml");
    std::fs::write(
        &with_ca,
        text.replace(
            "timeout = \"3s\"",
            &format!("timeout = \"3s\"\nca_file = \"{}\"", ca.display()),
        ),
    )
    .expect("policy");
    // Prometheus needs a moment to listen; then the CA makes the difference.
    let start = Instant::now();
    let ok = loop {
        let out = validate_preflight(&with_ca, &[]);
        if out.status.success() || start.elapsed() > Duration::from_secs(20) {
            break out;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains("metric `errors`: queries ok"), "{stdout}");
    let out = validate_preflight(&plain, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("unreachable") && stderr.contains("certificate"),
        "{stderr}"
    );
}

#[test]
fn missing_token_is_a_setup_error() {
    // Needs no Prometheus: the token is read before anything is contacted.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("p.toml");
    let text = include_str!("../policies/prometheus-demo.toml")
        .replace(
            "timeout = \"5s\"",
            "timeout = \"5s\"\ntoken_env = \"COALMINE_E2E_NO_SUCH_TOKEN\"",
        )
        .replace("127.0.0.1:18080", "127.0.0.1:0");
    std::fs::write(&path, text).expect("write policy");
    let out = Command::new(BIN)
        .arg("run")
        .arg(&path)
        .env("COALMINE_STATE_DIR", path.with_extension("state"))
        .env_remove("COALMINE_E2E_NO_SUCH_TOKEN")
        .output()
        .expect("run coalmine");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("`COALMINE_E2E_NO_SUCH_TOKEN` is not set"),
        "{err}"
    );
    let out = Command::new(BIN)
        .args(["validate", "--preflight"])
        .arg(&path)
        .output()
        .expect("run coalmine");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("preflight: metrics"), "{err}");
}

#[test]
fn prometheus_down_at_start_moves_no_traffic() {
    // Needs no Prometheus: nothing listens on the policy's URL. The upstreams accept
    // connections (the provider's check passes), so it is the source's check that fails.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("p.toml");
    // Reserved but refusing: a port from `free_port` could be taken by another test's
    // Prometheus before this run connects (seen once as a flaky failure).
    let (_reserved, nothing) = refusing_addr();
    let baseline = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let canary = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let text = include_str!("../policies/prometheus-demo.toml")
        .replace("http://127.0.0.1:9090", &format!("http://{nothing}"))
        .replace("127.0.0.1:18080", "127.0.0.1:0")
        .replace(
            "127.0.0.1:18081",
            &baseline.local_addr().unwrap().to_string(),
        )
        .replace("127.0.0.1:18082", &canary.local_addr().unwrap().to_string());
    std::fs::write(&path, text).expect("write policy");
    let decisions = dir.path().join("d.jsonl");
    let out = Command::new(BIN)
        .arg("run")
        .arg(&path)
        .env("COALMINE_STATE_DIR", path.with_extension("state"))
        .arg("--decisions")
        .arg(&decisions)
        .output()
        .expect("run coalmine");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("metrics source not ready, no traffic was moved")
            && err.contains("unreachable"),
        "{err}"
    );
    // The failed check is on record, and no traffic was moved.
    let log = std::fs::read_to_string(&decisions).expect("the checks are recorded");
    assert!(!log.contains("weight-applied"), "{log}");
    assert!(log.contains("\"event\":\"not-started\""), "{log}");
}

// ---- Backtests on Prometheus's history -------------------------------------------------
//
// The history is written beforehand, with timestamps a few hours in the past, as OpenMetrics
// text turned into TSDB blocks by `promtool tsdb create-blocks-from openmetrics`; Prometheus
// then serves it from its data directory without scraping anything. No waiting in real
// time: 40 minutes of history are backtested in a second or two.

/// Seconds between samples of the written history.
const SAMPLE_S: u64 = 5;
/// The policy's analysis_interval.
const WINDOW_S: u64 = 30;
/// Windows in the history.
const HISTORY_WINDOWS: u64 = 80;
/// The bad canary's errors go up 5× from this window on (0-based).
const REGRESSION_WINDOW: u64 = 20;
/// Per window: baseline requests and errors, canary requests and errors (good and bad).
const BASELINE: [u64; 2] = [5400, 54];
const CANARY: [u64; 2] = [600, 6];
const CANARY_BAD_ERRORS: u64 = 30;

/// The history as OpenMetrics text: `hist_requests_total{track, code}` counters sampled every
/// 5 s from `base` (Unix seconds). Requests grow every sample, errors every other one, so
/// each 30 s window on the grid holds exactly the per-window counts above.
fn history_text(base: u64, bad: bool) -> String {
    use std::fmt::Write as _;
    let samples = HISTORY_WINDOWS * WINDOW_S / SAMPLE_S;
    let per_sample = |per_window: u64, every: u64| per_window * every * SAMPLE_S / WINDOW_S;
    let mut out = String::from("# TYPE hist_requests counter\n");
    for (track, [requests, errors]) in [("baseline", BASELINE), ("canary", CANARY)] {
        let (mut ok, mut err) = (0u64, 0u64);
        let mut ok_lines = String::new();
        let mut err_lines = String::new();
        for i in 0..=samples {
            let t = base + i * SAMPLE_S;
            if i > 0 {
                let window = (i - 1) * SAMPLE_S / WINDOW_S;
                let errs = if bad && track == "canary" && window >= REGRESSION_WINDOW {
                    CANARY_BAD_ERRORS
                } else {
                    errors
                };
                let e = if i % 2 == 0 { per_sample(errs, 2) } else { 0 };
                err += e;
                ok += per_sample(requests, 1) - e;
            }
            let _ = writeln!(
                ok_lines,
                "hist_requests_total{{track=\"{track}\",code=\"200\"}} {ok} {t}"
            );
            let _ = writeln!(
                err_lines,
                "hist_requests_total{{track=\"{track}\",code=\"500\"}} {err} {t}"
            );
        }
        out.push_str(&ok_lines);
        out.push_str(&err_lines);
    }
    out.push_str("# EOF\n");
    out
}

/// Prometheus serving the written history (no scraping).
fn history_prometheus(bin: PathBuf, text: &str) -> Prometheus {
    let mut p = Prometheus::new(bin, &[]);
    let d = p.dir.path().to_path_buf();
    std::fs::write(
        d.join("prometheus.yml"),
        "global:\n  scrape_interval: 15s\n",
    )
    .expect("write prometheus.yml");
    std::fs::write(d.join("history.om"), text).expect("write history");
    let promtool = require_tool("promtool", "prometheus").expect("promtool comes with prometheus");
    let out = Command::new(promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(d.join("history.om"))
        .arg(d.join("data"))
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    p.spawn();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Some((200, _)) = http_get(p.addr, "/-/ready") {
            return p;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(d.join("prometheus.log")).unwrap_or_default();
    panic!("prometheus on {} is not ready; log:\n{log}", p.addr);
}

const HISTORY_POLICY: &str = r#"name = "history"
alpha = 0.01

[rollout]
steps = [10, 50, 100]
step_duration = "10m"
analysis_interval = "30s"
min_requests = 1000
deadline = "1h"

[traffic]
type = "proxy"
listen = "127.0.0.1:0"
baseline = "http://127.0.0.1:9"
canary = "http://127.0.0.1:9"

[metrics]
type = "prometheus"
url = "http://127.0.0.1:9"

[[metric]]
name = "errors"
events = 'sum(increase(hist_requests_total{track="{{arm}}",code="500"}[{{window}}]))'
trials = 'sum(increase(hist_requests_total{track="{{arm}}"}[{{window}}]))'
"#;

/// The tick (1-based) at which the policy's error judge first fails on the written counts,
/// worked out here from the judge alone: the backtest must roll back exactly there.
fn predicted_failure() -> Option<u64> {
    use coalmine::analysis::{Counts, MetricJudge, Observation, Outcome, Segment};
    let policy = coalmine::policy::parse(HISTORY_POLICY, "history.toml").expect("valid policy");
    let mut judge = MetricJudge::new(&policy.metrics[0].judge);
    let counts = |[trials, events]: [u64; 2]| {
        Observation::Counts(Counts {
            events: events as f64,
            trials: trials as f64,
        })
    };
    (0..HISTORY_WINDOWS).find_map(|k| {
        let canary = if k >= REGRESSION_WINDOW {
            [CANARY[0], CANARY_BAD_ERRORS]
        } else {
            CANARY
        };
        let v = judge.observe(
            "errors",
            &Segment {
                share: 0.1,
                baseline: counts(BASELINE),
                canary: counts(canary),
            },
        );
        (v.outcome == Outcome::Fail).then_some(k + 1)
    })
}

/// `coalmine backtest --prometheus` over the whole history: (exit code, JSON or stderr).
fn backtest_history(prom: &Prometheus, policy: &Path, base: u64, share: &str) -> (i32, Value) {
    let rfc = |t: u64| {
        humantime::format_rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(t)).to_string()
    };
    let out = Command::new(BIN)
        .args(["backtest"])
        .arg(policy)
        .args(["--prometheus", &prom.url()])
        .args(["--from", &rfc(base)])
        .args(["--to", &rfc(base + HISTORY_WINDOWS * WINDOW_S)])
        .args(["--share", share, "--json"])
        .output()
        .expect("run coalmine");
    let code = out.status.code().unwrap_or(-1);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(&stdout).unwrap_or_else(|_| {
        Value::String(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
    });
    (code, v)
}

/// The counts the judges were given at a tick: `[[baseline events, trials], [canary ...]]`
/// and the share.
fn seen(tick: &Value) -> ([[f64; 2]; 2], f64) {
    let seg = &tick["data"]["errors"]["observed"][0];
    let arm = |a: &str| {
        let c = &seg[a]["counts"];
        [c[0].as_f64().unwrap(), c[1].as_f64().unwrap()]
    };
    (
        [arm("baseline"), arm("canary")],
        seg["share"].as_f64().unwrap(),
    )
}

/// History starting a few hours ago, on the window grid.
fn history_base() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    (now - 4 * 3600) / WINDOW_S * WINDOW_S
}

#[test]
fn backtest_on_history_rolls_back_a_5x_error_regression_at_the_predicted_tick() {
    let Some(bin) = require_tool("prometheus", "prometheus") else {
        return;
    };
    let base = history_base();
    let prom = history_prometheus(bin, &history_text(base, true));
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("history.toml");
    std::fs::write(&policy, HISTORY_POLICY).expect("write policy");
    let (code, b) = backtest_history(&prom, &policy, base, "10");
    assert_eq!(code, 0, "{b}");
    let ticks = b["ticks"].as_array().unwrap();
    let sim = &b["simulated"];
    assert_eq!(sim["outcome"], "rolled-back", "{sim:#}");
    let decided = sim["decided_tick"].as_u64().unwrap();
    let predicted = predicted_failure().expect("the judge fails on the written counts");
    assert!(
        predicted > REGRESSION_WINDOW && predicted <= REGRESSION_WINDOW + 5,
        "predicted {predicted}"
    );
    assert_eq!(decided, predicted, "{sim:#}");
    assert_eq!(
        sim["seconds"].as_f64().unwrap(),
        (decided * WINDOW_S) as f64
    );
    assert_eq!(
        sim["requests"],
        serde_json::json!([(BASELINE[0] * decided) as f64, (CANARY[0] * decided) as f64])
    );
    // The judges saw exactly the differences written, window by window, at the given share.
    for t in &ticks[..decided as usize] {
        let k = t["tick"].as_u64().unwrap() - 1;
        let canary_errors = if k >= REGRESSION_WINDOW {
            CANARY_BAD_ERRORS
        } else {
            CANARY[1]
        };
        let want = [
            [BASELINE[1] as f64, BASELINE[0] as f64],
            [canary_errors as f64, CANARY[0] as f64],
        ];
        assert_eq!(seen(t), (want, 0.1), "tick {}", k + 1);
    }
    // Nothing is simulated after the decision.
    assert!(
        ticks[decided as usize..]
            .iter()
            .all(|t| t["simulated"].is_null())
    );
    assert!(b.get("recorded").is_none());

    // The text form says the same.
    let rfc = |t: u64| {
        humantime::format_rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(t)).to_string()
    };
    let out = Command::new(BIN)
        .arg("backtest")
        .arg(&policy)
        .args(["--prometheus", &prom.url(), "--from", &rfc(base)])
        .args([
            "--to",
            &rfc(base + HISTORY_WINDOWS * WINDOW_S),
            "--share",
            "10%",
        ])
        .output()
        .expect("run coalmine");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("rolled-back"), "{text}");
    assert!(text.contains(&format!("tick {decided}, after")), "{text}");
}

#[test]
fn backtest_on_history_promotes_an_identical_canary_with_fixed_or_observed_share() {
    let Some(bin) = require_tool("prometheus", "prometheus") else {
        return;
    };
    let base = history_base();
    let prom = history_prometheus(bin, &history_text(base, false));
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("history.toml");
    std::fs::write(&policy, HISTORY_POLICY).expect("write policy");
    for share in ["10", "observed"] {
        let (code, b) = backtest_history(&prom, &policy, base, share);
        assert_eq!(code, 0, "{b}");
        let sim = &b["simulated"];
        assert_eq!(sim["outcome"], "promoted", "--share {share}: {sim:#}");
        // Two steps of 10 minutes: promoted no sooner than 20 minutes in.
        let decided = sim["decided_tick"].as_u64().unwrap();
        assert!(decided * WINDOW_S >= 1200, "decided at tick {decided}");
        let ticks = b["ticks"].as_array().unwrap();
        let want = [
            [BASELINE[1] as f64, BASELINE[0] as f64],
            [CANARY[1] as f64, CANARY[0] as f64],
        ];
        for t in &ticks[..decided as usize] {
            assert_eq!(seen(t).0, want, "--share {share}, tick {}", t["tick"]);
        }
        if share == "observed" {
            // The first window has no earlier requests to take the share from: discarded.
            let first = &ticks[0]["simulated"];
            assert!(
                first["reason"]
                    .as_str()
                    .unwrap()
                    .contains("share not known yet"),
                "{first:#}"
            );
            assert!(first["metrics"].as_array().unwrap().is_empty(), "{first:#}");
            // Then 600 of 6000 requests: exactly 10 %.
            assert_eq!(seen(&ticks[1]).1, 0.1);
        } else {
            assert_eq!(seen(&ticks[0]).1, 0.1);
        }
    }
}
