//! The daemon's core: many rollouts in one process, each in its own tokio task that owns
//! its policy, traffic provider and metrics source and drives a [`Reconciler`] over the
//! shared [`Store`].
//!
//! Isolation: a rollout's slow provider, slow metrics query or hanging hook only delays
//! its own task; a panic in its task is caught ([`futures_util::FutureExt::catch_unwind`])
//! and becomes that rollout's operational failure: the rollout is taken over again from its
//! stored record and rolled back, as the runner does on errors (and if that panics too, the
//! record is marked failed, saying what traffic may be in).
//!
//! Leadership: the daemon acts on rollouts only while its [`Role`] is [`Role::Leader`]
//! (always, with the embedded store). Losing it stands the daemon down: every rollout
//! task stops as on SIGTERM (its record written, traffic left as recorded), to be resumed
//! when leadership comes back.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::obs::Obs;
use crate::cli::status::{Auth, StatusBoard};
use crate::controller::readiness::CanaryProbe;
use crate::controller::store::{
    ControlRef, PolicyRef, RolloutState, Store, StoreError, Timed, new_rollout_id, policy_sha256,
};
use crate::controller::{Durable, Lever, Phase, Reason, Reconciler, RunOptions, Wake};
use crate::metrics::{self, MetricsSource};
use crate::policy::{self, Policy, TrafficConfig};
use crate::traffic::{self, TrafficProvider, proxy::ProxyHandle};

/// This replica's role: only a leader acts on rollouts. The embedded store is always the
/// leader; a store with leader election (etcd) sends the changes on a `watch` channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not known yet (not ready).
    Unknown,
    /// This replica acts on rollouts.
    Leader,
    /// Another replica does.
    Follower,
}

/// A rollout's traffic provider, metrics source and (for the built-in proxy) the proxy
/// itself and the canary's readiness probe.
pub struct Built<T, M> {
    /// The traffic provider.
    pub traffic: T,
    /// The metrics source.
    pub source: M,
    /// The running built-in proxy, if the policy uses it.
    pub proxy: Option<ProxyHandle>,
    /// The canary's readiness probe, checked before the first traffic change.
    pub readiness: Option<CanaryProbe>,
}

/// Builds a rollout's parts from its policy (tests build mocks).
pub trait Build: Send + Sync + 'static {
    /// The traffic provider.
    type Traffic: TrafficProvider + 'static;
    /// The metrics source.
    type Source: MetricsSource + 'static;
    /// Builds them; the error says what could not be set up.
    fn build(
        &self,
        policy: &Policy,
    ) -> impl Future<Output = Result<Built<Self::Traffic, Self::Source>, String>> + Send;
}

/// The built-in providers and sources, as `[traffic]` and `[metrics]` name them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Builtin;

impl Build for Builtin {
    type Traffic = traffic::AnyTrafficProvider;
    type Source = metrics::AnySource;

    async fn build(&self, policy: &Policy) -> Result<Built<Self::Traffic, Self::Source>, String> {
        let built = traffic::build(&policy.traffic).await.map_err(|e| {
            format!(
                "cannot set up the [traffic] {} provider: {e}",
                policy.traffic.kind()
            )
        })?;
        let source = metrics::build(&policy.source, built.proxy.as_ref()).map_err(|e| {
            format!(
                "cannot set up the [metrics] {} source: {e}",
                policy.source.kind()
            )
        })?;
        Ok(Built {
            traffic: built.provider,
            source,
            proxy: built.proxy,
            readiness: match &policy.traffic {
                TrafficConfig::Proxy(p) => Some(CanaryProbe::for_proxy(p)),
                _ => None,
            },
        })
    }
}

