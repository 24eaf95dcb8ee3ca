//! Asking confirmation gates: a signed webhook or a command that must say yes before
//! traffic moves (`[[rollout.gate]]`, `[[rollout.step.gate]]`).
//!
//! A webhook gets a POST with a JSON body describing the rollout and the step, and, when
//! the gate has a signing key (`secret_env`, `secret_file`), the header
//! `X-Coalmine-Signature: sha256=HEX`: the HMAC-SHA256 of the exact body bytes under the key,
//! in lowercase hex, as GitHub and Slack sign theirs, so the receiver can check that the
//! request comes from this controller and was not altered. A 2xx says yes; any other status
//! says no. A webhook that cannot be reached or answers 5xx or 429 is asked again within
//! the same ask, with backoff (0.5 s doubling, at most 5 s), up to `retries` times. A
//! command says yes with exit 0. The key is read at each ask (a rotated file is picked up)
//! and registered with [`crate::redact`], so no message shows it.

use std::fmt::Write as _;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::policy::Secret;
use crate::policy::gates::{Gate, GateAction};
use crate::redact;
use crate::traffic::exec::{run_with_env, shown_output};
use crate::traffic::install_tls_provider;

/// The header carrying a webhook's signature.
pub const SIGNATURE_HEADER: &str = "X-Coalmine-Signature";

/// `sha256=HEX`: the HMAC-SHA256 of `body` under `key`, as sent in [`SIGNATURE_HEADER`].
#[must_use]
pub fn sign(key: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("hmac takes any key length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Checks a signature header against `body` in constant time (for receivers and tests).
#[must_use]
pub fn verify(key: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Some(bytes) = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("hmac takes any key length");
    mac.update(body);
    mac.verify_slice(&bytes).is_ok()
}

fn read_key(secret: &Secret) -> Result<String, String> {
    let (value, origin) = match secret {
        Secret::Env(var) => match std::env::var(var) {
            Ok(v) => (v, format!("environment variable `{var}` (secret_env)")),
            Err(_) => {
                return Err(format!(
                    "secret_env: environment variable `{var}` is not set"
                ));
            }
        },
        Secret::File(path) => match std::fs::read_to_string(path) {
            Ok(v) => (v, format!("file {} (secret_file)", path.display())),
            Err(e) => return Err(format!("secret_file: cannot read {}: {e}", path.display())),
        },
    };
    let key = value.trim().to_string();
    if key.is_empty() {
        return Err(format!("the signing key from {origin} is empty"));
    }
    redact::register(&key);
    if let Secret::Env(var) = secret {
        redact::register_env_name(var);
    }
    Ok(key)
}

/// Asks one gate: `Ok` with what it said when it says yes, `Err` with why not. `body` is
/// the webhook's JSON (and `COALMINE_GATE_BODY` of a command); `env` the command's variables.
pub async fn ask(gate: &Gate, body: &str, env: &[(String, String)]) -> Result<String, String> {
    match &gate.action {
        GateAction::Command(argv) => {
            let mut env = env.to_vec();
            env.push(("COALMINE_GATE_BODY".to_string(), body.to_string()));
            run_with_env("gate", argv, gate.timeout, &[], &env, &gate.env)
                .await
                .map(|f| shown_output(f.stdout.as_bytes(), 0))
                .map_err(|e| redact::text(&e.to_string()).into_owned())
        }
        GateAction::Webhook { url, secret } => {
            let signature = match secret {
                Some(s) => Some(sign(read_key(s)?.as_bytes(), body.as_bytes())),
                None => None,
            };
            webhook(gate, url, body, signature.as_deref()).await
        }
    }
}

async fn webhook(
    gate: &Gate,
    url: &str,
    body: &str,
    signature: Option<&str>,
) -> Result<String, String> {
    install_tls_provider();
    let shown = redact::url(url);
    let client = reqwest::Client::builder()
        .timeout(gate.timeout)
        .build()
        .map_err(|e| format!("http client: {}", redact::text(&e.to_string())))?;
    let mut last = String::new();
    for attempt in 0..=gate.retries {
        if attempt > 0 {
            let backoff = Duration::from_millis(500u64 << (attempt - 1).min(4));
            tokio::time::sleep(backoff.min(Duration::from_secs(5))).await;
        }
        let mut req = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        if let Some(sig) = signature {
            req = req.header(SIGNATURE_HEADER, sig);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => return Ok(format!("POST {shown}: {}", r.status())),
            Ok(r) => {
                let status = r.status();
                let said = r.text().await.unwrap_or_default();
                let said: String = said.chars().take(200).collect();
                let text = format!(
                    "POST {shown}: {status}{}",
                    if said.trim().is_empty() {
                        String::new()
                    } else {
                        format!(": {}", shown_output(said.as_bytes(), 0))
                    }
                );
                // An answer: a no. Only a server in trouble is asked again.
                if !(status.is_server_error() || status.as_u16() == 429) {
                    return Err(text);
                }
                last = text;
            }
            Err(e) if e.is_timeout() => {
                last = format!(
                    "POST {shown}: no answer within {}",
                    humantime::format_duration(gate.timeout)
                );
            }
            Err(e) => {
                last = format!(
                    "POST {shown}: {}",
                    redact::text(&crate::traffic::error_chain(&e))
                );
            }
        }
    }
    Err(if gate.retries > 0 {
        format!("{last} (after {} attempts)", gate.retries + 1)
    } else {
        last
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2 (HMAC-SHA-256).
    #[test]
    fn the_signature_is_rfc_4231_hmac_sha256_and_verifies() {
        let sig = sign(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify(b"Jefe", b"what do ya want for nothing?", &sig));
        assert!(!verify(b"Jefe", b"what do ya want for nothing!", &sig));
        assert!(!verify(b"jefe", b"what do ya want for nothing?", &sig));
        assert!(!verify(b"Jefe", b"x", "sha256=zz"));
        assert!(!verify(b"Jefe", b"x", "md5=00"));
    }
}
