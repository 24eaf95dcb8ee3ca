//! Resource limits of the built-in proxy (issue 17): header-read and idle timeouts close
//! slow-loris connections, a connection cap sheds idle connections first, a connection over
//! the cap with every other one busy gets a 503 that no arm is blamed for, the header limit
//! is configurable, and upgrades (WebSocket) go through to the arm the weight chose.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use coalmine::demo::service::{Behaviour, Service};
use coalmine::model::Weight;
use coalmine::net::ConnBudget;
use coalmine::policy::ProxyConfig;
use coalmine::traffic::TrafficProvider;
use coalmine::traffic::proxy::ProxyHandle;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

use crate::hostile::raw_http::{read_response, scripted_backend};
use crate::proxy::upstream;

fn behaviour(track: &str, seed: u64, median: Duration) -> Behaviour {
    Behaviour {
        median,
        sigma: 0.0,
        slow_tail: 1.0,
        ..crate::proxy::behaviour(track, seed)
    }
}

fn any() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn backends(median: Duration) -> (Service, Service) {
    (
        Service::start(any(), behaviour("baseline", 1, median))
            .await
            .unwrap(),
        Service::start(any(), behaviour("canary", 2, median))
            .await
            .unwrap(),
    )
}

fn with_timeouts(b: &Service, c: &Service, header: Duration, idle: Duration) -> ProxyConfig {
    ProxyConfig {
        header_read_timeout: header,
        idle_timeout: idle,
        ..ProxyConfig::new(any(), upstream(b.addr()), upstream(c.addr()))
    }
}

/// Whether the server closes `s` within `within` (reading gives EOF or an error).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 64];
    loop {
        match timeout(within, s.read(&mut b)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Forty slow-loris connections (twenty silent, twenty sending one header byte every
/// 100 ms) and a kept-alive connection gone quiet are all closed by the proxy's
/// header-read and idle timeouts; before, all of them stayed open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_connections_are_closed_by_the_timeouts() {
    let (b, c) = backends(Duration::from_micros(100)).await;
    let cfg = with_timeouts(
        &b,
        &c,
        Duration::from_millis(600),
        Duration::from_millis(1200),
    );
    let proxy = ProxyHandle::start_with_budget(&cfg, Some(1), ConnBudget::new(1000))
        .await
        .unwrap();
    let addr = proxy.addr();
    let start = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    let dribblers: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
                let (mut r, mut w) = s.split();
                let mut b = [0u8; 64];
                let end = Instant::now() + Duration::from_secs(5);
                loop {
                    tokio::select! {
                        n = r.read(&mut b) => if matches!(n, Ok(0) | Err(_)) { return true },
                        () = tokio::time::sleep(Duration::from_millis(100)) => {
                            if w.write_all(b"a").await.is_err() {
                                return true;
                            }
                        }
                    }
                    if Instant::now() > end {
                        return false;
                    }
                }
            })
        })
        .collect();
    // A well-behaved keep-alive client: one request, then quiet.
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, _, _) = read_response(&mut kept).await.unwrap();
    assert_eq!(status, 200);
    for (i, s) in silent.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(4)).await,
            "silent connection {i} still open after {:?}",
            start.elapsed()
        );
    }
    for (i, d) in dribblers.into_iter().enumerate() {
        assert!(d.await.unwrap(), "dribbling connection {i} still open");
    }
    assert!(
        closed_within(&mut kept, Duration::from_secs(4)).await,
        "idle kept-alive connection still open"
    );
    let local = proxy.state().local_stats();
    assert_eq!(local.server.header_timeouts, 40, "{local:?}");
    assert_eq!(local.server.idle_timeouts, 1, "{local:?}");
    // The timeouts are nobody's error: one request counted, a success.
    let snap = proxy.state().snapshot();
    let arms = &snap[0].arms;
    assert_eq!(
        (arms[0].requests + arms[1].requests, arms[0].errors),
        (1, 0)
    );
    proxy.shutdown().await;
}

/// At the connection cap, idle connections are shed so that every request of a
/// well-behaved client is served, and none is counted as an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_idle_connections_are_shed_and_every_request_is_served() {
    let (b, c) = backends(Duration::from_micros(100)).await;
    let cfg = with_timeouts(&b, &c, Duration::from_secs(60), Duration::from_secs(60));
    let budget = ConnBudget::new(20);
    let proxy = ProxyHandle::start_with_budget(&cfg, Some(2), budget.clone())
        .await
        .unwrap();
    proxy
        .provider()
        .set_weight(Weight::try_from_percent(50.0).unwrap())
        .await
        .unwrap();
    let addr = proxy.addr();
    let mut idle = Vec::new();
    for _ in 0..60 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // One connection per request, and a keep-alive client, 100 requests each.
    let mut ok = 0;
    for _ in 0..100 {
        let mut s = timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let r = timeout(Duration::from_secs(5), read_response(&mut s)).await;
        let (status, _, body) = r.unwrap().expect("an answer");
        assert_eq!(status, 200, "{body}");
        ok += 1;
    }
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    for _ in 0..100 {
        let req = hyper::Request::get(format!("http://{addr}/k"))
            .body(Empty::new())
            .unwrap();
        let resp = timeout(Duration::from_secs(5), client.request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.expect("whole body");
        ok += 1;
    }
    assert_eq!(ok, 200);
    assert!(budget.open() <= 20, "{} open", budget.open());
    let mut shed = 0;
    for s in &mut idle {
        if closed_within(s, Duration::from_millis(200)).await {
            shed += 1;
        }
    }
    assert!(shed >= 40, "only {shed} of 60 idle connections were shed");
    let local = proxy.state().local_stats();
    assert!(local.server.shed_idle >= 40, "{local:?}");
    assert_eq!(local.local_errors, 0, "{local:?}");
    let snap = proxy.state().snapshot();
    let (requests, errors): (u64, u64) = snap
        .iter()
        .flat_map(|e| e.arms.iter())
        .fold((0, 0), |(r, e), a| (r + a.requests, e + a.errors));
    assert_eq!((requests, errors), (200, 0));
    proxy.shutdown().await;
}

