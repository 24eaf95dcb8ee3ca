//! Rollback actuation per traffic provider: the time from a Fail verdict to canary weight
//! 0 being in force (a benchmark, not a test: it prints two tables and asserts nothing).
//!
//! After a Fail verdict the controller's pure step function returns `Apply(0)` (well under
//! a millisecond) and the shell calls `set_weight(0)` then reads back `current()`: that
//! pair is the **apply** column. For the proxies (the built-in one, HAProxy, nginx) the
//! **observed** column is when the proxy itself stops sending requests to the canary: from
//! the start of `set_weight(0)` until the first of 8 consecutive fresh-connection requests
//! answered by the baseline (with the canary at 25 % before, a round-robin split cannot give
//! 8 baseline answers in a row; at 100 % before, every answer came from the canary).
//!
//! Two tables: a canary rolled back from 25 %, and blue-green's switch back from 100 %
//! (green, the canary, had all the traffic: issue 13).
//!
//! Run with `cargo bench --bench rollback` (HAProxy and nginx are skipped when missing).

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use coalmine::model::Weight;
use coalmine::policy::{ExecConfig, HttpConfig, HttpRead, ProxyConfig, Template, Upstream};
use coalmine::traffic::TrafficProvider;
use coalmine::traffic::exec::ExecProvider;
use coalmine::traffic::haproxy::HaproxyProvider;
use coalmine::traffic::http::HttpProvider;
use coalmine::traffic::nginx::NginxProvider;
use coalmine::traffic::proxy::ProxyHandle;
use common::{Backends, FlagService, Haproxy, Nginx, find_tool};
use tokio::time::Instant;

const ROUNDS: usize = 20;

/// Milliseconds.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median, 90th percentile and maximum.
fn summary(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return format!("{:>8} {:>8} {:>8}", "-", "-", "-");
    }
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    format!("{:>8.2} {:>8.2} {:>8.2}", q(0.5), q(0.9), v[v.len() - 1])
}

/// One HTTP/1.0 request on a fresh connection; whether the canary answered.
async fn canary_answered(target: SocketAddr) -> Option<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(target).await.ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        .await
        .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.ok()?;
    let text = String::from_utf8_lossy(&out);
    let body = text.split("\r\n\r\n").nth(1)?;
    Some(body.starts_with("canary"))
}

/// Time until 8 consecutive requests reach the baseline, measured from `start`.
async fn observed_zero(target: SocketAddr, start: Instant) -> Duration {
    let mut run_start = None;
    let mut run = 0;
    loop {
        let t = Instant::now();
        if canary_answered(target).await == Some(false) {
            run_start.get_or_insert(t);
            run += 1;
            if run == 8 {
                return run_start.map_or(Duration::ZERO, |r| r - start);
            }
        } else {
            run = 0;
            run_start = None;
        }
    }
}

/// The canary's weights a rollback starts from: a canary step, blue-green's 100 %.
const FROM: [f64; 2] = [25.0, 100.0];

/// Rounds of: `from` % (settled), then the timed rollback to 0 %.
async fn measure<P: TrafficProvider>(
    p: &P,
    from: f64,
    frontend: Option<SocketAddr>,
    settle: impl AsyncFn(),
) -> (Vec<f64>, Vec<f64>) {
    let (mut apply, mut observed) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        p.set_weight(Weight::try_from_percent(from).unwrap())
            .await
            .unwrap();
        settle().await;
        if from == 100.0
            && let Some(f) = frontend
        {
            // Green had all the traffic before the switch back.
            assert_eq!(canary_answered(f).await, Some(true), "100 % in force");
        }
        let t0 = Instant::now();
        p.set_weight(Weight::ZERO).await.unwrap();
        assert_eq!(p.current().await.unwrap(), Weight::ZERO);
        apply.push(ms(t0.elapsed()));
        if let Some(f) = frontend {
            observed.push(ms(observed_zero(f, t0).await));
        }
    }
    (apply, observed)
}

/// The rows of the two tables (from 25 %, from 100 %).
#[derive(Default)]
struct Tables([Vec<String>; 2]);

