//! The one place that keeps credentials out of everything coalmine prints or records:
//! stderr, logs, decision records, webhook bodies and `/status`.
//!
//! Three mechanisms, used together by [`text`]:
//! - URLs are redacted by shape: the userinfo of `scheme://user:password@host` becomes
//!   `***@`, and the values of query parameters whose names carry credentials (`token`,
//!   `key`, `secret`, `password`, `signature`, `auth`, …) become `***`;
//! - secrets known to the process are replaced wherever they appear: tokens read from
//!   `token_env`/`token_file` ([`register`] when read), credentials found in the policy's
//!   URLs, and the path and query of the `[notify]` webhook (which *is* the secret for
//!   Slack-style webhooks; [`register_policy`]);
//! - the names of the variables that hold tokens are recorded ([`secret_env_names`]) so
//!   programs coalmine starts never inherit them.
//!
//! The registry is process-wide and only grows; secrets shorter than [`MIN_SECRET_LEN`] are
//! not registered (replacing every `a` would make messages unreadable) but are still
//! removed from URLs by shape.

use std::borrow::Cow;
use std::sync::{PoisonError, RwLock};

use crate::policy::{Policy, Secret, SourceConfig, TrafficConfig};

/// What replaces a secret.
pub const MASK: &str = "***";

/// Shortest secret replaced by value.
pub const MIN_SECRET_LEN: usize = 4;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());
static ENV_NAMES: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Query parameter names (lowercase substrings) whose values are credentials.
const SECRET_PARAMS: &[&str] = &[
    "token",
    "key",
    "secret",
    "password",
    "passwd",
    "pwd",
    "auth",
    "signature",
    "sig",
    "credential",
    "session",
];

/// Remembers `secret` so [`text`] replaces it wherever it appears.
pub fn register(secret: &str) {
    let s = secret.trim();
    if s.len() < MIN_SECRET_LEN {
        return;
    }
    let mut all = SECRETS.write().unwrap_or_else(PoisonError::into_inner);
    let mut add = |v: String| {
        if v.len() >= MIN_SECRET_LEN && !all.contains(&v) {
            all.push(v);
        }
    };
    add(s.to_string());
    // How it appears in URLs and in JSON.
    add(percent_decode(s));
    if let Ok(j) = serde_json::to_string(s) {
        add(j.trim_matches('"').to_string());
    }
    // Longest first, so a secret containing another is replaced whole.
    all.sort_by_key(|v| std::cmp::Reverse(v.len()));
}

/// Remembers that the environment variable `name` holds a credential.
pub fn register_env_name(name: &str) {
    let mut all = ENV_NAMES.write().unwrap_or_else(PoisonError::into_inner);
    if !all.iter().any(|n| n == name) {
        all.push(name.to_string());
    }
}

/// The environment variables known to hold credentials.
#[must_use]
pub fn secret_env_names() -> Vec<String> {
    ENV_NAMES
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// Whether `value` is (or contains) a registered secret.
#[must_use]
pub fn holds_secret(value: &str) -> bool {
    SECRETS
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .any(|s| value.contains(s.as_str()))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| char::from(c).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Standard base64 (RFC 4648, padded) of `s`: how basic-auth credentials travel.
fn base64(s: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(s.len().div_ceil(3) * 4);
    for chunk in s.as_bytes().chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, c)| n | (u32::from(*c) << (16 - 8 * i)));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63])
            } else {
                '='
            });
        }
    }
    out
}

/// The parts of a URL: `(scheme://, userinfo, host and port, rest)`.
fn split_url(u: &str) -> Option<(&str, Option<&str>, &str, &str)> {
    let i = u.find("://")?;
    let (scheme, after) = u.split_at(i + 3);
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    match authority.rfind('@') {
        Some(at) => Some((scheme, Some(&authority[..at]), &authority[at + 1..], rest)),
        None => Some((scheme, None, authority, rest)),
    }
}

fn secret_param(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    SECRET_PARAMS.iter().any(|p| n.contains(p))
}

/// `u` with its userinfo and credential-carrying query values masked.
#[must_use]
pub fn url(u: &str) -> String {
    let Some((scheme, userinfo, host, rest)) = split_url(u) else {
        return u.to_string();
    };
    let mut out = String::with_capacity(u.len());
    out.push_str(scheme);
    if userinfo.is_some() {
        out.push_str(MASK);
        out.push('@');
    }
    out.push_str(host);
    match rest.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = query
                .split_once('#')
                .map_or((query, None), |(q, f)| (q, Some(f)));
            out.push_str(path);
            out.push('?');
            let params: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if secret_param(k) => format!("{k}={MASK}"),
                    _ => kv.to_string(),
                })
                .collect();
            out.push_str(&params.join("&"));
            if let Some(f) = fragment {
                out.push('#');
                out.push_str(f);
            }
        }
        None => out.push_str(rest),
    }
    out
}

