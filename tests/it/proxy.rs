//! The built-in proxy over real HTTP: the observed split follows the weight within binomial
//! bounds, a weight change keeps connections open, and an unreachable upstream is counted
//! as an error.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use coalmine::demo::service::{Behaviour, Service};
use coalmine::model::Weight;
use coalmine::policy::{ProxyConfig, Readiness, Upstream};
use coalmine::traffic::TrafficProvider;
use coalmine::traffic::proxy::{ARM_HEADER, ProxyHandle};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

fn behaviour(track: &str, seed: u64) -> Behaviour {
    Behaviour {
        track: track.to_string(),
        error_rate: 0.0,
        median: Duration::from_micros(100),
        sigma: 0.1,
        seed,
    }
}

fn upstream(addr: SocketAddr) -> Upstream {
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
    let cfg = ProxyConfig {
        listen: any,
        baseline: upstream(b.addr()),
        canary: upstream(c.addr()),
        upstream_timeout: Duration::from_secs(5),
        readiness: Readiness::default(),
    };
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
        listen: any,
        baseline: upstream(b.addr()),
        canary: upstream(dead),
        upstream_timeout: Duration::from_secs(2),
        readiness: Readiness::default(),
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
