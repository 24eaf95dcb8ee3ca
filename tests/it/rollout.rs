//! Rollouts of the built binary against real processes (issue 10): the baseline killed
//! mid-rollout, both arms dead, a canary that is not ready. The services are
//! `coalmine demo-services` processes, killed with SIGKILL (their connections die with
//! them); load comes from another `demo-services` process sending to the rollout's proxy.

// Real processes on the wall clock: plain blocking test code.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Guard, free_port};
use crate::support::{CountingBackend, coalmine, records};

const BIN: &str = env!("CARGO_BIN_EXE_coalmine");

/// One `coalmine demo-services` process: its baseline and canary addresses.
struct Services {
    proc: Guard,
    baseline: SocketAddr,
    canary: SocketAddr,
}

fn services(load_to: Option<SocketAddr>) -> Services {
    let rps = if load_to.is_some() { "300" } else { "0" };
    let load = load_to.map_or_else(|| "127.0.0.1:9".to_string(), |a| a.to_string());
    let mut proc = Guard::spawn(
        Command::new(BIN)
            .args(["demo-services", "--scenario", "healthy"])
            .args(["--baseline", "127.0.0.1:0", "--canary", "127.0.0.1:0"])
            .args(["--load-to", &load, "--rps", rps])
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let stdout = proc.0.stdout.take().expect("piped stdout");
    // Keep reading: a closed pipe would kill the process at its next line.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
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
        proc,
        baseline,
        canary,
    }
}

/// A policy for the built-in proxy on `listen`, judged by the builtin source; `metrics` are
/// the `[[metric]]` tables.
fn policy(
    dir: &Path,
    listen: SocketAddr,
    baseline: SocketAddr,
    canary: SocketAddr,
    rollout: &str,
    metrics: &str,
) -> PathBuf {
    let text = format!(
        "name = \"e2e\"\n[rollout]\n{rollout}\n[traffic]\ntype = \"proxy\"\nlisten = \"{listen}\"\n\
         baseline = \"http://{baseline}\"\ncanary = \"http://{canary}\"\nreadiness_path = \"/healthz\"\n{metrics}"
    );
    let path = dir.join("policy.toml");
    std::fs::write(&path, text).unwrap();
    path
}

const SHORT: &str = "steps = [5, 25, 100]\nstep_duration = \"3s\"\nanalysis_interval = \"500ms\"\n\
                     min_requests = 20\ndeadline = \"12s\"";
const ERRORS: &str = "[[metric]]\nname = \"error-rate\"\nbuiltin = \"errors\"\n";

fn start_run(policy: &Path, log: &Path) -> Child {
    coalmine()
        .args(["run", "--json", "--quiet", "--decisions"])
        .arg(log)
        .arg(policy)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the decision log holds `n` tick records (panics after 20 s).
fn wait_ticks(log: &Path, n: usize, run: &mut Child) {
    let start = Instant::now();
    while records(log).iter().filter(|r| r["kind"] == "tick").count() < n {
        assert!(run.try_wait().unwrap().is_none(), "the rollout ended early");
        assert!(start.elapsed() < Duration::from_secs(20), "no ticks");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn finish(run: Child) -> (i32, Value, String) {
    let out = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    (out.status.code().unwrap_or(-1), json, stderr)
}

/// The rollout never promoted, never advanced past `max_weight`, and held on the baseline.
fn assert_never_promoted(recs: &[Value], max_weight: f64) {
    for r in recs {
        assert_ne!(r["decision"]["action"], "promote", "{r}");
        assert!(r["weight"].as_f64().unwrap() <= max_weight, "{r}");
    }
    assert!(
        recs.iter().any(|r| r["event"] == "baseline-unhealthy"),
        "the operator is told: {recs:#?}"
    );
}

#[test]
fn a_baseline_killed_mid_rollout_never_promotes() {
    let dir = tempfile::tempdir().unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut base = services(None);
    let canary = services(Some(listen));
    let p = policy(
        dir.path(),
        listen,
        base.baseline,
        canary.canary,
        SHORT,
        ERRORS,
    );
    let log = dir.path().join("d.jsonl");
    let mut run = start_run(&p, &log);
    wait_ticks(&log, 2, &mut run);
    base.proc.kill();
    let (code, json, stderr) = finish(run);
    assert_eq!(code, 1, "{json}\n{stderr}");
    assert_eq!(json["reason"]["cause"], "deadline", "{json}");
    let waiting = json["reason"]["waiting"].as_str().unwrap_or_default();
    assert!(waiting.contains("baseline unhealthy"), "{json}");
    assert_eq!(json["final_weight"], 0.0);
    assert_never_promoted(&records(&log), 5.0);
}

#[test]
fn both_arms_dead_never_promotes() {
    let dir = tempfile::tempdir().unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut base = services(None);
    let mut can = services(None);
    let _load = services(Some(listen));
    // Comparisons only, no absolute guard: both arms failing alike must still hold.
    let metrics = format!(
        "{ERRORS}[[metric]]\nname = \"latency\"\nbuiltin = \"latency\"\nallowed_ratio = 1.1\n"
    );
    let p = policy(
        dir.path(),
        listen,
        base.baseline,
        can.canary,
        SHORT,
        &metrics,
    );
    let log = dir.path().join("d.jsonl");
    let mut run = start_run(&p, &log);
    wait_ticks(&log, 2, &mut run);
    base.proc.kill();
    can.proc.kill();
    let (code, json, stderr) = finish(run);
    assert_eq!(code, 1, "{json}\n{stderr}");
    assert_eq!(json["reason"]["cause"], "deadline", "{json}");
    assert_never_promoted(&records(&log), 5.0);
}

#[test]
fn a_canary_that_is_not_ready_receives_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let base = services(None);
    let _load = services(Some(listen));
    let canary = CountingBackend::start(false);
    let p = policy(
        dir.path(),
        listen,
        base.baseline,
        canary.addr,
        SHORT,
        ERRORS,
    );
    let log = dir.path().join("d.jsonl");
    let run = start_run(&p, &log);
    let (code, json, stderr) = finish(run);
    assert_eq!(code, 3, "{json}\n{stderr}");
    assert_eq!(json["outcome"], "not-started", "{json}");
    assert!(
        stderr.contains("canary not ready, no traffic was moved"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("GET http://{}/healthz", canary.addr))
            && stderr.contains("503 Service Unavailable"),
        "what was tried: {stderr}"
    );
    assert_eq!(canary.probes.load(Ordering::SeqCst), 3, "three attempts");
    assert_eq!(
        canary.requests.load(Ordering::SeqCst),
        0,
        "no request reached the canary"
    );
    let recs = records(&log);
    assert!(
        recs.iter().all(|r| r["event"] != "weight-applied"),
        "{recs:?}"
    );
    // The control: the same canary, ready, does receive traffic.
    canary.healthy.store(true, Ordering::SeqCst);
    let quick = "steps = [50, 100]\nstep_duration = \"1s\"\nanalysis_interval = \"250ms\"\n\
                 min_requests = 5\ndeadline = \"8s\"";
    let p = policy(
        dir.path(),
        listen,
        base.baseline,
        canary.addr,
        quick,
        ERRORS,
    );
    let (_, json, stderr) = finish(start_run(&p, &dir.path().join("d2.jsonl")));
    assert_ne!(json["outcome"], "not-started", "{json}\n{stderr}");
    assert!(canary.requests.load(Ordering::SeqCst) > 0, "{json}");
}
