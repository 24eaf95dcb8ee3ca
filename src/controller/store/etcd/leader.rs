//! Leader election on an etcd lease, with the leader key's revision as the fence.
//!
//! A replica grants itself a lease (TTL [`LeaderOptions::ttl`]), keeps it alive every
//! quarter TTL, and campaigns by creating `PREFIX/leader` attached to the lease in a
//! transaction that requires the key not to exist (`create_revision == 0`). The winner's
//! fence is the pair (lease, the key's `create_revision`); every write it makes compares
//! both in the same transaction ([`Leadership::check`], the record saves of
//! [`super::EtcdStore`]).
//!
//! Stepping down is local and immediate: the replica stops being leader (and its role
//! watchers hear it) as soon as a keep-alive says the lease is gone, a check finds the key
//! gone or someone else's, or the lease's local deadline passes without a successful
//! keep-alive (etcd unreachable). The local deadline is the time the last successful
//! keep-alive was *sent* plus the TTL etcd granted: etcd received that request later, so
//! its own expiry is later still; the replica stops acting before etcd can hand the key to
//! a successor.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::client::{Compare, EtcdClient, EtcdError, Op};

/// How a replica takes part in the election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderOptions {
    /// This replica's name (in the leader key, the logs and the fake providers' call logs).
    pub id: String,
    /// The address of this replica's control API, for followers to forward to.
    pub addr: Option<String>,
    /// The lease's time to live: how long a dead leader keeps the role.
    pub ttl: Duration,
}

/// What the leader key says about its holder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    /// The replica's name.
    pub id: String,
    /// Its control API address.
    #[serde(default)]
    pub addr: Option<String>,
    /// Its process id.
    #[serde(default)]
    pub pid: u32,
    /// Its host.
    #[serde(default)]
    pub host: String,
    /// When it became leader (RFC 3339).
    #[serde(default)]
    pub since: String,
}

/// A replica's role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not known yet (no lease: etcd not reached).
    Unknown,
    /// Another replica leads (if the key could be read).
    Follower {
        /// The leader, as its key says.
        leader: Option<LeaderInfo>,
    },
    /// This replica leads, fenced by the leader key's creation revision.
    Leader {
        /// The leader key's creation revision.
        revision: i64,
    },
}

impl Role {
    /// `"leader"`, `"follower"` or `"unknown"`.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Role::Unknown => "unknown",
            Role::Follower { .. } => "follower",
            Role::Leader { .. } => "leader",
        }
    }
}

/// The leader's fence: its lease and the leader key's creation revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fence {
    /// The lease the leader key is attached to.
    pub lease: i64,
    /// The leader key's creation revision.
    pub revision: i64,
}

/// Why a write was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Deposed(pub String);

#[derive(Debug, Default)]
struct Held {
    lease: Option<i64>,
    /// When the lease may have expired, by the local clock.
    deadline: Option<Instant>,
    fence: Option<Fence>,
}

#[derive(Debug)]
struct Shared {
    client: Arc<EtcdClient>,
    key: Vec<u8>,
    opts: LeaderOptions,
    held: Mutex<Held>,
    role: watch::Sender<Role>,
}

impl Shared {
    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_role(&self, role: Role) {
        self.role.send_if_modified(|r| {
            if *r == role {
                false
            } else {
                tracing::info!(replica = %self.opts.id, from = r.name(), to = role.name(), "role changed");
                *r = role;
                true
            }
        });
    }

    /// Stops being leader now.
    fn step_down(&self, why: &str, leader: Option<LeaderInfo>) {
        let was = self.held().fence.take();
        if was.is_some() {
            tracing::warn!(replica = %self.opts.id, %why, "stepped down");
        }
        self.set_role(Role::Follower { leader });
    }

    fn lose_lease(&self, why: &str) {
        {
            let mut h = self.held();
            h.lease = None;
            h.deadline = None;
        }
        self.step_down(why, None);
        self.set_role(Role::Unknown);
    }

    /// The fence, if this replica leads and its lease has not lapsed locally.
    fn fence(&self) -> Result<(Fence, Instant), Deposed> {
        let h = self.held();
        match (h.fence, h.deadline) {
            (Some(f), Some(d)) if Instant::now() < d => Ok((f, d)),
            (Some(_), _) => Err(Deposed(
                "its lease lapsed (no successful keep-alive within the TTL)".to_string(),
            )),
            (None, _) => Err(Deposed("this replica is not the leader".to_string())),
        }
    }

    fn compares(&self, f: Fence) -> [Compare; 2] {
        [
            Compare::CreateRevision(self.key.clone(), f.revision),
            Compare::Lease(self.key.clone(), f.lease),
        ]
    }

