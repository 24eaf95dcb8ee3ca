//! The state directory, the control API's token, and the operator's verbs (`coalmine
//! status`, `promote`, `pause`, `resume`, `abort`, `retry`), which find a running
//! controller's control API in the rollout store and talk to it.
//!
//! The token: `COALMINE_TOKEN`, else the file given with `--token-file`, else the file
//! `token` in the state directory, generated (32 random bytes, hex, mode 0600) by the first
//! `coalmine run` that needs it. The verbs read it the same way.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;

use super::status::Auth;
use super::{EXIT_FAILURE, EXIT_INVALID, EXIT_OK};
use crate::controller::store::{FileStore, RolloutState, default_state_dir};

/// Where rollouts are kept and how the control API is reached.
#[derive(Debug, Args, Clone)]
pub struct StateArgs {
    /// The state directory (rollout records, owner locks, the generated token). Default:
    /// `$COALMINE_STATE_DIR`, else `$XDG_STATE_HOME/coalmine`, else
    /// `~/.local/state/coalmine`.
    #[arg(long, value_name = "DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// Read the control API's bearer token from this file (else `COALMINE_TOKEN`, else the
    /// state directory's `token` file).
    #[arg(long, value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// The `coalmine serve` daemon the verbs, `apply` and `list` talk to, e.g.
    /// `http://127.0.0.1:9900` (default: `COALMINE_SERVER`). Without it the verbs find a
    /// rollout's controller in the store.
    #[arg(long, value_name = "URL", global = true)]
    pub server: Option<String>,
}

impl StateArgs {
    /// The state directory in force.
    #[must_use]
    pub fn dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(default_state_dir)
    }

    /// The store in the state directory.
    #[must_use]
    pub fn store(&self) -> FileStore {
        FileStore::new(self.dir())
    }

    /// The daemon to talk to: `--server`, else `COALMINE_SERVER` (without a trailing `/`).
    #[must_use]
    pub fn server(&self) -> Option<String> {
        self.server
            .clone()
            .or_else(|| std::env::var("COALMINE_SERVER").ok())
            .map(|s| s.trim().trim_end_matches('/').to_string())
            .filter(|s| !s.is_empty())
    }

    /// Whether a token was configured (environment or file), as opposed to generated.
    #[must_use]
    pub fn token_configured(&self) -> bool {
        std::env::var_os("COALMINE_TOKEN").is_some_and(|v| !v.is_empty())
            || self.token_file.is_some()
    }

    /// The token and its name, reading or (when `generate`) creating the state directory's
    /// token file.
    pub(crate) fn auth(&self, generate: bool) -> Result<Auth, String> {
        if let Some(t) = std::env::var_os("COALMINE_TOKEN").filter(|v| !v.is_empty()) {
            let token = t.into_string().map_err(|_| "COALMINE_TOKEN is not UTF-8")?;
            crate::redact::register(&token);
            return Ok(Auth {
                token: token.trim().as_bytes().to_vec(),
                actor: std::env::var("COALMINE_TOKEN_NAME").unwrap_or_else(|_| "token".into()),
            });
        }
        if let Some(f) = &self.token_file {
            let token = read_token(f)?;
            let actor = f
                .file_stem()
                .map_or_else(|| "token".into(), |s| s.to_string_lossy().into_owned());
            return Ok(Auth { token, actor });
        }
        let path = self.dir().join("token");
        match read_token(&path) {
            Ok(token) => Ok(Auth {
                token,
                actor: "local".into(),
            }),
            Err(_) if generate => Ok(Auth {
                token: generate_token(&path)?,
                actor: "local".into(),
            }),
            Err(e) => Err(e),
        }
    }
}

fn read_token(path: &Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("token file {} is empty", path.display()));
    }
    crate::redact::register(t);
    Ok(t.as_bytes().to_vec())
}

