//! End-to-end: the `nginx` provider against a real nginx (Debian's `nginx-light`) started
//! as a foreground master on a free loopback port, in front of two in-process backends;
//! the provider's test and reload commands address that instance.

mod common;

use std::time::Duration;

use coalmine::model::Weight;
use coalmine::policy::NginxConfig;
use coalmine::traffic::nginx::NginxProvider;
use coalmine::traffic::{TrafficProvider, conformance};
use common::{Backends, Nginx, assert_split, canary_answers, require_tool};

fn config(n: &Nginx, backends: &Backends) -> NginxConfig {
    n.config(
        backends,
        Some("max_fails=3 fail_timeout=10s".into()),
        Duration::from_secs(10),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_and_errors_against_real_nginx() {
    let Some(bin) = require_tool("nginx", "nginx-light") else {
        return;
    };
    let backends = Backends::start(0.0).await;
    let n = Nginx::start(&bin, &backends).await;
    let p = NginxProvider::new(&config(&n, &backends));
    p.preflight().await.unwrap();
    assert_eq!(p.current().await.unwrap(), Weight::ZERO);
    let failures = conformance::check(&p, Weight::try_from_bp(1).unwrap()).await;
    assert!(failures.is_empty(), "{failures:#?}");

    // A parameter nginx rejects: the test fails, the old file stays, nginx's message is
    // in the (permanent) error.
    p.set_weight(Weight::try_from_percent(5.0).unwrap())
        .await
        .unwrap();
    let before = std::fs::read_to_string(&n.include).unwrap();
    let mut cfg = config(&n, &backends);
    cfg.server_params = Some("max_fails=lots".into());
    let bad = NginxProvider::new(&cfg);
    let failures = conformance::check_failure(&bad, false).await;
    assert!(failures.is_empty(), "{failures:?}");
    let e = bad.set_weight(Weight::FULL).await.unwrap_err();
    let text = e.to_string();
    assert!(text.contains("configuration test failed"), "{text}");
    assert!(
        text.contains("invalid parameter \"max_fails=lots\""),
        "{text}"
    );
    assert_eq!(std::fs::read_to_string(&n.include).unwrap(), before);
    assert_eq!(p.current().await.unwrap().bp(), 500);
    // nginx still serves (the bad file never reached a reload).
    let (_, failed) = canary_answers(n.frontend, 20).await;
    assert_eq!(failed, 0);

    // nginx gone (its files stay): the reload fails, transient, and the file is put back.
    let Nginx {
        dir: _dir, child, ..
    } = n;
    drop(child);
    let failures = conformance::check_failure(&p, true).await;
    assert!(failures.is_empty(), "{failures:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observed_split_follows_the_weight() {
    let Some(bin) = require_tool("nginx", "nginx-light") else {
        return;
    };
    let backends = Backends::start(0.0).await;
    let n = Nginx::start(&bin, &backends).await;
    let p = NginxProvider::new(&config(&n, &backends));
    let count = 2000;
    for pct in [5.0, 25.0, 100.0, 0.0] {
        let old = n.workers();
        p.set_weight(Weight::try_from_percent(pct).unwrap())
            .await
            .unwrap();
        // The reload is asynchronous: nginx starts a new worker and retires the old one
        // gracefully. Measure once the old one is gone.
        n.wait_reloaded(&old).await;
        let (canary, failed) = canary_answers(n.frontend, count).await;
        assert_eq!(failed, 0, "requests through nginx failed");
        assert_split(pct, canary, count, "nginx");
    }
}
