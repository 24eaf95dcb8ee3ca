//! Component tests against a fake feature-flag service (in-process hyper server).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::policy::{HttpRead, Template};
use crate::traffic::conformance;
use crate::traffic::fake_http::FakeHttp;

/// A token file holding `value` (tests cannot set environment variables: `set_var` is
/// `unsafe` in edition 2024 and the crate forbids unsafe code).
fn token_file(value: &str) -> (tempfile::TempDir, Secret) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, format!("{value}\n")).unwrap();
    (dir, Secret::File(path))
}

/// A flag service: `PUT /flags/checkout` with `{"rollout": N}` sets the percentage,
/// `GET /flags/checkout` returns `{"flag": {"rollout": N}}`. Requires `Bearer s3cret`.
async fn flag_service(status_override: Arc<Mutex<Option<u16>>>) -> FakeHttp {
    let pct = Arc::new(Mutex::new(0.0_f64));
    FakeHttp::start(move |r| {
        if let Some(s) = *status_override.lock().unwrap() {
            return (s, r#"{"error":"nope"}"#.to_string());
        }
        if r.header("authorization") != Some("Bearer s3cret") {
            return (401, r#"{"error":"bad token"}"#.to_string());
        }
        match (r.method.as_str(), r.path.as_str()) {
            ("PUT", "/flags/checkout") => {
                let v: serde_json::Value = match serde_json::from_str(&r.body) {
                    Ok(v) => v,
                    Err(e) => return (400, format!("{{\"error\":\"{e}\"}}")),
                };
                match v["rollout"].as_f64() {
                    Some(p) => {
                        *pct.lock().unwrap() = p;
                        (204, String::new())
                    }
                    None => (422, r#"{"error":"rollout must be a number"}"#.to_string()),
                }
            }
            ("GET", "/flags/checkout") => (
                200,
                format!(r#"{{"flag":{{"rollout":{}}}}}"#, pct.lock().unwrap()),
            ),
            _ => (404, String::new()),
        }
    })
    .await
}

fn config(fake: &FakeHttp, token: Secret) -> HttpConfig {
    HttpConfig {
        method: "PUT".into(),
        url: Template::parse(&fake.url("/flags/checkout")).unwrap(),
        headers: vec![(
            "X-Change".into(),
            Template::parse("coalmine {{weight}}").unwrap(),
        )],
        body: Some(Template::parse(r#"{"rollout": {{percent}}}"#).unwrap()),
        token: Some(token),
        token_header: "Authorization".into(),
        token_prefix: "Bearer ".into(),
        success_statuses: vec![],
        timeout: Duration::from_secs(2),
        resolution: Weight::try_from_bp(1).unwrap(),
        read: Some(HttpRead {
            url: fake.url("/flags/checkout"),
            pointer: "/flag/rollout".into(),
        }),
    }
}

#[tokio::test]
async fn conformance_against_a_fake_flag_service() {
    let (_dir, token) = token_file("s3cret");
    let over = Arc::new(Mutex::new(None));
    let fake = flag_service(over.clone()).await;
    let p = HttpProvider::new(&config(&fake, token.clone())).unwrap();
    let failures = conformance::check(&p, Weight::try_from_bp(1).unwrap()).await;
    assert!(failures.is_empty(), "{failures:#?}");
    fake.take();
    p.set_weight(Weight::try_from_bp(1250).unwrap())
        .await
        .unwrap();
    let reqs = fake.take();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "PUT");
    assert_eq!(reqs[0].body, r#"{"rollout": 12.5}"#);
    assert_eq!(reqs[0].header("x-change"), Some("coalmine 1250"));
    assert_eq!(reqs[0].header("content-type"), Some("application/json"));
    assert_eq!(p.current().await.unwrap().bp(), 1250);
    p.preflight().await.unwrap();

    // Integer percentages only: 12.5 % becomes 13 %, and read-back is within 1 %.
    let mut cfg = config(&fake, token);
    cfg.resolution = Weight::try_from_bp(100).unwrap();
    let p = HttpProvider::new(&cfg).unwrap();
    p.set_weight(Weight::try_from_bp(1250).unwrap())
        .await
        .unwrap();
    assert_eq!(fake.take().last().unwrap().body, r#"{"rollout": 13}"#);
    assert_eq!(p.resolution(), 100);
    let failures = conformance::check(&p, Weight::try_from_bp(100).unwrap()).await;
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test]
async fn errors_are_classified() {
    let over = Arc::new(Mutex::new(None));
    let fake = flag_service(over.clone()).await;
    // Bad credentials (the token from an environment variable): permanent, and the
    // message says so.
    let p = HttpProvider::new(&config(&fake, Secret::Env("PATH".into()))).unwrap();
    assert!(conformance::check_failure(&p, false).await.is_empty());
    let e = p.set_weight(Weight::FULL).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("credentials refused (401 Unauthorized)"),
        "{e}"
    );
    // A missing token variable: permanent.
    let unset = Secret::Env("COALMINE_TEST_FLAG_TOKEN_UNSET".into());
    let p = HttpProvider::new(&config(&fake, unset)).unwrap();
    let e = p.set_weight(Weight::FULL).await.unwrap_err();
    assert!(!e.is_transient());
    assert!(
        e.to_string()
            .contains("`COALMINE_TEST_FLAG_TOKEN_UNSET` (token_env) is not set"),
        "{e}"
    );
    // Busy service: transient.
    let (_dir, token) = token_file("s3cret");
    let p = HttpProvider::new(&config(&fake, token.clone())).unwrap();
    for status in [503, 429, 500] {
        *over.lock().unwrap() = Some(status);
        let failures = conformance::check_failure(&p, true).await;
        assert!(failures.is_empty(), "{status}: {failures:?}");
    }
    for status in [400, 404, 409] {
        *over.lock().unwrap() = Some(status);
        let failures = conformance::check_failure(&p, false).await;
        assert!(failures.is_empty(), "{status}: {failures:?}");
    }
    // An unexpected success status is not success when the policy lists them.
    *over.lock().unwrap() = None;
    let mut cfg = config(&fake, token.clone());
    cfg.success_statuses = vec![200];
    let e = HttpProvider::new(&cfg)
        .unwrap()
        .set_weight(Weight::FULL)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("answered 204 No Content"), "{e}");
    // Read-back pointing nowhere: permanent, names the pointer.
    let mut cfg = config(&fake, token.clone());
    cfg.read.as_mut().unwrap().pointer = "/flag/percentage".into();
    let e = HttpProvider::new(&cfg)
        .unwrap()
        .current()
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("no `/flag/percentage` in the answer"),
        "{e}"
    );
    // Nothing listening: transient.
    let addr = fake.addr;
    drop(fake);
    let mut cfg = config(&flag_service(over).await, token);
    cfg.url = Template::parse(&format!("http://{addr}/flags/checkout")).unwrap();
    cfg.read.as_mut().unwrap().url = format!("http://{addr}/flags/checkout");
    let p = HttpProvider::new(&cfg).unwrap();
    let failures = conformance::check_failure(&p, true).await;
    assert!(failures.is_empty(), "{failures:?}");
}

#[tokio::test]
async fn a_slow_service_times_out() {
    let fake = FakeHttp::start(|_| (200, String::new())).await;
    *fake.delay.lock().unwrap() = Duration::from_millis(800);
    let (_dir, token) = token_file("x");
    let mut cfg = config(&fake, token);
    cfg.timeout = Duration::from_millis(200);
    let e = HttpProvider::new(&cfg)
        .unwrap()
        .set_weight(Weight::FULL)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "timeout", "{e}");
}
