//! The rollout store: one durable record per rollout ([`RolloutState`]), so a rollout is a
//! stored record rather than a process. A restarted `coalmine run` (or, later, a daemon
//! running many rollouts) loads it, continues, and writes it back before acting.
//!
//! [`Store`] is the one interface; [`FileStore`] is the embedded default: a state directory
//! with one file per rollout, written atomically (write a temporary file, fsync, rename over
//! the old one, fsync the directory), so a crash at any moment leaves either the old record
//! or the new one, never a mix. Plain files rather than an embedded database: one small
//! record per rollout, written whole, needs nothing a database adds (no queries, no
//! transactions across records), and stays readable with `cat` and `jq`.
//!
//! Writes are compare-and-swap on a revision ([`Store::save`] takes the revision the writer
//! last saw), so a store on etcd (issue 12) can fence every write on its leader lease; the
//! file store checks the revision under the rollout's owner lock ([`Store::acquire`]).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::machine::Phase;
use crate::analysis::MetricJudge;
use crate::model::Weight;

pub mod etcd;
mod timed;

pub use timed::Timed;

/// Version of the stored record's layout; a record of a newer layout is refused.
pub const FORMAT: u32 = 1;

/// Records larger than this are refused on read (a real one is a few kilobytes; Kayenta
/// series make it grow by a few bytes per point).
pub const MAX_RECORD_BYTES: u64 = 64 << 20;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing failed.
    #[error("rollout store {path}: {what}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A record could not be decoded.
    #[error("rollout record {path} is damaged: {why}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// Someone else wrote the record since this writer read it.
    #[error(
        "rollout `{rollout}` was written by someone else (revision {found}, expected {expected})"
    )]
    Conflict {
        /// The rollout.
        rollout: String,
        /// The revision in the store.
        found: u64,
        /// The revision the writer expected.
        expected: u64,
    },
    /// Another controller owns the rollout.
    #[error("rollout `{rollout}` is already run by {holder}")]
    Locked {
        /// The rollout.
        rollout: String,
        /// Who holds it (pid, host, since when), as its lock file says.
        holder: String,
    },
    /// The rollout name cannot be used as a file name.
    #[error("rollout name `{0}` cannot name a record (use letters, digits, `-`, `_` and `.`)")]
    BadName(String),
    /// This writer no longer owns the rollouts (a replica that lost the leadership): the
    /// write was refused, and nothing may be acted on.
    #[error("rollout `{rollout}`: refused, this replica no longer leads: {why}")]
    Fenced {
        /// The rollout.
        rollout: String,
        /// Why the fence failed.
        why: String,
    },
    /// etcd could not be reached or refused the request.
    #[error("rollout store: {what}")]
    Etcd {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: etcd::EtcdError,
    },
}

/// Where a rollout's policy came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRef {
    /// The file, as given on the command line.
    pub path: Option<String>,
    /// SHA-256 of the file's bytes, lowercase hex.
    pub sha256: String,
    /// The policy's text, kept by `coalmine serve` (a policy it was sent over the control
    /// API has no file on its machine): what a restarted daemon, or another replica,
    /// resumes the rollout with. `None` for `coalmine run`, which reads its file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// The running controller's control API, for the operator's verbs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlRef {
    /// Address the control API listens on.
    pub addr: std::net::SocketAddr,
    /// The controller's process id.
    pub pid: u32,
}

/// The judges' state, exactly: CBOR of the judges (every f64 to the bit), base64 in JSON.
#[derive(Clone, Debug, Default)]
pub struct Judges(pub Vec<MetricJudge>);

impl Serialize for Judges {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::new();
        ciborium::into_writer(&self.0, &mut bytes).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }
}

impl<'de> Deserialize<'de> for Judges {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)?;
        let judges: Vec<MetricJudge> =
            ciborium::from_reader(bytes.as_slice()).map_err(serde::de::Error::custom)?;
        Ok(Judges(judges))
    }
}