/// Writes a new random token to `path`, readable by its owner only.
fn generate_token(path: &Path) -> Result<Vec<u8>, String> {
    use std::fmt::Write as _;
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| "no random source for the control token".to_string())?;
    let mut hex = String::new();
    for b in bytes {
        let _ = write!(hex, "{b:02x}");
    }
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    match o.open(path) {
        Ok(mut f) => {
            f.write_all(hex.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| format!("writing token file {}: {e}", path.display()))?;
            crate::redact::register(&hex);
            Ok(hex.into_bytes())
        }
        // Another run generated it at the same moment: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_token(path),
        Err(e) => Err(format!("creating token file {}: {e}", path.display())),
    }
}

/// Arguments naming one rollout.
#[derive(Debug, Args)]
pub struct RolloutArg {
    /// The rollout (the policy's `name`).
    pub rollout: String,
    /// Talk to this control API instead of the one recorded in the store.
    #[arg(long, value_name = "ADDR")]
    pub control_addr: Option<SocketAddr>,
}

/// `coalmine status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One rollout (default: every rollout in the store).
    pub rollout: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Ask this control API instead of the one recorded in the store.
    #[arg(long, value_name = "ADDR")]
    pub control_addr: Option<SocketAddr>,
}

/// `coalmine promote`.
#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// Which rollout.
    #[command(flatten)]
    pub target: RolloutArg,
    /// Promote to 100 % now, skipping the remaining steps and their analysis; after the
    /// switch to 100 % it ends the post-promotion window (the promotion stands) or, in
    /// blue-green's keep_blue, retires blue now.
    #[arg(long)]
    pub full: bool,
    /// The step to release (default: the step the rollout is at now, as `status` shows).
    #[arg(long, value_name = "N")]
    pub step: Option<usize>,
    /// Why (recorded).
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub reason: String,
}

/// `coalmine abort`, `pause`, `resume`.
#[derive(Debug, Args)]
pub struct LeverArgs {
    /// Which rollout.
    #[command(flatten)]
    pub target: RolloutArg,
    /// Why (recorded).
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub reason: String,
}

/// The control API's client. reqwest is built without a TLS provider of its own (rustls on
/// ring, installed here): `Client::default()` would panic, so a failure is an error.
fn client() -> Result<reqwest::Client, String> {
    crate::traffic::install_tls_provider();
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .no_proxy()
        .build()
        .map_err(|e| format!("cannot build the control API's HTTP client: {e}"))
}

/// The stored record, or an exit code after a message.
fn stored(state: &StateArgs, rollout: &str) -> Result<RolloutState, u8> {
    match state.store().load_blocking(rollout) {
        Ok(Some(s)) => Ok(s),
        Ok(None) => {
            errln!(
                "error: no rollout `{rollout}` in {} (started with another --state-dir?)",
                state.dir().display()
            );
            Err(EXIT_INVALID)
        }
        Err(e) => {
            errln!("error: {e}");
            Err(EXIT_FAILURE)
        }
    }
}

/// The base URL of the controller running rollout `t`: `--control-addr`, else the daemon
/// (`--server`), else the one its record names.
fn control_url(state: &StateArgs, t: &RolloutArg) -> Result<String, u8> {
    if let Some(a) = t.control_addr {
        return Ok(format!("http://{a}"));
    }
    if let Some(s) = state.server() {
        return Ok(s);
    }
    let s = stored(state, &t.rollout)?;
    match s.control {
        Some(c) if !s.finished() => Ok(format!("http://{}", c.addr)),
        _ => {
            errln!(
                "error: rollout `{}` has no running controller (it is {}{})",
                t.rollout,
                s.phase.name(),
                if s.finished() {
                    ""
                } else {
                    "; start it again with `coalmine run POLICY`"
                }
            );
            Err(EXIT_FAILURE)
        }
    }
}

/// GETs `url` as JSON.
pub(crate) async fn get_json(url: &str) -> Result<serde_json::Value, String> {
    let r = client()?
        .get(url)
        .send()
        .await
        .map_err(|e| format!("control API {url}: {e}"))?;
    let status = r.status();
    let v: serde_json::Value = r
        .json()
        .await
        .map_err(|e| format!("control API {url}: {e}"))?;
    if status.is_success() {
        Ok(v)
    } else {
        Err(format!(
            "control API {url}: {status}: {}",
            v["error"].as_str().unwrap_or_default()
        ))
    }
}

