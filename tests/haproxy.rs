//! End-to-end: the `haproxy` provider against a real HAProxy (Debian's `haproxy`) started
//! on free loopback ports, in front of two in-process backends.

mod common;

use coalmine::model::Weight;
use coalmine::policy::{HaproxyConfig, HaproxySocket};
use coalmine::traffic::haproxy::{HaproxyProvider, RuntimeApi};
use coalmine::traffic::{TrafficProvider, conformance};
use common::{Backends, Haproxy, assert_split, canary_answers, require_tool};
use std::time::Duration;

fn config(socket: HaproxySocket) -> HaproxyConfig {
    Haproxy::config(socket, Duration::from_secs(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_and_errors_against_real_haproxy() {
    let Some(bin) = require_tool("haproxy", "haproxy") else {
        return;
    };
    let backends = Backends::start(0.0).await;
    let h = Haproxy::start(&bin, &backends).await;
    let first = HaproxyProvider::new(&config(HaproxySocket::Unix(h.socket.clone())));
    assert_eq!(first.current().await.unwrap(), Weight::ZERO);
    for socket in [
        HaproxySocket::Unix(h.socket.clone()),
        HaproxySocket::Tcp(h.tcp_socket.to_string()),
    ] {
        let p = HaproxyProvider::new(&config(socket.clone()));
        p.preflight().await.unwrap();
        let res = Weight::try_from_bp(u32::from(p.resolution())).unwrap();
        let failures = conformance::check(&p, res).await;
        assert!(failures.is_empty(), "{socket}: {failures:#?}");
    }
    let p = HaproxyProvider::new(&config(HaproxySocket::Unix(h.socket.clone())));
    // HAProxy's own view agrees with the mapping.
    p.set_weight(Weight::try_from_percent(25.0).unwrap())
        .await
        .unwrap();
    let api = RuntimeApi::new(
        HaproxySocket::Unix(h.socket.clone()),
        Duration::from_secs(2),
    );
    let (b, c) =
        coalmine::traffic::haproxy::server_weights(Weight::try_from_percent(25.0).unwrap());
    assert_eq!(
        api.command("get weight checkout/canary")
            .await
            .unwrap()
            .trim(),
        format!("{c} (initial 0)")
    );
    assert_eq!(
        api.command("get weight checkout/stable")
            .await
            .unwrap()
            .trim(),
        format!("{b} (initial 256)")
    );

    // Unknown server: permanent.
    let mut cfg = config(HaproxySocket::Unix(h.socket.clone()));
    cfg.canary = "canary-v2".into();
    let bad = HaproxyProvider::new(&cfg);
    assert!(conformance::check_failure(&bad, false).await.is_empty());
    assert_eq!(
        bad.current().await.unwrap_err().to_string(),
        "provider `haproxy`: server `checkout/canary-v2` not found"
    );
    // Canary in maintenance: a weight above 0 is refused (permanent), 0 is fine.
    assert_eq!(
        api.command("set server checkout/canary state maint")
            .await
            .unwrap()
            .trim(),
        ""
    );
    let failures = conformance::check_failure(&p, false).await;
    assert!(failures.is_empty(), "{failures:?}");
    let e = p
        .set_weight(Weight::try_from_percent(5.0).unwrap())
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("server `checkout/canary` is in maintenance (MAINT)"),
        "{e}"
    );
    p.set_weight(Weight::ZERO).await.unwrap();
    assert_eq!(p.current().await.unwrap(), Weight::ZERO);
    api.command("set server checkout/canary state ready")
        .await
        .unwrap();
    p.set_weight(Weight::try_from_percent(5.0).unwrap())
        .await
        .unwrap();
    // HAProxy gone: transient.
    drop(h);
    let failures = conformance::check_failure(&p, true).await;
    assert!(failures.is_empty(), "{failures:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observed_split_follows_the_weight() {
    let Some(bin) = require_tool("haproxy", "haproxy") else {
        return;
    };
    let backends = Backends::start(0.0).await;
    let h = Haproxy::start(&bin, &backends).await;
    let p = HaproxyProvider::new(&config(HaproxySocket::Unix(h.socket.clone())));
    let n = 2000;
    for pct in [5.0, 25.0, 100.0, 0.0] {
        p.set_weight(Weight::try_from_percent(pct).unwrap())
            .await
            .unwrap();
        let (canary, failed) = canary_answers(h.frontend, n).await;
        assert_eq!(failed, 0, "requests through haproxy failed");
        assert_split(pct, canary, n, "haproxy");
    }
}