/// Everything needed to continue a rollout: one record per rollout in the store.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RolloutState {
    /// Layout version ([`FORMAT`]).
    pub format: u32,
    /// Rollout name (the policy's `name`): the record's key.
    pub rollout: String,
    /// This run of the rollout: new for every start, restart and retry.
    pub rollout_id: String,
    /// Version of coalmine that wrote the record.
    pub version: String,
    /// Incremented by every write (compare-and-swap, see [`Store::save`]).
    pub revision: u64,
    /// The policy this rollout runs.
    pub policy: PolicyRef,
    /// Where the rollout is (the machine's phase, with the step's progress).
    pub phase: Phase,
    /// Steps in the plan.
    pub steps: usize,
    /// The controller's clock when the record was written: the offset from the rollout's
    /// start the machine works with.
    pub elapsed: Duration,
    /// Wall-clock time the record was written (for the downtime on resume).
    pub saved_at: SystemTime,
    /// Wall-clock time the rollout started.
    pub started_at: SystemTime,
    /// The weight last read back from the provider.
    pub weight: Weight,
    /// Next analysis window's sequence number.
    pub seq: u64,
    /// Analysis ticks so far.
    pub ticks: u64,
    /// Highest step reached (1-based).
    pub steps_reached: usize,
    /// When traffic first reached the canary (offset), for the warm-up.
    pub first_traffic: Option<Duration>,
    /// Each metric's judge, in the policy's order.
    pub judges: Judges,
    /// The decision log, if any.
    pub decisions: Option<PathBuf>,
    /// The controller's control API while one runs.
    pub control: Option<ControlRef>,
    /// The last decision or event, one line, for `status`.
    pub last: Option<String>,
    /// Operator actions seen so far (each is also a decision record).
    #[serde(default)]
    pub operator_actions: u64,
}

impl RolloutState {
    /// Whether the rollout has ended.
    #[must_use]
    pub fn finished(&self) -> bool {
        self.phase.is_terminal()
    }

    /// The current step, 1-based, if in one.
    #[must_use]
    pub fn step(&self) -> Option<usize> {
        match &self.phase {
            Phase::Shifting { step, .. } => Some(step + 1),
            Phase::Progressing(p) => Some(p.step + 1),
            Phase::Paused(z) => Some(z.progress.step + 1),
            _ => None,
        }
    }
}

/// What to do with a rollout given its stored record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartPlan {
    /// No record, or `--restart`: start from step 1.
    Fresh {
        /// Why (for the record): `None` for a first start.
        restart: Option<String>,
    },
    /// An unfinished record of the same policy: continue it.
    Resume,
    /// The record was written for another policy content.
    PolicyChanged {
        /// The recorded hash.
        recorded: String,
    },
    /// The rollout already ended.
    Finished {
        /// Its phase.
        phase: &'static str,
    },
}

/// Decides between starting, resuming and refusing (pure).
#[must_use]
pub fn start_plan(stored: Option<&RolloutState>, policy_sha256: &str, restart: bool) -> StartPlan {
    match stored {
        None => StartPlan::Fresh { restart: None },
        Some(s) if restart => StartPlan::Fresh {
            restart: Some(format!(
                "restarted from step 1 by --restart (the previous run {} was {})",
                s.rollout_id,
                s.phase.name()
            )),
        },
        Some(s) if s.finished() => StartPlan::Finished {
            phase: s.phase.name(),
        },
        Some(s) if s.policy.sha256 != policy_sha256 => StartPlan::PolicyChanged {
            recorded: s.policy.sha256.clone(),
        },
        Some(_) => StartPlan::Resume,
    }
}

