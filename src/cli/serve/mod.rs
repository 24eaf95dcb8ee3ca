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
use crate::controller::store::{FileStore, Store};

pub mod api;
pub mod client;
pub mod daemon;
pub mod dir;
pub mod obs;

#[cfg(test)]
mod tests;

pub use daemon::{Build, Built, Builtin, Config, Daemon, Role};

/// What `coalmine serve` does on SIGTERM and SIGINT (also in `--help`).
pub const ON_SIGNAL: &str = "\
On SIGTERM, SIGINT (Ctrl-C) or SIGHUP: every rollout stops ticking, its record is written to the \
store, and traffic is left exactly as recorded: nothing is rolled back or moved (a step \
whose traffic change is in flight gets 5 s to finish). The next `coalmine serve` on the \
same store resumes each unfinished rollout from its record, reading the weight in force \
back first: a weight someone changed meanwhile pauses the rollout, never overridden. \
Rollouts on the built-in proxy ([traffic] type = \"proxy\") lose their proxy with the \
daemon: their traffic stops until it is resumed.";

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
            serve(FileStore::new(dir), daemon::Builtin, role, cfg, &args).await
        }
        StoreSpec::Etcd(endpoints) => {
            errln!(
                "error: --store etcd://{}: the etcd store is not built in yet; use --store DIR",
                endpoints.join(",")
            );
            EXIT_INVALID
        }
    }
}

/// Serves rollouts from `store` until SIGTERM or SIGINT, acting on them while `role` says
/// [`Role::Leader`]; returns the exit code.
pub async fn serve<S: Store + 'static, B: Build>(
    store: S,
    build: B,
    role: watch::Receiver<Role>,
    cfg: Config,
    args: &ServeArgs,
) -> u8 {
    // Watched from the start: a signal never finds the default action (death) in place.
    let (stop_tx, mut stop) = watch::channel(None);
    super::signals::stop_on_signal(stop_tx);
    tokio::task::yield_now().await;
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            errln!(
                "error: cannot listen on {}: {e}; choose a free port (port 0 picks one)",
                args.listen
            );
            return EXIT_FAILURE;
        }
    };
    let bound = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            errln!("error: cannot listen on {}: {e}", args.listen);
            return EXIT_FAILURE;
        }
    };
    let d = Daemon::new(store, build, role, cfg);
    d.set_control(bound);
    let (stop_api, api_stopped) = watch::channel(false);
    let api = tokio::spawn(api::serve(d.clone(), listener, async move {
        let mut rx = api_stopped;
        let _ = rx.wait_for(|v| *v).await;
    }));
    errln!("coalmine serve: control API on http://{bound}");
    let lead = tokio::spawn(d.clone().lead());
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
