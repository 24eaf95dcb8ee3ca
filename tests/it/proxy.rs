//! The built-in proxy over real HTTP: the observed split follows the weight within binomial
//! bounds, a weight change keeps connections open, an unreachable upstream is counted as an
//! error, a body that breaks after the headers is an error too, latency is measured to the
//! last byte, and failed requests stay out of the latency histogram.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crate::hostile::raw_http::scripted_backend;
use crate::support::{run, text};
use bytes::Bytes;
use coalmine::analysis::Observation;
use coalmine::demo::service::{Behaviour, BodyMode, Service};
use coalmine::metrics::builtin::BuiltinSource;
use coalmine::metrics::{MetricsSource, Window};
use coalmine::model::Weight;
use coalmine::policy::{MetricConfig, ProxyConfig, Upstream};
use coalmine::traffic::TrafficProvider;
use coalmine::traffic::proxy::{ARM_HEADER, ProxyHandle};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A healthy demo backend answering in about 100 µs.
pub(crate) fn behaviour(track: &str, seed: u64) -> Behaviour {
    Behaviour {
        track: track.to_string(),
        error_rate: 0.0,
        median: Duration::from_micros(100),
        sigma: 0.1,
        slow_tail: 1.0,
        seed,
        body: BodyMode::Complete,
    }
}

/// `http://{addr}`.
pub(crate) fn upstream(addr: SocketAddr) -> Upstream {
    Upstream {
        url: format!("http://{addr}"),
        authority: addr.to_string(),
    }
}

