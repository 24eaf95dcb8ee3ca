//! Step plans (`[[rollout.step]]`, issue 13) through the real binary: a blind cutover says
//! that nothing was analysed, and a pause until promoted survives a SIGKILL and a restart.

// Real processes on the wall clock: plain blocking test code.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use super::rig::{Opts, Rig, finish, out};

const NAME: &str = "plans";

/// Waits (at most 30 s) until the decision log has a tick whose reason contains `text`,
/// after the first `skip` records.
fn wait_reason(rig: &Rig, child: &mut std::process::Child, skip: usize, text: &str) {
    let t = Instant::now();
    loop {
        let found = rig.records().iter().skip(skip).any(|r| {
            r["decision"]["reason"]
                .as_str()
                .is_some_and(|s| s.contains(text))
        });
        if found {
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the controller ended before `{text}`"
        );
        assert!(t.elapsed() < Duration::from_secs(30), "never `{text}`");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The defect: `steps = [100]` with a bad canary printed "promoted … after 0 ticks"
/// as if it had been analysed. Now `validate` warns and `run` says no window was judged.
#[test]
fn a_blind_cutover_is_named_as_such_by_validate_and_run() {
    let rig = Rig::new(
        NAME,
        &Opts {
            canary_rate: 0.05,
            plan: Some("steps = [100]\n"),
            ..Opts::default()
        },
    );
    let policy = rig.policy.to_str().unwrap().to_string();
    let (code, text, err) = out(&rig.verb(&["validate", &policy]));
    assert_eq!(code, 0, "{err}");
    let said = format!("{text}{err}");
    assert!(
        said.contains("a blind cutover: nothing is analysed"),
        "{said}"
    );
    let log = rig.path("decisions.jsonl");
    let (code, text, err) = out(&rig.verb(&["run", "--decisions", log.to_str().unwrap(), &policy]));
    assert_eq!(code, 0, "{err}");
    let said = format!("{text}{err}");
    assert!(said.contains("PROMOTED WITHOUT ANALYSIS"), "{said}");
    assert!(said.contains("nothing was analysed"), "{said}");
    assert!(!said.contains("PROMOTED after"), "{said}");
    let promoted: Vec<_> = rig
        .records()
        .into_iter()
        .filter(|r| r["event"] == "promoted")
        .collect();
    assert_eq!(promoted.len(), 1, "{promoted:?}");
    assert!(
        promoted[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("blind cutover")),
        "{promoted:?}"
    );
}

/// A step with `pause = "until-promoted"` holds at its weight until `coalmine promote`,
/// also after the controller is killed and a new one takes the rollout over.
#[test]
fn a_pause_until_promoted_survives_a_kill_and_is_released_by_promote() {
    let rig = Rig::new(
        NAME,
        &Opts {
            plan: Some(
                "[[rollout.step]]\nweight = 10\nduration = \"1s\"\npause = \"until-promoted\"\n\
                 [[rollout.step]]\nweight = 50\nduration = \"1s\"\n\
                 [[rollout.step]]\nweight = 100\n",
            ),
            ..Opts::default()
        },
    );
    let mut child = rig.start();
    wait_reason(&rig, &mut child, 0, "paused until promoted");
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    let v = rig.stored(NAME).unwrap();
    assert_eq!(v["phase"]["phase"], "progressing", "{v}");
    assert_eq!(v["phase"]["step"], 0, "{v}");
    let before = rig.records().len();
    let mut child = rig.start();
    wait_reason(&rig, &mut child, before, "paused until promoted");
    assert_eq!(rig.records_of("resumed").len(), 1);
    // Many ticks later, still at the paused step: nothing else was ever set.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(rig.calls(), ["10"]);
    let v = rig.stored(NAME).unwrap();
    assert_eq!(v["phase"]["step"], 0, "{v}");
    let (code, _, err) = out(&rig.verb(&["promote", NAME]));
    assert_eq!(code, 0, "{err}");
    let (code, summary, err) = finish(child);
    assert_eq!(code, 0, "{err}");
    assert_eq!(summary["outcome"], "promoted");
    assert_eq!(summary["analysed"], true);
    assert_eq!(rig.calls(), ["10", "50", "100"]);
}