/// Why a request to the daemon was refused, with the HTTP status that says it.
#[derive(Debug)]
pub struct Refusal {
    /// The HTTP status (400 invalid, 409 conflict, 503 not the leader or store down…).
    pub status: u16,
    /// What was refused and why.
    pub message: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl Refusal {
    fn new(status: u16, message: impl Into<String>) -> Self {
        Refusal {
            status,
            message: message.into(),
        }
    }
}

/// A rollout the daemon started or resumed.
#[derive(Debug, serde::Serialize)]
pub struct Started {
    /// The rollout's name.
    pub rollout: String,
    /// This run's id.
    pub rollout_id: String,
    /// `started`, `resumed` or `restarted`.
    pub how: &'static str,
}

/// Where a rollout of this daemon is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Life {
    /// Being set up (its name is taken).
    Starting,
    /// Its task runs.
    Running,
    /// It ended (the phase's name).
    Finished(&'static str),
}

struct Entry {
    board: Option<StatusBoard>,
    sha: String,
    life: Life,
    task: Option<JoinHandle<()>>,
}

/// How the daemon runs.
#[derive(Debug)]
pub struct Config {
    /// The control API's token.
    pub(crate) auth: Auth,
    /// Where decision logs go when a policy names none (`NAME.jsonl`).
    pub decisions_dir: Option<PathBuf>,
    /// How long a rollout's step in flight may take to end when the daemon stops.
    pub grace: Duration,
}

impl Config {
    /// A daemon whose control API takes bearer `token` (acting as `actor`), with no
    /// default decision log and a 5 s grace.
    #[must_use]
    pub fn new(token: impl Into<Vec<u8>>, actor: impl Into<String>) -> Config {
        Config {
            auth: Auth {
                token: token.into(),
                actor: actor.into(),
            },
            decisions_dir: None,
            grace: Duration::from_secs(5),
        }
    }
}

/// When one analysis tick of one rollout ran ([`Daemon::on_tick`]).
#[derive(Clone, Copy, Debug)]
pub struct TickTiming {
    /// How late it started: from when it was due to when its rollout's task woke.
    pub lateness: Duration,
    /// How long it took (fetch, judge, decide, persist, act).
    pub duration: Duration,
}

/// A function told of every tick ([`Daemon::on_tick`]).
type TickProbe = Box<dyn Fn(TickTiming) + Send + Sync>;

/// Many rollouts over one store.
pub struct Daemon<S, B = Builtin> {
    store: Timed<S>,
    build: B,
    cfg: Config,
    pub(crate) obs: Arc<Obs>,
    role: watch::Receiver<Role>,
    control: Mutex<Option<ControlRef>>,
    /// Where the leader's control API is, when another replica leads.
    leader: Mutex<Option<watch::Receiver<Option<String>>>>,
    rollouts: Mutex<HashMap<String, Entry>>,
    /// The stop signal of the current term (leadership, or the process's life).
    term: Mutex<watch::Sender<bool>>,
    /// Told of every tick, when set.
    tick_probe: std::sync::OnceLock<TickProbe>,
    /// Records found unresumable, by name: the revision last said so.
    unresumable: Mutex<HashMap<String, u64>>,
}

/// What a rollout's task is given.
struct Task<T, M> {
    policy: Policy,
    built: Built<T, M>,
    policy_ref: PolicyRef,
    rollout_id: String,
    resume: Option<RolloutState>,
    restart: Option<String>,
    revision: u64,
    decisions: Option<PathBuf>,
}

/// How a rollout's task ended.
enum Ended {
    /// The rollout ended (its terminal phase's name).
    Finished(&'static str),
    /// The daemon stopped it: its record is as last written.
    Stopped,
    /// It could not start (the decision log, an unresumable record).
    Unstartable(String),
    /// It panicked (the message).
    Panicked(String),
    /// The store refused its write or fence: another replica leads (or etcd could not
    /// confirm this one does). Nothing more was done; the leader resumes it.
    Deposed(String),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Resolves when `rx` turns true or its sender is gone.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(ToString::to_string)
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

impl<S: Store + 'static, B: Build> Daemon<S, B> {
    /// A daemon over `store`, building rollouts' parts with `build`, acting while `role`
    /// says [`Role::Leader`].
    pub fn new(store: S, build: B, role: watch::Receiver<Role>, cfg: Config) -> Arc<Self> {
        let obs = Arc::new(Obs::default());
        Arc::new(Daemon {
            store: Timed::new(store, {
                let obs = obs.clone();
                move |d| obs.writes.observe(d.as_secs_f64())
            }),
            build,
            cfg,
            obs,
            role,
            control: Mutex::new(None),
            leader: Mutex::new(None),
            rollouts: Mutex::default(),
            term: Mutex::new(watch::channel(false).0),
            tick_probe: std::sync::OnceLock::new(),
            unresumable: Mutex::default(),
        })
    }

    /// Calls `probe` after every analysis tick of every rollout with its lateness and
    /// duration (benchmarks, embedders); only the first probe set is kept. It runs on the
    /// rollout's task: keep it short.
    pub fn on_tick(&self, probe: impl Fn(TickTiming) + Send + Sync + 'static) {
        let _ = self.tick_probe.set(Box::new(probe));
    }

    /// The control API's address, recorded in each rollout's record for the verbs.
    pub(crate) fn set_control(&self, addr: std::net::SocketAddr) {
        *lock(&self.control) = Some(ControlRef {
            addr,
            pid: std::process::id(),
        });
    }

    /// Where this replica learns the leader's control API URL.
    pub(crate) fn set_leader_url(&self, leader: watch::Receiver<Option<String>>) {
        *lock(&self.leader) = Some(leader);
    }

    /// The leader's control API URL, when another replica leads and its key says where.
    pub(crate) fn leader_url(&self) -> Option<String> {
        lock(&self.leader).as_ref().and_then(|l| l.borrow().clone())
    }

    /// The token mutating requests need.
    pub(crate) fn auth(&self) -> &Auth {
        &self.cfg.auth
    }

    /// This replica's role now.
    pub(crate) fn role(&self) -> Role {
        *self.role.borrow()
    }

    /// The builder (tests inspect their mocks).
    #[cfg(test)]
    pub(crate) fn build_ref(&self) -> &B {
        &self.build
    }

    /// The store (for reads of the API).
    pub(crate) fn store(&self) -> &Timed<S> {
        &self.store
    }

    /// The live board of a rollout of this daemon, and whether it has finished.
    pub(crate) fn board(&self, rollout: &str) -> Option<(StatusBoard, Option<&'static str>)> {
        let r = lock(&self.rollouts);
        let e = r.get(rollout)?;
        let finished = match e.life {
            Life::Finished(p) => Some(p),
            _ => None,
        };
        e.board.clone().map(|b| (b, finished))
    }

    /// Every rollout's board, by name (for `/metrics`).
    pub(crate) fn boards(&self) -> Vec<StatusBoard> {
        let r = lock(&self.rollouts);
        let mut names: Vec<&String> = r.keys().collect();
        names.sort();
        names
            .into_iter()
            .filter_map(|n| r[n].board.clone())
            .collect()
    }

    /// The terminal phase's name once `rollout` ended in this daemon (`None` while it
    /// runs, or when this daemon does not run it).
    #[must_use]
    pub fn outcome(&self, rollout: &str) -> Option<&'static str> {
        match lock(&self.rollouts).get(rollout)?.life {
            Life::Finished(p) => Some(p),
            _ => None,
        }
    }

