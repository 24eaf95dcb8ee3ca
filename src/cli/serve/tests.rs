//! The daemon with mock providers and sources: a panic in one rollout's provider or source
//! becomes that rollout's failure, rolled back from its record, while the others run on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::daemon::{Build, Built, Config, Daemon, Role};
use crate::cli::status::Auth;
use crate::controller::store::{FileStore, Store};
use crate::metrics::mock::MockSource;
use crate::metrics::{Fetched, MetricsError, MetricsSource, Window};
use crate::model::Weight;
use crate::policy::{MetricConfig, Policy};
use crate::traffic::mock::MockTrafficProvider;
use crate::traffic::{TrafficError, TrafficProvider};

/// A mock provider that panics when asked to set a weight of at least `panic_at` (and 0 %
/// too with `panic_at_zero`).
struct Flaky {
    inner: MockTrafficProvider,
    panic_at: Option<Weight>,
    panic_at_zero: bool,
}

impl TrafficProvider for Flaky {
    fn name(&self) -> &'static str {
        "flaky"
    }
    async fn current(&self) -> Result<Weight, TrafficError> {
        self.inner.current().await
    }
    async fn set_weight(&self, weight: Weight) -> Result<(), TrafficError> {
        if self.panic_at.is_some_and(|p| weight >= p)
            || (self.panic_at_zero && weight == Weight::ZERO)
        {
            panic!("provider bug at {weight}");
        }
        self.inner.set_weight(weight).await
    }
}

/// A mock source that panics from its `panic_after`-th fetch on.
struct FlakySource {
    inner: MockSource,
    panic_after: Option<usize>,
    fetches: AtomicUsize,
}

impl MetricsSource for FlakySource {
    fn name(&self) -> &'static str {
        "flaky"
    }
    async fn fetch(&self, metric: &MetricConfig, window: &Window) -> Result<Fetched, MetricsError> {
        let n = self.fetches.fetch_add(1, Ordering::SeqCst);
        assert!(
            self.panic_after.is_none_or(|p| n < p),
            "source bug at fetch {n}"
        );
        self.inner.fetch(metric, window).await
    }
}

/// Builds by the rollout's name: `panic-apply*` panics setting 50 % or more, `panic-always*`
/// too and at the rollback's 0 %, `panic-fetch*` at its third fetch.
#[derive(Default)]
struct Mocks {
    providers: Mutex<HashMap<String, MockTrafficProvider>>,
}

impl Mocks {
    fn provider(&self, name: &str) -> MockTrafficProvider {
        self.providers.lock().unwrap()[name].clone()
    }
}

impl Build for Mocks {
    type Traffic = Flaky;
    type Source = FlakySource;

    async fn build(&self, policy: &Policy) -> Result<Built<Flaky, FlakySource>, String> {
        let name = policy.name.as_str();
        let inner = MockTrafficProvider::new();
        self.providers
            .lock()
            .unwrap()
            .insert(name.to_string(), inner.clone());
        let source = crate::controller::tests::healthy_source();
        // `panic-always` panics at 50 % and at its rollback's 0 % too.
        let panic_at = (name.starts_with("panic-apply") || name.starts_with("panic-always"))
            .then(|| Weight::try_from_percent(50.0).unwrap());
        Ok(Built {
            traffic: Flaky {
                inner,
                panic_at,
                panic_at_zero: name.starts_with("panic-always"),
            },
            source: FlakySource {
                inner: source,
                panic_after: name.starts_with("panic-fetch").then_some(2),
                fetches: AtomicUsize::new(0),
            },
            proxy: None,
            readiness: None,
        })
    }
}

fn policy(name: &str) -> String {
    format!(
        "name = \"{name}\"\n[rollout]\nsteps = [10, 50, 100]\nstep_duration = \"1s\"\n\
         analysis_interval = \"100ms\"\nmin_requests = 10\ndeadline = \"10m\"\n\
         [traffic]\ntype = \"proxy\"\nlisten = \"127.0.0.1:0\"\n\
         baseline = \"http://127.0.0.1:1\"\ncanary = \"http://127.0.0.1:2\"\n\
         [[metric]]\nname = \"errors\"\nbuiltin = \"errors\"\n"
    )
}

fn daemon(dir: &std::path::Path) -> (Arc<Daemon<FileStore, Mocks>>, watch::Sender<Role>) {
    let (tx, role) = watch::channel(Role::Leader);
    let cfg = Config {
        auth: Auth {
            token: b"t".to_vec(),
            actor: "test".into(),
        },
        decisions_dir: Some(dir.join("decisions")),
        grace: Duration::from_secs(1),
    };
    (
        Daemon::new(FileStore::new(dir), Mocks::default(), role, cfg),
        tx,
    )
}

