//! Running `[[hook]]`s and sending `[notify]` webhooks.
//!
//! Hooks get the rollout's state in environment variables: `COALMINE_ROLLOUT`,
//! `COALMINE_HOOK_WHEN`, `COALMINE_OUTCOME` (`pending`, `promoted`, `rolled-back`),
//! `COALMINE_REASON` and `COALMINE_WEIGHT` (percent in force).

use std::time::Duration;

use serde_json::json;

use super::record::Record;
use crate::policy::hooks::{Hook, HookAction, Notify, NotifyFormat};
use crate::traffic::exec::run_with_env;
use crate::traffic::{excerpt, install_tls_provider};

/// Runs one hook, retrying after failures as configured; returns what it said, or why it
/// failed.
pub async fn run_hook(hook: &Hook, env: &[(String, String)]) -> Result<String, String> {
    let mut last = String::new();
    for attempt in 0..=hook.retries {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        match once(hook, env).await {
            Ok(said) => return Ok(said),
            Err(e) => last = e,
        }
    }
    Err(if hook.retries > 0 {
        format!("{last} (after {} attempts)", hook.retries + 1)
    } else {
        last
    })
}

async fn once(hook: &Hook, env: &[(String, String)]) -> Result<String, String> {
    match &hook.action {
        HookAction::Command(argv) => run_with_env("hook", argv, hook.timeout, &[], env)
            .await
            .map(|f| excerpt(f.stdout.trim(), 300))
            .map_err(|e| e.to_string()),
        HookAction::Http(url) => {
            install_tls_provider();
            let client = reqwest::Client::builder()
                .timeout(hook.timeout)
                .build()
                .map_err(|e| format!("http client: {e}"))?;
            match client.get(url).send().await {
                Ok(r) if r.status().is_success() => Ok(format!("GET {url}: {}", r.status())),
                Ok(r) => Err(format!("GET {url}: {}", r.status())),
                Err(e) if e.is_timeout() => Err(format!(
                    "GET {url}: no answer within {}",
                    humantime::format_duration(hook.timeout)
                )),
                Err(e) => Err(format!("GET {url}: {e}")),
            }
        }
    }
}

/// Sends records to a webhook, in the background, never holding up the rollout.
#[derive(Debug)]
pub struct Notifier {
    cfg: Notify,
    client: Option<reqwest::Client>,
    pending: Vec<tokio::task::JoinHandle<()>>,
}

impl Notifier {
    /// A notifier for `cfg`.
    #[must_use]
    pub fn new(cfg: Notify) -> Self {
        install_tls_provider();
        let client = reqwest::Client::builder().timeout(cfg.timeout).build().ok();
        Notifier {
            cfg,
            client,
            pending: Vec::new(),
        }
    }

    fn wanted(&self, r: &Record) -> bool {
        let Some(event) = &r.event else { return false };
        self.cfg.events.is_empty() || self.cfg.events.iter().any(|e| e == event)
    }

    /// Queues `r` if its event is selected.
    pub fn send(&mut self, r: &Record) {
        if !self.wanted(r) {
            return;
        }
        let Some(client) = self.client.clone() else {
            return;
        };
        let body = match self.cfg.format {
            NotifyFormat::Record => serde_json::to_value(r).unwrap_or_default(),
            NotifyFormat::Slack => {
                let detail = r
                    .detail
                    .as_ref()
                    .map_or(String::new(), |d| format!(": {d}"));
                json!({"text": format!(
                    "coalmine: rollout `{}` {} (weight {}){detail}",
                    r.rollout,
                    r.event.as_deref().unwrap_or("event"),
                    r.weight
                )})
            }
        };
        let url = self.cfg.webhook.clone();
        self.pending.push(tokio::spawn(async move {
            match client.post(&url).json(&body).send().await {
                Ok(resp) if resp.status().is_success() => {}
                Ok(resp) => tracing::warn!(status = %resp.status(), %url, "notification rejected"),
                Err(e) => tracing::warn!(error = %e, %url, "notification not delivered"),
            }
        }));
    }

    /// Waits (up to the timeout) for notifications still being sent.
    pub async fn flush(&mut self) {
        let limit = self.cfg.timeout + Duration::from_secs(1);
        for t in self.pending.drain(..) {
            let _ = tokio::time::timeout(limit, t).await;
        }
    }
}