    /// Submits a policy's text: validated, then started (a new rollout, or one whose
    /// earlier run finished: from step 1) or resumed (an unfinished record of the same
    /// policy that no controller runs). A rollout running here, or run by another
    /// controller, is refused; so is another policy content for an unfinished rollout
    /// (never hot-swapped). `again`: a rollout that finished with this very policy content
    /// runs again (`coalmine apply`); without it that is refused (`--watch`, which must not
    /// re-run what a directory still holds after a restart).
    pub async fn apply(
        self: &Arc<Self>,
        text: &str,
        path: Option<String>,
        again: bool,
    ) -> Result<Started, Refusal> {
        self.leading()?;
        let origin = path.clone().unwrap_or_else(|| "policy".to_string());
        let (policy, _warnings) = policy::parse_bytes(text.as_bytes(), &origin)
            .map_err(|d| Refusal::new(400, d.to_string()))?;
        crate::redact::register_policy(&policy);
        let sha = policy_sha256(text.as_bytes());
        let name = policy.name.clone();
        self.reserve(&name, &sha)?;
        let r = self.prepare(policy, text, sha, path, None, again).await;
        self.settle_reservation(&name, r)
    }

    /// Starts a finished (rolled back, not started or failed) rollout again from step 1
    /// with its recorded policy.
    pub(crate) async fn retry(self: &Arc<Self>, rollout: &str) -> Result<Started, Refusal> {
        self.leading()?;
        let stored = self
            .store
            .load(rollout)
            .await
            .map_err(|e| Refusal::new(503, e.to_string()))?
            .ok_or_else(|| Refusal::new(404, format!("no rollout `{rollout}` in the store")))?;
        let reason = match &stored.phase {
            Phase::RolledBack { reason } | Phase::NotStarted { reason } => reason.to_string(),
            Phase::Failed { reason } => reason.clone(),
            other => {
                return Err(Refusal::new(
                    409,
                    format!(
                        "rollout `{rollout}` is {}: only a rolled-back rollout is retried",
                        other.name()
                    ),
                ));
            }
        };
        let text = policy_text(&stored).map_err(|e| Refusal::new(409, e))?;
        let (policy, sha) = parse_stored(&stored, &text).map_err(|e| Refusal::new(409, e))?;
        let why = format!(
            "retry of run {} ({}: {reason})",
            stored.rollout_id,
            stored.phase.name()
        );
        self.reserve(rollout, &sha)?;
        let path = stored.policy.path.clone();
        let r = self
            .prepare(policy, &text, sha, path, Some(why), true)
            .await;
        self.settle_reservation(rollout, r)
    }