/// Waits (at most 30 s) until the rollout has ended in this daemon; its phase.
async fn ended(d: &Daemon<FileStore, Mocks>, name: &str) -> &'static str {
    for _ in 0..600 {
        if let Some((_, Some(phase))) = d.board(name) {
            return phase;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("rollout {name} never ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_provider_or_source_fails_its_rollout_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (d, _role) = daemon(dir.path());
    let names = [
        "good-1",
        "panic-apply",
        "good-2",
        "panic-fetch",
        "panic-always",
    ];
    for n in names {
        let s = d.apply(&policy(n), None, true).await.unwrap();
        assert_eq!(s.how, "started");
    }
    assert_eq!(ended(&d, "good-1").await, "promoted");
    assert_eq!(ended(&d, "good-2").await, "promoted");
    // A panic while setting 50 %: taken over from its record and rolled back to 0 %,
    // the step that panicked never tried again.
    assert_eq!(ended(&d, "panic-apply").await, "rolled-back");
    let p = d.mocks_provider("panic-apply");
    assert_eq!(p.weight(), Weight::ZERO);
    assert_eq!(
        p.calls(),
        vec![Weight::try_from_percent(10.0).unwrap(), Weight::ZERO]
    );
    // A panic in a metrics query: rolled back the same way.
    assert_eq!(ended(&d, "panic-fetch").await, "rolled-back");
    assert_eq!(d.mocks_provider("panic-fetch").weight(), Weight::ZERO);
    // Its rollback panics too: the record says failed, and what traffic may be in.
    assert_eq!(ended(&d, "panic-always").await, "failed");
    let store = FileStore::new(dir.path());
    for (name, phase, says) in [
        ("panic-apply", "rolled-back", "provider bug at 50%"),
        ("panic-fetch", "rolled-back", "source bug at fetch 2"),
        ("panic-always", "failed", "set 0% by hand"),
    ] {
        let s = store.load(name).await.unwrap().unwrap();
        assert_eq!(s.phase.name(), phase, "{name}");
        let text = serde_json::to_string(&s.phase).unwrap();
        assert!(text.contains(says), "{name}: {text}");
        assert!(text.contains("panicked"), "{name}: {text}");
    }
    // The rolled-back ones say so in their decision logs too.
    let log = std::fs::read_to_string(dir.path().join("decisions/panic-apply.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(last["kind"], "final", "{last}");
    assert!(
        last["detail"].as_str().unwrap().contains("panicked"),
        "{last}"
    );
    // Ticks were timed, store writes too.
    assert!(d.obs.ticks.count() > 0);
    assert!(d.obs.writes.count() > 0);
    let mut out = String::new();
    d.obs.write(&mut out, true);
    assert!(
        out.contains("coalmine_rollouts_total{outcome=\"promoted\"} 2\n"),
        "{out}"
    );
    assert!(
        out.contains("coalmine_rollouts_total{outcome=\"rolled-back\"} 2\n"),
        "{out}"
    );
    assert!(
        out.contains("coalmine_rollouts_total{outcome=\"failed\"} 1\n"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_name_is_refused_and_a_finished_one_starts_again() {
    let dir = tempfile::tempdir().unwrap();
    let (d, _role) = daemon(dir.path());
    d.apply(&policy("again"), None, true).await.unwrap();
    let same = d.apply(&policy("again"), None, true).await.unwrap_err();
    assert_eq!(same.status, 409, "{}", same.message);
    assert!(same.message.contains("already running"), "{}", same.message);
    let other = policy("again").replace("min_requests = 10", "min_requests = 11");
    let changed = d.apply(&other, None, true).await.unwrap_err();
    assert_eq!(changed.status, 409);
    assert!(
        changed.message.contains("never swapped"),
        "{}",
        changed.message
    );
    assert_eq!(ended(&d, "again").await, "promoted");
    // Finished: the same content is not run again by a watcher, but is by `apply`.
    let watcher = d.apply(&policy("again"), None, false).await.unwrap_err();
    assert!(
        watcher.message.contains("already ran"),
        "{}",
        watcher.message
    );
    let s = d.apply(&policy("again"), None, true).await.unwrap();
    assert_eq!(s.how, "restarted");
    assert_eq!(ended(&d, "again").await, "promoted");
    // An invalid policy: every problem, with its place.
    let bad = d
        .apply(
            "name = \"x\"\n[rollout]\nsteps = [50, 10]\n",
            Some("bad.toml".into()),
            true,
        )
        .await
        .unwrap_err();
    assert_eq!(bad.status, 400);
    assert!(bad.message.contains("bad.toml:"), "{}", bad.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_acts_on_nothing_and_a_lost_leadership_stands_down() {
    let dir = tempfile::tempdir().unwrap();
    let (d, role) = daemon(dir.path());
    // As `serve` does: the record names this daemon's control API while it runs.
    let ours: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    d.set_control(ours);
    let lead = tokio::spawn(d.clone().lead(None));
    let slow = policy("held").replace("step_duration = \"1s\"", "step_duration = \"60s\"");
    d.apply(&slow, None, true).await.unwrap();
    // Wait until it runs at step 1.
    let store = FileStore::new(dir.path());
    for _ in 0..200 {
        if store
            .load("held")
            .await
            .unwrap()
            .is_some_and(|s| s.phase.name() == "progressing")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    role.send(Role::Follower).unwrap();
    // Dropped at once: nothing written or moved after, traffic as it was.
    for _ in 0..200 {
        if d.board("held").is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        d.board("held").is_none(),
        "still running after losing leadership"
    );
    let s = store.load("held").await.unwrap().unwrap();
    assert_eq!(s.phase.name(), "progressing");
    // Dropped without a write: no checkpoint, no release (which would clear the control
    // API), however many analysis intervals (100 ms) pass; no provider call either.
    assert_eq!(s.control.map(|c| c.addr), Some(ours));
    let calls = d.mocks_provider("held").calls();
    assert_eq!(calls, vec![Weight::try_from_percent(10.0).unwrap()]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = store.load("held").await.unwrap().unwrap();
    assert_eq!(later.revision, s.revision, "written by a follower");
    assert_eq!(d.mocks_provider("held").calls(), calls);
    let refused = d.apply(&policy("other"), None, true).await.unwrap_err();
    assert_eq!(refused.status, 503);
    assert!(d.board("other").is_none());
    // Leader again: the rollout is resumed from its record.
    role.send(Role::Leader).unwrap();
    for _ in 0..200 {
        if d.board("held").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(d.board("held").is_some(), "not resumed");
    d.stand_down().await;
    lead.abort();
}

/// Serves `d`'s control API on a free loopback port; its URL.
async fn api_of(d: &Arc<Daemon<FileStore, Mocks>>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(super::api::serve(d.clone(), l, std::future::pending()));
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_forwards_changes_to_the_leader_and_says_503_without_one() {
    let (leader_dir, follower_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (leader, _l) = daemon(leader_dir.path());
    let (follower, f_role) = daemon(follower_dir.path());
    f_role.send(Role::Follower).unwrap();
    let (leader_url_tx, leader_url) = watch::channel(None);
    follower.set_leader_url(leader_url);
    let (lu, fu) = (api_of(&leader).await, api_of(&follower).await);
    crate::traffic::install_tls_provider();
    let http = reqwest::Client::new();
    let body = serde_json::json!({ "policy": policy("fwd") }).to_string();
    let post = || {
        http.post(format!("{fu}/rollouts"))
            .bearer_auth("t")
            .header("content-type", "application/json")
            .body(body.clone())
    };
    // No leader known: 503, saying so; nothing started anywhere.
    let r = post().send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.text().await.unwrap().contains("no leader is known"));
    assert!(leader.board("fwd").is_none() && follower.board("fwd").is_none());
    // Known: forwarded with the token, started by the leader only.
    leader_url_tx.send_replace(Some(lu.clone()));
    let r = post().send().await.unwrap();
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text().await);
    assert!(leader.board("fwd").is_some(), "not started on the leader");
    assert!(follower.board("fwd").is_none(), "started on the follower");
    // The token is the leader's to check: a wrong one is refused there.
    let r = http
        .post(format!("{fu}/rollouts/fwd/pause"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // Reads are answered by the follower itself (from its own store here: empty).
    let r = http.get(format!("{fu}/rollouts")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap().trim(), "[]");
    // A request that was forwarded already is not forwarded again.
    let r = post()
        .header("x-coalmine-forwarded-by", "other")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    leader.stand_down().await;
}

impl Daemon<FileStore, Mocks> {
    fn mocks_provider(&self, name: &str) -> MockTrafficProvider {
        self.build_ref().provider(name)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresumable_record_is_said_once_per_revision() {
    use crate::controller::store::{FORMAT, Judges, PolicyRef, RolloutState, new_rollout_id};
    let dir = tempfile::tempdir().unwrap();
    let (d, _role) = daemon(dir.path());
    let store = FileStore::new(dir.path());
    // Unfinished, with neither its policy's text nor a file: it cannot be resumed.
    let w = Weight::try_from_percent(10.0).unwrap();
    let mut s =
        RolloutState {
            format: FORMAT,
            rollout: "orphan".into(),
            rollout_id: new_rollout_id(),
            version: "0".into(),
            revision: 0,
            policy: PolicyRef {
                path: None,
                sha256: "0".repeat(64),
                text: None,
            },
            phase: crate::controller::Phase::Progressing(
                crate::controller::machine::Progress::new(0, w, Duration::ZERO, Duration::ZERO),
            ),
            steps: 3,
            elapsed: Duration::ZERO,
            saved_at: std::time::SystemTime::now(),
            started_at: std::time::SystemTime::now(),
            weight: w,
            seq: 0,
            ticks: 0,
            steps_reached: 1,
            first_traffic: None,
            judges: Judges(Vec::new()),
            decisions: None,
            control: None,
            last: None,
            operator_actions: 0,
        };
    s.revision = store.save(&s, 0).await.unwrap();
    let first = d.resume_all().await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0].contains("`orphan` not resumed"), "{first:?}");
    assert!(first[0].contains("holds no policy"), "{first:?}");
    // The rescans find the same record: nothing said again.
    assert!(d.resume_all().await.is_empty());
    assert!(d.resume_all().await.is_empty());
    // A new revision of it is said once more.
    store.save(&s, s.revision).await.unwrap();
    assert_eq!(d.resume_all().await.len(), 1);
    assert!(d.resume_all().await.is_empty());
    assert!(d.board("orphan").is_none());
}
