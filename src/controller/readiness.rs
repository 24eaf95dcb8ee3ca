//! The canary's readiness probe: before the first traffic change, `run` asks the canary
//! behind the built-in proxy for `[traffic] readiness_path` and accepts only the configured
//! statuses (default: any 2xx). A canary that does not answer receives no traffic.

use std::time::Duration;

use crate::policy::{ProxyConfig, Readiness};
use crate::traffic::install_tls_provider;

/// `User-Agent` of probe requests, so a backend can tell them from proxied traffic.
pub const PROBE_USER_AGENT: &str = "coalmine-readiness";

/// An HTTP readiness probe of the canary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanaryProbe {
    /// The URL requested.
    pub url: String,
    /// Statuses, timeout and attempts.
    pub readiness: Readiness,
}

impl CanaryProbe {
    /// The probe of the built-in proxy's canary upstream.
    #[must_use]
    pub fn for_proxy(cfg: &ProxyConfig) -> Self {
        CanaryProbe {
            url: format!("http://{}{}", cfg.canary.authority, cfg.readiness.path),
            readiness: cfg.readiness.clone(),
        }
    }

    fn accepts(&self, status: u16) -> bool {
        if self.readiness.statuses.is_empty() {
            (200..300).contains(&status)
        } else {
            self.readiness.statuses.contains(&status)
        }
    }

    fn expected(&self) -> String {
        if self.readiness.statuses.is_empty() {
            "2xx".to_string()
        } else {
            self.readiness
                .statuses
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(" or ")
        }
    }

    /// Probes up to `attempts` times, one second apart.
    ///
    /// # Errors
    /// What every attempt got, when none was accepted.
    pub async fn check(&self) -> Result<String, String> {
        install_tls_provider();
        let client = reqwest::Client::builder()
            .timeout(self.readiness.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(PROBE_USER_AGENT)
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        let attempts = self.readiness.attempts.max(1);
        let mut seen: Vec<String> = Vec::new();
        for attempt in 1..=attempts {
            if attempt > 1 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            match client.get(&self.url).send().await {
                Ok(r) if self.accepts(r.status().as_u16()) => {
                    return Ok(format!(
                        "GET {}: {} (attempt {attempt})",
                        self.url,
                        r.status()
                    ));
                }
                Ok(r) => seen.push(r.status().to_string()),
                Err(e) if e.is_timeout() => seen.push(format!(
                    "no answer within {}",
                    humantime::format_duration(self.readiness.timeout)
                )),
                Err(e) => seen.push(crate::traffic::error_chain(&e)),
            }
        }
        seen.dedup();
        Err(format!(
            "GET {} (expecting {}) {} time(s), 1s apart: {}",
            self.url,
            self.expected(),
            attempts,
            seen.join("; ")
        ))
    }
}
