//! The built-in proxy against a direct connection and against nginx and HAProxy proxying the
//! same backends (a benchmark, not a test: it prints a table and asserts nothing).
//!
//! A closed-loop load: `CONNECTIONS` keep-alive connections, each sending its next request
//! as soon as the previous answer arrives, for `SECONDS` per target. The backends answer
//! after ~1 ms (tokio's timer granularity). Everything shares the machine's cores (load
//! generator, backends and proxy), so compare the rows with each other, not with other
//! machines. Run with `cargo bench --bench proxy`; nginx and HAProxy rows are skipped when
//! they are not installed.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use coalmine::model::Weight;
use coalmine::policy::{ProxyConfig, Upstream};
use coalmine::traffic::TrafficProvider;
use coalmine::traffic::haproxy::HaproxyProvider;
use coalmine::traffic::nginx::NginxProvider;
use coalmine::traffic::proxy::ProxyHandle;
use common::{Backends, Haproxy, Nginx, find_tool};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

const CONNECTIONS: usize = 32;
const SECONDS: u64 = 5;

struct Row {
    target: &'static str,
    requests: usize,
    errors: usize,
    latencies_us: Vec<u32>,
}

async fn load(target: SocketAddr) -> (usize, usize, Vec<u32>) {
    let end = Instant::now() + Duration::from_secs(SECONDS);
    let uri: hyper::Uri = format!("http://{target}/bench").parse().expect("uri");
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let uri = uri.clone();
        tasks.push(tokio::spawn(async move {
            let client: Client<HttpConnector, Empty<Bytes>> =
                Client::builder(TokioExecutor::new()).build(HttpConnector::new());
            let (mut ok, mut err, mut lat) = (0usize, 0usize, Vec::new());
            while Instant::now() < end {
                let t = Instant::now();
                let req = hyper::Request::get(uri.clone())
                    .body(Empty::new())
                    .expect("request");
                match client.request(req).await {
                    Ok(resp) => {
                        let failed = resp.status().is_server_error();
                        let _ = resp.into_body().collect().await;
                        if failed {
                            err += 1;
                        } else {
                            ok += 1;
                        }
                    }
                    Err(_) => err += 1,
                }
                lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
            }
            (ok, err, lat)
        }));
    }
    let (mut ok, mut err, mut lat) = (0, 0, Vec::new());
    for t in tasks {
        let (o, e, l) = t.await.expect("load task");
        ok += o;
        err += e;
        lat.extend(l);
    }
    (ok, err, lat)
}

fn pct(v: &[u32], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    f64::from(v[((v.len() - 1) as f64 * q).round() as usize]) / 1000.0
}

async fn measure(target: &'static str, addr: SocketAddr) -> Row {
    // Warm up connections and caches.
    let _ = tokio::time::timeout(Duration::from_secs(1), load(addr)).await;
    let (requests, errors, mut latencies_us) = load(addr).await;
    latencies_us.sort_unstable();
    Row {
        target,
        requests,
        errors,
        latencies_us,
    }
}

fn half() -> Weight {
    Weight::try_from_percent(50.0).expect("weight")
}

#[tokio::main]
async fn main() {
    let backends = Backends::start(0.0).await;
    let mut rows = Vec::new();
    rows.push(measure("direct to a backend", backends.baseline.addr()).await);

    let cfg = ProxyConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        Upstream {
            url: format!("http://{}", backends.baseline.addr()),
            authority: backends.baseline.addr().to_string(),
        },
        Upstream {
            url: format!("http://{}", backends.canary.addr()),
            authority: backends.canary.addr().to_string(),
        },
    );
    let proxy = ProxyHandle::start(&cfg, Some(1)).await.expect("proxy");
    proxy.provider().set_weight(half()).await.expect("weight");
    rows.push(measure("coalmine proxy (50%)", proxy.addr()).await);
    proxy.shutdown().await;

    if let Some(bin) = find_tool("nginx") {
        let nginx = Nginx::start(&bin, &backends).await;
        let p = NginxProvider::new(&nginx.config(&backends, None, Duration::from_secs(30)));
        let old = nginx.workers();
        p.set_weight(half()).await.expect("nginx weight");
        nginx.wait_reloaded(&old).await;
        rows.push(measure("nginx (50%)", nginx.frontend).await);
    } else {
        eprintln!("nginx not installed: skipped");
    }

    if let Some(bin) = find_tool("haproxy") {
        let h = Haproxy::start(&bin, &backends).await;
        let p = HaproxyProvider::new(&h.unix_config(Duration::from_secs(5)));
        p.set_weight(half()).await.expect("haproxy weight");
        rows.push(measure("haproxy (50%)", h.frontend).await);
    } else {
        eprintln!("haproxy not installed: skipped");
    }

    let direct = rows.first().map_or(f64::NAN, |r| pct(&r.latencies_us, 0.5));
    println!(
        "| target | requests/s | errors | p50 ms | p99 ms | added p50 ms |\n|---|---|---|---|---|---|"
    );
    for r in &rows {
        println!(
            "| {} | {:.0} | {} | {:.2} | {:.2} | {:.2} |",
            r.target,
            r.requests as f64 / SECONDS as f64,
            r.errors,
            pct(&r.latencies_us, 0.5),
            pct(&r.latencies_us, 0.99),
            pct(&r.latencies_us, 0.5) - direct
        );
    }
    println!(
        "\n{CONNECTIONS} keep-alive connections, {SECONDS} s per target, backends answering after ~1 ms. \
         Command: `cargo bench --bench proxy`."
    );
}
