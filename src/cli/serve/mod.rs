//! `coalmine serve`: many rollouts in one daemon, with one control API for all of them;
//! `coalmine apply` submits a policy to it and `coalmine list` shows its rollouts.
//!
//! The daemon ([`daemon::Daemon`]) is generic over the rollout [`Store`]: `--store DIR` is
//! the embedded [`FileStore`]; a store with leader election plugs in through
//! [`serve`]'s `role` channel (only a [`Role::Leader`] acts on rollouts).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tokio::sync::watch;

use super::control::StateArgs;
use super::{EXIT_FAILURE, EXIT_INVALID, EXIT_OK};
use crate::controller::store::etcd::{
    self as etcd, DEFAULT_PREFIX, EtcdClient, EtcdConfig, EtcdStore, LeaderOptions, Leadership,
};
use crate::controller::store::{FileStore, Store};

pub mod api;
pub mod client;
pub mod daemon;
pub mod dir;
pub mod obs;

#[cfg(test)]
mod tests;

pub use daemon::{Build, Built, Builtin, Config, Daemon, Refusal, Role, Started, TickTiming};

/// What `coalmine serve` does on SIGTERM and SIGINT (also in `--help`).
pub const ON_SIGNAL: &str = "\
On SIGTERM, SIGINT (Ctrl-C) or SIGHUP: every rollout stops ticking, its record is written to the \
store, and traffic is left exactly as recorded: nothing is rolled back or moved (a step \
whose traffic change is in flight gets 5 s to finish). The next `coalmine serve` on the \
same store resumes each unfinished rollout from its record, reading the weight in force \
back first: a weight someone changed meanwhile pauses the rollout, never overridden. \
Rollouts on the built-in proxy ([traffic] type = \"proxy\") lose their proxy with the \
daemon: their traffic stops until it is resumed.

With --store etcd://…: only the replica holding the leader lease acts. A replica that loses \
the lease (etcd unreachable for one TTL, or another replica holds the key) drops every \
rollout at once, writing and moving nothing; the new leader resumes them from their records. \
Followers answer reads from etcd and forward every change (apply, promote, pause…) to the \
leader's --advertise URL. On SIGTERM a leader resigns, so a standby takes over at once.";

/// Where `coalmine serve` keeps its rollouts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreSpec {
    /// The embedded store: a state directory.
    Dir(PathBuf),
    /// An etcd cluster: its endpoints (`HOST:PORT`).
    Etcd(Vec<String>),
}

impl std::str::FromStr for StoreSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("etcd://") {
            let endpoints: Vec<String> = rest
                .split(',')
                .map(|e| e.trim().trim_end_matches('/').to_string())
                .collect();
            if endpoints.iter().any(|e| {
                e.rsplit_once(':')
                    .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            }) {
                return Err(format!(
                    "`{s}`: an etcd store is etcd://HOST:PORT[,HOST:PORT...]"
                ));
            }
            return Ok(StoreSpec::Etcd(endpoints));
        }
        if s.contains("://") {
            return Err(format!(
                "`{s}`: a store is a directory or etcd://HOST:PORT[,HOST:PORT...]"
            ));
        }
        if s.is_empty() {
            return Err("the store directory is empty".to_string());
        }
        Ok(StoreSpec::Dir(PathBuf::from(s)))
    }
}

