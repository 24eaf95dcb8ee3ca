//! The etcd store and leader election (issue 12) against a real etcd on loopback: records
//! round-trip and are compare-and-swap, ownership names its holder, a standby takes over
//! when the leader's lease expires, a deposed leader's writes and fence checks fail with
//! `Fenced`, authentication, and a three-member cluster that loses a member.

mod ha;
mod server;

use std::sync::Arc;
use std::time::Duration;

use coalmine::analysis::errors::EventJudgeSpec;
use coalmine::analysis::{Counts, JudgeSpec, MetricJudge, Observation, Segment};
use coalmine::controller::Phase;
use coalmine::controller::machine::Progress;
use coalmine::controller::store::etcd::{
    EtcdClient, EtcdConfig, EtcdStore, LeaderOptions, Leadership, Op, Role,
};
use coalmine::controller::store::{
    FORMAT, Judges, PolicyRef, RolloutState, Store, StoreError, new_rollout_id, policy_sha256,
};
use coalmine::model::Weight;
use tokio::time::Instant;

use server::Etcd;

const PREFIX: &str = "/coalmine-test/";

fn replica(etcd: &Etcd, id: &str, ttl: Duration) -> (Arc<Leadership>, EtcdStore) {
    let client = etcd.client();
    let l = Arc::new(Leadership::start(
        client.clone(),
        PREFIX,
        LeaderOptions {
            id: id.to_string(),
            addr: Some(format!("127.0.0.1:7{id}")),
            ttl,
        },
    ));
    let store = EtcdStore::new(client, PREFIX, l.clone());
    (l, store)
}

/// A replica that has reached role `want` (`"leader"` or `"follower"`).
async fn joined(etcd: &Etcd, id: &str, ttl: Duration, want: &str) -> (Arc<Leadership>, EtcdStore) {
    let (l, store) = replica(etcd, id, ttl);
    until_role(&l, want, Duration::from_secs(10)).await;
    (l, store)
}

/// Waits until `l` has role `want` (by name), up to `limit`; returns how long it took.
async fn until_role(l: &Leadership, want: &str, limit: Duration) -> Duration {
    let t0 = Instant::now();
    let mut rx = l.watch();
    loop {
        if rx.borrow_and_update().name() == want && (want != "leader" || l.is_leader()) {
            return t0.elapsed();
        }
        let left = limit.saturating_sub(t0.elapsed());
        assert!(
            !left.is_zero(),
            "replica {} did not become {want} within {limit:?} (role {:?})",
            l.id(),
            l.role()
        );
        let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), rx.changed()).await;
    }
}

/// A rollout's record as the runner writes it, with judges that have seen data.
fn state(name: &str) -> RolloutState {
    let w = Weight::try_from_percent(25.0).unwrap();
    let mut p = Progress::new(1, w, Duration::from_millis(1500), Duration::ZERO);
    p.requests = [1234.5, 0.1 + 0.2];
    let spec = JudgeSpec::Events(EventJudgeSpec::new(0.05));
    let mut judge = MetricJudge::new(&spec);
    for i in 0..5 {
        let seg = Segment {
            share: 0.25,
            baseline: Observation::Counts(Counts {
                events: 3.0 + f64::from(i),
                trials: 1000.0,
            }),
            canary: Observation::Counts(Counts {
                events: 1.0,
                trials: 333.3,
            }),
        };
        let _ = judge.observe("errors", &seg);
    }
    RolloutState {
        format: FORMAT,
        rollout: name.to_string(),
        rollout_id: new_rollout_id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        revision: 0,
        policy: PolicyRef {
            path: Some("p.toml".to_string()),
            sha256: policy_sha256(b"name = 'x'"),
            text: None,
        },
        phase: Phase::Progressing(p),
        steps: 3,
        elapsed: Duration::from_nanos(12_345_678_901),
        saved_at: std::time::SystemTime::now(),
        started_at: std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        weight: w,
        seq: 7,
        ticks: 7,
        steps_reached: 2,
        first_traffic: Some(Duration::from_millis(10)),
        judges: Judges(vec![judge]),
        decisions: None,
        control: None,
        last: Some("hold".to_string()),
        operator_actions: 0,
    }
}

