//! The rig of the durable-rollout tests: a policy with steps 10 → 50 → 100 % whose traffic
//! goes through the `exec` provider (a shell script) or the `http` provider (a fake flag
//! service in this process), and a fake Prometheus answering fixed counts from the weight
//! in force. Both providers keep the weight in the file `weight` and append every weight
//! that landed to `calls` (the provider's call log), and while a change is under way the
//! file `setting` holds the weight being set (and a second line `landed` once it has), so a
//! test can kill the controller between the record and the change, or just after it.

// Real processes on the wall clock: plain blocking test code.
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::coalmine;

/// Which traffic provider the policy uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Provider {
    /// `exec`: `set.sh PERCENT`, read back with `get.sh`.
    Exec,
    /// `http`: `PUT /flag {"percent": P}` to the fake flag service, read back with `GET`.
    Http,
}

/// How to build the rig.
#[derive(Clone, Debug)]
pub(crate) struct Opts {
    pub(crate) provider: Provider,
    /// The canary's error rate from the 50 % step on (1 % before, and for the baseline).
    pub(crate) canary_rate: f64,
    pub(crate) step_duration: &'static str,
    /// Extra lines of `[rollout]`.
    pub(crate) rollout: &'static str,
    /// How long a weight change takes before it lands, and again after (milliseconds).
    pub(crate) apply_ms: u64,
    /// A `pre-rollout` hook that takes this long (milliseconds).
    pub(crate) hook_ms: Option<u64>,
    /// `[[rollout.step]]` tables instead of `steps = [10, 50, 100]`.
    pub(crate) plan: Option<&'static str>,
    /// Extra text at the end of the policy (gates, more tables).
    pub(crate) tail: String,
    /// The analysis interval.
    pub(crate) interval: &'static str,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            provider: Provider::Exec,
            canary_rate: 0.01,
            step_duration: "3s",
            rollout: "",
            apply_ms: 0,
            hook_ms: None,
            plan: None,
            tail: String::new(),
            interval: "100ms",
        }
    }
}

/// One rollout's files, services and policy.
pub(crate) struct Rig {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) policy: PathBuf,
    rate: Arc<AtomicU64>,
}

/// Reads one HTTP/1.1 request (headers, then the body by Content-Length).
fn read_request(s: &mut TcpStream) -> Option<String> {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let body_len = loop {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
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
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

fn respond(s: &mut TcpStream, status: u16, body: &str) {
    let _ = write!(
        s,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Serves `answer` (200) on a free loopback port, one thread per connection.
fn serve(answer: impl Fn(&str) -> String + Send + Sync + 'static) -> SocketAddr {
    serve_status(move |req| (200, answer(req)))
}

/// Serves `answer` (status, body) on a free loopback port, one thread per connection.
pub(crate) fn serve_status(
    answer: impl Fn(&str) -> (u16, String) + Send + Sync + 'static,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let answer = answer.clone();
            std::thread::spawn(move || {
                if let Some(req) = read_request(&mut s) {
                    let (status, body) = answer(&req);
                    respond(&mut s, status, &body);
                }
            });
        }
    });
    addr
}

/// A fake Prometheus answering every instant query with a fixed value: 1 for `vector(1)`
/// (the source's preflight), 1000 requests split as the weight in force says, and each
/// arm's errors at its rate.
fn fake_prometheus(dir: PathBuf, rate: Arc<AtomicU64>) -> SocketAddr {
    serve(move |req| {
        let w: f64 = read_weight(&dir).parse::<f64>().unwrap_or(0.0) / 100.0;
        let canary = req.contains("canary");
        let requests = 1000.0 * if canary { w } else { 1.0 - w };
        let value = if req.contains("vector%281%29") || req.contains("vector(1)") {
            1.0
        } else if req.contains("requests") {
            requests
        } else if canary {
            // The canary turns bad (if it does) at the second step, 50 %.
            let r = if w >= 0.5 {
                f64::from_bits(rate.load(Ordering::SeqCst))
            } else {
                0.01
            };
            (requests * r).round()
        } else {
            (requests * 0.01).round()
        };
        format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[1015,"{value}"]}}]}}}}"#
        )
    })
}

