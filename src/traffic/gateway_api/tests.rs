//! Component tests against a fake Kubernetes API server (in-process hyper) that answers
//! with recorded API responses (`recorded/`), checks every request's method, path,
//! content type, token and body, and applies merge patches the way the API server does
//! (RFC 7386, with the `resourceVersion` precondition).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::*;
use crate::traffic::conformance;
use crate::traffic::fake_http::FakeHttp;

const ROUTE: &str = include_str!("recorded/httproute.json");
const NOT_FOUND: &str = include_str!("recorded/not-found.json");
const CONFLICT: &str = include_str!("recorded/conflict.json");
const FORBIDDEN: &str = include_str!("recorded/forbidden.json");
const UNAVAILABLE: &str = include_str!("recorded/unavailable.json");
const PATH: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/checkout";

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scenario {
    Normal,
    /// Someone else changes the route between our GET and our PATCH.
    ConcurrentWriter,
    Forbidden,
    Unavailable,
}

struct FakeApi {
    http: FakeHttp,
    route: Arc<Mutex<Value>>,
    scenario: Arc<Mutex<Scenario>>,
    _dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

async fn fake_api() -> FakeApi {
    let route = Arc::new(Mutex::new(serde_json::from_str::<Value>(ROUTE).unwrap()));
    let scenario = Arc::new(Mutex::new(Scenario::Normal));
    let (r, s) = (route.clone(), scenario.clone());
    let http = FakeHttp::start(move |req| {
        assert_eq!(req.header("authorization"), Some("Bearer recorded-token"));
        let sc = *s.lock().unwrap();
        match sc {
            Scenario::Forbidden if req.method == "PATCH" => return (403, FORBIDDEN.into()),
            Scenario::Unavailable => return (503, UNAVAILABLE.into()),
            _ => {}
        }
        if !req
            .path
            .starts_with("/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/")
        {
            return (404, "404 page not found".into());
        }
        if req.path.split('?').next() != Some(PATH) {
            let name = req.path.rsplit('/').next().unwrap_or("");
            return (404, NOT_FOUND.replace("NAME", name));
        }
        let mut route = r.lock().unwrap();
        match req.method.as_str() {
            "GET" => (200, route.to_string()),
            "PATCH" => {
                assert_eq!(
                    req.header("content-type"),
                    Some("application/merge-patch+json")
                );
                assert!(req.path.contains("fieldManager=coalmine"), "{}", req.path);
                let patch: Value = serde_json::from_str(&req.body).unwrap();
                // Only the rules and the precondition are sent.
                let keys: Vec<&String> = patch.as_object().unwrap().keys().collect();
                assert_eq!(keys, ["metadata", "spec"]);
                assert_eq!(patch["spec"].as_object().unwrap().len(), 1);
                if sc == Scenario::ConcurrentWriter {
                    let rv: u64 = route["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    route["metadata"]["resourceVersion"] = (rv + 1000).to_string().into();
                }
                if patch["metadata"]["resourceVersion"] != route["metadata"]["resourceVersion"] {
                    return (409, CONFLICT.into());
                }
                merge(&mut route, &patch);
                let rv: u64 = route["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                route["metadata"]["resourceVersion"] = (rv + 1).to_string().into();
                let generation = route["metadata"]["generation"].as_u64().unwrap();
                route["metadata"]["generation"] = (generation + 1).into();
                (200, route.to_string())
            }
            other => panic!("unexpected {other} {}", req.path),
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\nusers:\n- name: fake\n  user:\n    token: recorded-token\n",
            http.addr
        ),
    )
    .unwrap();
    FakeApi {
        http,
        route,
        scenario,
        _dir: dir,
        kubeconfig,
    }
}

fn config(api: &FakeApi) -> GatewayApiConfig {
    GatewayApiConfig {
        namespace: "shop".into(),
        route: "checkout".into(),
        rule: 1,
        baseline: "checkout-stable".into(),
        canary: "checkout-canary".into(),
        kubeconfig: Some(api.kubeconfig.clone()),
        context: None,
        timeout: Duration::from_secs(2),
    }
}

#[tokio::test]
async fn conformance_against_recorded_responses() {
    let api = fake_api().await;
    let p = GatewayApiProvider::connect(&config(&api)).await.unwrap();
    assert_eq!(p.current().await.unwrap(), Weight::ZERO);
    let failures = conformance::check(&p, Weight::try_from_bp(1).unwrap()).await;
    assert!(failures.is_empty(), "{failures:#?}");
    p.set_weight(Weight::try_from_bp(500).unwrap())
        .await
        .unwrap();
    let route = api.route.lock().unwrap().clone();
    let refs = &route["spec"]["rules"][1]["backendRefs"];
    assert_eq!(refs[0]["weight"], 9500);
    assert_eq!(refs[1]["weight"], 500);
    // Everything else is untouched: the other rule, ports, kinds, parents.
    assert_eq!(refs[1]["port"], 8080);
    assert_eq!(route["spec"]["rules"][0]["backendRefs"][0]["name"], "admin");
    assert_eq!(route["spec"]["parentRefs"][0]["name"], "public");
    let reqs = api.http.take();
    assert!(reqs.iter().all(|r| r.path.starts_with(PATH)));
}

#[tokio::test]
async fn errors_are_classified() {
    let api = fake_api().await;
    let p = GatewayApiProvider::connect(&config(&api)).await.unwrap();

    *api.scenario.lock().unwrap() = Scenario::ConcurrentWriter;
    let failures = conformance::check_failure(&p, true).await;
    assert!(failures.is_empty(), "{failures:?}");
    let e = p.set_weight(Weight::FULL).await.unwrap_err();
    assert!(
        e.to_string().contains("the object has been modified"),
        "{e}"
    );

    *api.scenario.lock().unwrap() = Scenario::Unavailable;
    assert!(conformance::check_failure(&p, true).await.is_empty());

    *api.scenario.lock().unwrap() = Scenario::Forbidden;
    let failures = conformance::check_failure(&p, false).await;
    assert!(failures.is_empty(), "{failures:?}");
    let e = p.set_weight(Weight::FULL).await.unwrap_err();
    assert!(e.to_string().contains("cannot patch resource"), "{e}");

    *api.scenario.lock().unwrap() = Scenario::Normal;
    let mut cfg = config(&api);
    cfg.route = "nope".into();
    let p = GatewayApiProvider::connect(&cfg).await.unwrap();
    assert!(conformance::check_failure(&p, false).await.is_empty());
    assert_eq!(
        p.current().await.unwrap_err().to_string(),
        "provider `gateway-api`: httproute `shop/nope` not found"
    );

    let mut cfg = config(&api);
    cfg.rule = 0;
    let p = GatewayApiProvider::connect(&cfg).await.unwrap();
    let e = p.preflight().await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "provider `gateway-api`: httproute `shop/checkout`: rule 0 has another backendRef `admin` with weight 1: only `checkout-stable` and `checkout-canary` may take traffic"
    );
    let mut cfg = config(&api);
    cfg.canary = "checkout-v2".into();
    let e = GatewayApiProvider::connect(&cfg)
        .await
        .unwrap()
        .current()
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .ends_with("rule 1 has no backendRef `checkout-v2`"),
        "{e}"
    );

    // Nothing listening: transient.
    let mut cfg = config(&api);
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let text = std::fs::read_to_string(&api.kubeconfig)
        .unwrap()
        .replace(&api.http.addr.to_string(), &addr.to_string());
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    std::fs::write(&kc, text).unwrap();
    cfg.kubeconfig = Some(kc);
    let p = GatewayApiProvider::connect(&cfg).await.unwrap();
    let failures = conformance::check_failure(&p, true).await;
    assert!(failures.is_empty(), "{failures:?}");

    // A broken kubeconfig: permanent, at connect time.
    let mut cfg = config(&api);
    cfg.kubeconfig = Some(dir.path().join("missing"));
    let e = GatewayApiProvider::connect(&cfg).await.unwrap_err();
    assert!(!e.is_transient());
    assert!(
        e.to_string()
            .starts_with("provider `gateway-api`: kubeconfig "),
        "{e}"
    );
}

#[test]
fn refs_and_shares() {
    let route: Value = serde_json::from_str(ROUTE).unwrap();
    let cfg = GatewayApiConfig {
        namespace: "shop".into(),
        route: "checkout".into(),
        rule: 1,
        baseline: "checkout-stable".into(),
        canary: "checkout-canary".into(),
        kubeconfig: None,
        context: None,
        timeout: Duration::from_secs(1),
    };
    assert_eq!(
        find_refs(&route["spec"], &cfg),
        Ok(Refs {
            baseline: (0, 100),
            canary: (1, 0)
        })
    );
    // An absent weight is 1.
    let mut r = route.clone();
    r["spec"]["rules"][1]["backendRefs"][0]
        .as_object_mut()
        .unwrap()
        .remove("weight");
    r["spec"]["rules"][1]["backendRefs"][1]["weight"] = 1.into();
    let refs = find_refs(&r["spec"], &cfg).unwrap();
    assert_eq!(share(refs.baseline.1, refs.canary.1).unwrap().bp(), 5000);
    assert_eq!(share(0, 0), None);
    assert_eq!(share(u64::MAX, 1), None);
    for bad in [
        Value::Null,
        serde_json::json!({"rules": []}),
        serde_json::json!({"rules": [{}, {"backendRefs": 3}]}),
    ] {
        assert!(find_refs(&bad, &cfg).is_err());
    }
}
