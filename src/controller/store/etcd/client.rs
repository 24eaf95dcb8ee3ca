//! etcd v3 through its JSON gateway (`/v3/kv/range`, `/v3/kv/txn`, `/v3/lease/*`,
//! `/v3/auth/authenticate`): JSON bodies over HTTP with reqwest, keys and values in base64,
//! 64-bit numbers as strings. Every request tries the endpoint that answered last, then
//! the others in turn (fail-over); an expired auth token is renewed once.
//!
//! Responses are parsed leniently (a missing field is its default, as the gateway omits
//! defaults) and never panic, whatever the bytes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

/// Largest response accepted from etcd (a page of records).
const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// Errors talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered.
    #[error("etcd: no endpoint answered ({endpoints}); last error: {last}")]
    Unreachable {
        /// The endpoints tried.
        endpoints: String,
        /// The last endpoint's error.
        last: String,
    },
    /// etcd answered with an error.
    #[error("etcd {endpoint}: {message} (code {code})")]
    Rejected {
        /// The endpoint.
        endpoint: String,
        /// The gRPC status code.
        code: i64,
        /// etcd's message.
        message: String,
    },
    /// etcd's answer could not be read.
    #[error("etcd {endpoint}: unreadable answer to {path}: {why}")]
    BadResponse {
        /// The endpoint.
        endpoint: String,
        /// The API path.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// The client could not be set up (endpoints, TLS files, credentials).
    #[error("etcd: {0}")]
    Setup(String),
}

impl EtcdError {
    /// Whether trying again later may succeed (etcd unreachable or without a leader).
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            EtcdError::Unreachable { .. } => true,
            EtcdError::Rejected { code, .. } => matches!(code, 4 | 14),
            EtcdError::BadResponse { .. } | EtcdError::Setup(_) => false,
        }
    }
}

/// How to reach etcd.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `HOST:PORT` of each member (tried in turn).
    pub endpoints: Vec<String>,
    /// CA certificates (PEM) to verify the members with; setting it (or a client
    /// certificate) switches to HTTPS.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for etcd's `--client-cert-auth`.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// User name for etcd's authentication.
    pub user: Option<String>,
    /// The user's password (read from the environment or a file, never the command line).
    pub password: Option<String>,
    /// Time limit of one request to one member.
    pub timeout: Duration,
}

impl EtcdConfig {
    /// Parses `etcd://HOST:PORT[,HOST:PORT…]` into a configuration with the default timeout.
    ///
    /// # Errors
    /// [`EtcdError::Setup`] naming what is wrong.
    pub fn from_url(url: &str) -> Result<Self, EtcdError> {
        let rest = url.strip_prefix("etcd://").ok_or_else(|| {
            EtcdError::Setup(format!(
                "store `{url}` is not an etcd URL (etcd://HOST:PORT[,HOST:PORT…])"
            ))
        })?;
        let mut endpoints = Vec::new();
        for ep in rest.trim_end_matches('/').split(',') {
            let ep = ep.trim();
            let ok = ep.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty()
                    && !host.contains(['/', '@', '?', '#', ' '])
                    && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok {
                return Err(EtcdError::Setup(format!(
                    "store `{url}`: endpoint `{ep}` is not HOST:PORT"
                )));
            }
            endpoints.push(ep.to_string());
        }
        Ok(EtcdConfig {
            endpoints,
            timeout: Duration::from_secs(3),
            ..EtcdConfig::default()
        })
    }
}

/// One key-value pair as etcd returns it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kv {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Revision of the key's creation.
    pub create_revision: i64,
    /// Revision of the key's last change.
    pub mod_revision: i64,
    /// The lease the key is attached to (0: none).
    pub lease: i64,
}

/// A 64-bit number as the gateway writes it: a string, or a number.
fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        S(String),
        I(i64),
        U(u64),
    }
    match Option::<N>::deserialize(d)? {
        None => Ok(0),
        Some(N::I(i)) => Ok(i),
        Some(N::U(u)) => i64::try_from(u).map_err(serde::de::Error::custom),
        Some(N::S(s)) => s.parse().map_err(serde::de::Error::custom),
    }
}

