//! The operator's verbs through the real binary against a running `coalmine run` (and
//! against the store when none runs): the token, one owner per rollout, approvals that name
//! their step, retry, status of a finished rollout, and the decision log's operator records.

// Real processes on the wall clock: plain blocking test code.
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use super::rig::{Opts, Rig, finish, out};
use crate::status::http_body;

const NAME: &str = "verbs";

/// A rollout that stays at its first step (10 %) for a minute unless an operator acts.
fn held() -> Rig {
    Rig::new(
        NAME,
        &Opts {
            step_duration: "60s",
            ..Opts::default()
        },
    )
}

fn control_addr(v: &serde_json::Value) -> std::net::SocketAddr {
    v["control"]["addr"].as_str().unwrap().parse().unwrap()
}

/// Still at step 1 with 10 % in force, nothing else ever set, and no operator record.
fn untouched(rig: &Rig) {
    let v = rig.stored(NAME).unwrap();
    assert_eq!(v["phase"]["phase"], "progressing", "{v}");
    assert_eq!(v["phase"]["step"], 0, "{v}");
    assert_eq!(v["operator_actions"], 0, "{v}");
    assert_eq!(rig.weight(), "10");
    assert_eq!(rig.calls(), ["10"]);
    assert!(rig.records_of("operator").is_empty());
}