    fn leading(&self) -> Result<(), Refusal> {
        match self.role() {
            Role::Leader => Ok(()),
            r => Err(Refusal::new(
                503,
                format!(
                    "this replica is not the leader ({}): send it to the leader",
                    if r == Role::Unknown {
                        "role unknown"
                    } else {
                        "follower"
                    }
                ),
            )),
        }
    }

    /// Takes the rollout's name for a start, or says why not.
    fn reserve(&self, name: &str, sha: &str) -> Result<(), Refusal> {
        let mut r = lock(&self.rollouts);
        if let Some(e) = r.get(name) {
            match e.life {
                Life::Finished(_) => {}
                Life::Starting => {
                    return Err(Refusal::new(
                        409,
                        format!("rollout `{name}` is being started already"),
                    ));
                }
                Life::Running if e.sha == sha => {
                    return Err(Refusal::new(
                        409,
                        format!(
                            "rollout `{name}` is already running (same policy): `coalmine status {name}` shows it"
                        ),
                    ));
                }
                Life::Running => {
                    return Err(Refusal::new(
                        409,
                        format!(
                            "rollout `{name}` is running with another policy content (sha256 {}…, this one {}…): \
                             a running rollout's policy is never swapped; `coalmine abort {name}` first, or wait for it to finish",
                            &e.sha[..12.min(e.sha.len())],
                            &sha[..12.min(sha.len())]
                        ),
                    ));
                }
            }
        }
        let board = r.get(name).and_then(|e| e.board.clone());
        r.insert(
            name.to_string(),
            Entry {
                board,
                sha: sha.to_string(),
                life: Life::Starting,
                task: None,
            },
        );
        Ok(())
    }

    fn settle_reservation(
        &self,
        name: &str,
        r: Result<Started, Refusal>,
    ) -> Result<Started, Refusal> {
        if r.is_err() {
            let mut m = lock(&self.rollouts);
            if m.get(name).is_some_and(|e| e.life == Life::Starting) {
                m.remove(name);
            }
        }
        r
    }

