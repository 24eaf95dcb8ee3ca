//! The runner and a fenced store (issue 12): a controller whose store refuses a write or a
//! fence check stops at once, without touching traffic, and a provider call is bounded by
//! the time the fence guarantees.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use super::{TIMING, policy_with};
use crate::controller::runner::{Durable, Quiet, Reconciler, RunOptions, Wake};
use crate::controller::store::{PolicyRef, RolloutState, Store, StoreError};
use crate::metrics::mock::{Answer, MockSource};
use crate::traffic::mock::MockTrafficProvider;

/// An in-memory store whose fence (and writes) can be made to fail, as a deposed leader's.
#[derive(Default)]
pub(super) struct Deposable {
    records: Mutex<HashMap<String, RolloutState>>,
    revision: AtomicUsize,
    fence_fails: AtomicBool,
    save_fails: AtomicBool,
    fences: AtomicUsize,
    /// What the fence guarantees (default: an hour).
    bound: Mutex<Option<Duration>>,
}

impl Store for Deposable {
    type Guard = ();
    async fn load(&self, rollout: &str) -> Result<Option<RolloutState>, StoreError> {
        Ok(self.records.lock().unwrap().get(rollout).cloned())
    }
    async fn save(&self, state: &RolloutState, expected: u64) -> Result<u64, StoreError> {
        if self.save_fails.load(Ordering::SeqCst) {
            return Err(StoreError::Fenced {
                rollout: state.rollout.clone(),
                why: "the leader key is now held by b".to_string(),
            });
        }
        let rev = self.revision.fetch_add(1, Ordering::SeqCst) as u64 + 1;
        assert!(rev > expected);
        self.records
            .lock()
            .unwrap()
            .insert(state.rollout.clone(), state.clone());
        Ok(rev)
    }
    async fn list(&self) -> Result<Vec<RolloutState>, StoreError> {
        Ok(self.records.lock().unwrap().values().cloned().collect())
    }
    async fn acquire(&self, _: &str) -> Result<(), StoreError> {
        Ok(())
    }
    async fn fence(&self, rollout: &str) -> Result<Option<Duration>, StoreError> {
        self.fences.fetch_add(1, Ordering::SeqCst);
        if self.fence_fails.load(Ordering::SeqCst) {
            return Err(StoreError::Fenced {
                rollout: rollout.to_string(),
                why: "the leader key is gone".to_string(),
            });
        }
        Ok(Some(
            self.bound
                .lock()
                .unwrap()
                .unwrap_or(Duration::from_secs(3600)),
        ))
    }
}

fn healthy() -> MockSource {
    let s = MockSource::new();
    s.script(
        "errors",
        vec![Answer::Rates {
            baseline: 0.01,
            canary: 0.01,
            requests: 2000.0,
        }],
    );
    s
}

pub(super) fn durable(store: &Deposable) -> Durable<'_, Deposable> {
    Durable {
        store,
        rollout_id: "r1".to_string(),
        policy: PolicyRef {
            path: None,
            sha256: "0".repeat(64),
            text: None,
        },
        resume: None,
        restart: None,
        control: None,
        revision: 0,
    }
}

const ERRORS: &str = "[[metric]]\nname = \"errors\"\nbuiltin = \"errors\"\n";