/// A running rollout's live state, from the controller at `base`.
async fn get_status(base: &str, rollout: &str) -> Result<serde_json::Value, String> {
    get_json(&format!("{base}/rollouts/{rollout}/status")).await
}

/// POSTs `body` to `url` with the token: the answer's status and text, or an exit code
/// after a message.
pub(crate) async fn send(
    state: &StateArgs,
    url: &str,
    body: &serde_json::Value,
) -> Result<(u16, String), u8> {
    let auth = state.auth(false).map_err(|e| {
        errln!("error: {e}");
        EXIT_INVALID
    })?;
    let token = String::from_utf8_lossy(&auth.token).into_owned();
    let client = client().map_err(|e| {
        errln!("error: {e}");
        EXIT_FAILURE
    })?;
    match client.post(url).bearer_auth(token).json(body).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            Ok((status, r.text().await.unwrap_or_default()))
        }
        Err(e) => {
            errln!("error: control API {url}: {e}");
            Err(EXIT_FAILURE)
        }
    }
}

/// Sends one lever; prints the answer; returns the exit code.
async fn post(
    state: &StateArgs,
    base: &str,
    rollout: &str,
    path: &str,
    body: serde_json::Value,
) -> u8 {
    let url = format!("{base}/rollouts/{rollout}{path}");
    match send(state, &url, &body).await {
        Ok((status, text)) if (200..300).contains(&status) => {
            outln!("{text}");
            EXIT_OK
        }
        Ok((status, text)) => {
            errln!("error: control API {url}: {status}: {text}");
            if matches!(status, 400 | 401 | 404 | 409) {
                EXIT_INVALID
            } else {
                EXIT_FAILURE
            }
        }
        Err(code) => code,
    }
}

/// Every rollout's view (`status`, `list`): from the daemon (`--server`), else from the
/// store with each running controller's live state. `Err`: the exit code, after a message.
pub(crate) async fn views(
    state: &StateArgs,
    rollout: Option<&str>,
    control_addr: Option<SocketAddr>,
) -> Result<Vec<serde_json::Value>, u8> {
    if let (Some(server), None) = (state.server(), control_addr) {
        let url = match rollout {
            Some(r) => format!("{server}/rollouts/{r}"),
            None => format!("{server}/rollouts"),
        };
        return match get_json(&url).await {
            Ok(serde_json::Value::Array(v)) => Ok(v),
            Ok(v) => Ok(vec![v]),
            Err(e) => {
                errln!("error: {e}");
                Err(if e.contains("404") {
                    EXIT_INVALID
                } else {
                    EXIT_FAILURE
                })
            }
        };
    }
    let records = match rollout {
        Some(r) => match stored(state, r) {
            Ok(s) => vec![s],
            Err(code) => {
                if let (Some(addr), EXIT_INVALID) = (control_addr, code) {
                    return match get_status(&format!("http://{addr}"), r).await {
                        Ok(v) => Ok(vec![v]),
                        Err(e) => {
                            errln!("error: {e}");
                            Err(EXIT_FAILURE)
                        }
                    };
                }
                return Err(code);
            }
        },
        None => match state.store().list_blocking() {
            Ok(v) => v,
            Err(e) => {
                errln!("error: {e}");
                return Err(EXIT_FAILURE);
            }
        },
    };
    let mut out = Vec::new();
    for s in &records {
        let addr =
            control_addr.or_else(|| s.control.as_ref().filter(|_| !s.finished()).map(|c| c.addr));
        let live = match addr {
            Some(a) => get_status(&format!("http://{a}"), &s.rollout).await.ok(),
            None => None,
        };
        out.push(view(s, live));
    }
    Ok(out)
}

