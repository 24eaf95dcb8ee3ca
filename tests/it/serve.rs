//! `coalmine serve` through the real binary (issue 12): many rollouts in one daemon with
//! the exec provider and fake Prometheus of the durable rig, broken ones beside healthy
//! ones; `apply`, `list` and the verbs against the daemon; SIGTERM and resume; `/metrics`
//! checked by the real `promtool`; `--watch`.

// Real processes on the wall clock: plain blocking test code.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::durable::rig::{Opts, Rig, out};
use crate::status::http_body;
use crate::support::coalmine;

/// A running `coalmine serve` on a free loopback port, its stderr collected.
struct Serve {
    child: Child,
    addr: SocketAddr,
    store: PathBuf,
    stderr: Arc<Mutex<String>>,
}

/// Collects a `coalmine serve`'s stderr (in the background) and waits for the control
/// API's address it prints.
pub(crate) fn printed_address(child: &mut Child) -> (String, Arc<Mutex<String>>) {
    let stderr = Arc::new(Mutex::new(String::new()));
    let lines = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let acc = stderr.clone();
    std::thread::spawn(move || {
        for line in lines.lines().map_while(Result::ok) {
            if let Some(a) = line.split("control API on http://").nth(1) {
                let _ = tx.send(a.trim().to_string());
            }
            let mut s = acc.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("no address printed: {}", stderr.lock().unwrap()));
    (addr, stderr)
}

impl Serve {
    fn start(store: &Path, extra: &[&str]) -> Serve {
        let mut child = coalmine()
            .env("COALMINE_STATE_DIR", store)
            .env_remove("COALMINE_TOKEN")
            .env_remove("COALMINE_SERVER")
            .args(["serve", "--listen", "127.0.0.1:0", "--store"])
            .arg(store)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (addr, stderr) = printed_address(&mut child);
        Serve {
            child,
            addr: addr.parse().unwrap(),
            store: store.to_path_buf(),
            stderr,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client command talking to this daemon, with the store's generated token.
    fn cli(&self, args: &[&str]) -> Output {
        coalmine()
            .env("COALMINE_STATE_DIR", &self.store)
            .env("COALMINE_SERVER", self.url())
            .env_remove("COALMINE_TOKEN")
            .args(args)
            .output()
            .unwrap()
    }

    fn apply(&self, policy: &Path) {
        let o = self.cli(&["apply", policy.to_str().unwrap()]);
        let (code, stdout, err) = out(&o);
        assert_eq!(code, 0, "apply {}: {stdout} {err}", policy.display());
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The stored record of `name`.
    fn stored(&self, name: &str) -> Option<serde_json::Value> {
        let text =
            std::fs::read_to_string(self.store.join(format!("rollouts/{name}.json"))).ok()?;
        let body = text.rsplit_once("\n# sha256").map(|(b, _)| b)?;
        serde_json::from_str(body).ok()
    }

    /// Waits (at most `secs`) until `pred` holds of `name`'s record.
    fn wait(
        &mut self,
        name: &str,
        secs: u64,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) {
        let t = Instant::now();
        loop {
            if self.stored(name).is_some_and(|v| pred(&v)) {
                return;
            }
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "the daemon ended before {name} {what}: {}",
                self.stderr()
            );
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "{name} never {what}: {:?}\n{}",
                self.stored(name),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every tick record of `name`'s decision log.
    fn ticks(&self, name: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.store.join(format!("decisions/{name}.jsonl")))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["kind"] == "tick")
            .collect()
    }

    /// SIGTERM, then the exit code (at most 30 s).
    fn terminate(mut self) -> (i32, String) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                return (s.code().unwrap_or(-1), self.stderr());
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the daemon did not stop on SIGTERM: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn phase(v: &serde_json::Value) -> &str {
    v["phase"]["phase"].as_str().unwrap_or("")
}

fn finished(v: &serde_json::Value) -> bool {
    matches!(
        phase(v),
        "promoted" | "rolled-back" | "not-started" | "failed"
    )
}

/// A fake Prometheus that answers every query after `delay` (longer than any interval).
fn slow_prometheus(delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = std::io::Read::read(&mut s, &mut buf);
                std::thread::sleep(delay);
                let body = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1015,"1"]}]}}"#;
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

fn fast(name: &str, canary_rate: f64) -> Rig {
    Rig::new(
        name,
        &Opts {
            step_duration: "1s",
            canary_rate,
            ..Opts::default()
        },
    )
}

fn held(name: &str) -> Rig {
    Rig::new(
        name,
        &Opts {
            step_duration: "60s",
            ..Opts::default()
        },
    )
}

#[test]
fn broken_rollouts_never_stall_or_crash_the_others() {
    let store = tempfile::tempdir().unwrap();
    let mut d = Serve::start(store.path(), &[]);
    // Five healthy rollouts: four good canaries, one that errs at 30 % from its 50 % step.
    let healthy: Vec<(String, Rig, &str)> = (1..=5)
        .map(|i| {
            let name = format!("healthy-{i}");
            let (rate, outcome) = if i == 5 {
                (0.3, "rolled-back")
            } else {
                (0.01, "promoted")
            };
            let rig = fast(&name, rate);
            (name, rig, outcome)
        })
        .collect();
    // Four broken ones: a provider that always fails, a metrics source slower than the
    // interval (3 s per query, the interval is 100 ms), a pre-rollout hook that hangs, one
    // that crashes (SIGSEGV).
    let failing = fast("broken-provider", 0.01);
    std::fs::write(
        failing.path("set.sh"),
        "#!/bin/sh\necho refused >&2\nexit 1\n",
    )
    .unwrap();
    let slow = fast("broken-slow-source", 0.01);
    let prom = slow_prometheus(Duration::from_secs(3));
    let text = std::fs::read_to_string(&slow.policy).unwrap();
    let text = text
        .lines()
        .map(|l| {
            if l.starts_with("url = ") {
                format!("url = \"http://{prom}\"")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&slow.policy, text).unwrap();
    let hanging = Rig::new(
        "broken-hanging-hook",
        &Opts {
            step_duration: "1s",
            hook_ms: Some(40_000),
            ..Opts::default()
        },
    );
    let crashing = Rig::new(
        "broken-crashing-hook",
        &Opts {
            step_duration: "1s",
            hook_ms: Some(10),
            ..Opts::default()
        },
    );
    std::fs::write(crashing.path("hook.sh"), "#!/bin/sh\nkill -SEGV $$\n").unwrap();
    for rig in [&failing, &slow, &hanging, &crashing] {
        d.apply(&rig.policy);
    }
    for (_, rig, _) in &healthy {
        d.apply(&rig.policy);
    }
    for (name, _, _) in &healthy {
        d.wait(name, 60, "finished", finished);
    }
    for (name, rig, outcome) in &healthy {
        let v = d.stored(name).unwrap();
        assert_eq!(phase(&v), *outcome, "{name}: {v}");
        let expected = if *outcome == "promoted" { "100" } else { "0" };
        assert_eq!(rig.weight(), expected, "{name}");
        // Each tick kept its interval (100 ms): no gap near the slow source's 3 s, or a
        // hang, between two consecutive analysis ticks (a loose bound: 1.5 s).
        let ticks = d.ticks(name);
        assert!(ticks.len() >= 5, "{name}: {} ticks", ticks.len());
        let gaps: Vec<f64> = ticks
            .windows(2)
            .map(|w| w[1]["elapsed_s"].as_f64().unwrap() - w[0]["elapsed_s"].as_f64().unwrap())
            .collect();
        let worst = gaps.iter().copied().fold(0.0, f64::max);
        assert!(
            worst < 1.5,
            "{name}: a tick came {worst:.2}s after the one before"
        );
    }
    // The hanging hook still hangs: the others finished beside it, not after it.
    let v = d.stored("broken-hanging-hook").unwrap();
    assert!(!finished(&v), "{v}");
    assert!(hanging.in_hook());
    // The slow source's rollout ticks at the pace of its source, alone.
    let slow_ticks = d.ticks("broken-slow-source");
    assert!(slow_ticks.len() < 10, "{} ticks", slow_ticks.len());
    // The failing provider never moved traffic; the crashed hook never let it move.
    assert!(failing.calls().is_empty(), "{:?}", failing.calls());
    d.wait("broken-crashing-hook", 30, "not started", |v| {
        phase(v) == "not-started"
    });
    assert!(crashing.calls().is_empty());
    // Its rollback keeps being retried (with backoff), as the runner does, never moving on.
    d.wait("broken-provider", 30, "rolling back", |v| {
        phase(v) == "rolling-back"
    });
    // `list` shows every rollout, finished ones with their outcome.
    let o = d.cli(&["list", "--json"]);
    let (code, stdout, err) = out(&o);
    assert_eq!(code, 0, "{err}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(list.len(), 9, "{stdout}");
    for v in &list {
        let name = v["rollout"].as_str().unwrap();
        if let Some((_, _, outcome)) = healthy.iter().find(|(n, _, _)| n == name) {
            assert_eq!(v["outcome"], *outcome, "{v}");
        }
    }
    let (code, err) = d.terminate();
    assert_eq!(code, 0, "{err}");
    // The hanging rollout is left as recorded, for the next daemon to resume.
    let v = stored_in(store.path(), "broken-hanging-hook").unwrap();
    assert!(!finished(&v), "{v}");
    assert!(v["control"].is_null(), "{v}");
}

/// The stored record of `name` in the store `store` (without its checksum line).
fn stored_in(store: &Path, name: &str) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(store.join(format!("rollouts/{name}.json"))).ok()?;
    let body = text.rsplit_once("\n# sha256").map(|(b, _)| b)?;
    serde_json::from_str(body).ok()
}

#[test]
fn apply_list_and_the_verbs_work_against_the_daemon_and_sigterm_leaves_traffic() {
    let store = tempfile::tempdir().unwrap();
    let mut d = Serve::start(store.path(), &[]);
    // An invalid policy: every problem with its place, nothing submitted.
    let bad = store.path().join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"bad\"\n[rollout]\nsteps = [50, 10]\nbogus = 1\n",
    )
    .unwrap();
    let (code, _, err) = out(&d.cli(&["apply", bad.to_str().unwrap()]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("bad.toml:3:") && err.contains("bad.toml:4:"),
        "{err}"
    );
    let (code, stdout, _) = out(&d.cli(&["list", "--json"]));
    assert_eq!((code, stdout.trim()), (0, "[]"));
    // A held rollout: applied once, refused while it runs.
    let rig = held("held");
    d.apply(&rig.policy);
    let (code, _, err) = out(&d.cli(&["apply", rig.policy.to_str().unwrap()]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("already running"), "{err}");
    d.wait("held", 30, "at step 1", |v| phase(v) == "progressing");
    let (code, stdout, err) = out(&d.cli(&["status", "held"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("held: progressing step 1/3 weight 10"),
        "{stdout}"
    );
    // The levers, with the token; a wrong token changes nothing.
    let o = coalmine()
        .env("COALMINE_SERVER", d.url())
        .env("COALMINE_TOKEN", "wrong")
        .args(["abort", "held"])
        .output()
        .unwrap();
    let (code, _, err) = out(&o);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("401"), "{err}");
    let (code, _, err) = out(&d.cli(&["pause", "held", "--reason", "look"]));
    assert_eq!(code, 0, "{err}");
    d.wait("held", 20, "paused", |v| phase(v) == "paused");
    let (code, _, err) = out(&d.cli(&["resume", "held"]));
    assert_eq!(code, 0, "{err}");
    d.wait("held", 20, "resumed", |v| phase(v) == "progressing");
    // SIGTERM: the record is written and released, traffic stays at 10 %.
    let (code, err) = d.terminate();
    assert_eq!(code, 0, "{err}");
    let v = stored_in(store.path(), "held").unwrap();
    assert_eq!(phase(&v), "progressing", "{v}");
    assert!(v["control"].is_null(), "{v}");
    assert_eq!(rig.weight(), "10");
    assert_eq!(rig.calls(), ["10"]);
    // The next daemon resumes it; promote --full finishes it; it stays listed.
    let mut d = Serve::start(store.path(), &[]);
    let pid = d.child.id();
    d.wait("held", 30, "resumed by the new daemon", |v| {
        v["control"]["pid"] == pid && phase(v) == "progressing"
    });
    assert!(
        d.stderr().contains("rollout `held` resumed"),
        "{}",
        d.stderr()
    );
    let (code, _, err) = out(&d.cli(&["promote", "held", "--full", "--reason", "ship"]));
    assert_eq!(code, 0, "{err}");
    d.wait("held", 30, "promoted", |v| phase(v) == "promoted");
    assert_eq!(rig.weight(), "100");
    assert_eq!(rig.calls(), ["10", "100"]);
    let (code, stdout, _) = out(&d.cli(&["list"]));
    assert_eq!(code, 0);
    let row = stdout
        .lines()
        .find(|l| l.starts_with("held "))
        .unwrap_or_default();
    assert!(row.contains("promoted") && row.contains("100%"), "{stdout}");
    let (code, stdout, _) = out(&d.cli(&["status", "held", "--json"]));
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["outcome"], "promoted", "{v}");
    // A lever on a finished rollout is refused.
    let (code, _, err) = out(&d.cli(&["pause", "held"]));
    assert_eq!(code, 2, "{err}");
    let (code, err) = d.terminate();
    assert_eq!(code, 0, "{err}");
}

#[test]
fn metrics_pass_promtool_with_one_series_per_rollout() {
    let Some(promtool) = crate::common::require_tool("promtool", "prometheus") else {
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let mut d = Serve::start(store.path(), &[]);
    let (code, body) = http_body(d.addr, "GET", "/health/ready", "", "").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"leader\""), "{body}");
    let quick = fast("m-quick", 0.01);
    let slow = held("m-held");
    d.apply(&quick.policy);
    d.apply(&slow.policy);
    d.wait("m-quick", 60, "promoted", |v| phase(v) == "promoted");
    d.wait("m-held", 30, "at step 1", |v| phase(v) == "progressing");
    let (code, text) = http_body(d.addr, "GET", "/metrics", "", "").unwrap();
    assert_eq!(code, 200);
    for want in [
        "coalmine_canary_weight_percent{rollout=\"m-held\"} 10\n",
        "coalmine_canary_weight_percent{rollout=\"m-quick\"} 100\n",
        "coalmine_rollout_step{rollout=\"m-held\"} 1\n",
        "coalmine_rollout_phase{rollout=\"m-held\",phase=\"progressing\"} 1\n",
        "coalmine_rollout_phase{rollout=\"m-quick\",phase=\"promoted\"} 1\n",
        "coalmine_rollouts_total{outcome=\"promoted\"} 1\n",
        "coalmine_rollouts_total{outcome=\"rolled-back\"} 0\n",
        "coalmine_leader 1\n",
        "coalmine_build_info{version=\"",
        "# TYPE coalmine_tick_duration_seconds histogram\n",
        "# TYPE coalmine_store_write_duration_seconds histogram\n",
    ] {
        assert!(text.contains(want), "no {want:?} in\n{text}");
    }
    // Each family once, whatever the number of rollouts.
    assert_eq!(
        text.matches("# TYPE coalmine_canary_weight_percent gauge")
            .count(),
        1
    );
    let count = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}_count ")))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    assert!(count("coalmine_tick_duration_seconds") >= 10.0, "{text}");
    assert!(
        count("coalmine_store_write_duration_seconds") >= 5.0,
        "{text}"
    );
    // The real promtool: the exposition parses and passes its lint.
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let o = check.wait_with_output().unwrap();
    let (code, stdout, err) = out(&o);
    assert_eq!(code, 0, "promtool: {stdout} {err}\n{text}");
    assert!(
        stdout.trim().is_empty() && err.trim().is_empty(),
        "promtool: {stdout} {err}"
    );
    // The store unreachable (its directory replaced by a file): not ready.
    let rollouts = store.path().join("rollouts");
    std::fs::rename(&rollouts, store.path().join("moved")).unwrap();
    std::fs::write(&rollouts, "not a directory").unwrap();
    let (code, body) = http_body(d.addr, "GET", "/health/ready", "", "").unwrap();
    assert_eq!(code, 503, "{body}");
    let (code, _) = http_body(d.addr, "GET", "/health/live", "", "").unwrap();
    assert_eq!(code, 200);
    std::fs::remove_file(&rollouts).unwrap();
    std::fs::rename(store.path().join("moved"), &rollouts).unwrap();
    let (code, _) = http_body(d.addr, "GET", "/health/ready", "", "").unwrap();
    assert_eq!(code, 200);
    let (code, err) = d.terminate();
    assert_eq!(code, 0, "{err}");
}

#[test]
fn watch_applies_new_policies_and_refuses_a_changed_running_one() {
    let store = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut d = Serve::start(store.path(), &["--watch", dir.path().to_str().unwrap()]);
    let a = held("w-a");
    let text = std::fs::read_to_string(&a.policy).unwrap();
    std::fs::write(dir.path().join("a.toml"), &text).unwrap();
    d.wait("w-a", 20, "started from the directory", |v| {
        phase(v) == "progressing"
    });
    let sha = d.stored("w-a").unwrap()["policy"]["sha256"].clone();
    // Changed while it runs: refused, logged, the rollout goes on with its policy.
    std::fs::write(
        dir.path().join("a.toml"),
        text.replace("min_requests = 100", "min_requests = 101"),
    )
    .unwrap();
    let t = Instant::now();
    while !d.stderr().contains("never swapped") {
        assert!(t.elapsed() < Duration::from_secs(20), "{}", d.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(d.stderr().contains("a.toml: refused"), "{}", d.stderr());
    let v = d.stored("w-a").unwrap();
    assert_eq!(v["policy"]["sha256"], sha);
    assert_eq!(phase(&v), "progressing");
    // An invalid one: its problems logged with their places, nothing started; a new valid
    // one starts.
    std::fs::write(
        dir.path().join("c.toml"),
        "name = \"w-c\"\n[rollout]\nsteps = [50, 10]\n",
    )
    .unwrap();
    let b = held("w-b");
    std::fs::copy(&b.policy, dir.path().join("b.toml")).unwrap();
    d.wait("w-b", 20, "started from the directory", |v| {
        phase(v) == "progressing"
    });
    let t = Instant::now();
    while !d.stderr().contains("c.toml:3:") {
        assert!(t.elapsed() < Duration::from_secs(20), "{}", d.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(d.stored("w-c").is_none());
    let (code, err) = d.terminate();
    assert_eq!(code, 0, "{err}");
}

/// The value of the instant query `q` on Prometheus at `prom`, once it has one (at most
/// `limit`); the answer's JSON.
fn prometheus_value(prom: SocketAddr, q: &str, limit: Duration) -> serde_json::Value {
    let t0 = Instant::now();
    let path = format!(
        "/api/v1/query?query={}",
        q.bytes()
            .map(|b| if b.is_ascii_alphanumeric() || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            })
            .collect::<String>()
    );
    let mut last = String::new();
    while t0.elapsed() < limit {
        if let Some((200, body)) = http_body(prom, "GET", &path, "", "") {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            if v["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
            {
                return v;
            }
            last = body;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("prometheus never answered {q} within {limit:?}: {last}");
}

#[test]
fn metrics_are_scraped_by_a_real_prometheus() {
    let Some(bin) = crate::common::require_tool("prometheus", "prometheus") else {
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let mut d = Serve::start(store.path(), &[]);
    let quick = fast("p-quick", 0.01);
    d.apply(&quick.policy);
    d.wait("p-quick", 40, "promoted", |v| phase(v) == "promoted");
    // A real Prometheus scraping the daemon every second.
    let prom_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        prom_dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: coalmine\n    static_configs:\n      - targets: [\"{}\"]\n",
            d.addr
        ),
    )
    .unwrap();
    let prom = SocketAddr::from(([127, 0, 0, 1], crate::common::free_port()));
    let log = std::fs::File::create(prom_dir.path().join("prometheus.log")).unwrap();
    let _p = crate::common::Guard::spawn(
        Command::new(bin)
            .arg(format!(
                "--config.file={}",
                prom_dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                prom_dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={prom}"))
            .stdout(Stdio::null())
            .stderr(log),
    );
    let limit = Duration::from_secs(30);
    // The scrape itself succeeded (a malformed exposition would make `up` 0).
    let up = prometheus_value(prom, "up{job=\"coalmine\"}", limit);
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}");
    let done = prometheus_value(
        prom,
        "coalmine_rollouts_total{job=\"coalmine\",outcome=\"promoted\"}",
        limit,
    );
    assert_eq!(done["data"]["result"][0]["value"][1], "1", "{done}");
    let leader = prometheus_value(prom, "coalmine_leader{job=\"coalmine\"}", limit);
    assert_eq!(leader["data"]["result"][0]["value"][1], "1", "{leader}");
    // The per-rollout series and a histogram come through too.
    let w = prometheus_value(
        prom,
        "coalmine_canary_weight_percent{rollout=\"p-quick\"}",
        limit,
    );
    assert_eq!(w["data"]["result"][0]["value"][1], "100", "{w}");
    let ticks = prometheus_value(prom, "coalmine_tick_duration_seconds_count", limit);
    let n: f64 = ticks["data"]["result"][0]["value"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(n >= 1.0, "{ticks}");
    let (code, err) = d.terminate();
    assert_eq!(code, 0, "{err}");
}