/// Sets the weight as both providers do: `setting`, a pause, the weight and the call log,
/// `landed`, a pause, then `setting` is removed. A file `cancel` present after the first
/// pause cancels the change (it never lands).
fn set_weight(dir: &Path, percent: &str, pause: Duration) {
    std::fs::write(dir.join("setting"), format!("{percent}\n")).unwrap();
    std::thread::sleep(pause);
    if std::fs::remove_file(dir.join("cancel")).is_ok() {
        // Its client died before the change went through (see the crash test).
        let _ = std::fs::remove_file(dir.join("setting"));
        return;
    }
    std::fs::write(dir.join("w.tmp"), format!("{percent}\n")).unwrap();
    std::fs::rename(dir.join("w.tmp"), dir.join("weight")).unwrap();
    let mut calls = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("calls"))
        .unwrap();
    writeln!(calls, "{percent}").unwrap();
    std::fs::write(dir.join("setting"), format!("{percent}\nlanded\n")).unwrap();
    std::thread::sleep(pause);
    let _ = std::fs::remove_file(dir.join("setting"));
}

/// A fake feature-flag service: `PUT /flag {"percent": P}` sets the weight (and keeps going
/// when its client dies mid-request, as a real service does); `GET /flag` reads it.
fn fake_flags(dir: PathBuf, pause: Duration) -> SocketAddr {
    serve(move |req| {
        if req.starts_with("PUT ") {
            let body = req.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
            let percent = v["percent"].as_f64().unwrap_or(-1.0);
            set_weight(&dir, &format!("{percent}"), pause);
            "{}".to_string()
        } else {
            format!(r#"{{"percent": {}}}"#, read_weight(&dir))
        }
    })
}

fn read_weight(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("weight"))
        .unwrap_or_else(|_| "0".into())
        .trim()
        .to_string()
}

