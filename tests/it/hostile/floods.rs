//! Connection floods against the binary (issue 17): slow-loris connections to the status
//! server are closed by its timeouts, and under `ulimit -n 1024` a rollout whose proxy and
//! status server each hold 1,100 idle connections fails no request of a well-behaved
//! client, blames no arm, and promotes its healthy canary.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use crate::status::{free_addr, http, start};
use crate::support::coalmine;

/// Kills and reaps a child when dropped (tests must not leave processes behind).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Raises this process's soft descriptor limit (towards 4,096, at least `need`) to hold the
/// flood's own sockets.
fn raise_fd_limit(need: u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    let hard = l.maximum.unwrap_or(u64::MAX);
    assert!(
        hard >= need,
        "the flood needs {need} descriptors in the test process; the hard limit is {hard}"
    );
    let want = hard.min(4096);
    if l.current.is_some_and(|c| c < want) {
        l.current = Some(want);
        setrlimit(Resource::Nofile, l).expect("raise RLIMIT_NOFILE");
    }
}

#[expect(clippy::disallowed_methods, reason = "polling from a synchronous test")]
fn wait_for_port(addr: SocketAddr, child: &mut Child) {
    for _ in 0..300 {
        if TcpStream::connect(addr).is_ok() {
            return;
        }
        if child.try_wait().unwrap().is_some() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("the child ended early: {err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on {addr}");
}

/// A client connection that sends nothing (even slots) or half a request head (odd ones).
fn open_idle(addr: SocketAddr, i: usize) -> Option<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    if i % 2 == 1 {
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ");
    }
    s.set_nonblocking(true).ok()?;
    Some(s)
}

fn is_closed(s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    match s.peek(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// Holds `n` idle connections to each target until `stop`, reopening every one the server
/// closes (as a slow-loris client does) once a second. Returns how many the servers closed.
fn flood(
    targets: Vec<SocketAddr>,
    n: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut held: Vec<(SocketAddr, usize, Option<TcpStream>)> = targets
            .iter()
            .flat_map(|t| (0..n).map(move |i| (*t, i, None)))
            .collect();
        let mut reopened = 0;
        while !stop.load(Ordering::Relaxed) {
            for (addr, i, s) in &mut held {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let closed = s.as_ref().is_some_and(is_closed);
                if closed || s.is_none() {
                    *s = open_idle(*addr, *i);
                    reopened += u64::from(closed);
                }
            }
            #[expect(clippy::disallowed_methods, reason = "a plain thread, not async code")]
            std::thread::sleep(Duration::from_secs(1));
        }
        reopened
    })
}

/// What the well-behaved client saw.
#[derive(Debug, Default)]
struct Seen {
    ok: AtomicU64,
    /// 500s the services sent themselves (their body names the service).
    service_errors: AtomicU64,
    /// Anything else (a proxy-made 5xx, a transport error, a broken body, a timeout), with
    /// the wall-clock times the request was sent and failed.
    failed: Mutex<Vec<(SystemTime, SystemTime, String)>>,
}

