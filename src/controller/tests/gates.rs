//! Confirmation gates: the machine holds on a no and asks again at each tick (never rolling
//! back on its own; the deadline still applies), and the runner asks real gates: a loopback
//! webhook receiver that verifies every signature and says no, then yes; commands. Real
//! processes and a real HTTP listener, so real (short) time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::hooks::source;
use super::{plan, progressing, s, w};
use crate::controller::gates::{SIGNATURE_HEADER, verify};
use crate::controller::machine::{Command, Decision, Event, Note, Phase, Reason, step};
use crate::controller::runner::{FinalOutcome, Quiet, RunOptions, RunReport, run};
use crate::model::Weight;
use crate::policy::gates::{Gate, GateAction, GateKind};
use crate::policy::{self, Rollout};
use crate::traffic::mock::MockTrafficProvider;

fn gate(kind: GateKind) -> Gate {
    Gate {
        name: kind.as_str().to_string(),
        kind,
        action: GateAction::Command(vec!["true".into()]),
        timeout: s(1),
        retries: 0,
        env: Vec::new(),
    }
}

fn gated(kinds: &[GateKind]) -> Rollout {
    let mut r = plan();
    r.gates = kinds.iter().map(|k| gate(*k)).collect();
    r
}

fn passing_ticks(mut phase: Phase, from: u64, to: u64, r: &Rollout) -> (Phase, Vec<Command>) {
    let mut cmds = Vec::new();
    let mut t = from;
    while t <= to {
        let tick = Event::Tick {
            now: s(t),
            metrics: Vec::new(),
            requests: Some([500.0, 500.0]),
            facts: crate::controller::machine::WindowFacts::default(),
        };
        (phase, cmds) = step(phase, tick, r);
        t += 10;
    }
    (phase, cmds)
}

#[test]
fn confirm_rollout_holds_before_any_traffic_until_yes_or_the_deadline() {
    let r = gated(&[GateKind::ConfirmRollout]);
    let done = Event::PreChecksDone {
        failed: None,
        now: s(0),
    };
    let (p, c) = step(Phase::PreChecks, done, &r);
    assert_eq!(
        p,
        Phase::Confirming {
            step: 0,
            refusals: 0,
            approval: false,
        }
    );
    assert_eq!(c, vec![Command::RunGates { step: 0 }]);
    let no = |now| Event::GatesDone {
        step: 0,
        refused: Some(("g".into(), "403".into())),
        now: s(now),
    };
    let (p, c) = step(p, no(1), &r);
    assert_eq!(
        p,
        Phase::Confirming {
            step: 0,
            refusals: 1,
            approval: false,
        }
    );
    assert!(
        matches!(&c[..], [Command::Notify(Note::GateRefused { .. })]),
        "{c:?}"
    );
    assert!(!c.iter().any(|c| matches!(c, Command::Apply { .. })));
    // The next tick asks again.
    let (p, c) = passing_ticks(p, 10, 10, &r);
    assert!(
        matches!(c.last(), Some(Command::RunGates { step: 0 })),
        "{c:?}"
    );
    let yes = Event::GatesDone {
        step: 0,
        refused: None,
        now: s(11),
    };
    let (q, c) = step(p.clone(), yes, &r);
    assert!(matches!(q, Phase::Shifting { step: 0, .. }), "{q:?}");
    assert!(matches!(c[..], [Command::Apply { weight, .. }] if weight == w(5.0)));
    // Never a yes: at the deadline it ends as never started (nothing to roll back).
    let (p, c) = passing_ticks(p, 600, 600, &r);
    assert!(
        matches!(
            p,
            Phase::NotStarted {
                reason: Reason::Deadline { .. }
            }
        ),
        "{p:?}"
    );
    assert_eq!(c, vec![Command::Finish]);
}

