//! High availability of `coalmine serve` on etcd (issue 12), through the real binary:
//! three replicas on one etcd (and on a three-member cluster), rollouts applied through a
//! follower (forwarded to the leader with the token), the leader SIGKILLed mid-rollout,
//! twice. Every rollout ends as an uninterrupted run would; the takeover time is measured
//! and printed; the decision records kept in etcd have contiguous window numbers per run
//! (none written twice, none lost); no weight is applied by a replica after it was killed
//! or after its successor's first change.
//!
//! The exec provider's script appends `REPLICA WEIGHT NANOS` to the rig's call log, the
//! replica coming from `COALMINE_TEST_REPLICA`, set per replica process.

// Real processes on the wall clock: plain blocking code inside the async test.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::server::Etcd;
use crate::common::Guard;
use crate::durable::rig::{Opts, Rig, out};
use crate::serve::printed_address;
use crate::status::http;
use crate::support::coalmine;

const TOKEN: &str = "ha-test-token-0123456789";

/// One `coalmine serve` replica.
struct Replica {
    id: String,
    url: String,
    guard: Guard,
    stderr: Arc<Mutex<String>>,
    killed_at: Option<u128>,
}

fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

impl Replica {
    fn start(id: &str, etcd: &str, state: &std::path::Path) -> Replica {
        let mut child = coalmine()
            .env("COALMINE_STATE_DIR", state)
            .env("COALMINE_TOKEN", TOKEN)
            .env("COALMINE_TEST_REPLICA", id)
            .env_remove("COALMINE_SERVER")
            .args(["serve", "--listen", "127.0.0.1:0", "--store", etcd])
            .args([
                "--lease-ttl",
                "2s",
                "--etcd-prefix",
                "/ha/",
                "--replica",
                id,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (addr, stderr) = printed_address(&mut child);
        let guard = Guard(child);
        Replica {
            id: id.to_string(),
            url: format!("http://{addr}"),
            guard,
            stderr,
            killed_at: None,
        }
    }

    fn alive(&self) -> bool {
        self.killed_at.is_none()
    }

    /// The role `/health/ready` says.
    fn role(&self) -> String {
        self.get("/health/ready")
            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
            .and_then(|v| v["role"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    fn get(&self, path: &str) -> Option<String> {
        let addr = self.url.trim_start_matches("http://").parse().unwrap();
        http(addr, "GET", path).map(|(_, b)| b)
    }

    fn kill(&mut self) {
        self.guard.kill();
        self.killed_at = Some(nanos());
    }
}

/// Waits (at most 20 s) until exactly one live replica says it leads; its index.
fn leader(rs: &[Replica]) -> usize {
    let t = Instant::now();
    loop {
        let leaders: Vec<usize> = (0..rs.len())
            .filter(|&i| rs[i].alive() && rs[i].role() == "leader")
            .collect();
        if leaders.len() == 1 {
            return leaders[0];
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no single leader: {:?}",
            rs.iter()
                .map(|r| (r.id.clone(), r.role()))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One call of a provider: who, what weight, when.
#[derive(Debug, Clone)]
struct Call {
    replica: String,
    weight: String,
    at: u128,
}

fn calls(rig: &Rig) -> Vec<Call> {
    rig.calls()
        .iter()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some(Call {
                replica: f.next()?.to_string(),
                weight: f.next()?.to_string(),
                at: f.next()?.parse().ok()?,
            })
        })
        .collect()
}

fn rfc3339_nanos(s: &str) -> u128 {
    humantime::parse_rfc3339(s)
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// `n` rollouts, half healthy (promoted), half whose canary fails at the 50 % step
/// (rolled back), the provider logging the replica that called it.
fn rigs(n: usize, step: &'static str) -> Vec<(String, Rig, bool)> {
    (0..n)
        .map(|i| {
            let bad = i % 2 == 1;
            let name = format!("ha{i}");
            let rig = Rig::new(
                &name,
                &Opts {
                    canary_rate: if bad { 0.3 } else { 0.01 },
                    step_duration: step,
                    interval: "300ms",
                    ..Opts::default()
                },
            );
            let d = rig.dir.path().display().to_string();
            std::fs::write(
                rig.path("set.sh"),
                format!(
                    "#!/bin/sh\nd={d}\necho \"$1\" > $d/w.tmp && mv $d/w.tmp $d/weight && \
                     echo \"$COALMINE_TEST_REPLICA $1 $(date +%s%N)\" >> $d/calls\n"
                ),
            )
            .unwrap();
            (name, rig, bad)
        })
        .collect()
}

/// Applies every rig's policy through `via` (`coalmine apply`, with the token).
fn apply_all(via: &Replica, state: &std::path::Path, rigs: &[(String, Rig, bool)]) {
    for (name, rig, _) in rigs {
        let o = coalmine()
            .env("COALMINE_TOKEN", TOKEN)
            .env("COALMINE_SERVER", &via.url)
            .env("COALMINE_STATE_DIR", state)
            .args(["apply", rig.policy.to_str().unwrap()])
            .output()
            .unwrap();
        let (code, stdout, err) = out(&o);
        assert_eq!(code, 0, "apply {name} through {}: {stdout} {err}", via.id);
    }
}

/// Waits (at most 60 s) until every rollout has finished, as `reader` lists them; checks
/// each outcome and the window numbers of its records (kept in etcd: contiguous, none
/// written twice or lost); returns each rollout's records.
fn finished(
    rs: &[Replica],
    reader: usize,
    rigs: &[(String, Rig, bool)],
) -> Vec<Vec<serde_json::Value>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let list = loop {
        let v: serde_json::Value = rs[reader]
            .get("/rollouts")
            .and_then(|b| serde_json::from_str(&b).ok())
            .unwrap_or_default();
        let done = v
            .as_array()
            .is_some_and(|a| a.len() == rigs.len() && a.iter().all(|r| r["finished"] == true));
        if done {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "rollouts never finished: {v:#}\n{}",
            rs.iter().fold(String::new(), |mut acc, r| {
                acc.push_str("--- ");
                acc.push_str(&r.id);
                acc.push_str(":\n");
                acc.push_str(&r.stderr.lock().unwrap());
                acc
            })
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let outcomes: BTreeMap<String, String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["rollout"].as_str().unwrap().to_string(),
                r["outcome"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    let mut all = Vec::new();
    for (name, _, bad) in rigs {
        let want = if *bad { "rolled-back" } else { "promoted" };
        assert_eq!(outcomes[name], want, "{name}: {outcomes:?}");
        let body = rs[reader]
            .get(&format!("/rollouts/{name}/records"))
            .unwrap();
        let records: Vec<serde_json::Value> = body
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(
            records.iter().any(|r| r["kind"] == "final"),
            "{name}: no final record in {body}"
        );
        let seqs: Vec<u64> = records
            .iter()
            .filter(|r| r["kind"] == "tick")
            .map(|r| r["window"]["seq"].as_u64().unwrap())
            .collect();
        assert!(seqs.len() > 3, "{name}: too few ticks: {seqs:?}");
        for w in seqs.windows(2) {
            assert_eq!(
                w[1],
                w[0] + 1,
                "{name}: window numbers not contiguous (a record written twice or lost): {seqs:?}"
            );
        }
        all.push(records);
    }
    all
}

async fn ha(members: usize, rollouts: usize, kills: usize) {
    let Some(etcd) = Etcd::start(members).await else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let url = etcd.url();
    let mut rs: Vec<Replica> = (0..3)
        .map(|i| Replica::start(&format!("r{i}"), &url, state.path()))
        .collect();
    let first = leader(&rs);
    let rigs = rigs(rollouts, "3s");
    // Applied through a follower: forwarded to the leader, the token with it.
    let via = (first + 1) % rs.len();
    apply_all(&rs[via], state.path(), &rigs);
    let t0 = Instant::now();
    // Kill the leader mid-rollout: once every rollout has had its first change, then
    // again once the successor has made changes of its own.
    let mut kill_times = Vec::new();
    let mut leaders = vec![first];
    for k in 0..kills {
        let l = *leaders.last().unwrap();
        let id = rs[l].id.clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let moved = rigs
                .iter()
                .filter(|(_, rig, _)| calls(rig).iter().any(|c| c.replica == id))
                .count();
            if moved * 2 >= rigs.len() {
                break;
            }
            assert!(Instant::now() < deadline, "leader {id} never moved traffic");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Somewhere inside a step, not on its boundary.
        std::thread::sleep(Duration::from_millis(700 + 500 * k as u64));
        rs[l].kill();
        kill_times.push(rs[l].killed_at.unwrap());
        eprintln!("killed leader {id} at {:?}", t0.elapsed());
        leaders.push(leader(&rs));
    }
    // Every rollout to its end, seen from a replica that is not the leader (reads from
    // the store on any replica).
    let last = *leaders.last().unwrap();
    let reader = (0..rs.len())
        .find(|&i| rs[i].alive() && i != last)
        .unwrap_or(last);
    let records = finished(&rs, reader, &rigs);
    // The records, from the store, through a follower.
    let mut first_tick_after = vec![u128::MAX; kill_times.len()];
    for records in &records {
        for (k, &tk) in kill_times.iter().enumerate() {
            if let Some(t) = records
                .iter()
                .filter(|r| r["kind"] == "tick")
                .map(|r| rfc3339_nanos(r["time"].as_str().unwrap()))
                .find(|&t| t > tk)
            {
                first_tick_after[k] = first_tick_after[k].min(t);
            }
        }
    }
    for (k, (&tk, &t)) in kill_times.iter().zip(&first_tick_after).enumerate() {
        assert!(t != u128::MAX, "no tick after kill {k}");
        let secs = (t - tk) as f64 / 1e9;
        eprintln!(
            "takeover {}: {} killed, first tick by {} after {secs:.2} s (lease TTL 2 s, interval 300 ms)",
            k + 1,
            rs[leaders[k]].id,
            rs[leaders[k + 1]].id
        );
        println!(
            "takeover_seconds{{members=\"{members}\",kill=\"{}\"}} {secs:.3}",
            k + 1
        );
    }
    // The call log: nobody after being killed, nobody after the successor's first change.
    let mut all: Vec<Call> = rigs.iter().flat_map(|(_, rig, _)| calls(rig)).collect();
    all.sort_by_key(|c| c.at);
    for r in &rs {
        if let Some(tk) = r.killed_at {
            let late: Vec<&Call> = all
                .iter()
                .filter(|c| c.replica == r.id && c.at > tk)
                .collect();
            assert!(
                late.is_empty(),
                "{} applied after it was killed: {late:?}",
                r.id
            );
        }
    }
    for k in 0..leaders.len() - 1 {
        let (old, new) = (&rs[leaders[k]].id, &rs[leaders[k + 1]].id);
        if let Some(succ) = all.iter().find(|c| &c.replica == new) {
            let late: Vec<&Call> = all
                .iter()
                .filter(|c| &c.replica == old && c.at > succ.at)
                .collect();
            assert!(
                late.is_empty(),
                "{old} applied after {new} started: {late:?}"
            );
        }
    }
    // Only leaders applied anything, and only the plan's weights.
    for c in &all {
        assert!(
            ["0", "10", "50", "100"].contains(&c.weight.as_str()),
            "a weight off the plan: {c:?}"
        );
        assert!(
            leaders.iter().any(|&l| rs[l].id == c.replica),
            "a call by {} which never led: {c:?}",
            c.replica
        );
    }
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_one_etcd_survive_two_leader_kills() {
    ha(1, 10, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_a_three_member_cluster_survive_a_leader_kill() {
    ha(3, 4, 1).await;
}

/// etcd gone (every member killed) for three lease TTLs, then back on its data: no replica
/// changes traffic once its lease can have lapsed, the rollouts hold, and they end as
/// they would have once etcd returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_etcd_no_replica_acts_and_the_rollouts_continue_when_it_returns() {
    let Some(mut etcd) = Etcd::start(1).await else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let url = etcd.url();
    let rs: Vec<Replica> = (0..3)
        .map(|i| Replica::start(&format!("r{i}"), &url, state.path()))
        .collect();
    let first = leader(&rs);
    let rigs = rigs(4, "4s");
    apply_all(&rs[first], state.path(), &rigs);
    // Every rollout has made its first change: then etcd goes.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !rigs.iter().all(|(_, rig, _)| !calls(rig).is_empty()) {
        assert!(Instant::now() < deadline, "the rollouts never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let held: Vec<String> = rigs.iter().map(|(_, rig, _)| rig.weight()).collect();
    etcd.kill_all();
    let gone = nanos();
    std::thread::sleep(Duration::from_secs(6));
    let weights: Vec<String> = rigs.iter().map(|(_, rig, _)| rig.weight()).collect();
    let back = nanos();
    etcd.restart().await;
    // The lease TTL (2 s) is the most a leader may keep acting on its lease.
    let ttl = 2_000_000_000u128;
    let mut all: Vec<Call> = rigs.iter().flat_map(|(_, rig, _)| calls(rig)).collect();
    all.sort_by_key(|c| c.at);
    let during: Vec<&Call> = all
        .iter()
        .filter(|c| c.at > gone + ttl && c.at < back)
        .collect();
    assert!(
        during.is_empty(),
        "traffic changed without etcd, beyond the lease TTL: {during:?}"
    );
    eprintln!("weights when etcd went {held:?}, 6 s later {weights:?}");
    for r in &rs {
        let role = r.role();
        assert!(
            role != "leader",
            "{} still says it leads without etcd ({role})",
            r.id
        );
    }
    let reader = leader(&rs);
    // Each to the outcome it would have had, with no window recorded twice or lost.
    finished(&rs, reader, &rigs);
    drop(etcd);
}