impl Rig {
    pub(crate) fn new(name: &str, o: &Opts) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let rate = Arc::new(AtomicU64::new(o.canary_rate.to_bits()));
        let prom = fake_prometheus(d.to_path_buf(), rate.clone());
        let pause = Duration::from_millis(o.apply_ms);
        let secs = pause.as_secs_f64();
        let traffic = match o.provider {
            Provider::Exec => {
                std::fs::write(
                    d.join("set.sh"),
                    format!(
                        "#!/bin/sh\nd={0}\necho \"$1\" > $d/setting\nsleep {secs}\n\
                         if [ -e $d/cancel ]; then rm -f $d/cancel $d/setting; exit 0; fi\n\
                         echo \"$1\" > $d/w.tmp && mv $d/w.tmp $d/weight && echo \"$1\" >> $d/calls\n\
                         printf '%s\\nlanded\\n' \"$1\" > $d/setting\nsleep {secs}\nrm -f $d/setting\n",
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
                format!(
                    "type = \"exec\"\ncommand = [\"/bin/sh\", \"{d}/set.sh\", \"{{{{percent}}}}\"]\n\
                     read_command = [\"/bin/sh\", \"{d}/get.sh\"]\n\
                     env = [\"COALMINE_TEST_REPLICA\"]\n",
                    d = d.display()
                )
            }
            Provider::Http => {
                let flags = fake_flags(d.to_path_buf(), pause);
                format!(
                    "type = \"http\"\nmethod = \"PUT\"\nurl = \"http://{flags}/flag\"\n\
                     body = '{{\"percent\": {{{{percent}}}}}}'\n\
                     read_url = \"http://{flags}/flag\"\nread_pointer = \"/percent\"\n"
                )
            }
        };
        let hook = match o.hook_ms {
            Some(ms) => {
                std::fs::write(
                    d.join("hook.sh"),
                    format!(
                        "#!/bin/sh\ntouch {0}/in-hook\nsleep {1}\nrm -f {0}/in-hook\n",
                        d.display(),
                        ms as f64 / 1000.0
                    ),
                )
                .unwrap();
                format!(
                    "\n[[hook]]\nname = \"smoke\"\nwhen = \"pre-rollout\"\ncommand = [\"/bin/sh\", \"{}/hook.sh\"]\n",
                    d.display()
                )
            }
            None => String::new(),
        };
        let policy = d.join("policy.toml");
        std::fs::write(
            &policy,
            format!(
                r#"name = "{name}"
[rollout]
{steps}
step_duration = "{step}"
analysis_interval = "{interval}"
min_requests = 100
deadline = "10m"
{extra}
{plan}

[traffic]
{traffic}
[metrics]
type = "prometheus"
url = "http://{prom}"

[[metric]]
name = "errors"
events = 'errors_total{{arm="{{{{arm}}}}"}}'
trials = 'requests_total{{arm="{{{{arm}}}}"}}'
{hook}{tail}"#,
                step = o.step_duration,
                extra = o.rollout,
                steps = if o.plan.is_some() {
                    ""
                } else {
                    "steps = [10, 50, 100]"
                },
                plan = o.plan.unwrap_or(""),
                tail = o.tail,
                interval = o.interval,
            ),
        )
        .unwrap();
        Rig { dir, policy, rate }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The canary's error rate from the 50 % step on, from now.
    pub(crate) fn set_canary_rate(&self, rate: f64) {
        self.rate.store(rate.to_bits(), Ordering::SeqCst);
    }

    /// The binary, with this rollout's state directory.
    pub(crate) fn cmd(&self) -> Command {
        let mut c = coalmine();
        c.env("COALMINE_STATE_DIR", self.path("state"))
            .env_remove("COALMINE_TOKEN");
        c
    }

    /// A verb (or any command), run to its end.
    pub(crate) fn verb(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// `coalmine run` of the policy, quiet, JSON summary, decision log in the rig.
    pub(crate) fn start_with(&self, extra: &[&str]) -> Child {
        self.cmd()
            .args(["run", "--quiet", "--json", "--decisions"])
            .arg(self.path("decisions.jsonl"))
            .args(extra)
            .arg(&self.policy)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    pub(crate) fn start(&self) -> Child {
        self.start_with(&[])
    }

    /// The weight in force, as the provider holds it.
    pub(crate) fn weight(&self) -> String {
        read_weight(self.dir.path())
    }

    /// Every weight that landed, in order.
    pub(crate) fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The change under way: (weight being set, whether it has landed).
    pub(crate) fn setting(&self) -> Option<(String, bool)> {
        let text = std::fs::read_to_string(self.path("setting")).ok()?;
        let mut lines = text.lines();
        let w = lines.next()?.trim().to_string();
        Some((w, lines.next() == Some("landed")))
    }

    /// Whether the pre-rollout hook is running.
    pub(crate) fn in_hook(&self) -> bool {
        self.path("in-hook").exists()
    }

    /// The stored record of rollout `name` (without its checksum line), if readable.
    pub(crate) fn stored(&self, name: &str) -> Option<serde_json::Value> {
        let text =
            std::fs::read_to_string(self.path(&format!("state/rollouts/{name}.json"))).ok()?;
        let body = text.rsplit_once("\n# sha256").map(|(b, _)| b)?;
        serde_json::from_str(body).ok()
    }

    /// Every line of the decision log, parsed (panics on a line that does not parse).
    pub(crate) fn records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path("decisions.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// Records of `kind` (`operator`, `resumed`, …).
    pub(crate) fn records_of(&self, kind: &str) -> Vec<serde_json::Value> {
        self.records()
            .into_iter()
            .filter(|r| r["kind"] == kind)
            .collect()
    }

    /// Waits (at most 40 s) until `pred` holds of the stored record; panics, with the
    /// child's stderr, if the child ends first.
    pub(crate) fn wait_stored(
        &self,
        name: &str,
        child: &mut Child,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let t = Instant::now();
        loop {
            if let Some(v) = self.stored(name)
                && pred(&v)
            {
                return v;
            }
            if child.try_wait().unwrap().is_some() {
                let mut err = String::new();
                if let Some(e) = child.stderr.as_mut() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("the controller ended before {what}: {err}");
            }
            assert!(t.elapsed() < Duration::from_secs(40), "never {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `child` serves rollout `name`'s control API at step `step`, progressing.
    pub(crate) fn wait_running(
        &self,
        name: &str,
        child: &mut Child,
        step: u64,
    ) -> serde_json::Value {
        let pid = child.id();
        self.wait_stored(name, child, &format!("running at step {step}"), |v| {
            v["control"]["pid"] == pid
                && v["phase"]["phase"] == "progressing"
                && v["phase"]["step"] == step - 1
        })
    }
}

/// stdout and stderr of a finished command, and its exit code.
pub(crate) fn out(o: &Output) -> (i32, String, String) {
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Waits for a `coalmine run` to end: (exit code, its JSON summary, stderr).
pub(crate) fn finish(child: Child) -> (i32, serde_json::Value, String) {
    let o = child.wait_with_output().unwrap();
    let (code, stdout, stderr) = out(&o);
    let v = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    (code, v, stderr)
}