/// Sends `n` requests over one keep-alive client; returns canary answers and statuses.
async fn send(proxy: SocketAddr, n: usize) -> (usize, Vec<u16>) {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut canary = 0;
    let mut statuses = Vec::new();
    for _ in 0..n {
        let req = hyper::Request::get(format!("http://{proxy}/x"))
            .body(Empty::new())
            .unwrap();
        let resp = client.request(req).await.expect("proxy answers");
        statuses.push(resp.status().as_u16());
        if resp
            .headers()
            .get(ARM_HEADER)
            .is_some_and(|v| v == "canary")
        {
            canary += 1;
        }
        let _ = resp.into_body().collect().await;
    }
    (canary, statuses)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observed_split_follows_the_weight() {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let b = Service::start(any, behaviour("baseline", 1)).await.unwrap();
    let c = Service::start(any, behaviour("canary", 2)).await.unwrap();
    let cfg = ProxyConfig::new(any, upstream(b.addr()), upstream(c.addr()));
    let proxy = ProxyHandle::start(&cfg, None).await.unwrap();
    let provider = proxy.provider();
    let n = 1500;
    for pct in [5.0, 25.0, 100.0, 0.0] {
        provider
            .set_weight(Weight::try_from_percent(pct).unwrap())
            .await
            .unwrap();
        let (canary, statuses) = send(proxy.addr(), n).await;
        assert!(statuses.iter().all(|s| *s == 200), "{pct}%: {statuses:?}");
        let p = pct / 100.0;
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        // Five standard deviations: a false failure has probability below 1e-6.
        assert!(
            (canary as f64 - n as f64 * p).abs() <= 5.0 * sd + 1e-9,
            "{pct}%: {canary} of {n} went to the canary"
        );
    }
    // The counters saw every request, split by the weight each was routed with.
    let snap = proxy.state().snapshot();
    let total: u64 = snap
        .iter()
        .map(|e| e.arms[0].requests + e.arms[1].requests)
        .sum();
    assert_eq!(total, 4 * n as u64);
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_and_an_error() {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let b = Service::start(any, behaviour("baseline", 1)).await.unwrap();
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind(any)
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = ProxyConfig {
        upstream_timeout: Duration::from_secs(2),
        ..ProxyConfig::new(any, upstream(b.addr()), upstream(dead))
    };
    let proxy = ProxyHandle::start(&cfg, Some(3)).await.unwrap();
    proxy.provider().set_weight(Weight::FULL).await.unwrap();
    let (_, statuses) = send(proxy.addr(), 5).await;
    assert!(statuses.iter().all(|s| *s == 502), "{statuses:?}");
    let snap = proxy.state().snapshot();
    let canary = &snap.last().unwrap().arms[1];
    assert_eq!((canary.requests, canary.errors), (5, 5));
    proxy.shutdown().await;
}

/// What one request through the proxy gave the client.
#[derive(Debug)]
struct Answer {
    arm: String,
    status: u16,
    /// The whole body arrived.
    body_ok: bool,
}

/// Sends `n` concurrent GETs (each bounded by 20 s) and returns what the client saw.
async fn send_concurrently(proxy: SocketAddr, n: usize) -> Vec<Answer> {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let req = hyper::Request::get(format!("http://{proxy}/x"))
                    .body(Empty::new())
                    .unwrap();
                let answer = async {
                    let resp = client.request(req).await.expect("proxy answers");
                    let arm = resp
                        .headers()
                        .get(ARM_HEADER)
                        .map(|v| v.to_str().unwrap().to_string())
                        .unwrap_or_default();
                    let status = resp.status().as_u16();
                    let body_ok = resp.into_body().collect().await.is_ok();
                    Answer {
                        arm,
                        status,
                        body_ok,
                    }
                };
                tokio::time::timeout(Duration::from_secs(20), answer)
                    .await
                    .expect("the proxy ends every answer within 20 s")
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// The policy's builtin metrics: `errors` (counts) and `latency` (histogram).
fn builtin_metrics() -> (MetricConfig, MetricConfig) {
    let text = "name = \"t\"\n[rollout]\nsteps = [50, 100]\nstep_duration = \"10s\"\n\
        analysis_interval = \"1s\"\n[traffic]\ntype = \"proxy\"\nlisten = \"127.0.0.1:0\"\n\
        baseline = \"http://127.0.0.1:1\"\ncanary = \"http://127.0.0.1:2\"\n[metrics]\n\
        type = \"builtin\"\n[[metric]]\nname = \"errors\"\nbuiltin = \"errors\"\n\
        [[metric]]\nname = \"latency\"\nbuiltin = \"latency\"\n";
    let mut p = coalmine::policy::parse(text, "test.toml").unwrap();
    let latency = p.metrics.pop().unwrap();
    let errors = p.metrics.pop().unwrap();
    (errors, latency)
}

/// Per arm `(baseline, canary)`: (error events, trials) and the latency histogram's total.
async fn builtin_view(src: &BuiltinSource, seq: u64, weight: Weight) -> [(f64, f64, f64); 2] {
    let (errors, latency) = builtin_metrics();
    let window = Window {
        seq,
        start: SystemTime::UNIX_EPOCH,
        end: SystemTime::UNIX_EPOCH,
        weight,
    };
    let e = src.fetch(&errors, &window).await.unwrap();
    let l = src.fetch(&latency, &window).await.unwrap();
    let mut out = [(0.0, 0.0, 0.0); 2];
    for s in &e.segments {
        for (i, o) in [&s.baseline, &s.canary].into_iter().enumerate() {
            if let Observation::Counts(c) = o {
                out[i].0 += c.events;
                out[i].1 += c.trials;
            }
        }
    }
    for s in &l.segments {
        for (i, o) in [&s.baseline, &s.canary].into_iter().enumerate() {
            out[i].2 += o.trials().unwrap_or(0.0);
        }
    }
    out
}

fn half() -> Weight {
    Weight::try_from_percent(50.0).unwrap()
}

/// Issue 10 item 3: a canary that sends 200 headers and then breaks the body (reset,
/// truncated against Content-Length, stalled past the upstream timeout) is counted as
/// failing every request, and none of its broken requests lands in the latency histogram.
/// Before the fix the proxy counted each of them as a fast success when the headers came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_broken_after_the_headers_is_an_error_and_no_latency() {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    for mode in [
        BodyMode::ResetMidBody,
        BodyMode::Truncated,
        BodyMode::Stalled,
    ] {
        let b = Service::start(any, behaviour("baseline", 1)).await.unwrap();
        let c = Service::start(
            any,
            Behaviour {
                body: mode,
                ..behaviour("canary", 2)
            },
        )
        .await
        .unwrap();
        let cfg = ProxyConfig {
            upstream_timeout: Duration::from_secs(2),
            ..ProxyConfig::new(any, upstream(b.addr()), upstream(c.addr()))
        };
        let proxy = ProxyHandle::start(&cfg, Some(5)).await.unwrap();
        let src = BuiltinSource::new(proxy.state());
        proxy.provider().set_weight(half()).await.unwrap();
        let answers = send_concurrently(proxy.addr(), 80).await;
        let canary: Vec<&Answer> = answers.iter().filter(|a| a.arm == "canary").collect();
        assert!(canary.len() >= 10, "{mode:?}: {answers:?}");
        // The client sees the break too: the proxy never completes a broken body (and a
        // loaded machine may turn a slow header into a 504, an error as well).
        assert!(
            canary.iter().all(|a| !a.body_ok || a.status == 504),
            "{mode:?}: {canary:?}"
        );
        assert!(
            answers
                .iter()
                .filter(|a| a.arm == "baseline")
                .all(|a| a.status == 200 && a.body_ok),
            "{mode:?}: {answers:?}"
        );
        let [base, can] = builtin_view(&src, 0, half()).await;
        assert_eq!(can.1, canary.len() as f64, "{mode:?}: canary trials");
        assert_eq!(can.0, can.1, "{mode:?}: every canary request is an error");
        assert_eq!(
            can.2, 0.0,
            "{mode:?}: no failed request in the latency histogram"
        );
        assert_eq!(base.0, 0.0, "{mode:?}: baseline errors");
        assert_eq!(base.1 + can.1, 80.0, "{mode:?}");
        assert_eq!(
            base.2, base.1,
            "{mode:?}: every baseline request has a latency"
        );
        proxy.shutdown().await;
    }
}

/// Latency is measured to the last byte of the body, not to the headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_is_measured_to_the_last_byte() {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
    let slow = scripted_backend(head, Duration::from_millis(300), b"hello").await;
    let c = Service::start(any, behaviour("canary", 2)).await.unwrap();
    let cfg = ProxyConfig::new(any, upstream(slow), upstream(c.addr()));
    let proxy = ProxyHandle::start(&cfg, Some(5)).await.unwrap();
    let answers = send_concurrently(proxy.addr(), 5).await;
    assert!(
        answers.iter().all(|a| a.status == 200 && a.body_ok),
        "{answers:?}"
    );
    let snap = proxy.state().snapshot();
    let bounds = coalmine::analysis::histogram::log_bounds();
    let buckets = &snap[0].arms[0].buckets;
    let fast: u64 = buckets
        .iter()
        .zip(&bounds)
        .filter(|(_, b)| **b < 0.29)
        .map(|(c, _)| c)
        .sum();
    assert_eq!(buckets.iter().sum::<u64>(), 5);
    assert_eq!(
        fast, 0,
        "a body 300 ms after the headers is a 300 ms request: {buckets:?}"
    );
    proxy.shutdown().await;
}

