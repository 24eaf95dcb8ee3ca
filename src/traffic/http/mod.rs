//! `http`: a templated request to a feature-flag service that takes a rollout percentage.
//!
//! The URL, headers and JSON body are templates with `{{weight}}` (basis points),
//! `{{percent}}` and `{{fraction}}`; the weight is first rounded to the service's
//! `resolution`. A token (from an environment variable or a file, read at every call so a
//! rotated token is picked up) goes in `token_header` after `token_prefix`. Statuses in
//! `success_statuses` (default: any 2xx) are success. Unreachable, timeouts, 408, 429 and
//! 5xx are transient; 401/403 (bad credentials), other 4xx and unexpected statuses are
//! permanent. Read-back GETs `read_url` and takes the percentage at the JSON pointer
//! `read_pointer`; without it, read-back returns the last weight this process set.

use reqwest::{Method, StatusCode};

use super::exec::parse_percent;
use super::{
    LastApplied, TrafficError, TrafficProvider, error_chain, excerpt, install_tls_provider,
    quantize, weight_vars,
};
use crate::model::Weight;
use crate::policy::{HttpConfig, Secret};

const NAME: &str = "http";

/// The `http` provider.
#[derive(Debug)]
pub struct HttpProvider {
    cfg: HttpConfig,
    client: reqwest::Client,
    last: LastApplied,
}

fn rejected(message: String) -> TrafficError {
    TrafficError::Rejected {
        provider: NAME,
        message,
    }
}

/// Reads a secret from where the policy says.
///
/// # Errors
/// A message when the variable is unset or the file unreadable or empty.
pub fn read_secret(s: &Secret) -> Result<String, String> {
    let value = match s {
        Secret::Env(var) => std::env::var(var)
            .map_err(|_| format!("environment variable `{var}` (token_env) is not set"))?,
        Secret::File(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read token_file {}: {e}", path.display()))?,
    };
    let value = value.trim().to_string();
    if value.is_empty() {
        return Err("the token is empty".to_string());
    }
    // From now on no message, record or log line may show it.
    crate::redact::register(&value);
    if let Secret::Env(var) = s {
        crate::redact::register_env_name(var);
    }
    Ok(value)
}

impl HttpProvider {
    /// A provider for `cfg` (connects only when called).
    ///
    /// # Errors
    /// [`TrafficError::Rejected`] when the HTTP client cannot be built.
    pub fn new(cfg: &HttpConfig) -> Result<Self, TrafficError> {
        install_tls_provider();
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .build()
            .map_err(|e| rejected(format!("cannot build the HTTP client: {e}")))?;
        Ok(HttpProvider {
            cfg: cfg.clone(),
            client,
            last: LastApplied::default(),
        })
    }

    fn request(
        &self,
        method: Method,
        url: &str,
        weight: Weight,
    ) -> Result<reqwest::RequestBuilder, TrafficError> {
        let vars = weight_vars(weight);
        let mut req = self.client.request(method, url);
        for (name, value) in &self.cfg.headers {
            let v = value
                .render(&vars)
                .map_err(|e| rejected(format!("header {name}: {e}")))?;
            req = req.header(name.as_str(), v);
        }
        if let Some(secret) = &self.cfg.token {
            let token = read_secret(secret).map_err(rejected)?;
            req = req.header(
                self.cfg.token_header.as_str(),
                format!("{}{token}", self.cfg.token_prefix),
            );
        }
        Ok(req)
    }

    /// Sends `req` and classifies the outcome; returns the body of a successful answer.
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
        success: impl Fn(StatusCode) -> bool,
    ) -> Result<String, TrafficError> {
        let resp = req.send().await.map_err(|e| self.transport(&e, what))?;
        let status = resp.status();
        let body = resp.text().await.map_err(|e| self.transport(&e, what))?;
        if success(status) {
            return Ok(body);
        }
        let said = if body.trim().is_empty() {
            String::new()
        } else {
            format!(": {}", excerpt(&crate::redact::text(&body), 500))
        };
        let message = match status.as_u16() {
            401 | 403 => format!("{what}: credentials refused ({status}){said}"),
            _ => format!("{what}: answered {status}{said}"),
        };
        if status.is_server_error() || matches!(status.as_u16(), 408 | 429) {
            Err(TrafficError::Unavailable {
                provider: NAME,
                message,
            })
        } else {
            Err(rejected(message))
        }
    }

    fn transport(&self, e: &reqwest::Error, what: &str) -> TrafficError {
        if e.is_timeout() {
            return TrafficError::Timeout {
                provider: NAME,
                after: self.cfg.timeout,
            };
        }
        if e.is_builder() {
            return rejected(format!(
                "{what}: bad request: {}",
                crate::redact::text(&e.to_string())
            ));
        }
        TrafficError::Unavailable {
            provider: NAME,
            message: format!("{what}: {}", crate::redact::text(&error_chain(e))),
        }
    }
}