    /// Owns the rollout, reads its record, builds its parts and spawns its task.
    /// `restart`: start from step 1 whatever the record holds (a retry); `again`: as for
    /// [`Self::apply`].
    async fn prepare(
        self: &Arc<Self>,
        policy: Policy,
        text: &str,
        sha: String,
        path: Option<String>,
        restart: Option<String>,
        again: bool,
    ) -> Result<Started, Refusal> {
        let name = policy.name.clone();
        let guard = match self.store.acquire(&name).await {
            Ok(g) => g,
            Err(e @ StoreError::Locked { .. }) => {
                return Err(Refusal::new(
                    409,
                    format!("{e}: not starting a second controller"),
                ));
            }
            Err(e) => return Err(Refusal::new(503, e.to_string())),
        };
        let stored = match self.store.load(&name).await {
            Ok(s) => s,
            Err(e @ StoreError::Damaged { .. }) => {
                return Err(Refusal::new(
                    409,
                    format!("{e}; `coalmine run --restart` starts it over"),
                ));
            }
            Err(e) => return Err(Refusal::new(503, e.to_string())),
        };
        let revision = stored.as_ref().map_or(0, |s| s.revision);
        let (resume, restart, how) = match (stored, restart) {
            (None, r) => (None, r, "started"),
            (Some(_), Some(r)) => (None, Some(r), "restarted"),
            (Some(s), None) if s.finished() && !again && s.policy.sha256 == sha => {
                return Err(Refusal::new(
                    409,
                    format!(
                        "rollout `{name}` already ran to its end ({}) with this policy content; not run again",
                        s.phase.name()
                    ),
                ));
            }
            (Some(s), None) if s.finished() => {
                let why = format!(
                    "applied again after run {} ended ({})",
                    s.rollout_id,
                    s.phase.name()
                );
                (None, Some(why), "restarted")
            }
            (Some(s), None) if s.policy.sha256 == sha => (Some(s), None, "resumed"),
            (Some(s), None) => {
                return Err(Refusal::new(
                    409,
                    format!(
                        "rollout `{name}` is unfinished ({}) with another policy content (sha256 {}…, this one {}…): \
                         a rollout's policy is never swapped; abort it, or apply the policy it runs",
                        s.phase.name(),
                        &s.policy.sha256[..12.min(s.policy.sha256.len())],
                        &sha[..12]
                    ),
                ));
            }
        };
        let built = self
            .build
            .build(&policy)
            .await
            .map_err(|e| Refusal::new(422, format!("{e}; nothing was moved")))?;
        // The built-in proxy lives in this process: a resumed one starts where the
        // rollout was, not at 0.
        if let (Some(p), Some(r)) = (&built.proxy, &resume) {
            p.state().set_weight(r.weight);
        }
        let rollout_id = resume
            .as_ref()
            .map_or_else(new_rollout_id, |r| r.rollout_id.clone());
        let decisions = if resume.is_some() {
            None
        } else {
            policy.decisions.clone().or_else(|| {
                self.cfg
                    .decisions_dir
                    .as_ref()
                    .map(|d| d.join(format!("{name}.jsonl")))
            })
        };
        let task = Task {
            policy,
            built,
            policy_ref: PolicyRef {
                path,
                sha256: sha,
                text: Some(text.to_string()),
            },
            rollout_id: rollout_id.clone(),
            resume,
            restart,
            revision,
            decisions,
        };
        self.spawn(task, guard);
        tracing::info!(rollout = %name, how, "rollout taken on");
        Ok(Started {
            rollout: name,
            rollout_id,
            how,
        })
    }

    fn spawn(self: &Arc<Self>, task: Task<B::Traffic, B::Source>, guard: S::Guard) {
        let name = task.policy.name.clone();
        let (abort_tx, abort_rx) = watch::channel(None);
        let (board, levers) = StatusBoard::new(abort_tx);
        let board = board.with_auth(self.cfg.auth.clone());
        let stop = lock(&self.term).subscribe();
        let me = self.clone();
        let b = board.clone();
        // The entry is marked running before the task can end (and mark it finished).
        let mut r = lock(&self.rollouts);
        let handle = tokio::spawn(async move {
            let ended = me.run_task(&task, b, levers, abort_rx, stop).await;
            drop(guard);
            me.ended(&task.policy.name, ended);
        });
        if let Some(e) = r.get_mut(&name) {
            e.board = Some(board);
            e.life = Life::Running;
            e.task = Some(handle);
        }
    }

    fn ended(&self, name: &str, ended: Ended) {
        let mut r = lock(&self.rollouts);
        match ended {
            Ended::Finished(phase) => {
                self.obs.finished(phase);
                tracing::info!(rollout = %name, outcome = phase, "rollout ended");
                if let Some(e) = r.get_mut(name) {
                    e.life = Life::Finished(phase);
                    e.task = None;
                }
            }
            Ended::Stopped => {
                tracing::info!(rollout = %name, "rollout stopped, traffic left as recorded");
                r.remove(name);
            }
            Ended::Deposed(why) => {
                tracing::warn!(rollout = %name, %why, "rollout dropped without acting: not ours any more");
                r.remove(name);
            }
            Ended::Unstartable(why) => {
                tracing::error!(rollout = %name, error = %why, "rollout could not start");
                r.remove(name);
            }
            Ended::Panicked(why) => {
                self.obs.finished("failed");
                tracing::error!(rollout = %name, error = %why, "rollout failed");
                if let Some(e) = r.get_mut(name) {
                    e.life = Life::Finished("failed");
                    e.task = None;
                }
            }
        }
    }