/// With every connection the cap allows busy, a new connection gets the proxy's own 503 and
/// is closed; it is a local error, counted against no arm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_cap_with_all_busy_a_503_that_blames_no_arm() {
    let (b, c) = backends(Duration::from_millis(1500)).await;
    let cfg = ProxyConfig::new(any(), upstream(b.addr()), upstream(c.addr()));
    let budget = ConnBudget::new(2);
    let proxy = ProxyHandle::start_with_budget(&cfg, Some(3), budget.clone())
        .await
        .unwrap();
    let addr = proxy.addr();
    let slow: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                read_response(&mut s).await.map(|r| r.0)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (status, head, body) = timeout(Duration::from_secs(5), read_response(&mut s))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 503, "{head}{body}");
    assert!(body.contains("every connection"), "{body}");
    for t in slow {
        assert_eq!(t.await.unwrap(), Some(200));
    }
    let local = proxy.state().local_stats();
    assert_eq!(
        (local.local_errors, local.server.rejected_at_cap),
        (1, 1),
        "{local:?}"
    );
    let a = &proxy.state().snapshot()[0].arms;
    assert_eq!((a[0].requests + a[1].requests, a[0].errors), (2, 0));
    proxy.shutdown().await;
}

fn request_with_headers(n: usize) -> Vec<u8> {
    let mut r = String::from("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for i in 0..n {
        let _ = write!(r, "X-H{i}: v\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// More than `max_headers` (default 100) request headers is a 431, counted against no arm;
/// `[traffic] max_headers` raises the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_limit_is_configurable() {
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let b = scripted_backend(ok, Duration::ZERO, b"").await;
    let c = scripted_backend(ok, Duration::ZERO, b"").await;
    for (max, sent, expect) in [(None, 150, 431), (Some(200), 150, 200), (Some(20), 30, 431)] {
        let mut cfg = ProxyConfig::new(any(), upstream(b), upstream(c));
        if let Some(m) = max {
            cfg.max_headers = m;
        }
        let proxy = ProxyHandle::start(&cfg, Some(4)).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(&request_with_headers(sent)).await.unwrap();
        let (status, _, _) = timeout(Duration::from_secs(5), read_response(&mut s))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status, expect, "max_headers {max:?}, {sent} sent");
        let a = &proxy.state().snapshot()[0].arms;
        assert_eq!(a[0].requests, u64::from(expect == 200));
        proxy.shutdown().await;
    }
}

/// A backend that accepts `Upgrade: echo` with a 101, then echoes every byte prefixed by
/// its name; a request without an upgrade gets a 400.
async fn echo_backend(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(any()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                if !head.contains("upgrade: echo") || !head.contains("connection: upgrade") {
                    let _ = s
                        .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
                    .await;
                loop {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let mut out = format!("{name}:").into_bytes();
                            out.extend_from_slice(&chunk[..n]);
                            if s.write_all(&out).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Upgrades (WebSocket and the like) go through to the arm the weight chose, are counted
/// once per upgrade, and the tunnel carries bytes both ways. Before, the proxy stripped
/// `Upgrade` and the backend saw a plain GET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_are_tunnelled_to_the_chosen_arm_and_counted_once() {
    let cfg = ProxyConfig::new(
        any(),
        upstream(echo_backend("baseline").await),
        upstream(echo_backend("canary").await),
    );
    let proxy = ProxyHandle::start(&cfg, Some(6)).await.unwrap();
    for (weight, arm) in [(Weight::FULL, "canary"), (Weight::ZERO, "baseline")] {
        proxy.provider().set_weight(weight).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
            .await
            .unwrap();
        let (status, head, _) = timeout(Duration::from_secs(5), read_response(&mut s))
            .await
            .unwrap()
            .unwrap();
        let head = head.to_ascii_lowercase();
        assert_eq!(status, 101, "{head}");
        assert!(head.contains(&format!("x-coalmine-arm: {arm}")), "{head}");
        assert!(head.contains("upgrade: echo"), "{head}");
        for msg in ["ping", "pong"] {
            s.write_all(msg.as_bytes()).await.unwrap();
            let mut b = vec![0u8; arm.len() + 1 + msg.len()];
            timeout(Duration::from_secs(5), s.read_exact(&mut b))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&b), format!("{arm}:{msg}"));
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let snap = proxy.state().snapshot();
    let count = |arm: usize| -> (u64, u64) {
        snap.iter()
            .map(|e| (e.arms[arm].requests, e.arms[arm].errors))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    };
    assert_eq!(count(0), (1, 0), "baseline: one upgrade, one request");
    assert_eq!(count(1), (1, 0), "canary: one upgrade, one request");
    proxy.shutdown().await;
}
