//! Durable rollouts under SIGKILL (issue 11): `coalmine run` with the `exec` provider (a
//! script writing the weight to a file and logging every call) and a deterministic fake
//! Prometheus in the test process, killed at seeded random moments and restarted until the
//! rollout finishes. Asserts: the weight in force at the end is 0 or 100; the outcome is
//! the uninterrupted run's; no step is repeated (the call log); the decision log parses.

// Real processes on the wall clock: plain blocking test code.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support::coalmine;

/// A fake Prometheus answering every instant query with a fixed value: 1 for `vector(1)`
/// (the source's preflight), `requests` for request counts, and each arm's error count.
fn fake_prometheus(dir: PathBuf, canary_rate: f64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let dir = dir.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then the body by Content-Length.
                let body_len = loop {
                    let Ok(n) = s.read(&mut chunk) else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break end + 4 + len;
                    }
                };
                while buf.len() < body_len {
                    let Ok(n) = s.read(&mut chunk) else { return };
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let req = String::from_utf8_lossy(&buf);
                // Requests split as the weight in force says; errors at each arm's rate.
                let w: f64 = weight(&dir).parse::<f64>().unwrap_or(0.0) / 100.0;
                let canary = req.contains("canary");
                let requests = 1000.0 * if canary { w } else { 1.0 - w };
                let value = if req.contains("vector%281%29") || req.contains("vector(1)") {
                    1.0
                } else if req.contains("requests") {
                    requests
                } else if canary {
                    // A canary that turns bad at the second step (50 %): the rollout is
                    // killed in the first step, the second, and during the rollback.
                    let rate = if w >= 0.5 { canary_rate } else { 0.01 };
                    (requests * rate).round()
                } else {
                    (requests * 0.01).round()
                };
                let body = format!(
                    r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[1015,"{value}"]}}]}}}}"#
                );
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    addr
}

struct Setup {
    dir: tempfile::TempDir,
    policy: PathBuf,
}

fn setup(canary_rate: f64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let prom = fake_prometheus(dir.path().to_path_buf(), canary_rate);
    let d = dir.path();
    std::fs::write(
        d.join("set.sh"),
        format!(
            "#!/bin/sh\necho \"$1\" > {0}/w.tmp && mv {0}/w.tmp {0}/weight && echo \"$1\" >> {0}/calls\n",
            d.display()
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("get.sh"),
        format!(
            "#!/bin/sh\ncat {0}/weight 2>/dev/null || echo 0\n",
            d.display()
        ),
    )
    .unwrap();
    let policy = d.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            r#"name = "crash"
[rollout]
steps = [10, 50, 100]
step_duration = "3s"
analysis_interval = "100ms"
min_requests = 100
deadline = "10m"

[traffic]
type = "exec"
command = ["/bin/sh", "{d}/set.sh", "{{{{percent}}}}"]
read_command = ["/bin/sh", "{d}/get.sh"]

[metrics]
type = "prometheus"
url = "http://{prom}"

[[metric]]
name = "errors"
events = 'errors_total{{arm="{{{{arm}}}}"}}'
trials = 'requests_total{{arm="{{{{arm}}}}"}}'
"#,
            d = d.display()
        ),
    )
    .unwrap();
    Setup { dir, policy }
}

fn start(s: &Setup) -> Child {
    coalmine()
        .env("COALMINE_STATE_DIR", s.dir.path().join("state"))
        .args(["run", "--quiet", "--json", "--decisions"])
        .arg(s.dir.path().join("decisions.jsonl"))
        .arg(&s.policy)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn weight(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("weight"))
        .unwrap_or_else(|_| "0".into())
        .trim()
        .to_string()
}

fn stored_phase(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("state/rollouts/crash.json")).unwrap_or_default();
    let body = text.rsplit_once("\n# sha256").map_or("", |(b, _)| b);
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["phase"]["phase"].as_str().map(str::to_string))
        .unwrap_or_else(|| "none".into())
}

/// The outcome of the run's JSON summary.
fn outcome(out: &std::process::Output) -> String {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    v["outcome"].as_str().unwrap_or("?").to_string()
}