    /// Explains a failed fence from the leader key's current value (a failed
    /// transaction's read of it), and steps down.
    fn fenced(&self, f: Fence, kv: Option<&super::client::Kv>) -> Deposed {
        let (why, leader) = match kv {
            None => (
                format!(
                    "the leader key (revision {}) is gone: the lease expired or was revoked",
                    f.revision
                ),
                None,
            ),
            Some(kv) => {
                let info = serde_json::from_slice::<LeaderInfo>(&kv.value).ok();
                (
                    format!(
                        "the leader key is now held by {} (revision {}, ours was {})",
                        info.as_ref().map_or("another replica", |i| i.id.as_str()),
                        kv.create_revision,
                        f.revision
                    ),
                    info,
                )
            }
        };
        self.step_down(&why, leader);
        Deposed(why)
    }

    /// One fenced transaction: `then` runs only while the leader key is still ours.
    /// `Ok(None)`: the fence held and the transaction ran with result `r`; the branch's
    /// failure reads come after the leader key's.
    async fn fenced_txn(
        &self,
        extra: &[Compare],
        then: &[Op],
        otherwise: &[Op],
    ) -> Result<Result<super::client::TxnResult, Deposed>, EtcdError> {
        let (f, _) = match self.fence() {
            Ok(x) => x,
            Err(d) => return Ok(Err(d)),
        };
        let mut compares = self.compares(f).to_vec();
        compares.extend_from_slice(extra);
        let mut reads = vec![Op::Get(self.key.clone())];
        reads.extend_from_slice(otherwise);
        let r = self.client.txn(&compares, then, &reads).await?;
        if r.succeeded {
            return Ok(Ok(r));
        }
        let kv = r.ranges.first().and_then(|k| k.first());
        let ours = kv.is_some_and(|kv| kv.create_revision == f.revision && kv.lease == f.lease);
        if ours {
            Ok(Ok(r))
        } else {
            Ok(Err(self.fenced(f, kv)))
        }
    }
}

/// This replica's part in the election; the loop stops when the handle is dropped.
#[derive(Debug)]
pub struct Leadership {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Leadership {
    /// Starts campaigning for `PREFIX/leader` (in the background, on the current tokio
    /// runtime).
    #[must_use]
    pub fn start(client: Arc<EtcdClient>, prefix: &str, opts: LeaderOptions) -> Self {
        let (role, _) = watch::channel(Role::Unknown);
        let shared = Arc::new(Shared {
            client,
            key: format!("{prefix}leader").into_bytes(),
            opts,
            held: Mutex::new(Held::default()),
            role,
        });
        let task = tokio::spawn(campaign_loop(shared.clone()));
        Leadership { shared, task }
    }

    /// This replica's name.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.shared.opts.id
    }

    /// Whether this replica leads now (and its lease has not lapsed locally).
    #[must_use]
    pub fn is_leader(&self) -> bool {
        self.shared.fence().is_ok()
    }

    /// The current role.
    #[must_use]
    pub fn role(&self) -> Role {
        self.shared.role.borrow().clone()
    }

    /// A receiver that sees every role change.
    #[must_use]
    pub fn watch(&self) -> watch::Receiver<Role> {
        self.shared.role.subscribe()
    }

    /// The fence while this replica leads.
    #[must_use]
    pub fn fence(&self) -> Option<Fence> {
        self.shared.fence().ok().map(|(f, _)| f)
    }

    /// The lease currently held (0 when none).
    #[must_use]
    pub fn lease(&self) -> i64 {
        self.shared.held().lease.unwrap_or(0)
    }

    /// Checks with etcd, in a transaction, that the leader key is still this replica's
    /// (same creation revision, same lease); returns how long the lease is still
    /// guaranteed by the local clock. A failed check steps down at once.
    ///
    /// # Errors
    /// `Ok(Err(Deposed))` when the fence no longer holds; `Err` when etcd cannot say.
    pub async fn check(&self) -> Result<Result<Duration, Deposed>, EtcdError> {
        match self.shared.fenced_txn(&[], &[], &[]).await? {
            Ok(_) => {
                let (_, deadline) = match self.shared.fence() {
                    Ok(x) => x,
                    Err(d) => return Ok(Err(d)),
                };
                Ok(Ok(deadline.saturating_duration_since(Instant::now())))
            }
            Err(d) => Ok(Err(d)),
        }
    }

    /// Runs `then` in a transaction fenced on the leadership, with `extra` comparisons;
    /// when a comparison fails the leader key and then each of `otherwise` are read.
    /// `Ok(Err(_))` when the fence does not hold (this replica stepped down).
    ///
    /// # Errors
    /// When etcd cannot be reached or rejects the request.
    pub(crate) async fn txn(
        &self,
        extra: &[Compare],
        then: &[Op],
        otherwise: &[Op],
    ) -> Result<Result<super::client::TxnResult, Deposed>, EtcdError> {
        self.shared.fenced_txn(extra, then, otherwise).await
    }