/// Sends `rps` requests per second through `proxy` until `stop`, every other one on a new
/// connection (as health checkers and command-line clients do); each must end within 10 s.
async fn well_behaved(proxy: SocketAddr, rps: u64, stop: Arc<AtomicBool>, seen: Arc<Seen>) {
    let kept: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let fresh: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(HttpConnector::new());
    let mut n = 0u64;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rps));
    let mut tasks = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        n += 1;
        let (client, kind) = if n.is_multiple_of(2) {
            (kept.clone(), "kept-alive")
        } else {
            (fresh.clone(), "new connection")
        };
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            let sent = SystemTime::now();
            let req = hyper::Request::get(format!("http://{proxy}/ok"))
                .body(Empty::new())
                .unwrap();
            let answer = tokio::time::timeout(Duration::from_secs(10), async {
                let resp = client
                    .request(req)
                    .await
                    .map_err(|e| format!("request: {e:?}"))?;
                let status = resp.status().as_u16();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("body: {e:?}"))?
                    .to_bytes();
                Ok::<_, String>((status, String::from_utf8_lossy(&body).into_owned()))
            })
            .await;
            match answer {
                Ok(Ok((200, _))) => {
                    seen.ok.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Ok((500, body)))
                    if body.starts_with("baseline error") || body.starts_with("canary error") =>
                {
                    seen.service_errors.fetch_add(1, Ordering::Relaxed);
                }
                other => seen.failed.lock().unwrap().push((
                    sent,
                    SystemTime::now(),
                    format!("{kind}: {other:?}"),
                )),
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// The soft and hard descriptor limits of a running process, from /proc.
fn fd_limits(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_default()
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Under the common limit of 1,024 descriptors, 1,100 idle connections held against the
/// proxy and 1,100 against the status server (re-opened as they are shed) fail no request
/// of a well-behaved client and blame no arm: the healthy canary is promoted. Before, the
/// proxy ran out of descriptors and failed canary requests itself (502s counted against
/// the arm), and a healthy canary was rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_floods_under_ulimit_1024_fail_no_request_and_blame_no_arm() {
    raise_fd_limit(2 * 1100 + 400);
    let dir = tempfile::tempdir().unwrap();
    // The backends, outside the limited process.
    let mut services = Reaped(
        coalmine()
            .args([
                "demo-services",
                "--baseline",
                "127.0.0.1:0",
                "--canary",
                "127.0.0.1:0",
            ])
            .args(["--rps", "0", "--seed", "7"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(services.0.stdout.take().unwrap()).lines();
    let mut url = |arm: &str| -> String {
        let line = lines.next().unwrap().unwrap();
        line.strip_prefix(&format!("{arm} "))
            .unwrap_or_else(|| panic!("{line}"))
            .to_string()
    };
    let (baseline, canary) = (url("baseline"), url("canary"));
    let (proxy, status) = (free_addr(), free_addr());
    let policy = format!(
        "name = \"flood\"\nalpha = 0.01\n\
         [rollout]\nsteps = [25, 50, 100]\nstep_duration = \"6s\"\nanalysis_interval = \"1s\"\n\
         min_requests = 100\ndeadline = \"60s\"\n\
         [traffic]\ntype = \"proxy\"\nlisten = \"{proxy}\"\nbaseline = \"{baseline}\"\n\
         canary = \"{canary}\"\nheader_read_timeout = \"60s\"\nidle_timeout = \"60s\"\n\
         [metrics]\ntype = \"builtin\"\n\
         [[metric]]\nname = \"error-rate\"\nbuiltin = \"errors\"\nallowed_ratio = 1.0\n"
    );
    let path = dir.path().join("flood.toml");
    let decisions = dir.path().join("decisions.jsonl");
    std::fs::write(&path, policy).unwrap();
    let mut run = Reaped(
        std::process::Command::new("sh")
            .args(["-c", "ulimit -n 1024 && exec \"$0\" \"$@\""])
            .arg(env!("CARGO_BIN_EXE_coalmine"))
            .env("COALMINE_STATE_DIR", decisions.with_extension("state"))
            .args(["run", "--quiet", "--json", "--status-addr"])
            .arg(status.to_string())
            .arg("--decisions")
            .arg(&decisions)
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_for_port(status, &mut run.0);
    wait_for_port(proxy, &mut run.0);
    assert_eq!(
        fd_limits(run.0.id()),
        "1024 1024",
        "the rollout runs under ulimit -n 1024"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let flooder = flood(vec![proxy, status], 1100, stop.clone());
    let seen = Arc::new(Seen::default());
    let client = tokio::spawn(well_behaved(proxy, 200, stop.clone(), seen.clone()));
    // Poll the status server as an operator's dashboard would, until the rollout ends.
    let mut polls = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let ended = loop {
        if let Some(code) = run.0.try_wait().unwrap() {
            break Some(code);
        }
        if Instant::now() > deadline {
            break None;
        }
        let asked = SystemTime::now();
        let answer = tokio::task::spawn_blocking(move || http(status, "GET", "/status"))
            .await
            .unwrap();
        polls.push((asked, answer.map(|a| a.0)));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop.store(true, Ordering::Relaxed);
    client.await.unwrap();
    let reopened = flooder.join().unwrap();
    let mut out = String::new();
    let mut err = String::new();
    let mut child = run;
    if let Some(mut o) = child.0.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.0.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let code = ended.expect("the rollout ended within 90 s");
    let json: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("stdout is JSON ({e}):\n{out}\n{err}"));
    let (ok, service_errors) = (
        seen.ok.load(Ordering::Relaxed),
        seen.service_errors.load(Ordering::Relaxed),
    );
    // The proxy and the status server stop with the rollout: what was sent before its
    // final record was written must have been served.
    let log = std::fs::read_to_string(&decisions).unwrap();
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(last["kind"], "final", "{last}");
    // The record's time is the run's clock (its start plus monotonic time), the requests'
    // stamps this process's wall clock: they may differ by milliseconds, so only what was
    // sent 50 ms before the record counts as sent while the rollout ran.
    let ended_at = humantime::parse_rfc3339_weak(last["time"].as_str().unwrap()).unwrap();
    let cutoff = ended_at - Duration::from_millis(50);
    let failed = seen.failed.lock().unwrap();
    // A request sent just before the final record whose connection attempt reached the
    // proxy only after it closed (a loaded machine delays the connect) was refused, not
    // dropped: it never reached the proxy.
    let during: Vec<String> = failed
        .iter()
        .filter(|(sent, at, what)| {
            *sent < cutoff && !(what.contains("ConnectionRefused") && *at >= cutoff)
        })
        .map(|(sent, at, what)| {
            let before = |t: &SystemTime| {
                ended_at
                    .duration_since(*t)
                    .map_or_else(|e| -e.duration().as_secs_f64(), |d| d.as_secs_f64())
            };
            format!(
                "{what} (sent {:.3} s and failed {:.3} s before the final record)",
                before(sent),
                before(at)
            )
        })
        .collect();
    let polls_during: Vec<_> = polls.iter().filter(|(asked, _)| *asked < cutoff).collect();
    let polls_failed: Vec<_> = polls_during
        .iter()
        .filter(|(_, code)| *code != Some(200))
        .collect();
    eprintln!(
        "well-behaved: {ok} ok, {service_errors} service 500s, {} failed while the rollout \
         ran, {} after; {} status polls while it ran; {reopened} flood connections closed \
         by the servers and re-opened",
        during.len(),
        failed.len() - during.len(),
        polls_during.len()
    );
    assert!(
        during.is_empty(),
        "well-behaved requests failed: {during:?}\n{err}"
    );
    assert!(
        polls_failed.is_empty(),
        "status polls failed: {polls_failed:?}"
    );
    // One poll every 100 ms or so: a status server that answers slowly fails this.
    assert!(
        polls_during.len() > 50,
        "{} status polls",
        polls_during.len()
    );
    assert!(ok > 1000, "{ok} requests served");
    // The cap was reached and acted: the flood's connections were shed and re-opened.
    assert!(reopened > 100, "{reopened} re-opened");
    assert_eq!(code.code(), Some(0), "{json}\n{err}");
    assert_eq!(json["outcome"], "promoted", "{json}");
    drop(services);
}

/// The status server closes slow-loris connections (silent, or dribbling a request head)
/// after its header-read timeout of 10 s; before, all 40 stayed open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_server_closes_slow_loris_connections() {
    let addr = free_addr();
    let (mut child, _dir) = start("", addr);
    wait_for_port(addr, &mut child);
    let mut child = Reaped(child);
    let opened = tokio::time::Instant::now();
    let conns: Vec<_> = (0..40).filter_map(|i| open_idle(addr, i)).collect();
    assert_eq!(conns.len(), 40);
    let mut open = conns.len();
    while open > 0 && opened.elapsed() < Duration::from_secs(14) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        open = conns.iter().filter(|s| !is_closed(s)).count();
    }
    assert_eq!(
        open,
        0,
        "{open} of 40 still open after {:?}",
        opened.elapsed()
    );
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "closed by the timeout, not by the rollout ending"
    );
    assert!(
        opened.elapsed() >= Duration::from_secs(9),
        "closed by the 10 s timeout: {:?}",
        opened.elapsed()
    );
    drop(child);
}
