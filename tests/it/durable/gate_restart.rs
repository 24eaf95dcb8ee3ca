//! A confirmation gate's refusal survives a SIGKILL (issue 13): the gate service says no for
//! a while, the controller is killed while it holds, and the one that takes the rollout over
//! still holds at the same step (asking again, never promoting), then goes on once the
//! service says yes.

// Real processes on the wall clock: plain blocking test code.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::rig::{Opts, Rig, finish, serve_status};

const NAME: &str = "gated";

/// Waits (at most 30 s) until the gate service has been asked more than `n` times.
fn wait_asked(asked: &AtomicUsize, n: usize, child: &mut std::process::Child) {
    let t = Instant::now();
    while asked.load(Ordering::SeqCst) <= n {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the controller ended while the gate said no"
        );
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the gate was not asked again"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_gate_that_says_no_holds_across_a_kill_and_the_resumed_run_goes_on_when_it_says_yes() {
    let open = Arc::new(AtomicBool::new(false));
    let asked = Arc::new(AtomicUsize::new(0));
    let (o, a) = (open.clone(), asked.clone());
    let gate = serve_status(move |req| {
        if !req.starts_with("POST ") {
            return (405, String::new());
        }
        a.fetch_add(1, Ordering::SeqCst);
        if o.load(Ordering::SeqCst) {
            (200, "{}".to_string())
        } else {
            (403, r#"{"why": "change freeze"}"#.to_string())
        }
    });
    let rig = Rig::new(
        NAME,
        &Opts {
            step_duration: "1s",
            tail: format!(
                "\n[[rollout.gate]]\nname = \"release-manager\"\ntype = \"confirm-promotion\"\n\
                 webhook = \"http://{gate}/confirm\"\ntimeout = \"2s\"\n"
            ),
            ..Opts::default()
        },
    );
    let mut child = rig.start();
    // Refused twice at the last step (50 %): holding, not rolling back.
    wait_asked(&asked, 1, &mut child);
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    let v = rig.stored(NAME).unwrap();
    assert_eq!(v["phase"]["phase"], "progressing", "{v}");
    assert_eq!(v["phase"]["step"], 1, "{v}");
    assert_eq!(rig.calls(), ["10", "50"]);
    assert!(
        rig.records().iter().any(|r| r["event"] == "gate-refused"),
        "the refusal is recorded"
    );
    let before = rig.records().len();
    let n = asked.load(Ordering::SeqCst);
    let mut child = rig.start();
    // The new controller asks again and still holds at 50 %.
    wait_asked(&asked, n + 2, &mut child);
    assert_eq!(rig.records_of("resumed").len(), 1);
    assert_eq!(
        rig.calls(),
        ["10", "50"],
        "nothing moved while the gate said no"
    );
    let refused_after: Vec<_> = rig
        .records()
        .into_iter()
        .skip(before)
        .filter(|r| r["event"] == "gate-refused")
        .collect();
    assert!(!refused_after.is_empty(), "the resumed run heard the no");
    assert!(
        refused_after[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("release-manager")),
        "{refused_after:?}"
    );
    let v = rig.stored(NAME).unwrap();
    assert_eq!(v["phase"]["step"], 1, "{v}");
    open.store(true, Ordering::SeqCst);
    let (code, summary, err) = finish(child);
    assert_eq!(code, 0, "{err}");
    assert_eq!(summary["outcome"], "promoted", "{summary}");
    assert_eq!(rig.calls(), ["10", "50", "100"]);
    assert!(
        rig.records()
            .iter()
            .skip(before)
            .any(|r| r["event"] == "gate-passed"),
        "the yes is recorded"
    );
}