#[test]
fn confirm_step_and_promotion_hold_a_ready_step_and_never_roll_back_by_themselves() {
    let r = gated(&[GateKind::ConfirmStep, GateKind::ConfirmPromotion]);
    // Step 1 (5 %) is ready at 60 s: asks confirm-step before 25 %.
    let (p, c) = passing_ticks(progressing(0, w(5.0), 0), 10, 60, &r);
    assert!(
        matches!(&c[0], Command::Record(Decision::Hold { reason }) if reason.contains("asking gate(s) confirm-step before step 2")),
        "{c:?}"
    );
    assert_eq!(c.last(), Some(&Command::RunGates { step: 1 }));
    // A no holds; it is asked again at every tick.
    let (p, c) = step(
        p,
        Event::GatesDone {
            step: 1,
            refused: Some(("confirm-step".into(), "no".into())),
            now: s(61),
        },
        &r,
    );
    assert!(matches!(p, Phase::Progressing(_)));
    assert!(!c.iter().any(|c| matches!(c, Command::Apply { .. })));
    let (p, c) = passing_ticks(p, 70, 70, &r);
    assert_eq!(c.last(), Some(&Command::RunGates { step: 1 }));
    let (_, c) = step(
        p.clone(),
        Event::GatesDone {
            step: 1,
            refused: None,
            now: s(71),
        },
        &r,
    );
    assert_eq!(
        c[0],
        Command::Record(Decision::Advance {
            step: 1,
            weight: w(25.0)
        })
    );
    // Refusing until the deadline: the deadline rolls back, as it always does.
    let (p, _) = passing_ticks(p, 80, 600, &r);
    assert!(
        matches!(
            p,
            Phase::RollingBack {
                reason: Reason::Deadline { .. },
                ..
            }
        ),
        "{p:?}"
    );
    // At the last analysed step the promotion's gate is asked.
    let (_, c) = passing_ticks(progressing(1, w(25.0), 0), 10, 60, &r);
    assert_eq!(c.last(), Some(&Command::RunGates { step: 2 }));
    assert_eq!(r.gates_before(2)[0].kind, GateKind::ConfirmPromotion);
}

