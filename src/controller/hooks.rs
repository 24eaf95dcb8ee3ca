//! Running `[[hook]]`s and sending `[notify]` webhooks.
//!
//! Hooks get the rollout's state in environment variables: `COALMINE_ROLLOUT`,
//! `COALMINE_HOOK_WHEN`, `COALMINE_OUTCOME` (`pending`, `promoted`, `rolled-back`),
//! `COALMINE_REASON` and `COALMINE_WEIGHT` (percent in force), and otherwise a cleared
//! environment (`traffic::exec::child_env`). What a hook prints is recorded capped (the
//! last 4 KiB), with control characters escaped and secrets masked; URLs in messages are
//! redacted (`crate::redact`).

use std::time::Duration;

use serde_json::json;

use super::record::Record;
use crate::policy::hooks::{Hook, HookAction, Notify, NotifyFormat};
use crate::redact;
use crate::traffic::exec::{run_with_env, shown_output};
use crate::traffic::install_tls_provider;

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
        HookAction::Command(argv) => run_with_env("hook", argv, hook.timeout, &[], env, &hook.env)
            .await
            .map(|f| shown_output(f.stdout.as_bytes(), 0))
            .map_err(|e| redact::text(&e.to_string()).into_owned()),
        HookAction::Http(url) => {
            install_tls_provider();
            let shown = redact::url(url);
            let client = reqwest::Client::builder()
                .timeout(hook.timeout)
                .build()
                .map_err(|e| format!("http client: {}", redact::text(&e.to_string())))?;
            match client.get(url).send().await {
                Ok(r) if r.status().is_success() => Ok(format!("GET {shown}: {}", r.status())),
                Ok(r) => Err(format!("GET {shown}: {}", r.status())),
                Err(e) if e.is_timeout() => Err(format!(
                    "GET {shown}: no answer within {}",
                    humantime::format_duration(hook.timeout)
                )),
                Err(e) => Err(format!(
                    "GET {shown}: {}",
                    redact::text(&crate::traffic::error_chain(&e))
                )),
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
        // The webhook's path is its secret (register_policy knows it): every message and
        // every body goes through the redaction.
        let shown = redact::text(&url).into_owned();
        let body = redact::text(&body.to_string()).into_owned();
        self.pending.push(tokio::spawn(async move {
            let req = client
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
            match req.send().await {
                Ok(resp) if resp.status().is_success() => {}
                Ok(resp) => {
                    tracing::warn!(status = %resp.status(), url = %shown, "notification rejected");
                }
                Err(e) => {
                    let error = redact::text(&crate::traffic::error_chain(&e)).into_owned();
                    tracing::warn!(%error, url = %shown, "notification not delivered");
                }
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