/// Arguments of `coalmine serve`.
#[derive(Debug, Args)]
#[command(after_long_help = ON_SIGNAL)]
pub struct ServeArgs {
    /// The control API's address, for every rollout (port 0 picks a free port; the address
    /// is printed). A non-loopback address needs a configured token (`COALMINE_TOKEN` or
    /// `--token-file`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9900")]
    pub listen: SocketAddr,
    /// Where rollouts are kept: a state directory (the embedded store; default: the state
    /// directory, see `--state-dir`), or `etcd://HOST:PORT[,HOST:PORT...]`.
    #[arg(long, value_name = "DIR|etcd://HOST:PORT")]
    pub store: Option<StoreSpec>,
    /// Apply the `*.toml` policies of this directory as they appear or change (checked
    /// every second). A changed policy of a running rollout is refused, with the reason
    /// logged; a rollout that finished is not run again for the same content.
    #[arg(long, value_name = "DIR")]
    pub watch: Option<PathBuf>,
    /// Where decision logs go when a policy names none: `DIR/NAME.jsonl` (default:
    /// `decisions/` in the store's directory).
    #[arg(long, value_name = "DIR")]
    pub decisions_dir: Option<PathBuf>,
    /// With etcd: the prefix of every key coalmine writes (rollouts, decision records,
    /// the leader key, owners).
    #[arg(long, value_name = "PREFIX", default_value = DEFAULT_PREFIX)]
    pub etcd_prefix: String,
    /// With etcd: the leader lease's time to live. A dead leader is replaced about one TTL
    /// (plus a quarter TTL and one analysis interval) after it stopped renewing; a leader
    /// that cannot reach etcd stops acting within one TTL.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_ttl)]
    pub lease_ttl: Duration,
    /// With etcd: CA certificates (PEM) to verify the members with (switches to HTTPS).
    #[arg(long, value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// With etcd: a client certificate (PEM), for members with `--client-cert-auth`.
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// With etcd: the client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// With etcd: the user to authenticate as. Its password comes from the environment
    /// variable `COALMINE_ETCD_PASSWORD` or `--etcd-password-file`, never the command line.
    #[arg(long, value_name = "USER")]
    pub etcd_user: Option<String>,
    /// With etcd: a file holding the user's password (one line).
    #[arg(long, value_name = "FILE", requires = "etcd_user")]
    pub etcd_password_file: Option<PathBuf>,
    /// With etcd: this replica's control API URL as the other replicas reach it (kept
    /// with the leader key; followers forward mutations there). Default: http:// and the
    /// `--listen` address (its bound port when the port is 0).
    #[arg(long, value_name = "URL")]
    pub advertise: Option<String>,
    /// With etcd: this replica's name in the leader key, the owners' keys and the logs
    /// (default: HOST-PID).
    #[arg(long, value_name = "NAME")]
    pub replica: Option<String>,
    /// With etcd: keep the last N decision records of each rollout in etcd; older ones
    /// are deleted in the same transaction that writes new ones (0 keeps every one).
    #[arg(long, value_name = "N", default_value_t = etcd::DEFAULT_RECORDS_KEEP)]
    pub records_keep: usize,
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e}"))?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(3600) {
        return Err(format!("`{s}`: a lease TTL is from 1s to 1h"));
    }
    if d.subsec_nanos() != 0 {
        return Err(format!("`{s}`: etcd grants leases in whole seconds"));
    }
    Ok(d)
}

/// Runs `coalmine serve`.
pub(crate) async fn main(args: ServeArgs, state: &StateArgs) -> u8 {
    if !args.listen.ip().is_loopback() && !state.token_configured() {
        errln!(
            "error: --listen {} is not loopback: configure the control API's token first \
             (COALMINE_TOKEN or --token-file), a generated one is for this machine only",
            args.listen
        );
        return EXIT_INVALID;
    }
    let spec = args
        .store
        .clone()
        .unwrap_or_else(|| StoreSpec::Dir(state.dir()));
    match spec {
        StoreSpec::Dir(dir) => {
            let st = StateArgs {
                state_dir: Some(dir.clone()),
                ..state.clone()
            };
            let auth = match st.auth(true) {
                Ok(a) => a,
                Err(e) => {
                    errln!("error: {e}");
                    return EXIT_FAILURE;
                }
            };
            let cfg = Config {
                auth,
                decisions_dir: args
                    .decisions_dir
                    .clone()
                    .or_else(|| Some(dir.join("decisions"))),
                grace: Duration::from_secs(5),
            };
            // The embedded store has one controller: it always leads.
            let (_leader, role) = watch::channel(Role::Leader);
            let on = Replication {
                role,
                leader: watch::channel(None).1,
                rescan: None,
            };
            serve(FileStore::new(dir), daemon::Builtin, on, cfg, &args).await
        }
        StoreSpec::Etcd(endpoints) => serve_etcd(endpoints, &args, state).await,
    }
}