/// A dead baseline's instant 502s are errors, not fast requests: they would make a healthy
/// canary look slower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_baseline_leaves_no_fast_latencies() {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let dead = std::net::TcpListener::bind(any)
        .unwrap()
        .local_addr()
        .unwrap();
    let c = Service::start(any, behaviour("canary", 2)).await.unwrap();
    let cfg = ProxyConfig::new(any, upstream(dead), upstream(c.addr()));
    let proxy = ProxyHandle::start(&cfg, Some(9)).await.unwrap();
    let src = BuiltinSource::new(proxy.state());
    proxy.provider().set_weight(half()).await.unwrap();
    let answers = send_concurrently(proxy.addr(), 60).await;
    let [base, can] = builtin_view(&src, 0, half()).await;
    assert!(base.1 >= 10.0 && can.1 >= 10.0, "{answers:?}");
    assert_eq!(base.0, base.1, "every baseline request failed");
    assert_eq!(base.2, 0.0, "no baseline latency from failed requests");
    assert_eq!((can.0, can.2), (0.0, can.1));
    proxy.shutdown().await;
}

/// End to end: `coalmine demo --scenario broken-bodies` (every canary body reset after its
/// 200 headers) rolls back on the builtin error metrics. It promoted before the fix.
#[test]
fn demo_broken_bodies_rolls_back() {
    let out = run(&["demo", "--scenario", "broken-bodies", "--json"]);
    let (stdout, stderr) = text(&out);
    let json: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is JSON ({e}):\n{stdout}\n{stderr}"));
    assert_eq!(out.status.code(), Some(1), "{json}\n{stderr}");
    assert_eq!(json["outcome"], "rolled-back", "{json}");
    assert_eq!(json["reason"]["cause"], "metric-failed", "{json}");
    let metric = json["reason"]["metric"].as_str().unwrap();
    assert!(
        metric == "error-rate" || metric == "error-ceiling",
        "{metric}: {json}"
    );
    assert_eq!(json["final_weight"], 0.0);
}

/// `[traffic]` keys of the proxy's client side: defaults, values, and named mistakes.
#[test]
fn client_limit_keys_have_defaults_and_bounds() {
    let policy = |extra: &str| {
        format!(
            "name = \"t\"\n[traffic]\ntype = \"proxy\"\nlisten = \"127.0.0.1:0\"\n\
             baseline = \"http://127.0.0.1:1\"\ncanary = \"http://127.0.0.1:2\"\n{extra}\
             [metrics]\ntype = \"builtin\"\n[[metric]]\nname = \"errors\"\nbuiltin = \"errors\"\n"
        )
    };
    let proxy = |extra: &str| match coalmine::policy::parse(&policy(extra), "t.toml") {
        Ok(p) => match p.traffic {
            coalmine::policy::TrafficConfig::Proxy(c) => Ok(c),
            other => panic!("{other:?}"),
        },
        Err(d) => Err(d.to_string()),
    };
    let d = proxy("").unwrap();
    assert_eq!(
        (d.header_read_timeout, d.idle_timeout, d.max_headers),
        (Duration::from_secs(10), Duration::from_secs(60), 100)
    );
    let c =
        proxy("header_read_timeout = \"2s\"\nidle_timeout = \"5m\"\nmax_headers = 300\n").unwrap();
    assert_eq!(
        (c.header_read_timeout, c.idle_timeout, c.max_headers),
        (Duration::from_secs(2), Duration::from_secs(300), 300)
    );
    let e = proxy("header_read_timeout = \"0s\"\nidle_timeout = \"0s\"\nmax_headers = 0\n")
        .unwrap_err();
    assert!(
        e.contains("t.toml:7:23: header_read_timeout must be positive"),
        "{e}"
    );
    assert!(
        e.contains("t.toml:8:16: idle_timeout must be positive"),
        "{e}"
    );
    assert!(
        e.contains("t.toml:9:15: max_headers must be between 1 and 10000, got 0"),
        "{e}"
    );
    let e = proxy("max_headers = 100000\n").unwrap_err();
    assert!(e.contains("got 100000"), "{e}");
}
