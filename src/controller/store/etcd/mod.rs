//! The rollout store on etcd v3, for several replicas of `coalmine serve` of which one
//! leads ([`Leadership`]).
//!
//! Keys, under a prefix (`--etcd-prefix`, default [`DEFAULT_PREFIX`]):
//! - `rollouts/NAME`: the record, the same bytes as the embedded store's file (pretty JSON
//!   and a `# sha256` line); its revision is the key's `mod_revision`;
//! - `records/NAME/REV-RANK`: the rollout's decision records (one JSON line each), written
//!   in the same transaction as the rollout's record that follows them
//!   ([`Store::save_with_records`]), keyed by the revision that write replaced, so any
//!   replica reads the same log and a record is stored exactly when its state is; the
//!   last [`DEFAULT_RECORDS_KEEP`] (or [`EtcdStore::with_records_keep`]) are kept, older
//!   ones deleted in that same transaction;
//! - `leader`: the leader's name and address (JSON), attached to its lease;
//! - `owners/NAME`: who runs the rollout ([`Store::acquire`]), attached to the owner's
//!   lease, so it goes when the owner dies.
//!
//! **Fencing.** Every write is one transaction that compares the leader key's
//! `create_revision` and lease with this replica's fence, besides the record's own
//! revision (compare-and-swap). A replica that lost the leadership, whether its lease
//! expired, was revoked or its key was deleted, has a fence that no longer matches: its
//! write fails with [`StoreError::Fenced`] and it steps down. [`Store::fence`] is the same
//! comparison with no write, which the runner makes right before every traffic change.
//!
//! Why a deposed leader cannot apply a weight after its successor started: the successor
//! can create the leader key only after the old key is gone (`create_revision == 0`), so at
//! a higher revision; from then on every comparison of the old fence fails, in etcd's
//! linearizable order. The old leader checks the fence right before calling the provider
//! and writes its record (fenced) before that, so every call it *starts* is ordered before
//! the successor's key. What remains is the provider call itself: between a successful
//! check and the provider's answer. The runner bounds the call by the lease's remaining
//! local time (the check returns it), and the lease cannot expire on etcd before that
//! (etcd's expiry is later than the local deadline), so the call is abandoned before a
//! successor can exist. A provider that has received the request and applies it later than
//! that (a slow or queueing API) can still apply it after the successor started; no store
//! can close that window, only a provider that checks a fencing token itself.

mod client;
mod leader;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use client::{Compare, EtcdClient, EtcdConfig, EtcdError, Kv, Op, TxnResult, prefix_end};
pub use leader::{Deposed, Fence, LeaderInfo, LeaderOptions, Leadership, Role};

use super::{RolloutState, Store, StoreError, decode, encode, valid_name};

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/coalmine/";

/// The default lease TTL.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// How many decision records per rollout the store keeps by default (`--records-keep`).
pub const DEFAULT_RECORDS_KEEP: usize = 1000;

/// The rollout store on etcd, fenced on a [`Leadership`].
#[derive(Clone, Debug)]
pub struct EtcdStore {
    client: Arc<EtcdClient>,
    prefix: String,
    leadership: Arc<Leadership>,
    /// At most this many decision records per rollout (0: every one).
    keep: usize,
    /// The record keys each rollout has in etcd, oldest first, as this store last wrote or
    /// read them (forgotten after a failed write or a new owner: read again).
    known: Arc<std::sync::Mutex<HashMap<String, VecDeque<Vec<u8>>>>>,
}

fn etcd(what: impl Into<String>) -> impl FnOnce(EtcdError) -> StoreError {
    let what = what.into();
    move |source| StoreError::Etcd { what, source }
}

impl EtcdStore {
    /// A store under `prefix`, whose writes are fenced on `leadership`.
    #[must_use]
    pub fn new(client: Arc<EtcdClient>, prefix: &str, leadership: Arc<Leadership>) -> Self {
        EtcdStore {
            client,
            prefix: prefix.to_string(),
            leadership,
            keep: DEFAULT_RECORDS_KEEP,
            known: Arc::default(),
        }
    }