    /// The rollout's task: drives it to its end; a panic is caught and rolls it back from
    /// its stored record.
    async fn run_task(
        &self,
        t: &Task<B::Traffic, B::Source>,
        mut board: StatusBoard,
        mut levers: mpsc::UnboundedReceiver<Lever>,
        mut abort: watch::Receiver<Option<String>>,
        mut stop: watch::Receiver<bool>,
    ) -> Ended {
        let first =
            AssertUnwindSafe(self.drive(t, None, &mut board, &mut levers, &mut abort, &mut stop))
                .catch_unwind()
                .await;
        let msg = match first {
            Ok(ended) => return ended,
            Err(p) => panic_message(&*p),
        };
        let name = &t.policy.name;
        tracing::error!(rollout = %name, panic = %msg, "rollout task panicked: rolling it back from its record");
        let why = format!(
            "operational failure: the controller panicked ({msg}); rolled back from its last record"
        );
        let stored = match self.store.load(name).await {
            Ok(Some(s)) if !s.finished() => s,
            Ok(Some(s)) => return Ended::Finished(s.phase.name()),
            Ok(None) => return Ended::Panicked(msg),
            Err(e) => return Ended::Panicked(format!("{msg}; then the store: {e}")),
        };
        let again = AssertUnwindSafe(self.drive(
            t,
            Some((stored, why)),
            &mut board,
            &mut levers,
            &mut abort,
            &mut stop,
        ))
        .catch_unwind()
        .await;
        match again {
            Ok(ended) => ended,
            Err(p) => {
                let second = panic_message(&*p);
                self.mark_failed(name, &msg, &second).await;
                Ended::Panicked(format!("{msg}; again while rolling back: {second}"))
            }
        }
    }

    /// Clears this daemon's control API from a rollout's record (its step in flight was
    /// dropped at a stop: no controller runs it any more). The record is otherwise as last
    /// written.
    async fn release(&self, name: &str) {
        let Ok(Some(mut s)) = self.store.load(name).await else {
            return;
        };
        if s.finished() || s.control.is_none() {
            return;
        }
        s.control = None;
        let rev = s.revision;
        if let Err(e) = self.store.save(&s, rev).await {
            tracing::warn!(rollout = %name, error = %e, "cannot release the record");
        }
    }

    /// Writes a failed phase into the record of a rollout that could not be made safe.
    async fn mark_failed(&self, name: &str, first: &str, second: &str) {
        let Ok(Some(mut s)) = self.store.load(name).await else {
            return;
        };
        if s.finished() {
            return;
        }
        s.phase = Phase::Failed {
            reason: format!(
                "the controller panicked ({first}) and again while rolling back ({second}); \
                 traffic may still be at {}: check the provider and set 0% by hand",
                s.weight
            ),
        };
        s.control = None;
        s.saved_at = std::time::SystemTime::now();
        s.last = Some("failed".to_string());
        let rev = s.revision;
        if let Err(e) = self.store.save(&s, rev).await {
            tracing::error!(rollout = %name, error = %e, "cannot record the failure");
        }
    }