/// A loopback webhook receiver: verifies every request's signature with `key`, and answers
/// what `answer(n, body)` says for the n-th request (0-based).
struct Receiver {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// One request a [`Receiver`] got: (body, signature valid, status answered, when).
type Seen = (serde_json::Value, bool, u16, Instant);

type Answerer = dyn Fn(usize, &serde_json::Value) -> u16 + Send + Sync;

async fn receiver(key: &'static [u8], answer: Arc<Answerer>) -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<_>>> = Arc::default();
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (seen, answer) = (s2.clone(), answer.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (seen, answer) = (seen.clone(), answer.clone());
                    async move {
                        let sig = req
                            .headers()
                            .get(SIGNATURE_HEADER)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let bytes = req.into_body().collect().await.unwrap().to_bytes();
                        let ok = verify(key, &bytes, &sig);
                        let body: serde_json::Value =
                            serde_json::from_slice(&bytes).unwrap_or_default();
                        let n = seen.lock().unwrap().len();
                        // A forged or unsigned request is refused, as a receiver would.
                        let status = if ok { answer(n, &body) } else { 401 };
                        seen.lock()
                            .unwrap()
                            .push((body, ok, status, Instant::now()));
                        let mut resp =
                            hyper::Response::new(Full::new(Bytes::from_static(b"noted")));
                        *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Receiver { addr, seen }
}

fn gate_policy(extra: &str) -> policy::Policy {
    let text = format!(
        "name = \"gates\"\n[rollout]\nsteps = [50, 100]\nstep_duration = \"1s\"\n\
         analysis_interval = \"200ms\"\nmin_requests = 1\ndeadline = \"20s\"\n{extra}\n\
         [traffic]\ntype = \"proxy\"\nlisten = \"127.0.0.1:0\"\nbaseline = \"http://127.0.0.1:1\"\n\
         canary = \"http://127.0.0.1:2\"\n[[metric]]\nname = \"errors\"\nbuiltin = \"errors\"\n"
    );
    policy::parse(&text, "gates.toml").unwrap_or_else(|d| panic!("{d}"))
}

/// Runs `p` against the mock provider and a canary failing at `canary_rate`.
async fn run_gated(p: &policy::Policy, canary_rate: f64) -> (RunReport, MockTrafficProvider) {
    let traffic = MockTrafficProvider::new();
    let report = run(
        p,
        &traffic,
        &source(canary_rate),
        RunOptions::default(),
        &mut Quiet,
    )
    .await
    .unwrap();
    (report, traffic)
}

const KEY: &[u8] = b"gate-signing-key-for-tests";

#[tokio::test]
async fn a_signed_promotion_gate_that_says_no_for_a_while_then_yes_holds_then_promotes() {
    // No for 1.5 s from the first ask (one of them a 503, asked again within the same ask),
    // then yes.
    let first: Mutex<Option<Instant>> = Mutex::new(None);
    let r = receiver(
        KEY,
        Arc::new(move |n, _| {
            let started = *first.lock().unwrap().get_or_insert_with(Instant::now);
            if started.elapsed() > Duration::from_millis(1500) {
                200
            } else if n == 1 {
                503
            } else {
                403
            }
        }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, format!("{}\n", std::str::from_utf8(KEY).unwrap())).unwrap();
    let p = gate_policy(&format!(
        "[[rollout.gate]]\nname = \"release-desk\"\ntype = \"confirm-promotion\"\n\
         webhook = \"http://{}/confirm\"\nsecret_file = \"{}\"\nretries = 1\n",
        r.addr,
        key.display()
    ));
    let log = dir.path().join("d.jsonl");
    let traffic = MockTrafficProvider::new();
    let opts = RunOptions {
        decisions: Some(log.clone()),
        ..RunOptions::default()
    };
    let report = run(&p, &traffic, &source(0.01), opts, &mut Quiet)
        .await
        .unwrap();
    assert_eq!(report.outcome, FinalOutcome::Promoted, "{report:?}");
    assert_eq!(traffic.calls(), vec![w(50.0), Weight::FULL]);
    let seen = r.seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(|(_, ok, _, _)| *ok),
        "every request is signed"
    );
    let statuses: Vec<u16> = seen.iter().map(|(_, _, s, _)| *s).collect();
    assert_eq!(statuses.last(), Some(&200), "{statuses:?}");
    assert!(
        statuses.iter().filter(|s| **s == 403).count() >= 2,
        "{statuses:?}"
    );
    // The 503 was asked again at once (backoff 0.5 s), not at the next tick.
    assert_eq!(statuses[1], 503, "{statuses:?}");
    let body = &seen[0].0;
    assert_eq!(body["rollout"], "gates");
    assert_eq!(body["type"], "confirm-promotion");
    assert_eq!(body["gate"], "release-desk");
    assert_eq!(body["step"], 2);
    assert_eq!(body["weight"], 100.0);
    assert_eq!(body["weight_in_force"], 50.0);
    // Held at 50 % until the yes: the promotion came after it.
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let refused = records
        .iter()
        .filter(|r| r["event"] == "gate-refused")
        .count();
    assert_eq!(refused, statuses.iter().filter(|s| **s == 403).count());
    let passed = records
        .iter()
        .position(|r| r["event"] == "gate-passed")
        .unwrap();
    let promoted = records
        .iter()
        .position(|r| r["event"] == "promoted")
        .unwrap();
    assert!(passed < promoted);
    assert!(records[..passed].iter().all(|r| r["weight"] != 100.0));
}

#[tokio::test]
async fn an_unsigned_or_misconfigured_gate_holds_and_a_rollback_gate_is_told_after_zero() {
    // The receiver wants signatures; the gate's key file is missing: every ask fails
    // (holds), nothing is sent unsigned, and the deadline ends it before any traffic.
    let r = receiver(KEY, Arc::new(|_, _| 200)).await;
    let p = gate_policy(&format!(
        "[[rollout.gate]]\nname = \"desk\"\ntype = \"confirm-rollout\"\n\
         webhook = \"http://{}/confirm\"\nsecret_file = \"/nonexistent/key\"\n",
        r.addr
    ));
    let mut p = p;
    p.rollout.deadline = Duration::from_millis(1200);
    let (report, traffic) = run_gated(&p, 0.01).await;
    assert!(
        matches!(
            report.outcome,
            FinalOutcome::NotStarted {
                reason: Reason::Deadline { .. }
            }
        ),
        "{report:?}"
    );
    assert!(traffic.calls().is_empty(), "{:?}", traffic.calls());
    assert!(r.seen.lock().unwrap().is_empty());

    // A bad canary rolls back; the rollback gate hears of it with the weight at 0.
    let r = receiver(b"", Arc::new(|_, _| 200)).await;
    let p = gate_policy(&format!(
        "[[rollout.gate]]\nname = \"pager\"\ntype = \"rollback\"\nwebhook = \"http://{}/rolled-back\"\n",
        r.addr
    ));
    let (report, traffic) = run_gated(&p, 0.5).await;
    assert_eq!(traffic.weight(), Weight::ZERO);
    assert!(
        matches!(report.outcome, FinalOutcome::RolledBack { .. }),
        "{report:?}"
    );
    let seen = r.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let body = &seen[0].0;
    assert_eq!(body["type"], "rollback");
    assert_eq!(body["weight_in_force"], 0.0);
    assert!(
        body["reason"].as_str().unwrap().contains("errors"),
        "{body}"
    );
}

#[tokio::test]
async fn a_command_gate_before_a_step_holds_until_it_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("go");
    let p = gate_policy(&format!(
        "[[rollout.gate]]\nname = \"change-window\"\ntype = \"confirm-rollout\"\n\
         command = [\"/bin/sh\", \"-c\", \"test -e {}\"]\n",
        flag.display()
    ));
    let traffic = MockTrafficProvider::new();
    let flag2 = flag.clone();
    let open = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        std::fs::write(flag2, "").unwrap();
    });
    let t = Instant::now();
    let report = run(
        &p,
        &traffic,
        &source(0.01),
        RunOptions::default(),
        &mut Quiet,
    )
    .await
    .unwrap();
    open.await.unwrap();
    assert_eq!(report.outcome, FinalOutcome::Promoted, "{report:?}");
    assert_eq!(traffic.calls(), vec![w(50.0), Weight::FULL]);
    // The first step's second of analysis came after the 0.8 s the gate said no.
    assert!(
        t.elapsed() >= Duration::from_millis(1800),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn a_restored_rollout_asks_its_gates_again() {
    let r = gated(&[GateKind::ConfirmRollout]);
    let restored = Event::Restored {
        found: Some(Weight::ZERO),
        applied: Weight::ZERO,
        downtime: s(3),
        now: s(5),
    };
    let (p, c) = step(
        Phase::Confirming {
            step: 0,
            refusals: 2,
            approval: false,
        },
        restored,
        &r,
    );
    assert_eq!(
        p,
        Phase::Confirming {
            step: 0,
            refusals: 2,
            approval: false,
        }
    );
    assert_eq!(c, vec![Command::RunGates { step: 0 }]);
    let json = serde_json::to_string(&p).unwrap();
    assert_eq!(serde_json::from_str::<Phase>(&json).unwrap(), p);
}

fn refused(extra: &str) -> String {
    let text = format!(
        "name = \"g\"\n[rollout]\nsteps = [50, 100]\n{extra}\n[traffic]\ntype = \"proxy\"\n\
         listen = \"127.0.0.1:0\"\nbaseline = \"http://127.0.0.1:1\"\ncanary = \"http://127.0.0.1:2\"\n\
         [[metric]]\nname = \"errors\"\nbuiltin = \"errors\"\n"
    );
    match policy::parse(&text, "g.toml") {
        Ok(_) => String::new(),
        Err(d) => d.to_string(),
    }
}

#[test]
fn gates_are_checked_and_keys_never_live_in_the_policy() {
    let said = refused(
        "[[rollout.gate]]\nname = \"a\"\ntype = \"confirm-step\"\nwebhook = \"http://127.0.0.1:1/\"\nsecret = \"hunter22\"\n",
    );
    assert!(
        said.contains("g.toml:8:10: signing keys are never written in a policy"),
        "{said}"
    );
    let said = refused("[[rollout.gate]]\nname = \"a\"\nwebhook = \"http://127.0.0.1:1/\"\n");
    assert!(said.contains("gate `a` needs type = "), "{said}");
    let said = refused("[[rollout.gate]]\nname = \"a\"\ntype = \"confirm-step\"\n");
    assert!(
        said.contains("gate `a` needs webhook = \"url\" or command"),
        "{said}"
    );
    let said = refused(
        "[[rollout.gate]]\nname = \"a\"\ntype = \"rollback\"\ncommand = [\"true\"]\n\
         [[rollout.gate]]\nname = \"a\"\ntype = \"confirm-step\"\ncommand = [\"true\"]\n",
    );
    assert!(said.contains("duplicate gate name `a`"), "{said}");
    let said =
        refused("[[rollout.gate]]\nname = \"a\"\ntype = \"confirm-stepp\"\ncommand = [\"true\"]\n");
    assert!(said.contains("confirm-stepp"), "{said}");
    // A step's own gate takes no type: it guards its step.
    let text = "name = \"g\"\n[rollout]\n[[rollout.step]]\nweight = 50\n[[rollout.step]]\nweight = 100\n\
                [[rollout.step.gate]]\nname = \"b\"\ntype = \"confirm-step\"\ncommand = [\"true\"]\n\
                [traffic]\ntype = \"proxy\"\nlisten = \"127.0.0.1:0\"\nbaseline = \"http://127.0.0.1:1\"\n\
                canary = \"http://127.0.0.1:2\"\n[[metric]]\nname = \"errors\"\nbuiltin = \"errors\"\n";
    let said = policy::parse(text, "g.toml").unwrap_err().to_string();
    assert!(said.contains("a step's gate `b` takes no type"), "{said}");
    let ok = policy::parse(&text.replace("type = \"confirm-step\"\n", ""), "g.toml").unwrap();
    let before = ok.rollout.gates_before(1);
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].kind, GateKind::ConfirmPromotion);
    assert!(ok.rollout.gates_before(0).is_empty());
}