/// Registers the credentials a URL carries (userinfo, credential query values); with
/// `whole_path`, its path and query too (a webhook URL is itself the secret).
pub fn register_url(u: &str, whole_path: bool) {
    let Some((_, userinfo, _, rest)) = split_url(u) else {
        return;
    };
    if let Some(info) = userinfo {
        register(info);
        let (user, password) = info.split_once(':').unwrap_or((info, ""));
        register(user);
        register(password);
        // As it travels in an `Authorization: Basic` header, which a server may echo.
        let (user, password) = (percent_decode(user), percent_decode(password));
        register(&base64(&format!("{user}:{password}")));
    }
    let path_query = rest.split('#').next().unwrap_or("");
    if whole_path {
        // The whole path and query, and each part that looks like a key (long, not a plain
        // lowercase word such as `services` or `webhooks`).
        register(path_query.trim_start_matches('/'));
        for part in path_query.split(['/', '?', '&', '=']) {
            if part.len() >= 8 && !part.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
                register(part);
            }
        }
    }
    if let Some((_, query)) = path_query.split_once('?') {
        for kv in query.split('&') {
            if let Some((k, v)) = kv.split_once('=')
                && secret_param(k)
            {
                register(v);
            }
        }
    }
}

/// Registers every credential the policy shows: URLs' userinfo and credential query values,
/// the webhook's path and query, and the names of the token variables.
pub fn register_policy(p: &Policy) {
    let token = |s: &Option<Secret>| {
        if let Some(Secret::Env(name)) = s {
            register_env_name(name);
        }
    };
    if let SourceConfig::Prometheus(c) = &p.source {
        register_url(&c.url, false);
        token(&c.token);
        for (name, value) in &c.headers {
            if name.eq_ignore_ascii_case("authorization") || secret_param(name) {
                register(value);
                if let Some((_, v)) = value.split_once(' ') {
                    register(v);
                }
            }
        }
    }
    if let TrafficConfig::Http(h) = &p.traffic {
        register_url(h.url.as_str(), false);
        if let Some(r) = &h.read {
            register_url(&r.url, false);
        }
        token(&h.token);
    }
    for h in &p.hooks {
        if let crate::policy::hooks::HookAction::Http(u) = &h.action {
            register_url(u, false);
        }
    }
    if let Some(n) = &p.notify {
        register_url(&n.webhook, true);
    }
    let plan = p.rollout.plan.iter().flat_map(|s| &s.gates);
    for g in p.rollout.gates.iter().chain(plan) {
        if let crate::policy::gates::GateAction::Webhook { url, secret } = &g.action {
            register_url(url, false);
            token(secret);
        }
    }
}

/// `s` with every URL redacted ([`url`]) and every registered secret masked.
#[must_use]
pub fn text(s: &str) -> Cow<'_, str> {
    let mut out: Cow<'_, str> = Cow::Borrowed(s);
    if s.contains("://") {
        let mut buf = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(i) = rest.find("://") {
            // The scheme: letters before `://`.
            let start = rest[..i]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || "+-.".contains(c)))
                .map_or(0, |j| j + 1);
            let mut end = rest[i..]
                .find(|c: char| c.is_whitespace() || "\"'<>`()[]{},;|\\".contains(c))
                .map_or(rest.len(), |j| i + j);
            // Punctuation that ends a sentence is not part of the URL.
            while end > i + 3 && rest[..end].ends_with(['.', ':', '!', '?']) {
                end -= 1;
            }
            buf.push_str(&rest[..start]);
            buf.push_str(&url(&rest[start..end]));
            rest = &rest[end..];
        }
        buf.push_str(rest);
        out = Cow::Owned(buf);
    }
    let secrets = SECRETS.read().unwrap_or_else(PoisonError::into_inner);
    for secret in secrets.iter() {
        if out.contains(secret.as_str()) {
            out = Cow::Owned(out.replace(secret.as_str(), MASK));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials_by_shape() {
        assert_eq!(
            url("http://admin:hunter2@prom.internal:9090/api?x=1&access_token=abc&sig=zz#f"),
            "http://***@prom.internal:9090/api?x=1&access_token=***&sig=***#f"
        );
        assert_eq!(url("https://h/x"), "https://h/x");
        assert_eq!(url("not a url"), "not a url");
        assert_eq!(
            text("GET http://u:p@h:1/a?key=k: refused (see https://x/)"),
            "GET http://***@h:1/a?key=***: refused (see https://x/)"
        );
    }

    #[test]
    fn registered_secrets_are_masked_everywhere() {
        register("s3cr3t-t0ken-for-test");
        register("ab");
        assert_eq!(
            text("Bearer s3cr3t-t0ken-for-test rejected, ab"),
            "Bearer *** rejected, ab"
        );
        register_url(
            "https://hooks.example.com/services/T0/B0/XyZsecretpath?k=1",
            true,
        );
        assert_eq!(
            text("POST to hooks.example.com/services/T0/B0/XyZsecretpath failed"),
            "POST to hooks.example.com/services/T0/B0/*** failed"
        );
        register_url("http://user%40corp:p%3Ass@h/", false);
        assert!(!text("login p:ss").contains("p:ss"));
        assert_eq!(base64("user@corp:p:ss"), "dXNlckBjb3JwOnA6c3M=");
        assert_eq!(base64("ab"), "YWI=");
        assert!(!text("Basic dXNlckBjb3JwOnA6c3M=").contains("dXNlckBjb3JwOnA6c3M="));
        assert!(holds_secret("x s3cr3t-t0ken-for-test y"));
    }
}