/// Runs `coalmine status`.
pub(crate) async fn status(state: &StateArgs, args: &StatusArgs) -> u8 {
    let out = match views(state, args.rollout.as_deref(), args.control_addr).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    if args.json {
        let v = if args.rollout.is_some() {
            out.into_iter().next().unwrap_or_default()
        } else {
            serde_json::Value::Array(out)
        };
        outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else if out.is_empty() {
        match state.server() {
            Some(s) => outln!("no rollouts in {s}"),
            None => outln!("no rollouts in {}", state.dir().display()),
        }
    } else {
        for v in &out {
            outln!("{}", line(v));
        }
    }
    EXIT_OK
}

/// One rollout as `status` shows it: the stored record, with the live controller's view
/// when one answers.
pub(crate) fn view(s: &RolloutState, live: Option<serde_json::Value>) -> serde_json::Value {
    let outcome = match &s.phase {
        crate::controller::Phase::RolledBack { reason }
        | crate::controller::Phase::NotStarted { reason } => Some(reason.to_string()),
        crate::controller::Phase::Failed { reason } => Some(reason.clone()),
        _ => None,
    };
    let mut v = serde_json::json!({
        "rollout": s.rollout,
        "rollout_id": s.rollout_id,
        "phase": live.as_ref().and_then(|l| l["phase"].as_str().map(str::to_string)).unwrap_or_else(|| s.phase.name().to_string()),
        "step": live.as_ref().map_or_else(|| serde_json::json!(s.step()), |l| l["step"].clone()),
        "steps": s.steps,
        "weight": live.as_ref().map_or_else(|| serde_json::json!(s.weight), |l| l["weight"].clone()),
        "finished": s.finished(),
        "outcome": s.finished().then(|| s.phase.name()),
        "running": live.is_some(),
        "control": s.control.as_ref().filter(|_| !s.finished()).map(|c| c.addr.to_string()),
        "ticks": s.ticks,
        "policy": s.policy.path,
        "policy_sha256": s.policy.sha256,
        "decisions": s.decisions,
        "updated": crate::controller::record::rfc3339(s.saved_at),
        "version": s.version,
    });
    if let Some(o) = outcome {
        v["reason"] = serde_json::json!(o);
    }
    if let Some(l) = live {
        v["last_decision"] = l["last_decision"].clone();
        v["metrics"] = l["metrics"].clone();
    }
    v
}

fn line(v: &serde_json::Value) -> String {
    let step = v["step"]
        .as_u64()
        .map_or_else(String::new, |s| format!(" step {s}/{}", v["steps"]));
    let reason = v["reason"]
        .as_str()
        .map_or_else(String::new, |r| format!(": {r}"));
    let running = if v["running"].as_bool() == Some(true) {
        format!(" (controller on {})", v["control"].as_str().unwrap_or("?"))
    } else if v["finished"].as_bool() == Some(true) {
        String::new()
    } else {
        " (no controller running)".to_string()
    };
    format!(
        "{}: {}{step} weight {}%{running}{reason}",
        v["rollout"].as_str().unwrap_or("?"),
        v["phase"].as_str().unwrap_or("?"),
        v["weight"],
    )
}

/// Runs `coalmine promote`.
pub(crate) async fn promote(state: &StateArgs, args: &PromoteArgs) -> u8 {
    let base = match control_url(state, &args.target) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let name = &args.target.rollout;
    let step = match args.step {
        Some(s) => Some(s),
        None => match get_status(&base, name).await {
            Ok(v) => match v["step"].as_u64() {
                Some(s) => Some(s as usize),
                // After the switch to 100 %: `--full` ends the window or keep_blue.
                None if args.full
                    && matches!(v["phase"].as_str(), Some("watching" | "keeping-blue")) =>
                {
                    None
                }
                None => {
                    errln!(
                        "error: rollout `{}` is not at a step (phase {})",
                        args.target.rollout,
                        v["phase"]
                    );
                    return EXIT_INVALID;
                }
            },
            Err(e) => {
                errln!("error: {e}");
                return EXIT_FAILURE;
            }
        },
    };
    let body = serde_json::json!({ "step": step, "full": args.full, "reason": args.reason });
    post(state, &base, name, "/promote", body).await
}

/// Runs `coalmine abort`, `pause` or `resume` (`path` is the endpoint).
pub(crate) async fn lever(state: &StateArgs, args: &LeverArgs, path: &str) -> u8 {
    let base = match control_url(state, &args.target) {
        Ok(a) => a,
        Err(code) => return code,
    };
    post(
        state,
        &base,
        &args.target.rollout,
        path,
        serde_json::json!({ "reason": args.reason }),
    )
    .await
}