    /// Drives one rollout until it ends or the daemon stops it. `abort_from`: take the
    /// stored record over and roll it back (after a panic), with this reason.
    async fn drive(
        &self,
        t: &Task<B::Traffic, B::Source>,
        abort_from: Option<(RolloutState, String)>,
        board: &mut StatusBoard,
        levers: &mut mpsc::UnboundedReceiver<Lever>,
        abort: &mut watch::Receiver<Option<String>>,
        stop: &mut watch::Receiver<bool>,
    ) -> Ended {
        let (resume, revision) = match abort_from {
            // Taken over as rolling back, the safe direction the machine finishes whatever
            // is in force: nothing is applied first (not even the step that was under way).
            Some((mut s, why)) => {
                s.phase = Phase::RollingBack {
                    reason: Reason::Aborted { why },
                    attempt: 0,
                };
                let rev = s.revision;
                (Some(s), rev)
            }
            None => (t.resume.clone(), t.revision),
        };
        let durable = Durable {
            store: &self.store,
            rollout_id: t.rollout_id.clone(),
            policy: t.policy_ref.clone(),
            restart: if resume.is_some() {
                None
            } else {
                t.restart.clone()
            },
            resume,
            control: lock(&self.control).clone(),
            revision,
        };
        let opts = RunOptions {
            decisions: t.decisions.clone(),
            readiness: t.built.readiness.clone(),
            ..RunOptions::default()
        };
        let started = {
            let start = Box::pin(Reconciler::start(
                &t.policy,
                &t.built.traffic,
                &t.built.source,
                Some(durable),
                opts,
                board,
            ));
            tokio::pin!(start);
            tokio::select! {
                r = &mut start => r,
                () = stopped(stop) => match tokio::time::timeout(self.cfg.grace, &mut start).await {
                    Ok(Ok(mut r)) => {
                        if !r.finished() {
                            r.checkpoint(true).await;
                            return Ended::Stopped;
                        }
                        Ok(r)
                    }
                    Ok(Err(e)) => Err(e),
                    // A check or hook still running: dropped, as in a crash.
                    Err(_) => {
                        self.release(&t.policy.name).await;
                        return Ended::Stopped;
                    }
                },
            }
        };
        let mut r = match started {
            Ok(r) if r.deposed().is_some() => {
                return Ended::Deposed(r.deposed().unwrap_or_default().to_string());
            }
            Ok(r) => r,
            Err(e) => {
                let cause =
                    std::error::Error::source(&e).map_or(String::new(), |c| format!(": {c}"));
                return Ended::Unstartable(format!("{e}{cause}"));
            }
        };
        while !r.finished() {
            let wake = tokio::select! {
                () = tokio::time::sleep_until(r.wake_at()) => Wake::Tick,
                Some(l) = levers.recv() => Wake::Lever(l),
                Ok(()) = abort.changed() => {
                    let why = abort.borrow().clone();
                    match why { Some(w) => Wake::Abort(w), None => continue }
                }
                () = stopped(stop) => {
                    r.checkpoint(true).await;
                    return Ended::Stopped;
                }
            };
            let tick = wake == Wake::Tick;
            let t0 = Instant::now();
            let late = t0.saturating_duration_since(r.wake_at());
            // Some(stopping) once the step ended; None when it was dropped.
            let ended = {
                let step = r.reconcile(wake);
                tokio::pin!(step);
                tokio::select! {
                    () = &mut step => Some(false),
                    () = stopped(stop) => {
                        // The step in flight persisted before acting: let it end within the
                        // grace, else drop it (as a crash would: the record says what was
                        // under way and the next controller reads the weight back).
                        tokio::time::timeout(self.cfg.grace, &mut step).await.ok().map(|()| true)
                    }
                }
            };
            if tick {
                let took = t0.elapsed();
                self.obs.ticks.observe(took.as_secs_f64());
                self.obs.lateness.observe(late.as_secs_f64());
                if let Some(p) = self.tick_probe.get() {
                    p(TickTiming {
                        lateness: late,
                        duration: took,
                    });
                }
            }
            if let Some(why) = r.deposed() {
                // Not ours any more: no checkpoint, no release (the writes would be
                // refused anyway), nothing acted on.
                return Ended::Deposed(why.to_string());
            }
            match ended {
                Some(false) => {}
                Some(true) if r.finished() => break,
                Some(true) => {
                    r.checkpoint(true).await;
                    return Ended::Stopped;
                }
                None => {
                    self.release(&t.policy.name).await;
                    return Ended::Stopped;
                }
            }
        }
        let phase = r.phase().name();
        Box::pin(r.finish()).await;
        Ended::Finished(phase)
    }

