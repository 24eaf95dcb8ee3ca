//! Issue 17, secrets: a rollout configured with secrets in every allowed place (the
//! Prometheus URL's userinfo or a Prometheus token from token_env/token_file, the http
//! provider's token, a webhook URL whose path and query are secret, hook URLs with
//! credentials, hooks that print their whole environment), against fake services that
//! fail at first and echo the credentials they receive back in their error messages. Every
//! output channel is scanned: stderr, stdout (`--json`), the decision log, the webhook
//! bodies received, and `/status` polled during the run. None may hold a secret.

// Real processes and sockets on the wall clock; plain blocking code.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_coalmine");

/// One request as the fake services see it.
#[derive(Clone, Debug)]
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Request {
    fn header(&self, name: &str) -> String {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map_or(String::new(), |(_, v)| v.clone())
    }
}

/// A minimal HTTP/1.1 server on a free loopback port: one thread, one request per
/// connection (`Connection: close`), answers from `handler`.
fn serve(handler: impl Fn(&Request) -> (u16, String) + Send + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let Some(req) = read_request(&mut stream) else {
                continue;
            };
            let (status, body) = handler(&req);
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        target,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// A fake Prometheus: `vector(1)` is 1, `errs` queries 1 and `reqs` queries 1000 per arm;
/// the first query fails with 503, the second with an API error that echoes the
/// `Authorization` header it received.
fn fake_prometheus(seen_auth: Arc<Mutex<Vec<String>>>) -> SocketAddr {
    let n = AtomicUsize::new(0);
    serve(move |req| {
        let auth = req.header("authorization");
        seen_auth.lock().unwrap().push(auth.clone());
        let query = format!("{} {}", req.target, req.body);
        let value = if query.contains("vector") {
            "1"
        } else {
            match n.fetch_add(1, Ordering::SeqCst) {
                0 => return (503, "overloaded".to_string()),
                1 => {
                    let echo =
                        serde_json::to_string(&format!("credentials {auth} refused")).unwrap();
                    return (
                        400,
                        format!(r#"{{"status":"error","errorType":"bad_data","error":{echo}}}"#),
                    );
                }
                _ if query.contains("errs") => "1",
                _ => "1000",
            }
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        (
            200,
            format!(
                r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[{now},"{value}"]}}]}}}}"#
            ),
        )
    })
}

/// A feature-flag service for the `http` provider: the first PUT fails with 503 and echoes
/// the token it got; then PUT sets the percentage and GET reads it back.
fn fake_flags(seen_auth: Arc<Mutex<Vec<String>>>) -> SocketAddr {
    let pct = Mutex::new(0.0_f64);
    let puts = AtomicUsize::new(0);
    serve(move |req| {
        let auth = req.header("authorization");
        seen_auth.lock().unwrap().push(auth.clone());
        if req.method == "PUT" {
            if puts.fetch_add(1, Ordering::SeqCst) == 0 {
                return (503, format!("busy; your credentials were {auth}"));
            }
            let v: serde_json::Value = serde_json::from_str(&req.body).unwrap_or_default();
            *pct.lock().unwrap() = v["rollout"].as_f64().unwrap_or(-1.0);
        }
        (200, format!("{{\"rollout\":{}}}", pct.lock().unwrap()))
    })
}

/// The webhook receiver: rejects the first three deliveries (so failures are reported),
/// keeps every body.
fn fake_webhook(bodies: Arc<Mutex<Vec<String>>>) -> SocketAddr {
    let n = AtomicUsize::new(0);
    serve(move |req| {
        if req.method == "GET" {
            return (200, "ok".to_string());
        }
        bodies.lock().unwrap().push(req.body.clone());
        if n.fetch_add(1, Ordering::SeqCst) < 3 {
            (500, "no".to_string())
        } else {
            (200, "ok".to_string())
        }
    })
}