/// Drives `r` tick by tick until `done(r)` or `max` ticks.
pub(super) async fn ticks<T, M, S>(
    r: &mut Reconciler<'_, T, M, S>,
    max: usize,
    done: impl Fn(&Reconciler<'_, T, M, S>) -> bool,
) where
    T: crate::traffic::TrafficProvider,
    M: crate::metrics::MetricsSource,
    S: Store,
{
    for _ in 0..max {
        if r.finished() || done(r) {
            return;
        }
        tokio::time::sleep_until(r.wake_at()).await;
        r.reconcile(Wake::Tick).await;
    }
}

/// What a rollout did once its store started refusing.
struct Stopped {
    /// Weights applied before, and by the end.
    before: Vec<crate::model::Weight>,
    after: Vec<crate::model::Weight>,
    /// Fence checks before the store refused.
    fences_before: usize,
    /// Fence checks made by five more wake-ups after the rollout stopped.
    fences_later: usize,
    why: Option<String>,
    finished: bool,
}

/// Starts a rollout, lets `depose` make its store refuse (as when another replica took
/// over), drives it until it notices, then wakes it five more times.
async fn deposed_by(depose: impl FnOnce(&Deposable)) -> Stopped {
    let policy = policy_with(TIMING, ERRORS);
    let store = Deposable::default();
    let traffic = MockTrafficProvider::new();
    let source = healthy();
    let mut q = Quiet;
    let mut r = Reconciler::start(
        &policy,
        &traffic,
        &source,
        Some(durable(&store)),
        RunOptions::default(),
        &mut q,
    )
    .await
    .unwrap();
    let before = traffic.calls();
    let fences_before = store.fences.load(Ordering::SeqCst);
    depose(&store);
    ticks(&mut r, 200, |r| r.deposed().is_some()).await;
    let fences = store.fences.load(Ordering::SeqCst);
    for _ in 0..5 {
        tokio::time::advance(Duration::from_secs(60)).await;
        r.reconcile(Wake::Tick).await;
    }
    Stopped {
        before,
        after: traffic.calls(),
        fences_before,
        fences_later: store.fences.load(Ordering::SeqCst) - fences,
        why: r.deposed().map(str::to_string),
        finished: r.finished(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_fence_check_stops_the_rollout_before_the_provider_is_called() {
    let s = deposed_by(|d| d.fence_fails.store(true, Ordering::SeqCst)).await;
    // The first step's weight passed the fence first.
    assert_eq!(s.before.len(), 1, "the first step's weight");
    assert_eq!(s.fences_before, 1);
    assert!(
        s.why
            .as_deref()
            .is_some_and(|w| w.contains("leader key is gone")),
        "{:?}",
        s.why
    );
    assert_eq!(
        s.after, s.before,
        "no weight applied after the fence failed"
    );
    assert!(
        !s.finished,
        "a deposed rollout is not finished: its new owner continues it"
    );
    assert_eq!(
        s.fences_later, 0,
        "later wake-ups do nothing, not even a rollback"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_record_write_stops_the_rollout_without_rolling_back() {
    // The embedded store's answer to an unwritable record, a rollback, would move
    // traffic; a fenced one must not.
    let s = deposed_by(|d| d.save_fails.store(true, Ordering::SeqCst)).await;
    assert!(
        s.why.as_deref().is_some_and(|w| w.contains("held by b")),
        "{:?}",
        s.why
    );
    assert_eq!(s.after, s.before, "nothing applied, no rollback either");
    assert!(!s.finished);
    assert_eq!(s.fences_later, 0);
}

#[tokio::test(start_paused = true)]
async fn a_run_whose_store_fences_it_ends_with_the_fenced_error() {
    let policy = policy_with(TIMING, ERRORS);
    let store = Deposable::default();
    store.fence_fails.store(true, Ordering::SeqCst);
    let traffic = MockTrafficProvider::new();
    let err = crate::controller::runner::run_durable(
        &policy,
        &traffic,
        &healthy(),
        durable(&store),
        RunOptions::default(),
        &mut Quiet,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            &err,
            crate::controller::runner::Error::Store(StoreError::Fenced { .. })
        ),
        "{err:?}"
    );
    assert!(traffic.calls().is_empty(), "{:?}", traffic.calls());
}

#[tokio::test(start_paused = true)]
async fn a_provider_call_is_given_up_before_the_fence_could_lapse() {
    let policy = policy_with(TIMING, ERRORS);
    let store = Deposable::default();
    *store.bound.lock().unwrap() = Some(Duration::from_millis(1500));
    let traffic = MockTrafficProvider::new();
    traffic.always(crate::traffic::mock::Behaviour::Slow(Duration::from_secs(
        5,
    )));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.jsonl");
    let opts = RunOptions {
        decisions: Some(log.clone()),
        ..RunOptions::default()
    };
    let _ = crate::controller::runner::run_durable(
        &policy,
        &traffic,
        &healthy(),
        durable(&store),
        opts,
        &mut Quiet,
    )
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    // The policy's apply_timeout is 10 s; the lease guaranteed only 1.5 s.
    assert!(text.contains("took longer than 1s 500ms"), "{text}");
    assert!(!text.contains("took longer than 10s"), "{text}");
}