/// The record's content, without the revision (which the store assigns).
fn content(s: &RolloutState) -> String {
    let mut s = s.clone();
    s.revision = 0;
    serde_json::to_string(&s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_round_trip_and_writes_compare_and_swap() {
    let Some(etcd) = Etcd::start(1).await else {
        return;
    };
    let (_a, store) = joined(&etcd, "a", Duration::from_secs(5), "leader").await;

    assert!(store.load("web").await.unwrap().is_none());
    let s = state("web");
    let r1 = store.save(&s, 0).await.unwrap();
    let back = store.load("web").await.unwrap().unwrap();
    assert_eq!(back.revision, r1);
    assert_eq!(content(&back), content(&s), "the record comes back exactly");
    assert_eq!(back.judges.0.len(), 1);

    // A second creator, and a writer that read an old revision, both conflict.
    match store.save(&s, 0).await {
        Err(StoreError::Conflict {
            found, expected: 0, ..
        }) => assert_eq!(found, r1),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let mut s2 = back.clone();
    s2.ticks = 8;
    let r2 = store.save(&s2, r1).await.unwrap();
    assert!(r2 > r1);
    match store.save(&s2, r1).await {
        Err(StoreError::Conflict {
            found, expected, ..
        }) => {
            assert_eq!((found, expected), (r2, r1));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.load("web").await.unwrap().unwrap().ticks, 8);

    // list: every record by name; a damaged one is skipped (and load says so).
    store.save(&state("api"), 0).await.unwrap();
    etcd.client()
        .txn(
            &[],
            &[Op::Put(
                format!("{PREFIX}rollouts/broken").into_bytes(),
                b"{not a record".to_vec(),
                0,
            )],
            &[],
        )
        .await
        .unwrap();
    let all = store.list().await.unwrap();
    let names: Vec<_> = all.iter().map(|s| s.rollout.as_str()).collect();
    assert_eq!(names, ["api", "web"]);
    assert_eq!(all[1].revision, r2);
    match store.load("broken").await {
        Err(StoreError::Damaged { path, .. }) => {
            assert!(
                path.to_string_lossy().contains("rollouts/broken"),
                "{}",
                path.display()
            );
        }
        other => panic!("expected a damaged record, got {other:?}"),
    }
    assert!(matches!(
        store.save(&state("../x"), 0).await,
        Err(StoreError::BadName(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_records_beyond_the_retention_are_deleted_oldest_first() {
    let Some(etcd) = Etcd::start(1).await else {
        return;
    };
    let (a, every) = joined(&etcd, "a", Duration::from_secs(5), "leader").await;
    let lines = |from: usize, to: usize| -> Vec<String> {
        (from..to).map(|i| format!("{{\"n\":{i}}}")).collect()
    };
    // A store that keeps everything wrote 4 records in two writes.
    let every = every.with_records_keep(0);
    let s = state("kept");
    let mut rev = every.save_with_records(&s, 0, &lines(0, 2)).await.unwrap();
    rev = every
        .save_with_records(&s, rev, &lines(2, 4))
        .await
        .unwrap();
    // One that keeps 5 (a fresh one: it reads the existing keys first) writes 3 more: the
    // 2 oldest go in the same transaction.
    let five = EtcdStore::new(etcd.client(), PREFIX, a.clone()).with_records_keep(5);
    rev = five.save_with_records(&s, rev, &lines(4, 7)).await.unwrap();
    assert_eq!(five.records("kept").await.unwrap(), lines(2, 7));
    // One at a time, as ticks are: always the last 5, the newest included.
    for i in 7..27 {
        rev = five
            .save_with_records(&s, rev, &lines(i, i + 1))
            .await
            .unwrap();
        assert_eq!(five.records("kept").await.unwrap(), lines(i - 4, i + 1));
    }
    // A write without records leaves them; a conflicting write deletes nothing.
    rev = five.save(&s, rev).await.unwrap();
    assert!(matches!(
        five.save_with_records(&s, rev - 1, &lines(100, 103)).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(five.records("kept").await.unwrap(), lines(22, 27));
    // More in one write than are kept: the last 5 of them.
    five.save_with_records(&s, rev, &lines(27, 35))
        .await
        .unwrap();
    assert_eq!(five.records("kept").await.unwrap(), lines(30, 35));
    // What etcd holds under the rollout's records prefix is exactly that (no stray keys).
    let keys = etcd
        .client()
        .keys_prefix(format!("{PREFIX}records/kept/").as_bytes())
        .await
        .unwrap();
    assert_eq!(keys.len(), 5);
    // Another rollout's records are its own.
    five.save_with_records(&state("other"), 0, &lines(0, 1))
        .await
        .unwrap();
    assert_eq!(five.records("other").await.unwrap(), lines(0, 1));
    assert_eq!(five.records("kept").await.unwrap(), lines(30, 35));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_owner_is_refused_with_the_holders_name() {
    let Some(etcd) = Etcd::start(1).await else {
        return;
    };
    // One after the other: started together, either may win the election.
    let (_a, store_a) = joined(&etcd, "a", Duration::from_secs(5), "leader").await;
    let (_b, store_b) = joined(&etcd, "b", Duration::from_secs(5), "follower").await;

    let guard = store_a.acquire("web").await.unwrap();
    for store in [&store_a, &store_b] {
        match store.acquire("web").await {
            Err(StoreError::Locked { rollout, holder }) => {
                assert_eq!(rollout, "web");
                assert!(holder.contains("replica a"), "{holder}");
                assert!(
                    holder.contains(&format!("pid {}", std::process::id())),
                    "{holder}"
                );
            }
            other => panic!("expected Locked, got {other:?}"),
        }
    }
    // Another rollout is free; a dropped guard frees its rollout.
    drop(store_b.acquire("api").await.unwrap());
    drop(guard);
    let t0 = Instant::now();
    loop {
        match store_b.acquire("web").await {
            Ok(_) => break,
            Err(StoreError::Locked { .. }) if t0.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the dropped owner key was not released: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_leads_once_the_lease_expires_and_the_deposed_leader_is_fenced() {
    let Some(etcd) = Etcd::start(1).await else {
        return;
    };
    let ttl = Duration::from_secs(2);
    let (a, store_a) = joined(&etcd, "a", ttl, "leader").await;
    let (b, store_b) = joined(&etcd, "b", ttl, "follower").await;
    match b.role() {
        Role::Follower { leader: Some(info) } => {
            assert_eq!(info.id, "a");
            assert_eq!(info.addr.as_deref(), Some("127.0.0.1:7a"));
        }
        other => panic!("b should see a as leader, sees {other:?}"),
    }
    // A follower's writes are refused before they reach etcd.
    assert!(matches!(
        store_b.save(&state("web"), 0).await,
        Err(StoreError::Fenced { .. })
    ));
    assert!(matches!(
        store_b.fence("web").await,
        Err(StoreError::Fenced { .. })
    ));

    let rev = store_a.save(&state("web"), 0).await.unwrap();
    let left = store_a.fence("web").await.unwrap().expect("a bound");
    assert!(left <= ttl, "{left:?}");

    // a hangs: its lease is no longer kept alive.
    a.stop_keepalive();
    let took = until_role(&b, "leader", ttl * 4).await;
    eprintln!(
        "takeover after the leader stopped keeping its lease alive: {:.2}s (TTL {}s)",
        took.as_secs_f64(),
        ttl.as_secs()
    );

    // The deposed leader can neither write nor pass the fence check.
    let mut s = store_a.load("web").await.unwrap().unwrap();
    s.ticks = 99;
    for r in [
        store_a.save(&s, rev).await.map(|_| ()),
        store_a.fence("web").await.map(|_| ()),
    ] {
        match r {
            Err(StoreError::Fenced { rollout, why }) => {
                assert_eq!(rollout, "web");
                assert!(!why.is_empty());
            }
            other => panic!("the deposed leader was not fenced: {other:?}"),
        }
    }
    assert!(!a.is_leader());
    // The successor continues from the record.
    let r2 = store_b.save(&s, rev).await.unwrap();
    assert!(r2 > rev);
    assert_eq!(store_b.load("web").await.unwrap().unwrap().ticks, 99);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lease_was_revoked_is_fenced_by_etcd_itself() {
    // a's lease is long, so its local deadline still says it leads: only the transaction's
    // comparison of the leader key can stop it.
    let Some(etcd) = Etcd::start(1).await else {
        return;
    };
    let (a, store_a) = joined(&etcd, "a", Duration::from_secs(60), "leader").await;
    let (b, store_b) = joined(&etcd, "b", Duration::from_secs(2), "follower").await;
    let rev = store_a.save(&state("web"), 0).await.unwrap();
    a.stop_keepalive();
    let mut roles = a.watch();
    roles.borrow_and_update();

    // An operator revokes a's lease (`etcdctl lease revoke`): its keys go.
    etcd.client().lease_revoke(a.lease()).await.unwrap();
    until_role(&b, "leader", Duration::from_secs(10)).await;
    assert!(
        a.is_leader(),
        "a has not noticed yet: its local deadline is 60 s away"
    );

    let mut s = store_a.load("web").await.unwrap().unwrap();
    s.ticks = 42;
    match store_a.save(&s, rev).await {
        Err(StoreError::Fenced { why, .. }) => assert!(why.contains("held by b"), "{why}"),
        other => panic!("the deposed leader's write went through: {other:?}"),
    }
    assert_eq!(
        store_a.load("web").await.unwrap().unwrap().revision,
        rev,
        "nothing was written"
    );
    // Stepped down at once, and said so.
    assert!(!a.is_leader());
    assert!(roles.has_changed().unwrap());
    assert_eq!(roles.borrow().name(), "follower");
    match store_a.fence("web").await {
        Err(StoreError::Fenced { .. }) => {}
        other => panic!("the deposed leader passed the fence: {other:?}"),
    }
    store_b.save(&s, rev).await.unwrap();
}

/// Twenty record writes (each a fresh load and a save), retrying only etcd's transient
/// failures (while the survivors elect a raft leader), a bounded number of times.
async fn twenty_writes(store: &EtcdStore, rev: &mut u64, what: &str) {
    let t0 = Instant::now();
    let mut writes = 0;
    let mut retried = 0;
    while writes < 20 {
        let mut s = store
            .load("web")
            .await
            .map_or_else(|_| state("web"), |s| s.unwrap());
        s.ticks = writes;
        match store.save(&s, *rev).await {
            Ok(r) => {
                *rev = r;
                writes += 1;
            }
            Err(StoreError::Etcd { source, .. }) if source.is_transient() && retried < 40 => {
                retried += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the store stopped working after {what}: {e}"),
        }
    }
    eprintln!(
        "20 writes after {what} in {:.2}s ({retried} transient failures retried)",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(store.load("web").await.unwrap().unwrap().ticks, 19);
}

/// The member that is raft leader, by etcd's own status.
async fn raft_leader(etcd: &Etcd) -> usize {
    let http = reqwest::Client::new();
    for (i, m) in etcd.members.iter().enumerate() {
        let url = format!("http://127.0.0.1:{}/v3/maintenance/status", m.client);
        let Ok(r) = http.post(url).json(&serde_json::json!({})).send().await else {
            continue;
        };
        let v: serde_json::Value = r.json().await.unwrap();
        if v["leader"].as_str().is_some() && v["leader"] == v["header"]["member_id"] {
            return i;
        }
    }
    panic!("no etcd member says it leads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_member_cluster_keeps_the_store_working_without_one_member() {
    let Some(mut etcd) = Etcd::start(3).await else {
        return;
    };
    // A 10 s lease: this test is about the store surviving members' deaths, not about lease
    // timing; with 3 s, a raft election on a loaded 2-core machine (the HA tests run beside
    // it) once outlasted the lease and the leader rightly stood down.
    let (a, store) = joined(&etcd, "a", Duration::from_secs(10), "leader").await;
    let mut rev = store.save(&state("web"), 0).await.unwrap();
    // The first endpoint is the one the client talks to: kill it (fail-over).
    etcd.kill(0);
    twenty_writes(&store, &mut rev, "the client's member died").await;
    etcd.restart().await;
    // Then the raft leader (an election among the survivors).
    let leader = raft_leader(&etcd).await;
    etcd.kill(leader);
    twenty_writes(&store, &mut rev, &format!("the raft leader m{leader} died")).await;
    assert!(
        a.is_leader(),
        "the leader kept its lease through the members' deaths"
    );
    store.fence("web").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_takes_the_password_and_never_shows_it() {
    let Some(etcd) = Etcd::start(1).await else {
        return;
    };
    let base = format!("http://127.0.0.1:{}", etcd.members[0].client);
    let http = reqwest::Client::new();
    let password = "s3cret-etcd-password";
    for (path, body) in [
        (
            "/v3/auth/user/add",
            serde_json::json!({"name": "root", "password": "rootpw-123"}),
        ),
        ("/v3/auth/role/add", serde_json::json!({"name": "root"})),
        (
            "/v3/auth/user/grant",
            serde_json::json!({"user": "root", "role": "root"}),
        ),
        (
            "/v3/auth/user/add",
            serde_json::json!({"name": "coalmine", "password": password}),
        ),
        ("/v3/auth/role/add", serde_json::json!({"name": "rw"})),
        (
            "/v3/auth/role/grant",
            serde_json::json!({"name": "rw", "perm": {"permType": "READWRITE", "key": "Lw==", "range_end": "AA=="}}),
        ),
        (
            "/v3/auth/user/grant",
            serde_json::json!({"user": "coalmine", "role": "rw"}),
        ),
        ("/v3/auth/enable", serde_json::json!({})),
    ] {
        let r = http
            .post(format!("{base}{path}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "{path}: {}",
            r.text().await.unwrap()
        );
    }
    let with = |user: Option<&str>, pw: Option<&str>| {
        let mut cfg = EtcdConfig::from_url(&etcd.url()).unwrap();
        cfg.user = user.map(str::to_string);
        cfg.password = pw.map(str::to_string);
        Arc::new(EtcdClient::new(&cfg).unwrap())
    };
    let anonymous = with(None, None).get(b"/x").await.unwrap_err().to_string();
    assert!(anonymous.contains("user name is empty"), "{anonymous}");
    let wrong = with(Some("coalmine"), Some("not-the-password"))
        .get(b"/x")
        .await
        .unwrap_err()
        .to_string();
    assert!(wrong.contains("authentication failed"), "{wrong}");
    assert!(!wrong.contains("not-the-password"), "{wrong}");

    let client = with(Some("coalmine"), Some(password));
    let l = Arc::new(Leadership::start(
        client.clone(),
        PREFIX,
        LeaderOptions {
            id: "a".to_string(),
            addr: None,
            ttl: Duration::from_secs(5),
        },
    ));
    until_role(&l, "leader", Duration::from_secs(10)).await;
    let store = EtcdStore::new(client, PREFIX, l);
    let rev = store.save(&state("web"), 0).await.unwrap();
    assert_eq!(store.load("web").await.unwrap().unwrap().revision, rev);
    // The password is registered as a secret: nothing coalmine prints can show it.
    assert_eq!(
        coalmine::redact::text(&format!("x {password} y")),
        "x *** y"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_etcd_nobody_leads_and_a_leader_returns_with_it() {
    let Some(mut etcd) = Etcd::start(1).await else {
        return;
    };
    let ttl = Duration::from_secs(2);
    let (a, store_a) = joined(&etcd, "a", ttl, "leader").await;
    let (b, store_b) = joined(&etcd, "b", ttl, "follower").await;
    let rev = store_a.save(&state("web"), 0).await.unwrap();

    etcd.kill_all();
    // The leader cannot renew its lease: it stops leading once the lease's local deadline
    // passes, and nobody else leads either.
    let stepped = until_role(&a, "unknown", ttl * 3).await;
    eprintln!(
        "leader stepped down {:.2}s after etcd died (TTL {}s)",
        stepped.as_secs_f64(),
        ttl.as_secs()
    );
    assert!(!a.is_leader() && !b.is_leader());
    for store in [&store_a, &store_b] {
        assert!(store.fence("web").await.is_err());
        assert!(store.save(&state("web"), rev).await.is_err());
    }

    etcd.restart().await;
    let t0 = Instant::now();
    loop {
        if a.is_leader() != b.is_leader() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no leader after etcd returned: {:?} {:?}",
            a.role(),
            b.role()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (leader, store) = if a.is_leader() {
        (&a, &store_a)
    } else {
        (&b, &store_b)
    };
    eprintln!(
        "replica {} leads {:.2}s after etcd returned",
        leader.id(),
        t0.elapsed().as_secs_f64()
    );
    let mut s = store.load("web").await.unwrap().unwrap();
    assert_eq!(s.revision, rev, "the record survived");
    s.ticks = 8;
    store.save(&s, rev).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_and_a_client_certificate() {
    let Some(etcd) = Etcd::start_tls().await else {
        return;
    };
    assert!(etcd.client().get(b"/x").await.unwrap().is_none());
    let (_a, store) = joined(&etcd, "a", Duration::from_secs(5), "leader").await;
    let rev = store.save(&state("web"), 0).await.unwrap();
    assert_eq!(store.load("web").await.unwrap().unwrap().revision, rev);
    // Without the client certificate the member refuses the connection; without the CA
    // the member's certificate is not trusted.
    let mut no_cert = etcd.config();
    no_cert.cert_file = None;
    no_cert.key_file = None;
    assert!(EtcdClient::new(&no_cert).unwrap().get(b"/x").await.is_err());
    let mut no_ca = etcd.config();
    no_ca.ca_file = None;
    no_ca.endpoints = vec![format!("127.0.0.1:{}", etcd.members[0].client)];
    assert!(EtcdClient::new(&no_ca).unwrap().get(b"/x").await.is_err());
    // A certificate without its key is refused up front.
    let mut half = etcd.config();
    half.key_file = None;
    assert!(
        EtcdClient::new(&half)
            .unwrap_err()
            .to_string()
            .contains("needs its key")
    );
}