fn b64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = Option::<String>::deserialize(d)?.unwrap_or_default();
    base64::engine::general_purpose::STANDARD
        .decode(s.as_bytes())
        .map_err(serde::de::Error::custom)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawKv {
    #[serde(deserialize_with = "b64")]
    key: Vec<u8>,
    #[serde(deserialize_with = "b64")]
    value: Vec<u8>,
    #[serde(deserialize_with = "int")]
    create_revision: i64,
    #[serde(deserialize_with = "int")]
    mod_revision: i64,
    #[serde(deserialize_with = "int")]
    lease: i64,
}

impl From<RawKv> for Kv {
    fn from(r: RawKv) -> Self {
        Kv {
            key: r.key,
            value: r.value,
            create_revision: r.create_revision,
            mod_revision: r.mod_revision,
            lease: r.lease,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Header {
    #[serde(deserialize_with = "int")]
    revision: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RangeResponse {
    header: Header,
    kvs: Vec<RawKv>,
    more: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TxnResponse {
    header: Header,
    succeeded: bool,
    responses: Vec<OpResponse>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct OpResponse {
    response_range: Option<RangeResponse>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LeaseResponse {
    #[serde(rename = "ID", deserialize_with = "int")]
    id: i64,
    #[serde(rename = "TTL", deserialize_with = "int")]
    ttl: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Streamed<T> {
    result: Option<T>,
    error: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AuthResponse {
    token: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ErrorBody {
    #[serde(deserialize_with = "int")]
    code: i64,
    message: String,
    error: String,
}

/// Parses the first JSON value of `bytes` (a streamed answer may carry more after it).
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut it = serde_json::Deserializer::from_slice(bytes).into_iter::<T>();
    match it.next() {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("empty answer".to_string()),
    }
}

/// The result of a transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether every comparison held (the success branch ran).
    pub succeeded: bool,
    /// The store's revision after the transaction (the revision of its writes, if any).
    pub revision: i64,
    /// The key-value pairs of the branch's range requests, one list per request.
    pub ranges: Vec<Vec<Kv>>,
    /// Whether the request was sent more than once (an endpoint failed, possibly after
    /// applying it): a failed comparison may then be the request's own earlier success.
    pub retried: bool,
}

/// A comparison of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key's creation revision (0: the key does not exist).
    CreateRevision(Vec<u8>, i64),
    /// The key's last modification revision.
    ModRevision(Vec<u8>, i64),
    /// The key's lease.
    Lease(Vec<u8>, i64),
    /// The key's value.
    Value(Vec<u8>, Vec<u8>),
}

/// An operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Reads one key.
    Get(Vec<u8>),
    /// Writes a key, attached to a lease (0: none).
    Put(Vec<u8>, Vec<u8>, i64),
    /// Deletes one key.
    Delete(Vec<u8>),
    /// Deletes every key from the first up to (not including) the second.
    DeleteRange(Vec<u8>, Vec<u8>),
}

pub(crate) fn enc(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The end of the range of keys starting with `prefix` (etcd's `range_end`).
#[must_use]
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: the range is every key from the prefix on ("\0").
    vec![0]
}

impl Compare {
    fn json(&self) -> Value {
        match self {
            Compare::CreateRevision(k, r) => {
                json!({"key": enc(k), "target": "CREATE", "result": "EQUAL", "create_revision": r.to_string()})
            }
            Compare::ModRevision(k, r) => {
                json!({"key": enc(k), "target": "MOD", "result": "EQUAL", "mod_revision": r.to_string()})
            }
            Compare::Lease(k, l) => {
                json!({"key": enc(k), "target": "LEASE", "result": "EQUAL", "lease": l.to_string()})
            }
            Compare::Value(k, v) => {
                json!({"key": enc(k), "target": "VALUE", "result": "EQUAL", "value": enc(v)})
            }
        }
    }
}

impl Op {
    fn json(&self) -> Value {
        match self {
            Op::Get(k) => json!({"request_range": {"key": enc(k)}}),
            Op::Put(k, v, lease) => {
                json!({"request_put": {"key": enc(k), "value": enc(v), "lease": lease.to_string()}})
            }
            Op::Delete(k) => json!({"request_delete_range": {"key": enc(k)}}),
            Op::DeleteRange(k, end) => {
                json!({"request_delete_range": {"key": enc(k), "range_end": enc(end)}})
            }
        }
    }
}

/// What one attempt at one endpoint gave.
enum Attempt {
    Answer(Vec<u8>),
    /// Try the next endpoint.
    Next(String),
    /// The token is no longer valid.
    Unauthenticated,
    Fatal(EtcdError),
}

/// A client of etcd's JSON gateway.
#[derive(Debug)]
pub struct EtcdClient {
    http: reqwest::Client,
    bases: Vec<String>,
    current: AtomicUsize,
    credentials: Option<(String, String)>,
    token: RwLock<Option<String>>,
    timeout: Duration,
}

impl EtcdClient {
    /// A client for `cfg` (nothing is sent yet).
    ///
    /// # Errors
    /// [`EtcdError::Setup`] when the TLS files cannot be read or the options do not fit.
    pub fn new(cfg: &EtcdConfig) -> Result<Self, EtcdError> {
        if cfg.endpoints.is_empty() {
            return Err(EtcdError::Setup("no endpoint".to_string()));
        }
        crate::traffic::install_tls_provider();
        let tls = cfg.ca_file.is_some() || cfg.cert_file.is_some();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(cfg.timeout.min(Duration::from_secs(2)))
            .no_proxy();
        let read = |p: &PathBuf, what: &str| {
            std::fs::read(p)
                .map_err(|e| EtcdError::Setup(format!("{what}: cannot read {}: {e}", p.display())))
        };
        if let Some(ca) = &cfg.ca_file {
            let pem = read(ca, "CA file")?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| EtcdError::Setup(format!("CA file {}: {e}", ca.display())))?;
            if certs.is_empty() {
                return Err(EtcdError::Setup(format!(
                    "CA file {} holds no certificate",
                    ca.display()
                )));
            }
            builder = builder.tls_certs_only(certs);
        }
        match (&cfg.cert_file, &cfg.key_file) {
            (Some(cert), Some(key)) => {
                let mut pem = read(cert, "client certificate")?;
                pem.push(b'\n');
                pem.extend(read(key, "client key")?);
                let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
                    EtcdError::Setup(format!(
                        "client certificate {} with key {}: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?;
                builder = builder.identity(id);
            }
            (None, None) => {}
            _ => {
                return Err(EtcdError::Setup(
                    "a client certificate needs its key, and a key its certificate".to_string(),
                ));
            }
        }
        let credentials = match (&cfg.user, &cfg.password) {
            (Some(u), Some(p)) => {
                crate::redact::register(p);
                Some((u.clone(), p.clone()))
            }
            (None, None) => None,
            (Some(u), None) => {
                return Err(EtcdError::Setup(format!("user `{u}` has no password")));
            }
            (None, Some(_)) => {
                return Err(EtcdError::Setup("a password needs a user".to_string()));
            }
        };
        let http = builder
            .build()
            .map_err(|e| EtcdError::Setup(format!("cannot build the HTTP client: {e}")))?;
        let scheme = if tls { "https" } else { "http" };
        Ok(EtcdClient {
            http,
            bases: cfg
                .endpoints
                .iter()
                .map(|e| format!("{scheme}://{e}"))
                .collect(),
            current: AtomicUsize::new(0),
            credentials,
            token: RwLock::new(None),
            timeout: cfg.timeout,
        })
    }

    /// The endpoint that answered last.
    #[must_use]
    pub fn endpoint(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed) % self.bases.len();
        &self.bases[i]
    }

    async fn attempt(&self, base: &str, path: &str, body: &Value, limit: Duration) -> Attempt {
        let token = self
            .token
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut req = self
            .http
            .post(format!("{base}{path}"))
            .timeout(limit)
            .json(body);
        if let Some(t) = token {
            req = req.header(reqwest::header::AUTHORIZATION, t);
        }
        let mut resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Attempt::Next(crate::redact::text(&chain(&e)).into_owned()),
        };
        let status = resp.status();
        let mut bytes = Vec::new();
        loop {
            match tokio::time::timeout(limit, resp.chunk()).await {
                Ok(Ok(Some(c))) => {
                    if bytes.len() + c.len() > MAX_RESPONSE_BYTES {
                        return Attempt::Fatal(EtcdError::BadResponse {
                            endpoint: base.to_string(),
                            path: path.to_string(),
                            why: format!("larger than {MAX_RESPONSE_BYTES} bytes"),
                        });
                    }
                    bytes.extend_from_slice(&c);
                }
                Ok(Ok(None)) => break,
                Ok(Err(e)) => return Attempt::Next(chain(&e)),
                Err(_) => return Attempt::Next(format!("no answer within {limit:?}")),
            }
        }
        if status.is_success() {
            return Attempt::Answer(bytes);
        }
        let err: ErrorBody = parse(&bytes).unwrap_or_default();
        let message = if err.message.is_empty() {
            err.error
        } else {
            err.message
        };
        if err.code == 16 || status == reqwest::StatusCode::UNAUTHORIZED {
            return Attempt::Unauthenticated;
        }
        // Unavailable (no leader, shutting down) and deadline exceeded: another member may
        // answer.
        if matches!(err.code, 4 | 14) || status.is_server_error() && err.code == 0 {
            return Attempt::Next(format!("{status}: {message} (code {})", err.code));
        }
        Attempt::Fatal(EtcdError::Rejected {
            endpoint: base.to_string(),
            code: err.code,
            message: if message.is_empty() {
                format!("HTTP {status}")
            } else {
                message
            },
        })
    }

    /// Posts `body` to `path`, failing over between the endpoints, and returns the answer's
    /// bytes.
    async fn post_raw(
        &self,
        path: &str,
        body: &Value,
        limit: Duration,
    ) -> Result<(Vec<u8>, bool), EtcdError> {
        let n = self.bases.len();
        let first = self.current.load(Ordering::Relaxed);
        let mut last = String::new();
        let mut renewed = false;
        let mut i = 0;
        while i < n {
            let idx = (first + i) % n;
            let base = &self.bases[idx];
            let no_token = self
                .token
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .is_none();
            if self.credentials.is_some() && no_token && !renewed {
                // The first request: get a token before anything else.
                renewed = true;
                if let Err(e) = self.authenticate(base, limit).await {
                    if e.is_transient() {
                        last = e.to_string();
                        renewed = false;
                        i += 1;
                        continue;
                    }
                    return Err(e);
                }
            }
            match self.attempt(base, path, body, limit).await {
                Attempt::Answer(b) => {
                    self.current.store(idx, Ordering::Relaxed);
                    return Ok((b, i > 0));
                }
                Attempt::Next(why) => {
                    tracing::debug!(endpoint = %base, %why, "etcd endpoint failed, trying the next");
                    last = format!("{base}: {why}");
                    i += 1;
                }
                Attempt::Unauthenticated if !renewed && self.credentials.is_some() => {
                    renewed = true;
                    if let Err(e) = self.authenticate(base, limit).await {
                        if e.is_transient() {
                            last = e.to_string();
                            i += 1;
                        } else {
                            return Err(e);
                        }
                    }
                }
                Attempt::Unauthenticated => {
                    return Err(EtcdError::Rejected {
                        endpoint: base.clone(),
                        code: 16,
                        message: "not authenticated (check the etcd user and password)".to_string(),
                    });
                }
                Attempt::Fatal(e) => return Err(e),
            }
        }
        Err(EtcdError::Unreachable {
            endpoints: self.bases.join(", "),
            last,
        })
    }

    /// Gets a fresh token from `base` for the configured user.
    async fn authenticate(&self, base: &str, limit: Duration) -> Result<(), EtcdError> {
        let Some((user, password)) = &self.credentials else {
            return Ok(());
        };
        let body = json!({"name": user, "password": password});
        match self
            .attempt(base, "/v3/auth/authenticate", &body, limit)
            .await
        {
            Attempt::Answer(b) => {
                let r: AuthResponse = parse(&b).map_err(|why| EtcdError::BadResponse {
                    endpoint: base.to_string(),
                    path: "/v3/auth/authenticate".to_string(),
                    why,
                })?;
                if r.token.is_empty() {
                    return Err(EtcdError::Rejected {
                        endpoint: base.to_string(),
                        code: 16,
                        message: format!("user `{user}`: no token (is authentication enabled?)"),
                    });
                }
                crate::redact::register(&r.token);
                *self.token.write().unwrap_or_else(PoisonError::into_inner) = Some(r.token);
                Ok(())
            }
            Attempt::Next(why) => Err(EtcdError::Unreachable {
                endpoints: base.to_string(),
                last: why,
            }),
            Attempt::Unauthenticated => Err(EtcdError::Rejected {
                endpoint: base.to_string(),
                code: 16,
                message: format!("user `{user}`: authentication failed"),
            }),
            Attempt::Fatal(EtcdError::Rejected { code: 9, .. }) => {
                // Authentication is not enabled: go without a token.
                Ok(())
            }
            Attempt::Fatal(e) => Err(e),
        }
    }

    async fn post<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, EtcdError> {
        self.post_within(path, body, self.timeout).await
    }

    async fn post_within<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
        limit: Duration,
    ) -> Result<T, EtcdError> {
        let (bytes, _) = self.post_raw(path, body, limit).await?;
        parse(&bytes).map_err(|why| EtcdError::BadResponse {
            endpoint: self.endpoint().to_string(),
            path: path.to_string(),
            why,
        })
    }

    /// One key, if it exists.
    ///
    /// # Errors
    /// When etcd cannot be reached or rejects the request.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Kv>, EtcdError> {
        let r: RangeResponse = self.post("/v3/kv/range", &json!({"key": enc(key)})).await?;
        Ok(r.kvs.into_iter().next().map(Kv::from))
    }

    /// Every key starting with `prefix`, in key order (read in pages).
    ///
    /// # Errors
    /// When etcd cannot be reached or rejects the request.
    pub async fn get_prefix(&self, prefix: &[u8]) -> Result<Vec<Kv>, EtcdError> {
        self.range_prefix(prefix, false).await
    }

    /// Every key starting with `prefix`, in key order, without the values.
    ///
    /// # Errors
    /// When etcd cannot be reached or rejects the request.
    pub async fn keys_prefix(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, EtcdError> {
        let kvs = self.range_prefix(prefix, true).await?;
        Ok(kvs.into_iter().map(|kv| kv.key).collect())
    }

    async fn range_prefix(&self, prefix: &[u8], keys_only: bool) -> Result<Vec<Kv>, EtcdError> {
        let page: i64 = if keys_only { 1024 } else { 64 };
        let end = prefix_end(prefix);
        let mut from = prefix.to_vec();
        let mut out = Vec::new();
        let mut revision = 0;
        loop {
            let r: RangeResponse = self
                .post(
                    "/v3/kv/range",
                    &json!({
                        "key": enc(&from),
                        "range_end": enc(&end),
                        "limit": page.to_string(),
                        // Every page from the same snapshot.
                        "revision": revision.to_string(),
                        "keys_only": keys_only,
                    }),
                )
                .await?;
            if revision == 0 {
                revision = r.header.revision;
            }
            let n = r.kvs.len();
            out.extend(r.kvs.into_iter().map(Kv::from));
            let Some(last) = out.last() else { break };
            if !r.more || n == 0 {
                break;
            }
            if last.key < from || out.len() > 10_000_000 {
                return Err(EtcdError::BadResponse {
                    endpoint: self.endpoint().to_string(),
                    path: "/v3/kv/range".to_string(),
                    why: "a page of keys did not advance".to_string(),
                });
            }
            from = last.key.clone();
            from.push(0);
        }
        Ok(out)
    }

    /// Runs a transaction: `then` if every comparison holds, else `otherwise`.
    ///
    /// # Errors
    /// When etcd cannot be reached or rejects the request.
    pub async fn txn(
        &self,
        compare: &[Compare],
        then: &[Op],
        otherwise: &[Op],
    ) -> Result<TxnResult, EtcdError> {
        let body = json!({
            "compare": compare.iter().map(Compare::json).collect::<Vec<_>>(),
            "success": then.iter().map(Op::json).collect::<Vec<_>>(),
            "failure": otherwise.iter().map(Op::json).collect::<Vec<_>>(),
        });
        let (bytes, retried) = self.post_raw("/v3/kv/txn", &body, self.timeout).await?;
        let r: TxnResponse = parse(&bytes).map_err(|why| EtcdError::BadResponse {
            endpoint: self.endpoint().to_string(),
            path: "/v3/kv/txn".to_string(),
            why,
        })?;
        Ok(TxnResult {
            retried,
            succeeded: r.succeeded,
            revision: r.header.revision,
            ranges: r
                .responses
                .into_iter()
                .filter_map(|o| o.response_range)
                .map(|rr| rr.kvs.into_iter().map(Kv::from).collect())
                .collect(),
        })
    }

    /// Grants a lease of `ttl`; returns its id and the TTL etcd granted.
    ///
    /// # Errors
    /// When etcd cannot be reached or rejects the request.
    pub async fn lease_grant(&self, ttl: Duration) -> Result<(i64, Duration), EtcdError> {
        let secs = ttl.as_secs().max(1);
        let r: LeaseResponse = self
            .post("/v3/lease/grant", &json!({"TTL": secs.to_string()}))
            .await?;
        if r.id == 0 || r.ttl <= 0 {
            return Err(EtcdError::BadResponse {
                endpoint: self.endpoint().to_string(),
                path: "/v3/lease/grant".to_string(),
                why: "no lease in the answer".to_string(),
            });
        }
        Ok((r.id, Duration::from_secs(r.ttl.unsigned_abs())))
    }

    /// Renews lease `id` once, within `limit`; returns its new TTL, or `None` when the lease
    /// no longer exists (it expired or was revoked).
    ///
    /// # Errors
    /// When etcd cannot be reached or rejects the request.
    pub async fn lease_keepalive(
        &self,
        id: i64,
        limit: Duration,
    ) -> Result<Option<Duration>, EtcdError> {
        let r: Streamed<LeaseResponse> = self
            .post_within("/v3/lease/keepalive", &json!({"ID": id.to_string()}), limit)
            .await?;
        if let Some(e) = r.error {
            let e: ErrorBody = serde_json::from_value(e).unwrap_or_default();
            return Err(EtcdError::Rejected {
                endpoint: self.endpoint().to_string(),
                code: e.code,
                message: e.message,
            });
        }
        let Some(l) = r.result else {
            return Err(EtcdError::BadResponse {
                endpoint: self.endpoint().to_string(),
                path: "/v3/lease/keepalive".to_string(),
                why: "no result".to_string(),
            });
        };
        Ok((l.ttl > 0).then(|| Duration::from_secs(l.ttl.unsigned_abs())))
    }

    /// Revokes lease `id` (its keys are deleted).
    ///
    /// # Errors
    /// When etcd cannot be reached or rejects the request.
    pub async fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        let _: Value = self
            .post("/v3/lease/revoke", &json!({"ID": id.to_string()}))
            .await?;
        Ok(())
    }
}

/// An error with its sources, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Parses `bytes` as every answer the client reads (for the property tests).
#[cfg(test)]
pub(crate) fn parse_any(bytes: &[u8]) {
    let _ = parse::<RangeResponse>(bytes).map(|r| r.kvs.into_iter().map(Kv::from).count());
    let _ = parse::<TxnResponse>(bytes);
    let _ = parse::<Streamed<LeaseResponse>>(bytes);
    let _ = parse::<LeaseResponse>(bytes);
    let _ = parse::<AuthResponse>(bytes);
    let _ = parse::<ErrorBody>(bytes);
}