    /// Keeps at most the last `keep` decision records of each rollout (0: every one); the
    /// older ones are deleted in the same fenced transaction that writes the new ones.
    #[must_use]
    pub fn with_records_keep(mut self, keep: usize) -> Self {
        self.keep = keep;
        self
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Vec<u8>>>> {
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The rollout's record keys in etcd, oldest first (read once, then kept up to date).
    async fn known_records(&self, rollout: &str, prefix: &[u8]) -> Result<usize, StoreError> {
        if let Some(k) = self.known().get(rollout) {
            return Ok(k.len());
        }
        let keys = self
            .client
            .keys_prefix(prefix)
            .await
            .map_err(etcd(format!("reading the records of rollout `{rollout}`")))?;
        let n = keys.len();
        self.known().insert(rollout.to_string(), keys.into());
        Ok(n)
    }

    /// The leadership the writes are fenced on.
    #[must_use]
    pub fn leadership(&self) -> &Arc<Leadership> {
        &self.leadership
    }

    /// The client.
    #[must_use]
    pub fn client(&self) -> &Arc<EtcdClient> {
        &self.client
    }

    fn key(&self, kind: &str, rollout: &str) -> Result<Vec<u8>, StoreError> {
        if valid_name(rollout) {
            Ok(format!("{}{kind}/{rollout}", self.prefix).into_bytes())
        } else {
            Err(StoreError::BadName(rollout.to_string()))
        }
    }

    fn shown(key: &[u8]) -> PathBuf {
        PathBuf::from(format!("etcd:{}", String::from_utf8_lossy(key)))
    }

    fn read(kv: &Kv) -> Result<RolloutState, StoreError> {
        let mut s = decode(&kv.value).map_err(|why| StoreError::Damaged {
            path: Self::shown(&kv.key),
            why,
        })?;
        s.revision = kv.mod_revision.unsigned_abs();
        Ok(s)
    }
}

impl Store for EtcdStore {
    type Guard = OwnerKey;

    async fn load(&self, rollout: &str) -> Result<Option<RolloutState>, StoreError> {
        let key = self.key("rollouts", rollout)?;
        let kv = self
            .client
            .get(&key)
            .await
            .map_err(etcd(format!("reading rollout `{rollout}`")))?;
        kv.as_ref().map(Self::read).transpose()
    }

    async fn save(&self, state: &RolloutState, expected: u64) -> Result<u64, StoreError> {
        self.save_with_records(state, expected, &[]).await
    }

    fn keeps_records(&self) -> bool {
        true
    }

    async fn save_with_records(
        &self,
        state: &RolloutState,
        expected: u64,
        records: &[String],
    ) -> Result<u64, StoreError> {
        let key = self.key("rollouts", &state.rollout)?;
        let mut s = state.clone();
        s.format = super::FORMAT;
        let bytes = encode(&s).map_err(|e| StoreError::Damaged {
            path: Self::shown(&key),
            why: e.to_string(),
        })?;
        let Ok(expected_rev) = i64::try_from(expected) else {
            return Err(StoreError::Conflict {
                rollout: state.rollout.clone(),
                found: 0,
                expected,
            });
        };
        let cas = if expected == 0 {
            Compare::CreateRevision(key.clone(), 0)
        } else {
            Compare::ModRevision(key.clone(), expected_rev)
        };
        // The records go in the same transaction, under keys ordered by the revision this
        // write replaces (unique: only one write can replace it) and their rank in it.
        let mut puts = vec![Op::Put(key.clone(), bytes.clone(), 0)];
        let mut rprefix = self.key("records", &state.rollout)?;
        rprefix.push(b'/');
        let mut new: Vec<Vec<u8>> = (0..records.len())
            .map(|i| {
                let mut k = rprefix.clone();
                k.extend_from_slice(format!("{expected:020}-{i:06}").as_bytes());
                k
            })
            .collect();
        let mut lines = records;
        // Retention: the oldest records beyond `keep` go in this same transaction (never
        // the newest: `keep` ≥ 1). Keys order by the revision they replace, so the old ones
        // are one range; new ones beyond `keep` themselves (more than `keep` in one write)
        // are not written at all.
        let mut dropped_known = 0;
        if self.keep > 0 && !records.is_empty() {
            let known = self.known_records(&state.rollout, &rprefix).await?;
            let excess = (known + new.len()).saturating_sub(self.keep);
            if excess > 0 {
                dropped_known = excess.min(known);
                let skip = excess - dropped_known;
                new.drain(..skip);
                lines = &records[skip..];
                let cutoff = if dropped_known < known {
                    self.known()
                        .get(&state.rollout)
                        .and_then(|k| k.get(dropped_known).cloned())
                } else {
                    new.first().cloned()
                };
                if let Some(cutoff) = cutoff {
                    puts.push(Op::DeleteRange(rprefix.clone(), cutoff));
                }
            }
        }
        for (k, line) in new.iter().zip(lines) {
            puts.push(Op::Put(k.clone(), line.clone().into_bytes(), 0));
        }
        let r = self
            .leadership
            .txn(&[cas], &puts, &[Op::Get(key.clone())])
            .await
            .map_err(|e| {
                self.known().remove(&state.rollout);
                etcd(format!("writing rollout `{}`", state.rollout))(e)
            })?
            .map_err(|d| {
                self.known().remove(&state.rollout);
                StoreError::Fenced {
                    rollout: state.rollout.clone(),
                    why: d.0,
                }
            })?;
        if r.succeeded {
            if self.keep > 0
                && !records.is_empty()
                && let Some(k) = self.known().get_mut(&state.rollout)
            {
                k.drain(..dropped_known.min(k.len()));
                k.extend(new);
            }
            return Ok(r.revision.unsigned_abs());
        }
        self.known().remove(&state.rollout);
        // The fence held, the revision did not. Our own write, whose answer was lost and
        // which was then sent again to another member, is found as it is.
        let found = r.ranges.get(1).and_then(|k| k.first());
        if let Some(kv) = found
            && r.retried
            && kv.value == bytes
        {
            return Ok(kv.mod_revision.unsigned_abs());
        }
        Err(StoreError::Conflict {
            rollout: state.rollout.clone(),
            found: found.map_or(0, |kv| kv.mod_revision.unsigned_abs()),
            expected,
        })
    }

    async fn list(&self) -> Result<Vec<RolloutState>, StoreError> {
        let prefix = format!("{}rollouts/", self.prefix);
        let kvs = self
            .client
            .get_prefix(prefix.as_bytes())
            .await
            .map_err(etcd("listing rollouts"))?;
        let mut out = Vec::new();
        for kv in &kvs {
            match Self::read(kv) {
                Ok(s) => out.push(s),
                Err(e) => tracing::warn!(error = %e, "skipping a rollout record"),
            }
        }
        out.sort_by(|a, b| a.rollout.cmp(&b.rollout));
        Ok(out)
    }

    async fn records(&self, rollout: &str) -> Result<Vec<String>, StoreError> {
        let mut prefix = self.key("records", rollout)?;
        prefix.push(b'/');
        let kvs = self
            .client
            .get_prefix(&prefix)
            .await
            .map_err(etcd(format!("reading the records of rollout `{rollout}`")))?;
        Ok(kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
            .collect())
    }

    async fn acquire(&self, rollout: &str) -> Result<OwnerKey, StoreError> {
        let key = self.key("owners", rollout)?;
        let lease = self.leadership.lease();
        if lease == 0 {
            return Err(StoreError::Fenced {
                rollout: rollout.to_string(),
                why: "this replica holds no lease (etcd not reached yet)".to_string(),
            });
        }
        let me = format!(
            "replica {} (pid {}), since {}",
            self.leadership.id(),
            std::process::id(),
            crate::controller::record::rfc3339(std::time::SystemTime::now())
        );
        let r = self
            .client
            .txn(
                &[Compare::CreateRevision(key.clone(), 0)],
                &[Op::Put(key.clone(), me.into_bytes(), lease)],
                &[Op::Get(key.clone())],
            )
            .await
            .map_err(etcd(format!("taking rollout `{rollout}`")))?;
        if r.succeeded {
            // A new owner: what the store knew of its records may be another's past.
            self.known().remove(rollout);
            return Ok(OwnerKey {
                client: self.client.clone(),
                key,
                revision: r.revision,
            });
        }
        let holder = r.ranges.first().and_then(|k| k.first()).map_or_else(
            || "another replica".to_string(),
            |kv| String::from_utf8_lossy(&kv.value).into_owned(),
        );
        Err(StoreError::Locked {
            rollout: rollout.to_string(),
            holder,
        })
    }

    async fn fence(&self, rollout: &str) -> Result<Option<Duration>, StoreError> {
        match self.leadership.check().await.map_err(etcd(format!(
            "checking the leadership for rollout `{rollout}`"
        )))? {
            Ok(left) => Ok(Some(left)),
            Err(d) => Err(StoreError::Fenced {
                rollout: rollout.to_string(),
                why: d.0,
            }),
        }
    }
}

/// Ownership of one rollout: the key `owners/NAME`, attached to the owner's lease, deleted
/// when the guard is dropped (in the background) or with the lease when the owner dies.
#[derive(Debug)]
pub struct OwnerKey {
    client: Arc<EtcdClient>,
    key: Vec<u8>,
    revision: i64,
}

impl Drop for OwnerKey {
    fn drop(&mut self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.client.clone();
        let key = std::mem::take(&mut self.key);
        let revision = self.revision;
        rt.spawn(async move {
            // Only our own key: a successor's is left alone.
            let _ = client
                .txn(
                    &[Compare::CreateRevision(key.clone(), revision)],
                    &[Op::Delete(key)],
                    &[],
                )
                .await;
        });
    }
}

#[cfg(test)]
mod tests;
