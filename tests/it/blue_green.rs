//! Blue-green end to end through the built-in proxy (issue 13), with the built `coalmine`
//! binary: a healthy green is promoted after the post-promotion window and keep_blue, a bad
//! green is switched back to blue inside the window. The proxy lives inside the
//! `coalmine run` process, so a hook (`sleep`) keeps the process, and its proxy, up after the
//! outcome; a client sends requests all along and notes, per request, when it was sent and
//! which service's body answered it and when the answer came. The requests sent after the
//! outcome's record show the share in force right after; what "right after a switch" means is
//! read from the answers themselves (a request sent after a green answer arrived was routed
//! after the switch to green), not from the two processes' clocks, which may drift apart by
//! milliseconds.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::time::Instant;

use crate::common::{Backends, applied, free_port};
use crate::support::{coalmine, records};

/// What one request through the proxy got: when it was sent (wall clock, to compare with
/// records; and this process's monotonic clock), when its answer arrived, and whether green
/// (the canary's body) answered it (`None`: no answer, e.g. before the proxy listened).
#[derive(Clone, Copy, Debug)]
struct Answer {
    sent_wall: SystemTime,
    sent: Instant,
    answered: Instant,
    green: Option<bool>,
}

/// Four clients sending requests to `target`, one after the other each, until `stop`.
fn watch(target: SocketAddr, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<Answer>> {
    tokio::spawn(async move {
        let client: Client<HttpConnector, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let uri: hyper::Uri = format!("http://{target}/").parse().unwrap();
        let loops = (0..4).map(|_| {
            let (client, uri, stop) = (client.clone(), uri.clone(), stop.clone());
            async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let (sent_wall, sent) = (SystemTime::now(), Instant::now());
                    let answer = tokio::time::timeout(Duration::from_secs(5), async {
                        let resp = client.get(uri.clone()).await.ok()?;
                        let body = resp.into_body().collect().await.ok()?.to_bytes();
                        Some(body.starts_with(b"canary"))
                    })
                    .await
                    .ok()
                    .flatten();
                    if answer.is_none() {
                        // Nothing listens yet (or any more): do not spin.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    seen.push(Answer {
                        sent_wall,
                        sent,
                        answered: Instant::now(),
                        green: answer,
                    });
                }
                seen
            }
        });
        futures_util::future::join_all(loops)
            .await
            .into_iter()
            .flatten()
            .collect()
    })
}

/// A blue-green policy for the built-in proxy on `listen`: an error-rate ceiling judges the
/// post-promotion window; `hook` is a `[[hook]]` table.
fn policy(listen: SocketAddr, b: &Backends, rollout: &str, hook: &str) -> String {
    format!(
        "name = \"bg-proxy-e2e\"\n[rollout]\nstrategy = \"blue-green\"\n\
         analysis_interval = \"500ms\"\ndeadline = \"60s\"\n{rollout}\n\
         [traffic]\ntype = \"proxy\"\nlisten = \"{listen}\"\nbaseline = \"http://{}\"\n\
         canary = \"http://{}\"\nreadiness_path = \"/healthz\"\n\
         [[metric]]\nname = \"error-ceiling\"\nbuiltin = \"errors\"\njudge = \"threshold\"\n\
         max = 0.05\nmin_trials = 50\n{hook}",
        b.baseline.addr(),
        b.canary.addr(),
    )
}

/// Runs `coalmine run --json` on `policy` while the clients send; returns the exit code, the
/// JSON summary, the decision records and the clients' answers.
async fn rollout(
    dir: &Path,
    listen: SocketAddr,
    policy: &str,
) -> (i32, Value, Vec<Value>, Vec<Answer>) {
    let path = dir.join("policy.toml");
    std::fs::write(&path, policy).unwrap();
    let log = dir.join("decisions.jsonl");
    let stop = Arc::new(AtomicBool::new(false));
    let clients = watch(listen, stop.clone());
    let run = tokio::process::Command::from(coalmine())
        .args(["run", "--json", "--quiet", "--decisions"])
        .arg(&log)
        .arg(&path)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("coalmine run finishes within 90 s")
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    let answers = clients.await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("the summary is JSON ({e}): {stderr}"));
    (
        out.status.code().unwrap_or(-1),
        summary,
        records(&log),
        answers,
    )
}

/// The record of the transition `event`, and the wall-clock time by which it had happened:
/// the record's time is cut to the millisecond, so 1 ms later, and 1 ms more for the two
/// clocks (the run's record times count from its start on the monotonic clock).
fn at(recs: &[Value], event: &str) -> (Value, SystemTime) {
    let r = recs
        .iter()
        .find(|r| r["event"] == event)
        .unwrap_or_else(|| panic!("no {event} record: {recs:#?}"))
        .clone();
    let t = humantime::parse_rfc3339(r["time"].as_str().unwrap()).unwrap();
    (r, t + Duration::from_millis(2))
}

/// The answers to the requests sent after `t` by the wall clock: (green's, blue's,
/// unanswered).
fn after(answers: &[Answer], t: SystemTime) -> (usize, usize, usize) {
    tally(answers.iter().filter(|a| a.sent_wall > t))
}

/// The answers to the requests sent after `t` by this process's clock.
fn sent_after(answers: &[Answer], t: Instant) -> (usize, usize, usize) {
    tally(answers.iter().filter(|a| a.sent > t))
}

/// When the first answer from `green` (true: green, false: blue) arrived to a request sent
/// after `t` (any request when `None`): a switch to that side had happened by then.
fn first_answer(answers: &[Answer], green: bool, t: Option<Instant>) -> Option<Instant> {
    answers
        .iter()
        .filter(|a| t.is_none_or(|t| a.sent > t) && a.green == Some(green))
        .map(|a| a.answered)
        .min()
}