/// Where Prometheus's credentials go in one run.
#[derive(Clone, Copy)]
enum PromAuth {
    /// `http://user:password@host`.
    Userinfo,
    /// `token_env = "COALMINE_TEST_PROM_TOKEN"`.
    TokenEnv,
    /// `token_file = ...`.
    TokenFile,
}

const PROM_USER: &str = "promuser7";
const PROM_PASSWORD: &str = "PromPassw0rd-x9";
const PROM_TOKEN: &str = "prom-token-Zq81xv";
const FLAG_TOKEN: &str = "flag-token-Kw42pe";
const WEBHOOK_PATH: &str = "WebhookS3cretPath42";
const WEBHOOK_QUERY: &str = "QueryS3cret77";
const HOOK_PASSWORD: &str = "HookPassw0rd-55";
const HOOK_KEY: &str = "HookKeyS3cret66";
const UNRELATED: &str = "EnvOnlyS3cret-31";

fn scan_run(auth: PromAuth) {
    let dir = tempfile::tempdir().unwrap();
    let prom_auth = Arc::new(Mutex::new(Vec::new()));
    let flag_auth = Arc::new(Mutex::new(Vec::new()));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let prom = fake_prometheus(prom_auth.clone());
    let flags = fake_flags(flag_auth.clone());
    let hook = fake_webhook(bodies.clone());
    let token_file = dir.path().join("prom.token");
    std::fs::write(&token_file, format!("{PROM_TOKEN}\n")).unwrap();
    let flag_file = dir.path().join("flag.token");
    std::fs::write(&flag_file, FLAG_TOKEN).unwrap();
    let (prom_url, prom_token) = match auth {
        PromAuth::Userinfo => (
            format!("http://{PROM_USER}:{PROM_PASSWORD}@{prom}"),
            String::new(),
        ),
        PromAuth::TokenEnv => (
            format!("http://{prom}"),
            "token_env = \"COALMINE_TEST_PROM_TOKEN\"".to_string(),
        ),
        PromAuth::TokenFile => (
            format!("http://{prom}"),
            format!("token_file = \"{}\"", token_file.display()),
        ),
    };
    // The flag token comes from the environment in one run, from a file in the others.
    let flag_token = if matches!(auth, PromAuth::TokenEnv) {
        format!("token_file = \"{}\"", flag_file.display())
    } else {
        "token_env = \"COALMINE_TEST_FLAG_TOKEN\"".to_string()
    };
    let policy = format!(
        r#"name = "secrets"

[rollout]
steps = [50, 100]
step_duration = "1s"
analysis_interval = "1s"
min_requests = 1
deadline = "60s"

[traffic]
type = "http"
url = "http://{flags}/flag"
body = '{{"rollout": {{{{percent}}}}}}'
{flag_token}
read_url = "http://{flags}/flag"
read_pointer = "/rollout"

[metrics]
type = "prometheus"
url = "{prom_url}"
{prom_token}

[[metric]]
name = "errors"
events = 'sum(increase(errs{{track="{{{{arm}}}}"}}[{{{{window}}}}]))'
trials = 'sum(increase(reqs{{track="{{{{arm}}}}"}}[{{{{window}}}}]))'

[[hook]]
name = "print-env"
when = "pre-rollout"
command = ["env"]

[[hook]]
name = "ping"
when = "pre-rollout"
http = "http://hookuser:{HOOK_PASSWORD}@{hook}/health?api_key={HOOK_KEY}"

[[hook]]
name = "print-env-and-fail"
when = "promoted"
command = ["sh", "-c", "env >&2; exit 3"]

[notify]
webhook = "http://{hook}/services/T0001/B0002/{WEBHOOK_PATH}?token={WEBHOOK_QUERY}"
"#
    );
    let policy_path = dir.path().join("secrets.toml");
    std::fs::write(&policy_path, &policy).unwrap();
    let decisions = dir.path().join("decisions.jsonl");
    let mut child = Command::new(BIN)
        .arg("run")
        .arg(&policy_path)
        .args(["--json", "--status-addr", "127.0.0.1:0", "--decisions"])
        .arg(&decisions)
        .env("COALMINE_TEST_PROM_TOKEN", PROM_TOKEN)
        .env("COALMINE_TEST_FLAG_TOKEN", FLAG_TOKEN)
        .env("UNRELATED_SECRET", UNRELATED)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // stderr is read line by line to find the status server, then polled until the end.
    let stderr = child.stderr.take().unwrap();
    let err_text = Arc::new(Mutex::new(String::new()));
    let status_addr: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let reader = {
        let (err_text, status_addr) = (err_text.clone(), status_addr.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("coalmine: status server on http://") {
                    *status_addr.lock().unwrap() = a.trim().parse().ok();
                }
                let mut t = err_text.lock().unwrap();
                t.push_str(&line);
                t.push('\n');
            }
        })
    };
    let mut statuses = Vec::new();
    let mut out = String::new();
    let mut stdout = child.stdout.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    for _ in 0..600 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if let Some(a) = *status_addr.lock().unwrap()
            && let Some(s) = http_get(a, "/status")
        {
            statuses.push(s);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = child.wait().unwrap();
    reader.join().unwrap();
    out.push_str(&out_reader.join().unwrap());
    let stderr = err_text.lock().unwrap().clone();
    let log = std::fs::read_to_string(&decisions).unwrap_or_default();
    let bodies = bodies.lock().unwrap().clone();

    // The run worked and every channel was exercised, so the scan means something.
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        prom_auth.lock().unwrap().iter().any(|a| !a.is_empty()),
        "Prometheus got credentials"
    );
    assert!(
        flag_auth
            .lock()
            .unwrap()
            .iter()
            .any(|a| a == &format!("Bearer {FLAG_TOKEN}")),
        "the flag service got the token"
    );
    assert!(
        log.contains("PATH=") && log.contains("COALMINE_ROLLOUT=secrets"),
        "{log}"
    );
    assert!(log.contains("hook-failed"), "{log}");
    assert!(!statuses.is_empty(), "/status was read");
    assert!(bodies.len() > 3, "webhook bodies: {}", bodies.len());
    assert!(stderr.contains("notification rejected"), "{stderr}");
    let basic = base64(&format!("{PROM_USER}:{PROM_PASSWORD}"));
    let channels = [
        ("stderr", stderr.as_str()),
        ("stdout", out.as_str()),
        ("decision log", log.as_str()),
        ("webhook bodies", &bodies.join("\n")),
        ("/status", &statuses.join("\n")),
    ];
    for (channel, text) in channels {
        for secret in [
            PROM_USER,
            PROM_PASSWORD,
            basic.as_str(),
            PROM_TOKEN,
            FLAG_TOKEN,
            WEBHOOK_PATH,
            WEBHOOK_QUERY,
            HOOK_PASSWORD,
            HOOK_KEY,
            UNRELATED,
            "COALMINE_TEST_PROM_TOKEN=",
            "COALMINE_TEST_FLAG_TOKEN=",
        ] {
            assert!(
                !text.contains(secret),
                "{channel} holds `{secret}`:\n{}",
                text.lines()
                    .filter(|l| l.contains(secret))
                    .take(3)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    assert!(
        stderr.contains("***") && log.contains("***"),
        "redaction happened: {stderr}"
    );
}

/// Standard base64, to look for basic-auth credentials.
fn base64(s: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, c)| n | (u32::from(*c) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(A[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn r17_no_secret_reaches_any_channel_with_prometheus_userinfo() {
    scan_run(PromAuth::Userinfo);
}

#[test]
fn r17_no_secret_reaches_any_channel_with_prometheus_token_env() {
    scan_run(PromAuth::TokenEnv);
}

#[test]
fn r17_no_secret_reaches_any_channel_with_prometheus_token_file() {
    scan_run(PromAuth::TokenFile);
}