/// The etcd client's configuration from the options; the password from the environment
/// or its file (registered as a secret).
fn etcd_config(endpoints: Vec<String>, args: &ServeArgs) -> Result<EtcdConfig, String> {
    let password = match (
        &args.etcd_password_file,
        std::env::var("COALMINE_ETCD_PASSWORD"),
    ) {
        (Some(f), _) => {
            let text = std::fs::read_to_string(f)
                .map_err(|e| format!("--etcd-password-file {}: {e}", f.display()))?;
            let p = text.lines().next().unwrap_or_default().to_string();
            if p.is_empty() {
                return Err(format!("--etcd-password-file {} is empty", f.display()));
            }
            Some(p)
        }
        (None, Ok(p)) if !p.is_empty() => Some(p),
        (None, _) => None,
    };
    if let Some(p) = &password {
        crate::redact::register(p);
    }
    if args.etcd_user.is_some() && password.is_none() {
        return Err(
            "--etcd-user needs its password: COALMINE_ETCD_PASSWORD or --etcd-password-file"
                .to_string(),
        );
    }
    if args.etcd_user.is_none() && password.is_some() {
        return Err("an etcd password (COALMINE_ETCD_PASSWORD) needs --etcd-user".to_string());
    }
    Ok(EtcdConfig {
        endpoints,
        ca_file: args.etcd_ca.clone(),
        cert_file: args.etcd_cert.clone(),
        key_file: args.etcd_key.clone(),
        user: args.etcd_user.clone(),
        password,
        timeout: Duration::from_secs(3),
    })
}

/// `coalmine serve --store etcd://…`: campaigns for the leadership and serves.
async fn serve_etcd(endpoints: Vec<String>, args: &ServeArgs, state: &StateArgs) -> u8 {
    let shown = endpoints.join(",");
    let cfg = match etcd_config(endpoints, args) {
        Ok(c) => c,
        Err(e) => {
            errln!("error: --store etcd://{shown}: {e}");
            return EXIT_INVALID;
        }
    };
    let client = match EtcdClient::new(&cfg) {
        Ok(c) => std::sync::Arc::new(c),
        Err(e) => {
            errln!("error: --store etcd://{shown}: {e}");
            return EXIT_INVALID;
        }
    };
    let prefix = args.etcd_prefix.clone();
    if !prefix.starts_with('/') || !prefix.ends_with('/') {
        errln!("error: --etcd-prefix `{prefix}`: a prefix starts and ends with `/`");
        return EXIT_INVALID;
    }
    let auth = match state.auth(true) {
        Ok(a) => a,
        Err(e) => {
            errln!("error: {e}");
            return EXIT_FAILURE;
        }
    };
    let id = args.replica.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            rustix::system::uname().nodename().to_string_lossy(),
            std::process::id()
        )
    });
    let cfg = Config {
        auth,
        // Records live in the store (every replica reads the same); a file too when a
        // policy names one or `--decisions-dir` is given.
        decisions_dir: args.decisions_dir.clone(),
        grace: Duration::from_secs(5),
    };
    let Some(listener) = bind(args.listen).await else {
        return EXIT_FAILURE;
    };
    let bound = listener.local_addr().unwrap_or(args.listen);
    let advertise = args
        .advertise
        .clone()
        .unwrap_or_else(|| format!("http://{bound}"));
    let leadership = std::sync::Arc::new(Leadership::start(
        client.clone(),
        &prefix,
        LeaderOptions {
            id: id.clone(),
            addr: Some(advertise.clone()),
            ttl: args.lease_ttl,
        },
    ));
    errln!(
        "coalmine serve: replica {id} on etcd://{shown} (prefix {prefix}, lease TTL {}s), advertised as {advertise}",
        args.lease_ttl.as_secs()
    );
    let (role_tx, role) = watch::channel(Role::Unknown);
    let (leader_tx, leader) = watch::channel(None);
    let mut etcd_role = leadership.watch();
    // The election's role, as the daemon sees it, and where the leader is.
    let follow = tokio::spawn(async move {
        loop {
            let r = etcd_role.borrow_and_update().clone();
            let (mine, url) = match r {
                etcd::Role::Unknown => (Role::Unknown, None),
                etcd::Role::Leader { .. } => (Role::Leader, None),
                etcd::Role::Follower { leader } => (Role::Follower, leader.and_then(|l| l.addr)),
            };
            leader_tx.send_replace(url);
            role_tx.send_replace(mine);
            if etcd_role.changed().await.is_err() {
                return;
            }
        }
    });
    let store =
        EtcdStore::new(client, &prefix, leadership.clone()).with_records_keep(args.records_keep);
    let on = Replication {
        role,
        leader,
        rescan: Some(args.lease_ttl / 2),
    };
    let code = serve_on(listener, store, daemon::Builtin, on, cfg, args).await;
    follow.abort();
    // Hand the leadership over at once (a standby need not wait for the lease to expire).
    leadership.resign().await;
    code
}