    /// Takes over every unfinished rollout in the store that no other controller runs;
    /// the "not resumed" lines it printed (each record revision that cannot be resumed is
    /// said once, not at every rescan).
    pub(crate) async fn resume_all(self: &Arc<Self>) -> Vec<String> {
        let records = match self.store.list().await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot list the store: nothing resumed");
                return Vec::new();
            }
        };
        let mut said = Vec::new();
        let mut not_resumed = |name: &str, revision: u64, why: &str| {
            // Once per record revision: a rescan finds the same record again and again.
            if lock(&self.unresumable).insert(name.to_string(), revision) != Some(revision) {
                let line = format!("coalmine serve: rollout `{name}` not resumed: {why}");
                errln!("{line}");
                said.push(line);
            }
        };
        for s in records.into_iter().filter(|s| !s.finished()) {
            let name = s.rollout.clone();
            let text = match policy_text(&s) {
                Ok(t) => t,
                Err(e) => {
                    not_resumed(&name, s.revision, &e);
                    continue;
                }
            };
            let (policy, sha) = match parse_stored(&s, &text) {
                Ok(p) => p,
                Err(e) => {
                    not_resumed(&name, s.revision, &e);
                    continue;
                }
            };
            if self.reserve(&name, &sha).is_err() {
                continue;
            }
            let path = s.policy.path.clone();
            let r = self.prepare(policy, &text, sha, path, None, false).await;
            match self.settle_reservation(&name, r) {
                Ok(st) => {
                    lock(&self.unresumable).remove(&name);
                    errln!(
                        "coalmine serve: rollout `{name}` {} (run {})",
                        st.how,
                        st.rollout_id
                    );
                }
                Err(e) => not_resumed(&name, s.revision, &e.message),
            }
        }
        said
    }

    /// Stops every rollout task of this term (each writes its record, traffic stays as
    /// recorded) and waits for them, at most twice the grace; a new term begins.
    pub async fn stand_down(&self) {
        let old = std::mem::replace(&mut *lock(&self.term), watch::channel(false).0);
        let _ = old.send(true);
        let tasks = self.take_tasks();
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        let all = futures_util::future::join_all(tasks);
        if tokio::time::timeout(self.cfg.grace * 2, all).await.is_err() {
            for a in aborts {
                a.abort();
            }
        }
        lock(&self.rollouts).retain(|_, e| matches!(e.life, Life::Finished(_)));
    }

    /// Leadership lost: every rollout task is dropped at once, wherever it is (a provider
    /// call or a hook in flight is abandoned, as in a crash), with no further write and
    /// no traffic change: the new leader continues from the last record. A new term
    /// begins.
    pub(crate) async fn abandon(&self) {
        let old = std::mem::replace(&mut *lock(&self.term), watch::channel(false).0);
        let tasks = self.take_tasks();
        for t in &tasks {
            t.abort();
        }
        let _ = futures_util::future::join_all(tasks).await;
        // Only now: a task that saw its stop signal would checkpoint (a write).
        drop(old);
        lock(&self.rollouts).retain(|_, e| matches!(e.life, Life::Finished(_)));
    }

    fn take_tasks(&self) -> Vec<JoinHandle<()>> {
        let mut r = lock(&self.rollouts);
        r.values_mut().filter_map(|e| e.task.take()).collect()
    }

    /// Acts while this replica leads: resumes the store's rollouts on gaining leadership
    /// (and every `rescan` while it leads, for a rollout whose task was deposed by a
    /// store error while this replica kept the lead), drops them all at once on losing
    /// it ([`Self::abandon`]). Returns when the role channel closes.
    pub(crate) async fn lead(self: Arc<Self>, rescan: Option<Duration>) {
        let mut role = self.role.clone();
        loop {
            if role.wait_for(|r| *r == Role::Leader).await.is_err() {
                return;
            }
            let _ = self.resume_all().await;
            loop {
                let again = async {
                    match rescan {
                        Some(every) => tokio::time::sleep(every).await,
                        None => std::future::pending().await,
                    }
                };
                let lost = tokio::select! {
                    r = role.wait_for(|r| *r != Role::Leader) => Some(r.is_ok()),
                    () = again => None,
                };
                match lost {
                    Some(true) => break,
                    Some(false) => return,
                    None => {
                        let _ = self.resume_all().await;
                    }
                }
            }
            tracing::warn!(
                "leadership lost: every rollout dropped at once, traffic left as recorded"
            );
            self.abandon().await;
        }
    }
}

/// The policy text a stored rollout runs: kept in its record by `coalmine serve`, else its
/// file (when it still has the recorded content).
fn policy_text(s: &RolloutState) -> Result<String, String> {
    if let Some(t) = &s.policy.text {
        return Ok(t.clone());
    }
    let Some(path) = &s.policy.path else {
        return Err("its record holds no policy and names no file".to_string());
    };
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read its policy {path}: {e}"))?;
    if policy_sha256(&bytes) != s.policy.sha256 {
        return Err(format!(
            "its policy file {path} changed since it started (the record keeps sha256 {}…)",
            &s.policy.sha256[..12.min(s.policy.sha256.len())]
        ));
    }
    String::from_utf8(bytes).map_err(|_| format!("its policy file {path} is not UTF-8"))
}

/// Parses a stored rollout's policy text and checks it is the one recorded.
fn parse_stored(s: &RolloutState, text: &str) -> Result<(Policy, String), String> {
    let sha = policy_sha256(text.as_bytes());
    if sha != s.policy.sha256 {
        return Err("its stored policy does not match its recorded hash".to_string());
    }
    let origin = s.policy.path.clone().unwrap_or_else(|| s.rollout.clone());
    let (policy, _) = policy::parse_bytes(text.as_bytes(), &origin)
        .map_err(|d| format!("its policy no longer validates:\n{d}"))?;
    crate::redact::register_policy(&policy);
    if policy.name != s.rollout {
        return Err(format!("its policy names rollout `{}`", policy.name));
    }
    Ok((policy, sha))
}
