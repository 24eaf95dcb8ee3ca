//! Signals and pipes against the built binary (issue 17): SIGHUP rolls back like SIGTERM, a
//! closed stdout never costs the outcome's exit code, a third Ctrl-C quits at once saying
//! where traffic may be, and a hung provider never keeps a rollout past its deadline plus
//! `apply_timeout`.
//!
//! The traffic provider is `exec` (a shell script writing the weight to a file, so the test
//! reads what is in force), the metrics source a fake Prometheus in the test process that
//! answers the preflight and has no data for anything else (the rollout holds).

// Real processes on the wall clock: plain blocking test code.
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{coalmine, records};

/// A fake Prometheus: `vector(1)` is 1, every other query an empty vector. Runs until the
/// test process ends (one thread, one connection at a time).
fn fake_prometheus() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = Vec::new();
            let mut chunk = [0_u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let head = String::from_utf8_lossy(&buf);
            let result = if head.contains("query=vector%281%29") || head.contains("query=vector(1)")
            {
                r#"[{"metric":{},"value":[1700000000,"1"]}]"#
            } else {
                "[]"
            };
            let body = format!(
                r#"{{"status":"success","data":{{"resultType":"vector","result":{result}}}}}"#
            );
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

/// A rollout driven by `set.sh PERCENT` (which runs `hang_when` before writing: e.g.
/// `[ "$1" = 0 ] && sleep 20`) and read back with `cat`.
struct Setup {
    dir: tempfile::TempDir,
    policy: PathBuf,
    log: PathBuf,
    weight: PathBuf,
}

fn setup(rollout: &str, hang_when: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let weight = dir.path().join("weight");
    std::fs::write(&weight, "0\n").unwrap();
    let set = dir.path().join("set.sh");
    std::fs::write(
        &set,
        format!(
            "#!/bin/sh\n{hang_when}\necho \"$1\" > {w}.tmp && mv {w}.tmp {w}\n",
            w = weight.display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&set)
        .status()
        .unwrap();
    let prom = fake_prometheus();
    let text = format!(
        "name = \"signals\"\n[rollout]\n{rollout}\n[traffic]\ntype = \"exec\"\n\
         command = [\"{set}\", \"{{{{percent}}}}\"]\nread_command = [\"cat\", \"{w}\"]\n\
         timeout = \"30s\"\nresolution = 1\n[metrics]\ntype = \"prometheus\"\nurl = \"http://{prom}\"\n\
         [[metric]]\nname = \"errors\"\nevents = 'e{{track=\"{{{{arm}}}}\"}}'\n\
         trials = 't{{track=\"{{{{arm}}}}\"}}'\n",
        set = set.display(),
        w = weight.display(),
    );
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, text).unwrap();
    let log = dir.path().join("d.jsonl");
    Setup {
        dir,
        policy,
        log,
        weight,
    }
}

impl Setup {
    fn start(&self, stdout: Stdio, stderr: Stdio) -> Child {
        coalmine()
            .args(["run", "--json", "--decisions"])
            .arg(&self.log)
            .arg(&self.policy)
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap()
    }

    fn weight(&self) -> String {
        std::fs::read_to_string(&self.weight)
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    fn records(&self) -> Vec<Value> {
        records(&self.log)
    }

    /// Waits (at most 20 s) until `set.sh` has written `pct`.
    fn wait_weight(&self, pct: &str, run: &mut Child) {
        let start = Instant::now();
        while self.weight() != pct {
            assert!(run.try_wait().unwrap().is_none(), "the rollout ended early");
            assert!(start.elapsed() < Duration::from_secs(20), "never at {pct}%");
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = &self.dir;
    }
}

fn signal(run: &Child, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &run.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name}");
}

/// Waits for the process to end (at most `limit`); its exit code.
fn wait_exit(run: &mut Child, limit: Duration) -> i32 {
    let start = Instant::now();
    loop {
        if let Some(status) = run.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if start.elapsed() > limit {
            let _ = run.kill();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

const HOLDING: &str = "steps = [5, 25, 100]\nstep_duration = \"60s\"\nanalysis_interval = \"200ms\"\n\
                       deadline = \"10m\"";

#[test]
fn sighup_rolls_back_like_sigterm_even_with_stderr_gone() {
    for sig in ["HUP", "TERM"] {
        let s = setup(HOLDING, "");
        // stderr is a pipe whose reader is gone, as after a closed SSH session.
        let mut run = s.start(Stdio::null(), Stdio::piped());
        drop(run.stderr.take());
        s.wait_weight("5", &mut run);
        signal(&run, sig);
        let code = wait_exit(&mut run, Duration::from_secs(20));
        assert_eq!(code, 1, "SIG{sig}: rolled back (exit 1)");
        assert_eq!(s.weight(), "0", "SIG{sig}: the canary is back to 0%");
        let recs = s.records();
        let aborted = recs
            .iter()
            .find(|r| r["event"] == "aborted")
            .unwrap_or_else(|| panic!("SIG{sig}: no abort recorded: {recs:#?}"));
        let why = aborted["detail"].as_str().unwrap_or_default();
        let expected = if sig == "HUP" {
            "hangup (SIGHUP)"
        } else {
            "terminated (SIGTERM)"
        };
        assert!(why.contains(expected), "{why}");
        assert_eq!(
            recs.last().unwrap()["event"],
            "rolled-back",
            "SIG{sig}: the final record is written"
        );
    }
}

#[test]
fn a_closed_stdout_keeps_the_outcomes_exit_code() {
    // No data: the rollout holds and the deadline rolls it back, then prints its JSON
    // summary into a pipe nobody reads. Before: "failed printing to stdout", exit 101.
    let s = setup(
        "steps = [50, 100]\nstep_duration = \"1s\"\nanalysis_interval = \"200ms\"\ndeadline = \"2s\"",
        "",
    );
    let mut run = s.start(Stdio::piped(), Stdio::null());
    drop(run.stdout.take());
    let code = wait_exit(&mut run, Duration::from_secs(30));
    assert_eq!(code, 1, "rolled back by the deadline");
    assert_eq!(s.weight(), "0");
}

#[test]
fn a_third_ctrl_c_quits_at_once_and_says_where_traffic_may_be() {
    // The rollback's provider call hangs (20 s, under an apply_timeout of 30 s).
    let s = setup(
        &format!("{HOLDING}\napply_timeout = \"30s\""),
        "[ \"$1\" = 0 ] && sleep 20",
    );
    let mut run = s.start(Stdio::null(), Stdio::piped());
    let mut stderr = run.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    s.wait_weight("5", &mut run);
    signal(&run, "INT");
    let start = Instant::now();
    while !s.records().iter().any(|r| r["event"] == "aborted") {
        assert!(start.elapsed() < Duration::from_secs(10), "no abort");
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&run, "INT");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        run.try_wait().unwrap().is_none(),
        "the second signal does not quit"
    );
    signal(&run, "INT");
    // Well before the hung call (20 s) could end.
    let code = wait_exit(&mut run, Duration::from_secs(8));
    assert_eq!(code, 3);
    let text = reader.join().unwrap();
    assert!(text.contains("still rolling back"), "{text}");
    assert!(
        text.contains("quit before the rollout ended: the canary weight may still be 5%"),
        "{text}"
    );
    assert_eq!(s.weight(), "5", "the hung rollback never wrote");
}

#[test]
fn a_hung_provider_is_bounded_by_the_deadline_plus_apply_timeout() {
    // Every set hangs past apply_timeout: five retries of the first step and ten of the
    // rollback used to run on for a minute. Now the run ends by deadline + apply_timeout.
    let s = setup(
        "steps = [50, 100]\nstep_duration = \"2s\"\nanalysis_interval = \"200ms\"\n\
         deadline = \"4s\"\napply_timeout = \"1s\"",
        "sleep 10",
    );
    let started = Instant::now();
    let mut run = s.start(Stdio::null(), Stdio::null());
    let code = wait_exit(&mut run, Duration::from_secs(40));
    let took = started.elapsed();
    assert_eq!(
        code, 3,
        "the rollback could not be applied: an operational failure"
    );
    // 4 s + 1 s, with room for a loaded machine; the unbounded retries took over 20 s.
    assert!(took < Duration::from_secs(12), "took {took:?}");
    let recs = s.records();
    let last = recs.last().unwrap();
    assert_eq!(last["event"], "failed", "{recs:#?}");
    assert!(
        last["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("within the deadline plus apply_timeout"),
        "{last}"
    );
}