/// Binds the control API's listener, or says why not.
async fn bind(addr: SocketAddr) -> Option<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Some(l),
        Err(e) => {
            errln!("error: cannot listen on {addr}: {e}; choose a free port (port 0 picks one)");
            None
        }
    }
}

/// How this replica learns its role: only a [`Role::Leader`] acts on rollouts.
pub struct Replication {
    /// This replica's role.
    pub role: watch::Receiver<Role>,
    /// The leader's control API URL, when another replica leads and says where.
    pub leader: watch::Receiver<Option<String>>,
    /// While leading, how often the store is scanned again for unfinished rollouts that no
    /// task runs (one dropped after a store error); `None`: only on gaining the lead.
    pub rescan: Option<Duration>,
}

/// Serves rollouts from `store` until SIGTERM or SIGINT, acting on them while `on.role`
/// says [`Role::Leader`]; returns the exit code.
pub async fn serve<S: Store + 'static, B: Build>(
    store: S,
    build: B,
    on: Replication,
    cfg: Config,
    args: &ServeArgs,
) -> u8 {
    let Some(listener) = bind(args.listen).await else {
        return EXIT_FAILURE;
    };
    serve_on(listener, store, build, on, cfg, args).await
}

async fn serve_on<S: Store + 'static, B: Build>(
    listener: tokio::net::TcpListener,
    store: S,
    build: B,
    on: Replication,
    cfg: Config,
    args: &ServeArgs,
) -> u8 {
    // Watched from the start: a signal never finds the default action (death) in place.
    let (stop_tx, mut stop) = watch::channel(None);
    super::signals::stop_on_signal(stop_tx);
    tokio::task::yield_now().await;
    let bound = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            errln!("error: cannot listen on {}: {e}", args.listen);
            return EXIT_FAILURE;
        }
    };
    let d = Daemon::new(store, build, on.role, cfg);
    d.set_control(bound);
    d.set_leader_url(on.leader);
    let (stop_api, api_stopped) = watch::channel(false);
    let api = tokio::spawn(api::serve(d.clone(), listener, async move {
        let mut rx = api_stopped;
        let _ = rx.wait_for(|v| *v).await;
    }));
    errln!("coalmine serve: control API on http://{bound}");
    let lead = tokio::spawn(d.clone().lead(on.rescan));
    let watcher = args
        .watch
        .clone()
        .map(|dir| tokio::spawn(dir::watch(d.clone(), dir)));
    let why = stop.wait_for(Option::is_some).await.map_or_else(
        |_| "stopping".to_string(),
        |v| v.clone().unwrap_or_default(),
    );
    errln!("coalmine serve: {why}: stopping every rollout, traffic left as recorded");
    if let Some(w) = watcher {
        w.abort();
    }
    lead.abort();
    d.stand_down().await;
    let _ = stop_api.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), api).await;
    errln!(
        "coalmine serve: stopped; `coalmine serve` on the same store resumes the unfinished rollouts"
    );
    EXIT_OK
}