/// A tiny seeded generator (xorshift64*): the kill moments are reproducible.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Runs one rollout to its end while killing it at random: returns (outcome, kills, the
/// phases the record was in at the kills).
fn killed_rollout(
    canary_rate: f64,
    rng: &mut Rng,
    kills_wanted: usize,
) -> (String, usize, BTreeMap<String, usize>, Setup) {
    let s = setup(canary_rate);
    let mut kills = 0;
    let mut phases = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        assert!(
            Instant::now() < deadline,
            "the rollout did not finish in time"
        );
        let mut child = start(&s);
        if kills < kills_wanted {
            let wait = Duration::from_millis(30 + rng.below(400));
            let t = Instant::now();
            while t.elapsed() < wait && child.try_wait().unwrap().is_none() {
                std::thread::sleep(Duration::from_millis(5));
            }
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL
                let _ = child.wait();
                kills += 1;
                *phases.entry(stored_phase(s.dir.path())).or_insert(0) += 1;
                let w = weight(s.dir.path());
                assert!(
                    ["0", "10", "50", "100"].contains(&w.as_str()),
                    "weight {w} in force"
                );
                continue;
            }
        }
        let out = child.wait_with_output().unwrap();
        let code = out.status.code();
        if code == Some(0) || code == Some(1) {
            if out.stdout.is_empty() {
                // Killed after the record's final write: the rerun says it is finished.
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(err.contains("already finished"), "{err}");
                let o = if code == Some(0) {
                    "promoted"
                } else {
                    "rolled-back"
                };
                return (o.to_string(), kills, phases, s);
            }
            return (outcome(&out), kills, phases, s);
        }
        panic!(
            "run exited {code:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The call log after removing repeats of the same weight in a row (a re-apply of the weight
/// being set when the crash came is idempotent): it must only go up, then maybe to 0.
fn assert_no_step_repeated(dir: &Path) -> Vec<String> {
    let calls = std::fs::read_to_string(dir.join("calls")).unwrap_or_default();
    let mut seq: Vec<String> = Vec::new();
    for c in calls.lines() {
        if seq.last().map(String::as_str) != Some(c) {
            seq.push(c.to_string());
        }
    }
    let nums: Vec<f64> = seq.iter().map(|c| c.parse().unwrap()).collect();
    let rising = nums.iter().take_while(|w| **w > 0.0).count();
    assert!(
        nums[..rising].windows(2).all(|w| w[0] < w[1]),
        "a step was repeated: {seq:?}"
    );
    assert!(
        nums[rising..].iter().all(|w| *w == 0.0) && nums.len() - rising <= 1,
        "after the rollback nothing else: {seq:?}"
    );
    seq
}

fn assert_log_parses(dir: &Path) -> usize {
    let text = std::fs::read_to_string(dir.join("decisions.jsonl")).unwrap();
    let mut n = 0;
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["rollout_id"].is_string(), "{line}");
        n += 1;
    }
    n
}

#[test]
fn sigkill_at_random_moments_never_strands_traffic_nor_repeats_a_step() {
    let mut rng = Rng(0x00c0_a1a1_11e5_eed5);
    let mut total_kills = 0;
    let mut all_phases: BTreeMap<String, usize> = BTreeMap::new();
    for (errors, expected) in [(0.01, "promoted"), (0.2, "rolled-back")] {
        // The uninterrupted run of the same inputs.
        let (clean, _, _, s) = killed_rollout(errors, &mut rng, 0);
        let log = std::fs::read_to_string(s.dir.path().join("decisions.jsonl")).unwrap();
        assert_eq!(
            clean,
            expected,
            "{}",
            log.lines().last().unwrap_or_default()
        );
        assert_no_step_repeated(s.dir.path());
        // The same inputs, killed at random.
        let (killed, kills, phases, s) = killed_rollout(errors, &mut rng, 60);
        assert_eq!(killed, clean, "the outcome of an uninterrupted run");
        let w = weight(s.dir.path());
        assert!(w == "0" || w == "100", "weight {w} in force at the end");
        assert_eq!(w == "100", clean == "promoted");
        let seq = assert_no_step_repeated(s.dir.path());
        let records = assert_log_parses(s.dir.path());
        let resumed = std::fs::read_to_string(s.dir.path().join("decisions.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| l.contains(r#""kind":"resumed""#))
            .count();
        eprintln!(
            "{expected}: {kills} kills, phases at the kill {phases:?}, weights set {seq:?}, {records} records, {resumed} resumed"
        );
        total_kills += kills;
        for (p, n) in phases {
            *all_phases.entry(p).or_insert(0) += n;
        }
    }
    eprintln!("total: {total_kills} kills across phases {all_phases:?}");
    assert!(total_kills >= 50, "{total_kills} kills");
}
