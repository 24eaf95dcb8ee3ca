//! The status server of a running rollout: health, status and metrics while it runs, an
//! approval gate released with POST /approve, POST /pause and /resume, and POST /abort
//! rolling back.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::support::{coalmine, root};

pub(crate) fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// One HTTP/1.1 request as a deliberate client sends it (`Content-Type: application/json`);
/// returns (status, body), or None when nothing listens.
pub(crate) fn http(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    http_with(addr, method, path, "Content-Type: application/json\r\n")
}

/// One HTTP/1.1 request with `headers` (each line ending in CRLF).
pub(crate) fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// Polls `/status` until `pred` holds (or panics after 40 s).
#[expect(
    clippy::disallowed_methods,
    reason = "polling a child process from a synchronous test"
)]
pub(crate) fn wait_for(
    addr: SocketAddr,
    child: &mut Child,
    pred: impl Fn(&serde_json::Value) -> bool,
) {
    for _ in 0..400 {
        if let Some((200, body)) = http(addr, "GET", "/status")
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&body)
            && pred(&v)
        {
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the rollout ended early"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("status never matched");
}

pub(crate) fn start(policy_extra: &str, addr: SocketAddr) -> (Child, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(root().join("policies/demo.toml")).unwrap();
    let policy = base.replace("[rollout]\n", &format!("[rollout]\n{policy_extra}\n"));
    let path = dir.path().join("gated.toml");
    std::fs::write(&path, policy).unwrap();
    let child = coalmine()
        .args(["demo", "--quiet", "--json", "--status-addr"])
        .arg(addr.to_string())
        .arg("--policy")
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (child, dir)
}

pub(crate) fn finish(child: Child) -> (i32, serde_json::Value) {
    let out = child.wait_with_output().unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
    });
    (out.status.code().unwrap_or(-1), json)
}

#[test]
fn an_approval_gate_holds_until_an_operator_approves() {
    let addr = free_addr();
    let (mut child, _dir) = start("approval = \"promotion\"", addr);
    wait_for(addr, &mut child, |v| {
        v["last_decision"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("waiting for an operator to approve the promotion"))
    });
    assert_eq!(http(addr, "GET", "/health/live").unwrap().0, 200);
    assert_eq!(http(addr, "GET", "/health/ready").unwrap().0, 200);
    let (code, metrics) = http(addr, "GET", "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("coalmine_canary_weight_percent{rollout=\"demo\"} 25"),
        "{metrics}"
    );
    assert!(metrics.contains("coalmine_metric_log_evalue{rollout=\"demo\",metric=\"error-rate\"}"));
    assert_eq!(http(addr, "GET", "/nope").unwrap().0, 404);
    assert_eq!(http(addr, "GET", "/approve").unwrap().0, 405);
    assert_eq!(http(addr, "POST", "/approve").unwrap().0, 202);
    let (code, json) = finish(child);
    assert_eq!(code, 0, "{json}");
    assert_eq!(json["outcome"], "promoted");
}

#[test]
fn abort_through_the_status_server_rolls_back() {
    let addr = free_addr();
    let (mut child, _dir) = start("", addr);
    wait_for(addr, &mut child, |v| {
        v["ticks"].as_u64().is_some_and(|t| t >= 2)
    });
    assert_eq!(http(addr, "POST", "/abort").unwrap().0, 202);
    let (code, json) = finish(child);
    assert_eq!(code, 1, "{json}");
    assert_eq!(json["reason"]["cause"], "aborted");
    assert_eq!(json["final_weight"], 0.0);
}

#[test]
fn approval_without_a_status_server_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(root().join("policies/demo.toml")).unwrap();
    let path = dir.path().join("gated.toml");
    std::fs::write(
        &path,
        base.replace("[rollout]\n", "[rollout]\napproval = \"every-step\"\n"),
    )
    .unwrap();
    let out = coalmine()
        .args(["demo", "--quiet", "--policy"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--status-addr"));
}

#[test]
#[expect(
    clippy::disallowed_methods,
    reason = "waiting on a child process from a synchronous test"
)]
fn pause_holds_the_weight_until_resume() {
    let addr = free_addr();
    let (mut child, _dir) = start("", addr);
    wait_for(addr, &mut child, |v| {
        v["ticks"].as_u64().is_some_and(|t| t >= 2)
    });
    assert_eq!(http(addr, "POST", "/resume").unwrap().0, 409, "not paused");
    assert_eq!(http(addr, "POST", "/pause").unwrap().0, 202);
    wait_for(addr, &mut child, |v| v["phase"] == "paused");
    let weight = |addr| {
        let (_, body) = http(addr, "GET", "/status").unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        (
            v["weight"].as_f64().unwrap(),
            v["phase"].as_str().unwrap().to_string(),
        )
    };
    let (held, _) = weight(addr);
    // Longer than a step (8 s in the demo policy): a running rollout would have moved on.
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(weight(addr), (held, "paused".to_string()));
    assert_eq!(
        http(addr, "POST", "/pause").unwrap().0,
        409,
        "already paused"
    );
    assert_eq!(http(addr, "POST", "/resume").unwrap().0, 202);
    let (code, json) = finish(child);
    assert_eq!(code, 0, "{json}");
    assert_eq!(json["outcome"], "promoted");
}

/// Issue 17: a web page could approve a gate, because a browser sends a cross-origin
/// `POST /approve` with `Content-Type: text/plain` without asking. Such requests (and forms)
/// are refused now, and the rollout keeps waiting; a deliberate JSON request approves.
#[test]
fn a_browser_simple_request_neither_approves_nor_aborts() {
    let addr = free_addr();
    let (mut child, _dir) = start("approval = \"promotion\"", addr);
    let waiting = |v: &serde_json::Value| {
        v["last_decision"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("waiting for an operator to approve the promotion"))
    };
    wait_for(addr, &mut child, waiting);
    let evil = "Origin: http://evil.example\r\n";
    for (path, headers, expect) in [
        (
            "/approve",
            format!("{evil}Content-Type: text/plain\r\n"),
            403,
        ),
        ("/approve", "Content-Type: text/plain\r\n".to_string(), 415),
        (
            "/approve",
            "Content-Type: application/x-www-form-urlencoded\r\n".to_string(),
            415,
        ),
        ("/approve", String::new(), 415),
        (
            "/approve",
            format!("{evil}Content-Type: application/json\r\n"),
            403,
        ),
        ("/abort", format!("{evil}Content-Type: text/plain\r\n"), 403),
        ("/abort", "Content-Type: text/plain\r\n".to_string(), 415),
    ] {
        let (code, body) = http_with(addr, "POST", path, &headers).unwrap();
        assert_eq!(code, expect, "{path} with {headers:?}: {body}");
    }
    // Still waiting, neither promoted nor rolled back.
    #[expect(clippy::disallowed_methods, reason = "waiting on a child process")]
    std::thread::sleep(Duration::from_millis(1500));
    let (_, status) = http(addr, "GET", "/status").unwrap();
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert!(waiting(&v) && v["finished"] == false, "{v}");
    assert_eq!(v["weight"], 25.0, "{v}");
    // The same origin and a JSON body: approved.
    let own = format!("Origin: http://{addr}\r\nContent-Type: application/json\r\n");
    assert_eq!(http_with(addr, "POST", "/approve", &own).unwrap().0, 202);
    let (code, json) = finish(child);
    assert_eq!(code, 0, "{json}");
    assert_eq!(json["outcome"], "promoted");
}