/// (green's, blue's, unanswered) among `answers`.
fn tally<'a>(answers: impl Iterator<Item = &'a Answer>) -> (usize, usize, usize) {
    let mut out = (0, 0, 0);
    for a in answers {
        match a.green {
            Some(true) => out.0 += 1,
            Some(false) => out.1 += 1,
            None => out.2 += 1,
        }
    }
    out
}

/// A `hook-ran` record whose detail starts with `what` (the hook's name and when).
fn hook_ran(recs: &[Value], what: &str) -> bool {
    recs.iter().any(|r| {
        r["event"] == "hook-ran" && r["detail"].as_str().is_some_and(|d| d.starts_with(what))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_green_is_switched_back_inside_the_window_through_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // Green fails every third request: the ceiling (5 %) fails it in the window.
    let backends = Backends::start(0.3).await;
    // The `rolled-back` hook runs after the weight is 0 and keeps the proxy up for 3 s.
    let hook = "[[hook]]\nname = \"hold\"\nwhen = \"rolled-back\"\ncommand = [\"sleep\", \"3\"]\n";
    let text = policy(
        listen,
        &backends,
        "post_promotion = \"30s\"\nkeep_blue = \"1s\"",
        hook,
    );
    let (code, summary, recs, answers) = rollout(dir.path(), listen, &text).await;
    assert_eq!(code, 1, "exit code 1 = rolled back: {summary:#}");
    assert_eq!(summary["outcome"], "rolled-back", "{summary:#}");
    assert!(
        summary["reason"].to_string().contains("error-ceiling"),
        "{summary:#}"
    );
    assert_eq!(
        applied(&recs),
        [100.0, 0.0],
        "one switch, one back: {recs:#?}"
    );
    // Inside the window: judged at 100 %, rolled back before its end.
    let (window, _) = at(&recs, "post-promotion");
    let (back, back_at) = at(&recs, "rolled-back");
    let inside = back["elapsed_s"].as_f64().unwrap() - window["elapsed_s"].as_f64().unwrap();
    assert!(inside < 30.0, "rolled back {inside} s after the switch");
    assert!(
        recs.iter()
            .any(|r| r["kind"] == "tick" && r["weight"] == 100.0),
        "green was judged at 100 %: {recs:#?}"
    );
    // Green did take the traffic after the switch...
    let (_, switch_at) = at(&recs, "post-promotion");
    let during: Vec<_> = answers
        .iter()
        .filter(|a| a.sent_wall > switch_at && a.sent_wall < back_at)
        .collect();
    assert!(
        during.iter().any(|a| a.green == Some(true)),
        "no request reached green at 100 %: {} answers",
        during.len()
    );
    // ... and right after the switch back, blue answers every request: the first blue
    // answer to a request sent after green had answered shows the switch back was made.
    let t_green = first_answer(&answers, true, None).expect("green answered");
    let t_back = first_answer(&answers, false, Some(t_green)).expect("blue answered after green");
    let (green, blue, lost) = sent_after(&answers, t_back);
    assert_eq!(
        green, 0,
        "green's share after the switch back ({blue} blue)"
    );
    assert!(
        blue >= 50,
        "too few requests after the switch back: {blue} ({lost} lost)"
    );
    assert!(hook_ran(&recs, "hold (rolled-back)"), "{recs:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_green_is_promoted_through_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let backends = Backends::start(0.0).await;
    // The `promoted` hook keeps the proxy up for 2 s after the promotion.
    let hook = "[[hook]]\nname = \"hold\"\nwhen = \"promoted\"\ncommand = [\"sleep\", \"2\"]\n";
    let text = policy(
        listen,
        &backends,
        "post_promotion = \"4s\"\nkeep_blue = \"1s\"",
        hook,
    );
    let (code, summary, recs, answers) = rollout(dir.path(), listen, &text).await;
    assert_eq!(code, 0, "exit code 0 = promoted: {summary:#}");
    assert_eq!(
        applied(&recs),
        [100.0, 100.0],
        "one switch, never back: {recs:#?}"
    );
    assert!(
        recs.iter()
            .any(|r| r["kind"] == "tick" && r["weight"] == 100.0),
        "green was judged at 100 %: {recs:#?}"
    );
    // The window, then keep_blue, then the promotion: each at least as long as configured.
    let (window, _) = at(&recs, "post-promotion");
    let (keep, _) = at(&recs, "keeping-blue");
    let (done, done_at) = at(&recs, "promoted");
    // (A phase's record is written a little after the phase began: 0.1 s of slack.)
    let secs = |r: &Value| r["elapsed_s"].as_f64().unwrap();
    assert!(secs(&keep) - secs(&window) >= 3.9, "{window}\n{keep}");
    assert!(secs(&done) - secs(&keep) >= 0.9, "{keep}\n{done}");
    assert!(hook_ran(&recs, "hold (promoted)"), "{recs:#?}");
    // From the switch on, and after the promotion, green answers every request.
    let t_green = first_answer(&answers, true, None).expect("green answered");
    let (green, blue, _) = sent_after(&answers, t_green);
    assert_eq!(blue, 0, "blue answered after the switch ({green} green)");
    let (green, blue, lost) = after(&answers, done_at);
    assert_eq!(blue, 0, "blue answered after the promotion");
    assert!(
        green >= 50,
        "too few requests after the promotion: {green} ({lost} lost)"
    );
}