impl TrafficProvider for HttpProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn current(&self) -> Result<Weight, TrafficError> {
        let Some(read) = &self.cfg.read else {
            return self.last.get(NAME, "read_url");
        };
        let what = format!("GET {}", crate::redact::url(&read.url));
        let req = self.request(Method::GET, &read.url, Weight::ZERO)?;
        let body = self.send(req, &what, |s| s.is_success()).await?;
        let doc: serde_json::Value = serde_json::from_str(&body).map_err(|e| {
            rejected(format!(
                "{what}: answer is not JSON ({e}): {}",
                excerpt(&crate::redact::text(&body), 200)
            ))
        })?;
        let value = doc.pointer(&read.pointer).ok_or_else(|| {
            rejected(format!(
                "{what}: no `{}` in the answer: {}",
                read.pointer,
                excerpt(&crate::redact::text(&body), 200)
            ))
        })?;
        let number = match value {
            serde_json::Value::Number(n) => parse_percent(&n.to_string()),
            serde_json::Value::String(s) => parse_percent(s),
            _ => None,
        };
        number.ok_or_else(|| {
            rejected(format!(
                "{what}: `{}` is {value}, expected a percentage in 0..=100",
                read.pointer
            ))
        })
    }

    async fn set_weight(&self, weight: Weight) -> Result<(), TrafficError> {
        let weight = quantize(weight, self.cfg.resolution);
        let vars = weight_vars(weight);
        let url = self
            .cfg
            .url
            .render(&vars)
            .map_err(|e| rejected(format!("url: {e}")))?;
        let method = Method::from_bytes(self.cfg.method.as_bytes())
            .map_err(|e| rejected(format!("method {}: {e}", self.cfg.method)))?;
        let what = format!("{} {}", self.cfg.method, crate::redact::url(&url));
        let mut req = self.request(method, &url, weight)?;
        if let Some(body) = &self.cfg.body {
            let text = body
                .render(&vars)
                .map_err(|e| rejected(format!("body: {e}")))?;
            if !self
                .cfg
                .headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            {
                req = req.header("content-type", "application/json");
            }
            req = req.body(text);
        }
        let ok = &self.cfg.success_statuses;
        self.send(req, &what, |s| {
            if ok.is_empty() {
                s.is_success()
            } else {
                ok.contains(&s.as_u16())
            }
        })
        .await?;
        self.last.set(weight);
        Ok(())
    }

    /// Reads the weight back when there is a read-back; otherwise checks the token.
    async fn preflight(&self) -> Result<(), TrafficError> {
        if self.cfg.read.is_some() {
            return self.current().await.map(|_| ());
        }
        if let Some(s) = &self.cfg.token {
            read_secret(s).map_err(rejected)?;
        }
        Ok(())
    }

    fn resolution(&self) -> u16 {
        self.cfg.resolution.bp()
    }
}

#[cfg(test)]
mod tests;