    /// Gives the role up: deletes the leader key if it is still ours and revokes the
    /// lease (its owner keys go with it), so a standby takes over at once.
    pub async fn resign(&self) {
        self.task.abort();
        let (fence, lease) = {
            let mut h = self.shared.held();
            (h.fence.take(), h.lease.take())
        };
        if let Some(f) = fence {
            let c = self.shared.compares(f);
            let _ = self
                .shared
                .client
                .txn(&c, &[Op::Delete(self.shared.key.clone())], &[])
                .await;
        }
        if let Some(l) = lease {
            let _ = self.shared.client.lease_revoke(l).await;
        }
        self.shared.set_role(Role::Unknown);
    }

    /// Stops keeping the lease alive and campaigning, without resigning: what a hung or
    /// partitioned replica does. The replica still believes it leads until its lease's
    /// local deadline passes. For tests of the fence.
    #[doc(hidden)]
    pub fn stop_keepalive(&self) {
        self.task.abort();
    }
}

fn holder_value(opts: &LeaderOptions) -> Vec<u8> {
    let host = rustix_host();
    let info = LeaderInfo {
        id: opts.id.clone(),
        addr: opts.addr.clone(),
        pid: std::process::id(),
        host,
        since: crate::controller::record::rfc3339(std::time::SystemTime::now()),
    };
    serde_json::to_vec(&info).unwrap_or_default()
}

#[cfg(unix)]
fn rustix_host() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

#[cfg(not(unix))]
fn rustix_host() -> String {
    String::new()
}

/// Takes the key if it is free, else learns who has it.
async fn campaign(s: &Shared, lease: i64) -> Result<(), EtcdError> {
    if s.fence().is_ok() {
        // Still ours? (The check steps down when it is not.)
        if s.fenced_txn(&[], &[], &[]).await?.is_ok() {
            return Ok(());
        }
    }
    let r = s
        .client
        .txn(
            &[Compare::CreateRevision(s.key.clone(), 0)],
            &[Op::Put(s.key.clone(), holder_value(&s.opts), lease)],
            &[Op::Get(s.key.clone())],
        )
        .await?;
    let kv = r.ranges.first().and_then(|k| k.first());
    let won = if r.succeeded {
        Some(r.revision)
    } else {
        // Our own key, from an earlier campaign whose answer was lost.
        kv.filter(|kv| kv.lease == lease)
            .map(|kv| kv.create_revision)
    };
    match won {
        Some(revision) => {
            {
                let mut h = s.held();
                h.fence = Some(Fence { lease, revision });
            }
            if !matches!(*s.role.borrow(), Role::Leader { revision: r } if r == revision) {
                tracing::info!(replica = %s.opts.id, revision, "became leader");
            }
            s.set_role(Role::Leader { revision });
        }
        None => {
            let leader = kv.and_then(|kv| serde_json::from_slice::<LeaderInfo>(&kv.value).ok());
            s.step_down("another replica leads", leader);
        }
    }
    Ok(())
}

async fn campaign_loop(s: Arc<Shared>) {
    let ttl = s.opts.ttl.max(Duration::from_secs(1));
    let tick = (ttl / 4).max(Duration::from_millis(100));
    loop {
        let sent = Instant::now();
        let lease = match s.client.lease_grant(ttl).await {
            Ok((id, granted)) => {
                let mut h = s.held();
                h.lease = Some(id);
                h.deadline = Some(sent + granted);
                id
            }
            Err(e) => {
                tracing::warn!(replica = %s.opts.id, error = %e, "cannot get a lease");
                s.set_role(Role::Unknown);
                tokio::time::sleep(tick).await;
                continue;
            }
        };
        loop {
            // Bounded by the lease's deadline, so a hung request cannot delay a step-down.
            let left = s
                .held()
                .deadline
                .map_or(tick, |d| d.saturating_duration_since(Instant::now()))
                .max(Duration::from_millis(50));
            match tokio::time::timeout(left, campaign(&s, lease)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(replica = %s.opts.id, error = %e, "campaign failed");
                }
                Err(_) => tracing::warn!(replica = %s.opts.id, "campaign: etcd did not answer"),
            }
            tokio::time::sleep(tick).await;
            let deadline = s.held().deadline.unwrap_or_else(Instant::now);
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                s.lose_lease("the lease lapsed: no keep-alive succeeded within the TTL");
                break;
            }
            let sent = Instant::now();
            match s.client.lease_keepalive(lease, left.min(tick * 2)).await {
                Ok(Some(granted)) => {
                    s.held().deadline = Some(sent + granted);
                }
                Ok(None) => {
                    s.lose_lease("the lease expired or was revoked");
                    break;
                }
                Err(e) => {
                    tracing::warn!(replica = %s.opts.id, error = %e, "keep-alive failed");
                    if Instant::now() >= deadline {
                        s.lose_lease("the lease lapsed: etcd did not answer within the TTL");
                        break;
                    }
                }
            }
        }
    }
}