#[test]
fn without_the_token_or_with_a_wrong_one_every_lever_is_401_and_changes_nothing() {
    let rig = held();
    let mut child = rig.start();
    let v = rig.wait_running(NAME, &mut child, 1);
    let addr = control_addr(&v);
    let verbs: [&[&str]; 4] = [
        &["abort", NAME, "--reason", "x"],
        &["pause", NAME],
        &["resume", NAME],
        &["promote", NAME, "--step", "1", "--full"],
    ];
    // A wrong token through the CLI: the control API answers 401.
    for args in verbs {
        let o = rig
            .cmd()
            .env("COALMINE_TOKEN", "wrong")
            .args(args)
            .output()
            .unwrap();
        let (code, _, err) = out(&o);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("401"), "{args:?}: {err}");
    }
    // No token at all: a token file that is not there, or a state directory without the
    // generated one (talking to the controller by its address): nothing is sent.
    let elsewhere = tempfile::tempdir().unwrap();
    for args in verbs {
        let o = rig
            .cmd()
            .args(args)
            .args(["--token-file", "/nonexistent/token"])
            .output()
            .unwrap();
        let (code, _, err) = out(&o);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("cannot read token file"), "{args:?}: {err}");
        let o = rig
            .cmd()
            .env("COALMINE_STATE_DIR", elsewhere.path())
            .args(args)
            .args(["--control-addr", &addr.to_string()])
            .output()
            .unwrap();
        let (code, _, err) = out(&o);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("token"), "{args:?}: {err}");
    }
    // The same over raw HTTP: no Authorization header, a wrong one, a wrong scheme.
    let json = "Content-Type: application/json\r\n";
    for path in ["/abort", "/pause", "/resume", "/promote", "/approve"] {
        for auth in [
            "",
            "Authorization: Bearer wrong\r\n",
            "Authorization: Basic eDp5\r\n",
        ] {
            let (code, body) = http_body(
                addr,
                "POST",
                path,
                &format!("{json}{auth}"),
                r#"{"step":1}"#,
            )
            .unwrap();
            assert_eq!(code, 401, "{path} {auth:?}: {body}");
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    untouched(&rig);
    // The generated token (the state directory's, mode 0600) is accepted: the same lever
    // through the same CLI rolls back.
    let token = rig.path("state/token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&token).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let (code, _, err) = out(&rig.verb(&["abort", NAME, "--reason", "with the token"]));
    assert_eq!(code, 0, "{err}");
    let (code, summary, err) = finish(child);
    assert_eq!(code, 1, "{err}");
    assert_eq!(summary["outcome"], "rolled-back");
    assert_eq!(rig.weight(), "0");
}

/// The host name as the lock file gives it.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn a_second_run_of_the_same_rollout_exits_3_naming_the_holder_and_touches_nothing() {
    let rig = held();
    let mut first = rig.start();
    rig.wait_running(NAME, &mut first, 1);
    let ids: Vec<_> = rig
        .records()
        .iter()
        .map(|r| r["rollout_id"].clone())
        .collect();
    let o = rig
        .cmd()
        .args(["run", "--quiet", "--decisions"])
        .arg(rig.path("decisions.jsonl"))
        .arg(&rig.policy)
        .output()
        .unwrap();
    let (code, _, err) = out(&o);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(&format!("pid {}", first.id())) && err.contains(&hostname()),
        "{err}"
    );
    assert!(err.contains("already run by"), "{err}");
    // The first controller still owns it; the second wrote nothing and set nothing.
    std::thread::sleep(Duration::from_millis(300));
    untouched(&rig);
    assert!(first.try_wait().unwrap().is_none());
    let v = rig.stored(NAME).unwrap();
    assert_eq!(v["control"]["pid"], first.id());
    assert!(
        rig.records().iter().all(|r| ids.contains(&r["rollout_id"])),
        "a record of another run"
    );
    assert!(rig.records_of("resumed").is_empty());
    let (code, _, err) = out(&rig.verb(&["abort", NAME]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(finish(first).0, 1);
}

#[test]
fn an_approval_naming_another_step_is_refused_with_409_and_releases_nothing() {
    let rig = Rig::new(
        NAME,
        &Opts {
            step_duration: "1s",
            rollout: "approval = \"every-step\"",
            ..Opts::default()
        },
    );
    let mut child = rig.start();
    rig.wait_running(NAME, &mut child, 1);
    // Ready at step 1 (1 s baked): it waits for the approval of step 2.
    let ready = |rig: &Rig, what: &str| {
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            let last_tick = rig
                .records()
                .into_iter()
                .rev()
                .find(|r| r["kind"] == "tick");
            if let Some(r) = last_tick
                && r["decision"]["reason"]
                    .as_str()
                    .is_some_and(|s| s.contains(what))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("never waiting for {what}");
    };
    ready(&rig, "waiting for an operator to approve the step 2");
    for step in ["2", "3", "0"] {
        let (code, _, err) = out(&rig.verb(&["promote", NAME, "--step", step]));
        assert_eq!(code, 2, "step {step}: {err}");
        assert!(err.contains("409"), "step {step}: {err}");
        assert!(err.contains("releases only the step it names"), "{err}");
    }
    // Held: longer than the step, still at step 1.
    std::thread::sleep(Duration::from_millis(1500));
    let v = rig.stored(NAME).unwrap();
    assert_eq!(v["phase"]["step"], 0, "{v}");
    assert_eq!(rig.calls(), ["10"]);
    let (code, status, err) = out(&rig.verb(&["status", NAME, "--json"]));
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["step"], 1, "{status}");
    assert_eq!(status["running"], true, "{status}");
    // The step `status` shows (no --step): released; the next step waits again, the
    // approval of step 1 does not carry over to step 2.
    let (code, _, err) = out(&rig.verb(&["promote", NAME, "--reason", "looks fine"]));
    assert_eq!(code, 0, "{err}");
    rig.wait_running(NAME, &mut child, 2);
    ready(&rig, "waiting for an operator to approve the promotion");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(rig.calls(), ["10", "50"]);
    // The three refused approvals are in the decision log too (who, what, why), before
    // the one that released step 1.
    let ops = rig.records_of("operator");
    assert_eq!(ops.len(), 4, "{ops:?}");
    for (op, step) in ops.iter().zip(["2", "3", "0"]) {
        assert_eq!(op["event"], "promote", "{op}");
        assert_eq!(op["actor"], "local", "{op}");
        let detail = op["detail"].as_str().unwrap();
        assert!(
            detail.starts_with(&format!("refused: the rollout is not at step {step}"))
                && detail.ends_with("nothing was done"),
            "{op}"
        );
    }
    let ops = &ops[3..];
    assert_eq!(ops[0]["event"], "promote");
    assert_eq!(ops[0]["actor"], "local");
    assert!(
        ops[0]["detail"]
            .as_str()
            .unwrap()
            .contains("step 1 released: looks fine"),
        "{}",
        ops[0]
    );
    let (code, _, err) = out(&rig.verb(&["promote", NAME, "--step", "1"]));
    assert_eq!(code, 2, "an approval of the step already left: {err}");
    let (code, _, err) = out(&rig.verb(&["promote", NAME]));
    assert_eq!(code, 0, "{err}");
    let (code, summary, err) = finish(child);
    assert_eq!(code, 0, "{err}");
    assert_eq!(summary["outcome"], "promoted");
    assert_eq!(rig.calls(), ["10", "50", "100"]);
}

#[test]
fn retry_starts_a_rolled_back_rollout_from_step_1_with_a_new_id_and_status_reads_the_store() {
    // Bad from the 50 % step on: it rolls back there.
    let rig = Rig::new(
        NAME,
        &Opts {
            canary_rate: 0.2,
            step_duration: "1s",
            ..Opts::default()
        },
    );
    let (code, summary, err) = finish(rig.start());
    assert_eq!(code, 1, "{err}");
    assert_eq!(summary["outcome"], "rolled-back");
    assert_eq!(rig.calls(), ["10", "50", "0"]);
    let first_id = rig.records()[0]["rollout_id"].as_str().unwrap().to_string();
    // No controller runs: `status` reads the store and shows the outcome.
    let (code, text, err) = out(&rig.verb(&["status", NAME]));
    assert_eq!(code, 0, "{err}");
    assert!(
        text.starts_with(&format!("{NAME}: rolled-back")) && text.contains("errors"),
        "{text}"
    );
    let (code, json, err) = out(&rig.verb(&["status", NAME, "--json"]));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["phase"], "rolled-back", "{v}");
    assert_eq!(v["finished"], true, "{v}");
    assert_eq!(v["running"], false, "{v}");
    assert_eq!(v["weight"], 0.0, "{v}");
    assert_eq!(v["rollout_id"], first_id.as_str(), "{v}");
    assert!(v["reason"].as_str().unwrap().contains("errors"), "{v}");
    // Every rollout in the store, as a list.
    let (_, all, _) = out(&rig.verb(&["status", "--json"]));
    let all: serde_json::Value = serde_json::from_str(&all).unwrap();
    assert_eq!(all.as_array().map(Vec::len), Some(1), "{all}");
    // A verb that needs a controller says there is none.
    let (code, _, err) = out(&rig.verb(&["pause", NAME]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no running controller"), "{err}");
    // The fix is out (the canary is healthy now): retry runs it again from step 1.
    rig.set_canary_rate(0.01);
    let o = rig.verb(&["retry", NAME, "--quiet", "--json"]);
    let (code, json, err) = out(&o);
    assert_eq!(code, 0, "{err}");
    let summary: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(summary["outcome"], "promoted");
    assert_eq!(rig.calls(), ["10", "50", "0", "10", "50", "100"]);
    let records = rig.records();
    let started: Vec<_> = records.iter().filter(|r| r["event"] == "started").collect();
    assert_eq!(started.len(), 2, "{started:?}");
    let second_id = started[1]["rollout_id"].as_str().unwrap();
    assert_ne!(second_id, first_id);
    assert!(
        started[1]["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("retry of run {first_id}")),
        "{}",
        started[1]
    );
    // Every record after the retry's start carries the new id.
    let at = records.iter().position(|r| r == started[1]).unwrap();
    assert!(records[at..].iter().all(|r| r["rollout_id"] == second_id));
    let (_, json, _) = out(&rig.verb(&["status", NAME, "--json"]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["phase"], "promoted", "{v}");
    assert_eq!(v["rollout_id"], second_id, "{v}");
    assert_eq!(v["weight"], 100.0, "{v}");
    // A promoted rollout is not retried; nor run again without --restart.
    let (code, _, err) = out(&rig.verb(&["retry", NAME]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("only a rolled-back rollout is retried"),
        "{err}"
    );
    let (code, _, err) = out(&rig.verb(&["run", "--quiet", rig.policy.to_str().unwrap()]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("already finished (promoted)"), "{err}");
    assert_eq!(rig.calls().len(), 6);
}

#[test]
fn pause_resume_and_abort_are_recorded_with_their_actor_and_reason() {
    let rig = held();
    let token = rig.path("alice.token");
    std::fs::write(&token, "s3cret-of-alice\n").unwrap();
    let t = ["--token-file", token.to_str().unwrap()];
    let mut child = rig.start_with(&t);
    rig.wait_running(NAME, &mut child, 1);
    let lever = |args: &[&str]| {
        let (code, _, err) = out(&rig.cmd().args(args).args(t).output().unwrap());
        assert_eq!(code, 0, "{args:?}: {err}");
    };
    lever(&["pause", NAME, "--reason", "looking at a graph"]);
    rig.wait_stored(NAME, &mut child, "paused", |v| {
        v["phase"]["phase"] == "paused"
    });
    let (_, text, _) = out(&rig.verb(&["status", NAME]));
    assert!(
        text.starts_with(&format!("{NAME}: paused step 1/3 weight 10")),
        "{text}"
    );
    // Paused: the weight stays, a pause of a paused rollout is refused.
    let (code, _, err) = out(&rig.cmd().args(["pause", NAME]).args(t).output().unwrap());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("409"), "{err}");
    lever(&["resume", NAME, "--reason", "the graph is fine"]);
    rig.wait_stored(NAME, &mut child, "progressing again", |v| {
        v["phase"]["phase"] == "progressing"
    });
    lever(&["abort", NAME, "--reason", "manual stop"]);
    let (code, summary, err) = finish(child);
    assert_eq!(code, 1, "{err}");
    assert!(
        summary["reason"]["why"]
            .as_str()
            .is_some_and(|w| w.contains("alice") && w.contains("manual stop")),
        "{summary}"
    );
    assert_eq!(rig.weight(), "0");
    assert_eq!(rig.calls(), ["10", "0"]);
    let ops = rig.records_of("operator");
    let seen: Vec<_> = ops
        .iter()
        .map(|r| {
            (
                r["event"].as_str().unwrap(),
                r["actor"].as_str().unwrap(),
                r["detail"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("pause", "alice", "pause: looking at a graph"),
            // The 409 is in the decision log too.
            (
                "pause",
                "alice",
                "refused: not progressing; nothing was done"
            ),
            ("resume", "alice", "resume: the graph is fine"),
            ("abort", "alice", "abort: manual stop"),
        ],
        "{ops:?}"
    );
    for r in &ops {
        assert!(r["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{r}");
        assert!(r["policy_sha256"].is_string(), "{r}");
    }
    let v = rig.stored(NAME).unwrap();
    assert_eq!(v["operator_actions"], 4, "{v}");
    // The store keeps the outcome with its reason.
    let (_, text, _) = out(&rig.verb(&["status", NAME]));
    assert!(
        text.contains("rolled-back") && text.contains("manual stop"),
        "{text}"
    );
}

/// `promote` without `--full` releases the current step only (not the gate of the next, not
/// 100 %); `--full` goes to 100 % at once.
#[test]
fn promote_releases_only_the_current_step_and_full_promotes_at_once() {
    let rig = held();
    let mut child = rig.start();
    rig.wait_running(NAME, &mut child, 1);
    let (code, _, err) = out(&rig.verb(&["promote", NAME]));
    assert_eq!(code, 0, "{err}");
    rig.wait_running(NAME, &mut child, 2);
    // Step 2 bakes in full (a minute): longer than a few ticks, nothing moves.
    std::thread::sleep(Duration::from_millis(1500));
    let v = rig.stored(NAME).unwrap();
    assert_eq!(v["phase"]["phase"], "progressing", "{v}");
    assert_eq!(v["phase"]["step"], 1, "{v}");
    assert_eq!(rig.calls(), ["10", "50"]);
    let (code, _, err) = out(&rig.verb(&["promote", NAME, "--full", "--reason", "ship it"]));
    assert_eq!(code, 0, "{err}");
    let (code, summary, err) = finish(child);
    assert_eq!(code, 0, "{err}");
    assert_eq!(summary["outcome"], "promoted");
    assert_eq!(rig.calls(), ["10", "50", "100"]);
    let ops: Vec<_> = rig
        .records_of("operator")
        .into_iter()
        .map(|r| r["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ops, ["promote", "promote-full"]);
}

/// `coalmine promote --full` after a blue-green switch: in the post-promotion window it
/// ends the window (the promotion stands), in keep_blue it retires blue. Before, both were
/// refused: the CLI found no step to name ("not at a step").
#[test]
fn promote_full_ends_the_post_promotion_window_and_keep_blue() {
    let rig = Rig::new(
        NAME,
        &Opts {
            plan: Some(""),
            rollout: "strategy = \"blue-green\"\npost_promotion = \"60s\"\nkeep_blue = \"60s\"",
            tail: "\n[[metric]]\nname = \"ceiling\"\nevents = 'errors_total{arm=\"{{arm}}\"}'\n\
                   trials = 'requests_total{arm=\"{{arm}}\"}'\njudge = \"threshold\"\nmax = 0.1\n"
                .to_string(),
            ..Opts::default()
        },
    );
    let mut child = rig.start();
    rig.wait_stored(NAME, &mut child, "watching", |v| {
        v["phase"]["phase"] == "watching"
    });
    let (code, _, err) = out(&rig.verb(&["promote", NAME, "--full", "--reason", "looks fine"]));
    assert_eq!(code, 0, "{err}");
    rig.wait_stored(NAME, &mut child, "keeping blue", |v| {
        v["phase"]["phase"] == "keeping-blue"
    });
    let (code, _, err) = out(&rig.verb(&["promote", NAME, "--full", "--reason", "retire"]));
    assert_eq!(code, 0, "{err}");
    let (code, summary, err) = finish(child);
    assert_eq!(code, 0, "{err}");
    assert_eq!(summary["outcome"], "promoted", "{summary}");
    assert_eq!(rig.calls(), ["100"], "one switch, never back");
    let ops = rig.records_of("operator");
    let details: Vec<&str> = ops.iter().map(|r| r["detail"].as_str().unwrap()).collect();
    assert_eq!(details.len(), 2, "{details:?}");
    assert!(details[0].contains("window ended"), "{details:?}");
    assert!(details[1].contains("blue retired"), "{details:?}");
}