/// SHA-256 of a policy file's bytes, lowercase hex.
#[must_use]
pub fn policy_sha256(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A fresh rollout id: the start time and 64 random bits.
#[must_use]
pub fn new_rollout_id() -> String {
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!("{secs:x}-{}", hex(&bytes))
}

/// Where rollouts are kept.
///
/// # Guarantees expected of implementors
/// `save` is atomic (a reader sees the old record or the new one) and durable when it
/// returns; it writes only when the stored revision is still `expected` (compare-and-swap),
/// so a deposed owner's write fails instead of overwriting its successor's. `acquire` makes
/// the caller the rollout's only owner until the guard is dropped or the process dies.
pub trait Store: Send + Sync {
    /// Proof of ownership of one rollout; ownership ends when it is dropped.
    type Guard: Send;

    /// The rollout's record, if any.
    fn load(
        &self,
        rollout: &str,
    ) -> impl Future<Output = Result<Option<RolloutState>, StoreError>> + Send;

    /// Writes `state` if the stored revision is `expected` (0: no record yet); returns the
    /// new revision (also set in the stored record).
    fn save(
        &self,
        state: &RolloutState,
        expected: u64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Every rollout's record, by name.
    fn list(&self) -> impl Future<Output = Result<Vec<RolloutState>, StoreError>> + Send;

    /// Becomes the rollout's only owner, or fails with [`StoreError::Locked`] naming the
    /// holder.
    fn acquire(
        &self,
        rollout: &str,
    ) -> impl Future<Output = Result<Self::Guard, StoreError>> + Send;

    /// Whether decision records are kept in the store, each written in the same atomic
    /// write as the rollout's record that follows it ([`Store::save_with_records`]); by
    /// default not (they go to the decision log file).
    fn keeps_records(&self) -> bool {
        false
    }

    /// [`Store::save`], and in the same atomic write the decision records (JSON lines)
    /// made since the last save: a record is stored exactly when the state after it is.
    /// By default the records are dropped (a store that does not keep them).
    fn save_with_records(
        &self,
        state: &RolloutState,
        expected: u64,
        records: &[String],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        let _ = records;
        self.save(state, expected)
    }

    /// The decision records kept for `rollout`, oldest first (empty when the store keeps
    /// none).
    fn records(
        &self,
        rollout: &str,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send {
        let _ = rollout;
        async { Ok(Vec::new()) }
    }

    /// Whether the store can be reached and written now (`coalmine serve`'s
    /// `/health/ready`); by default always.
    fn ready(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }

    /// Checks, right before acting on the world (a traffic change), that this writer still
    /// owns the rollout: fails with [`StoreError::Fenced`] when it does not. Returns how
    /// long the ownership is guaranteed from now (`None`: for as long as the process
    /// lives, as with the embedded store's lock), which bounds the action.
    fn fence(
        &self,
        rollout: &str,
    ) -> impl Future<Output = Result<Option<Duration>, StoreError>> + Send {
        let _ = rollout;
        async { Ok(None) }
    }
}

/// The embedded store: a state directory with `rollouts/NAME.json` and `rollouts/NAME.lock`.
#[derive(Clone, Debug)]
pub struct FileStore {
    dir: PathBuf,
}

/// The default state directory: `$COALMINE_STATE_DIR`, else `$XDG_STATE_HOME/coalmine`,
/// else `~/.local/state/coalmine`.
#[must_use]
pub fn default_state_dir() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = env("COALMINE_STATE_DIR") {
        return d;
    }
    if let Some(d) = env("XDG_STATE_HOME") {
        return d.join("coalmine");
    }
    env("HOME")
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".local/state/coalmine")
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Encodes a record as it is stored: pretty JSON, then a line `# sha256 HEX` of the JSON's
/// bytes (a torn or damaged file is detected, never half-read).
///
/// # Errors
/// When the record cannot be serialized.
pub fn encode(state: &RolloutState) -> Result<Vec<u8>, serde_json::Error> {
    let mut body = serde_json::to_vec_pretty(state)?;
    body.push(b'\n');
    let sum = policy_sha256(&body);
    body.extend_from_slice(format!("# sha256 {sum}\n").as_bytes());
    Ok(body)
}

/// Decodes a stored record; never panics, whatever the bytes.
///
/// # Errors
/// A description of what is wrong.
pub fn decode(bytes: &[u8]) -> Result<RolloutState, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
    let body_end = text
        .trim_end_matches('\n')
        .rfind('\n')
        .ok_or_else(|| "no checksum line".to_string())?
        + 1;
    let (body, trailer) = text.split_at(body_end);
    let sum = trailer
        .trim_end()
        .strip_prefix("# sha256 ")
        .ok_or_else(|| "no checksum line".to_string())?;
    if policy_sha256(body.as_bytes()) != sum {
        return Err("checksum mismatch (torn or edited)".to_string());
    }
    let state: RolloutState = serde_json::from_str(body).map_err(|e| e.to_string())?;
    if state.format > FORMAT {
        return Err(format!(
            "written in layout {} by coalmine {}; this is layout {FORMAT}",
            state.format, state.version
        ));
    }
    Ok(state)
}

impl FileStore {
    /// A store in `dir` (created on first write).
    #[must_use]
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileStore { dir: dir.into() }
    }

    /// The state directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn rollouts(&self) -> PathBuf {
        self.dir.join("rollouts")
    }

    fn path(&self, rollout: &str) -> Result<PathBuf, StoreError> {
        if valid_name(rollout) {
            Ok(self.rollouts().join(format!("{rollout}.json")))
        } else {
            Err(StoreError::BadName(rollout.to_string()))
        }
    }

    fn read(path: &Path) -> Result<Option<RolloutState>, StoreError> {
        let io = |what, source| StoreError::Io {
            path: path.to_path_buf(),
            what,
            source,
        };
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("opening the record", e)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_RECORD_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| io("reading the record", e))?;
        if bytes.len() as u64 > MAX_RECORD_BYTES {
            return Err(StoreError::Damaged {
                path: path.to_path_buf(),
                why: format!("larger than {MAX_RECORD_BYTES} bytes"),
            });
        }
        decode(&bytes).map(Some).map_err(|why| StoreError::Damaged {
            path: path.to_path_buf(),
            why,
        })
    }

    fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let io = |what, source| StoreError::Io {
            path: path.to_path_buf(),
            what,
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| io("creating the directory", e))?;
        let tmp = path.with_extension(format!("json.tmp.{}", std::process::id()));
        let mut f = File::create(&tmp).map_err(|e| io("creating the temporary file", e))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| io("writing the temporary file", e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| io("renaming the temporary file", e))?;
        // The rename is durable only once the directory entry is.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("syncing the directory", e))
    }

    /// Reads one record (blocking).
    ///
    /// # Errors
    /// As [`Store::load`].
    pub fn load_blocking(&self, rollout: &str) -> Result<Option<RolloutState>, StoreError> {
        Self::read(&self.path(rollout)?)
    }

    /// Writes one record (blocking), as [`Store::save`].
    ///
    /// # Errors
    /// As [`Store::save`].
    pub fn save_blocking(&self, state: &RolloutState, expected: u64) -> Result<u64, StoreError> {
        let path = self.path(&state.rollout)?;
        let found = match Self::read(&path) {
            Ok(s) => s.map_or(0, |s| s.revision),
            // A damaged record is replaced only by a writer that expected a fresh start.
            Err(StoreError::Damaged { .. }) if expected == 0 => 0,
            Err(e) => return Err(e),
        };
        if found != expected {
            return Err(StoreError::Conflict {
                rollout: state.rollout.clone(),
                found,
                expected,
            });
        }
        let mut s = state.clone();
        s.revision = expected + 1;
        s.format = FORMAT;
        let bytes = encode(&s).map_err(|e| StoreError::Damaged {
            path: path.clone(),
            why: e.to_string(),
        })?;
        Self::write_atomic(&self.rollouts(), &path, &bytes)?;
        Ok(s.revision)
    }

    /// Every record (blocking), skipping damaged ones with a warning.
    ///
    /// # Errors
    /// When the directory cannot be read.
    pub fn list_blocking(&self) -> Result<Vec<RolloutState>, StoreError> {
        let dir = self.rollouts();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StoreError::Io {
                    path: dir,
                    what: "listing rollouts",
                    source,
                });
            }
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                match Self::read(&p) {
                    Ok(Some(s)) => out.push(s),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "skipping a rollout record"),
                }
            }
        }
        out.sort_by(|a, b| a.rollout.cmp(&b.rollout));
        Ok(out)
    }

    /// Checks that the rollouts directory exists (creating it) and takes a write
    /// (blocking): a probe file is written, synced and removed.
    ///
    /// # Errors
    /// When the directory cannot be created or written.
    pub fn ready_blocking(&self) -> Result<(), StoreError> {
        let dir = self.rollouts();
        let probe = dir.join(format!(".ready.{}", std::process::id()));
        let io = |what, source| StoreError::Io {
            path: probe.clone(),
            what,
            source,
        };
        std::fs::create_dir_all(&dir).map_err(|e| io("creating the directory", e))?;
        File::create(&probe)
            .and_then(|mut f| f.write_all(b"ready\n").and_then(|()| f.sync_all()))
            .map_err(|e| io("writing a probe file", e))?;
        std::fs::remove_file(&probe).map_err(|e| io("removing a probe file", e))
    }

    /// Takes the rollout's owner lock (blocking, never waits).
    ///
    /// # Errors
    /// [`StoreError::Locked`] naming the holder when another process has it.
    pub fn acquire_blocking(&self, rollout: &str) -> Result<OwnerLock, StoreError> {
        let json = self.path(rollout)?;
        let path = json.with_extension("lock");
        OwnerLock::take(&self.rollouts(), &path, rollout)
    }
}

