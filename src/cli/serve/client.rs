//! The daemon's clients: `coalmine apply POLICY` (validated here first, then sent),
//! `coalmine list`, and `coalmine retry` against a daemon.

use std::path::PathBuf;

use clap::Args;

use crate::cli::control::{StateArgs, send, views};
use crate::cli::run::load_hashed;
use crate::cli::{EXIT_FAILURE, EXIT_INVALID, EXIT_OK};

/// Arguments of `coalmine apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The policy file (TOML). Paths inside it are taken on the daemon's machine, relative
    /// to the daemon's working directory.
    pub policy: PathBuf,
}

/// Arguments of `coalmine list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON (one object per rollout).
    #[arg(long)]
    pub json: bool,
}

fn need_server(state: &StateArgs, verb: &str) -> Result<String, u8> {
    state.server().ok_or_else(|| {
        errln!(
            "error: `coalmine {verb}` talks to a `coalmine serve` daemon: give --server URL \
             or set COALMINE_SERVER (e.g. http://127.0.0.1:9900)"
        );
        EXIT_INVALID
    })
}

/// The `error` of a JSON answer, else the text itself.
fn said(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| text.to_string())
}

/// Prints the daemon's answer to a start (`apply`, `retry`); returns the exit code.
fn started(status: u16, text: &str, what: &str) -> u8 {
    if (200..300).contains(&status) {
        let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        outln!(
            "rollout `{}` {} (run {})",
            v["rollout"].as_str().unwrap_or("?"),
            v["how"].as_str().unwrap_or("started"),
            v["rollout_id"].as_str().unwrap_or("?")
        );
        return EXIT_OK;
    }
    errln!("{}", said(text));
    errln!("error: the daemon refused {what} ({status})");
    match status {
        400 | 401 | 404 | 409 => EXIT_INVALID,
        _ => EXIT_FAILURE,
    }
}

/// Runs `coalmine apply`: every problem of the policy is printed and nothing is sent
/// (exit 2); else the policy's text goes to the daemon, which starts the rollout.
pub(crate) async fn apply(state: &StateArgs, args: &ApplyArgs) -> u8 {
    let (policy, _) = match load_hashed(&args.policy) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let server = match need_server(state, "apply") {
        Ok(s) => s,
        Err(code) => return code,
    };
    let text = match std::fs::read_to_string(&args.policy) {
        Ok(t) => t,
        Err(e) => {
            errln!(
                "error: cannot read policy file {}: {e}",
                args.policy.display()
            );
            return EXIT_INVALID;
        }
    };
    let path = std::fs::canonicalize(&args.policy).unwrap_or_else(|_| args.policy.clone());
    let body = serde_json::json!({ "policy": text, "path": path.display().to_string() });
    match send(state, &format!("{server}/rollouts"), &body).await {
        Ok((status, text)) => started(status, &text, &format!("rollout `{}`", policy.name)),
        Err(code) => code,
    }
}

/// Runs `coalmine retry` against the daemon.
pub(crate) async fn retry(state: &StateArgs, server: &str, rollout: &str) -> u8 {
    let url = format!("{server}/rollouts/{rollout}/retry");
    match send(state, &url, &serde_json::json!({})).await {
        Ok((status, text)) => started(status, &text, &format!("the retry of `{rollout}`")),
        Err(code) => code,
    }
}

/// One cell of the table: a JSON value as text (`-` for null).
fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => format!("{}", x as i64),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// Runs `coalmine list`: every rollout with its phase, step, weight and outcome (from the
/// daemon with `--server`, else from the store).
pub(crate) async fn list(state: &StateArgs, args: &ListArgs) -> u8 {
    let out = match views(state, None, None).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::Value::Array(out)).unwrap_or_default()
        );
        return EXIT_OK;
    }
    let rows: Vec<[String; 5]> = out
        .iter()
        .map(|v| {
            let step = match v["step"].as_u64() {
                Some(s) => format!("{s}/{}", cell(&v["steps"])),
                None => "-".to_string(),
            };
            let outcome = match (&v["outcome"], v["reason"].as_str()) {
                (serde_json::Value::String(o), Some(r)) => format!("{o}: {r}"),
                (o, _) => cell(o),
            };
            [
                cell(&v["rollout"]),
                cell(&v["phase"]),
                step,
                format!("{}%", cell(&v["weight"])),
                outcome,
            ]
        })
        .collect();
    let head = ["ROLLOUT", "PHASE", "STEP", "WEIGHT", "OUTCOME"];
    let mut widths = head.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let print = |r: [&str; 5]| {
        outln!(
            "{:w0$}  {:w1$}  {:w2$}  {:w3$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        );
    };
    print(head);
    for r in &rows {
        print([&r[0], &r[1], &r[2], &r[3], &r[4]]);
    }
    EXIT_OK
}
