//! Hooks and notifications: pre-rollout checks gate the first traffic change, post hooks run
//! after the decision with the outcome in their environment, and a webhook hears every
//! transition. Real processes and a real HTTP listener, so real (short) time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::controller::machine::{Command, Event, Phase, Reason, step};
use crate::controller::runner::{FinalOutcome, Quiet, RunOptions, run};
use crate::metrics::mock::{Answer, MockSource};
use crate::model::Weight;
use crate::policy::{self, Rollout};
use crate::traffic::mock::MockTrafficProvider;

fn policy(extra: &str) -> policy::Policy {
    let text = format!(
        "name = \"hooks\"\n[rollout]\nsteps = [50, 100]\nstep_duration = \"1s\"\n\
         analysis_interval = \"1s\"\nmin_requests = 1\ndeadline = \"20s\"\n\
         [traffic]\ntype = \"proxy\"\nlisten = \"127.0.0.1:0\"\nbaseline = \"http://127.0.0.1:1\"\n\
         canary = \"http://127.0.0.1:2\"\n[[metric]]\nname = \"errors\"\nbuiltin = \"errors\"\n{extra}"
    );
    policy::parse(&text, "hooks.toml").unwrap_or_else(|d| panic!("{d}"))
}

pub(super) fn source(canary_rate: f64) -> MockSource {
    let s = MockSource::new();
    s.script(
        "errors",
        vec![Answer::Rates {
            baseline: 0.01,
            canary: canary_rate,
            requests: 20_000.0,
        }],
    );
    s
}

#[test]
fn machine_gates_the_first_step_on_the_checks() {
    let plan = Rollout::with_steps(vec![Weight::try_from_percent(5.0).unwrap()]);
    let start = Event::Start {
        now: Duration::ZERO,
        pre_checks: true,
    };
    let (p, c) = step(Phase::Pending, start, &plan);
    assert_eq!(p, Phase::PreChecks);
    assert_eq!(c, vec![Command::RunPreChecks]);
    let ok = Event::PreChecksDone {
        failed: None,
        now: Duration::ZERO,
    };
    let (p2, _) = step(p.clone(), ok, &plan);
    assert!(matches!(p2, Phase::Shifting { step: 0, .. }));
    let bad = Event::PreChecksDone {
        failed: Some(("smoke".into(), "exit 1".into())),
        now: Duration::ZERO,
    };
    let (p3, c3) = step(p, bad, &plan);
    // Not ready: nothing is touched, not even a "safe" 0 % (it is not ours to set).
    assert!(matches!(
        p3,
        Phase::NotStarted {
            reason: Reason::PreCheck { .. },
        }
    ));
    assert_eq!(c3, vec![Command::Finish]);
}

#[tokio::test]
async fn a_failing_pre_rollout_check_moves_no_traffic() {
    let p = policy(
        "[[hook]]\nname = \"smoke\"\nwhen = \"pre-rollout\"\ncommand = [\"false\"]\nretries = 1\n",
    );
    let traffic = MockTrafficProvider::new();
    let report = run(
        &p,
        &traffic,
        &source(0.01),
        RunOptions::default(),
        &mut Quiet,
    )
    .await
    .unwrap();
    let FinalOutcome::NotStarted {
        reason: Reason::PreCheck { hook, detail },
    } = &report.outcome
    else {
        panic!("{:?}", report.outcome)
    };
    assert_eq!(hook, "smoke");
    assert!(detail.contains("after 2 attempts"), "{detail}");
    assert_eq!(report.exit_code, 3);
    assert!(traffic.calls().is_empty(), "{:?}", traffic.calls());
}

#[tokio::test]
async fn post_hooks_get_the_outcome_and_the_webhook_hears_every_transition() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env.txt");
    let script = dir.path().join("record-env.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$COALMINE_HOOK_WHEN $COALMINE_OUTCOME $COALMINE_WEIGHT $COALMINE_REASON\" >> {}\n",
            out.display()
        ),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // A webhook that keeps what it receives.
    let bodies: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = listener.local_addr().unwrap();
    let b = bodies.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let b = b.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let b = b.clone();
                    async move {
                        let bytes = req.into_body().collect().await.unwrap().to_bytes();
                        if let Ok(v) = serde_json::from_slice(&bytes) {
                            b.lock().unwrap().push(v);
                        }
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let hooks = format!(
        "[[hook]]\nname = \"check\"\nwhen = \"pre-rollout\"\ncommand = [\"true\"]\n\
         [[hook]]\nname = \"after-promote\"\nwhen = \"promoted\"\ncommand = [\"{s}\"]\n\
         [[hook]]\nname = \"after-rollback\"\nwhen = \"rolled-back\"\ncommand = [\"{s}\"]\n\
         [notify]\nwebhook = \"http://{hook_addr}/coalmine\"\n",
        s = script.display()
    );
    let p = policy(&hooks);
    // A healthy canary promotes; then a bad one rolls back.
    let good = run(
        &p,
        &MockTrafficProvider::new(),
        &source(0.01),
        RunOptions::default(),
        &mut Quiet,
    )
    .await
    .unwrap();
    assert_eq!(good.outcome, FinalOutcome::Promoted);
    let bad = run(
        &p,
        &MockTrafficProvider::new(),
        &source(0.5),
        RunOptions::default(),
        &mut Quiet,
    )
    .await
    .unwrap();
    assert!(matches!(bad.outcome, FinalOutcome::RolledBack { .. }));
    let lines = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("promoted promoted 100"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("rolled-back rolled-back 0"),
        "{}",
        lines[1]
    );
    assert!(lines[1].contains("metric `errors` failed"), "{}", lines[1]);
    let got = bodies.lock().unwrap().clone();
    let events: Vec<&str> = got.iter().filter_map(|v| v["event"].as_str()).collect();
    for want in [
        "started",
        "hook-ran",
        "checks-passed",
        "weight-applied",
        "promoted",
        "rolled-back",
    ] {
        assert!(events.contains(&want), "{want} not in {events:?}");
    }
    assert!(
        got.iter().all(|v| v["kind"] != "tick"),
        "ticks are not notified"
    );
}