impl Tables {
    /// Measures `p` from each weight of [`FROM`] and adds its rows.
    async fn add<P: TrafficProvider>(
        &mut self,
        name: &str,
        p: &P,
        frontend: Option<SocketAddr>,
        settle: impl AsyncFn(),
    ) {
        for (i, from) in FROM.into_iter().enumerate() {
            let (apply, observed) = measure(p, from, frontend, &settle).await;
            self.0[i].push(format!(
                "| {name:<8} | {} | {} |",
                summary(apply),
                summary(observed)
            ));
        }
    }

    fn skip(&mut self, name: &str, why: &str) {
        for t in &mut self.0 {
            t.push(format!("| {name:<8} | skipped: {why} |"));
        }
    }

    fn print(&self) {
        for (from, rows) in FROM.iter().zip(&self.0) {
            println!();
            println!(
                "rollback actuation from {from} %, {ROUNDS} rounds each, milliseconds (median, p90, max)"
            );
            println!(
                "| provider | apply: median      p90      max | observed: median   p90      max |"
            );
            println!(
                "|----------|--------------------------------|-----------------------------------|"
            );
            for r in rows {
                println!("{r}");
            }
        }
    }
}

async fn no_settle() {}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut tables = Tables::default();
    let backends = Backends::start(0.0).await;

    let proxy = ProxyHandle::start(
        &ProxyConfig {
            upstream_timeout: Duration::from_secs(5),
            ..ProxyConfig::new(
                "127.0.0.1:0".parse().unwrap(),
                upstream(backends.baseline.addr()),
                upstream(backends.canary.addr()),
            )
        },
        Some(1),
    )
    .await
    .unwrap();
    tables
        .add("proxy", &proxy.provider(), Some(proxy.addr()), no_settle)
        .await;

    if let Some(bin) = find_tool("haproxy") {
        let h = Haproxy::start(&bin, &backends).await;
        let p = HaproxyProvider::new(&h.unix_config(Duration::from_secs(5)));
        tables.add("haproxy", &p, Some(h.frontend), no_settle).await;
    } else {
        tables.skip("haproxy", "haproxy not found");
    }

    if let Some(bin) = find_tool("nginx") {
        let n = Nginx::start(&bin, &backends).await;
        let p = NginxProvider::new(&n.config(&backends, None, Duration::from_secs(10)));
        // Before each timed rollback, let the reload to 25 % or 100 % finish (old worker
        // gone).
        let settle = async || {
            let before = n.workers();
            for _ in 0..500 {
                let now = n.workers();
                if now.len() == 1 && now != before {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tables.add("nginx", &p, Some(n.frontend), settle).await;
    } else {
        tables.skip("nginx", "nginx not found");
    }

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("weight");
    let set = script(
        dir.path(),
        "set",
        &format!("echo \"$1\" > {0}.tmp && mv {0}.tmp {0}", state.display()),
    );
    let get = script(dir.path(), "get", &format!("cat {}", state.display()));
    let p = ExecProvider::new(&ExecConfig {
        command: vec![
            Template::parse(&set).unwrap(),
            Template::parse("{{percent}}").unwrap(),
        ],
        read_command: Some(vec![get]),
        timeout: Duration::from_secs(10),
        resolution: Weight::try_from_bp(1).unwrap(),
        transient_exit_codes: vec![75],
        env: Vec::new(),
    });
    tables.add("exec", &p, None, no_settle).await;

    let flags = FlagService::start().await;
    let url = format!("http://{}/flag", flags.addr);
    let p = HttpProvider::new(&HttpConfig {
        method: "PUT".into(),
        url: Template::parse(&url).unwrap(),
        headers: vec![],
        body: Some(Template::parse(r#"{"rollout": {{percent}}}"#).unwrap()),
        token: None,
        token_header: "Authorization".into(),
        token_prefix: "Bearer ".into(),
        success_statuses: vec![],
        timeout: Duration::from_secs(10),
        resolution: Weight::try_from_bp(1).unwrap(),
        read: Some(HttpRead {
            url,
            pointer: "/rollout".into(),
        }),
    })
    .unwrap();
    tables.add("http", &p, None, no_settle).await;
    proxy.shutdown().await;
    tables.print();
}

fn upstream(addr: SocketAddr) -> Upstream {
    Upstream {
        url: format!("http://{addr}"),
        authority: addr.to_string(),
    }
}

fn script(dir: &std::path::Path, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p.display().to_string()
}