impl Store for FileStore {
    type Guard = OwnerLock;

    async fn load(&self, rollout: &str) -> Result<Option<RolloutState>, StoreError> {
        let this = self.clone();
        let rollout = rollout.to_string();
        blocking(move || this.load_blocking(&rollout)).await
    }

    async fn save(&self, state: &RolloutState, expected: u64) -> Result<u64, StoreError> {
        let this = self.clone();
        let state = state.clone();
        blocking(move || this.save_blocking(&state, expected)).await
    }

    async fn list(&self) -> Result<Vec<RolloutState>, StoreError> {
        let this = self.clone();
        blocking(move || this.list_blocking()).await
    }

    async fn acquire(&self, rollout: &str) -> Result<OwnerLock, StoreError> {
        let this = self.clone();
        let rollout = rollout.to_string();
        blocking(move || this.acquire_blocking(&rollout)).await
    }

    async fn ready(&self) -> Result<(), StoreError> {
        let this = self.clone();
        blocking(move || this.ready_blocking()).await
    }
}

/// Runs blocking file work off the async workers (fsync can take milliseconds).
async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, StoreError> + Send + 'static,
) -> Result<R, StoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(StoreError::Io {
            path: PathBuf::new(),
            what: "running a store task",
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

/// A rollout's owner lock: an exclusive advisory `flock` on `NAME.lock`, which holds the
/// owner's pid, host and start time for the messages of a refused second controller.
///
/// The kernel releases a `flock` when the process holding it dies (its descriptors are
/// closed), however it dies, SIGKILL included: a lock left by a dead controller is simply
/// free, and the next owner takes it over without guessing from pids or ages.
#[derive(Debug)]
pub struct OwnerLock {
    _file: File,
    path: PathBuf,
}

impl OwnerLock {
    #[cfg(unix)]
    fn take(dir: &Path, path: &Path, rollout: &str) -> Result<Self, StoreError> {
        use rustix::fs::{FlockOperation, flock};
        let io = |what, source| StoreError::Io {
            path: path.to_path_buf(),
            what,
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| io("creating the directory", e))?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io("opening the lock", e))?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(StoreError::Locked {
                    rollout: rollout.to_string(),
                    holder: if holder.is_empty() {
                        "another process (it has not written its name yet)".to_string()
                    } else {
                        holder.to_string()
                    },
                });
            }
            Err(e) => return Err(io("locking", e.into())),
        }
        let host = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        let me = format!(
            "pid {} on {host}, since {}",
            std::process::id(),
            super::record::rfc3339(SystemTime::now())
        );
        file.set_len(0)
            .and_then(|()| file.write_all(me.as_bytes()))
            .and_then(|()| file.sync_data())
            .map_err(|e| io("writing the lock", e))?;
        Ok(OwnerLock {
            _file: file,
            path: path.to_path_buf(),
        })
    }

    #[cfg(not(unix))]
    fn take(dir: &Path, path: &Path, _rollout: &str) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            what: "creating the directory",
            source,
        })?;
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|source| StoreError::Io {
                path: path.to_path_buf(),
                what: "opening the lock",
                source,
            })?;
        Ok(OwnerLock {
            _file: file,
            path: path.to_path_buf(),
        })
    }

    /// The lock file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests;
