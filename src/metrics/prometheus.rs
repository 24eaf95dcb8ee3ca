//! The `prometheus` source: PromQL templates per metric, evaluated over each analysis window
//! through the Prometheus HTTP API (`prometheus-http-query` on a rustls `reqwest` client).
//!
//! Each metric's templates are rendered once per arm with `{{arm}}` (`baseline`/`canary`),
//! `{{window}}` (the window's length as a PromQL duration) and the policy's
//! `[metrics.variables]`; instant queries are evaluated at the window's end, range queries
//! (series) over the window. Both arms are queried concurrently, and the result is one
//! [`Segment`] whose share is the canary weight the controller had in force: the assignment
//! probability of every request in the window when the router picks per request.
//! In count templates, `increase(SELECTOR[{{window}}])` is evaluated as the counter's exact
//! difference over the window, not Prometheus's extrapolation (see `exact`).
//!
//! Outcomes are strict: an empty result or NaN is [`Observation::Missing`] (NoData, never a
//! pass), several series where one was expected is [`MetricsError::Ambiguous`], buckets that
//! decrease are [`MetricsError::Invalid`] (a counter reset), and every error carries the
//! rendered query and, for query errors, Prometheus's own message.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use futures_util::future::join_all;
use prometheus_http_query::response::{Data, RangeVector};
use prometheus_http_query::{Client, Error as PromError};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};

use super::{Fetched, MetricsError, MetricsSource, RenderedQuery, Window};
use crate::analysis::histogram::{Histogram, HistogramError};
use crate::analysis::observation::{Counts, Observation, Segment};
use crate::model::Arm;
use crate::policy::{DataSpec, MetricConfig, PrometheusConfig, Secret, Template, Variable};

const NAME: &str = "prometheus";

/// Reads metrics from a Prometheus-compatible HTTP API.
#[derive(Clone)]
pub struct PrometheusSource {
    client: Client,
    url: String,
    timeout: Duration,
    variables: BTreeMap<String, Variable>,
    series_step: Option<Duration>,
}

impl std::fmt::Debug for PrometheusSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client holds the bearer token in its default headers: never print it.
        f.debug_struct("PrometheusSource")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .field("variables", &self.variables)
            .field("series_step", &self.series_step)
            .finish_non_exhaustive()
    }
}

fn setup(message: impl Into<String>) -> MetricsError {
    MetricsError::Setup {
        source_name: NAME,
        message: message.into(),
    }
}

/// Reads a bearer token from its source; `env` looks up environment variables.
fn read_secret(
    secret: &Secret,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, MetricsError> {
    let (value, origin) = match secret {
        Secret::Env(var) => match env(var) {
            Some(v) => (v, format!("environment variable `{var}` (token_env)")),
            None => {
                return Err(setup(format!(
                    "token_env: environment variable `{var}` is not set (or not valid UTF-8)"
                )));
            }
        },
        Secret::File(path) => match std::fs::read_to_string(path) {
            Ok(v) => (v, format!("file {} (token_file)", path.display())),
            Err(e) => {
                return Err(setup(format!(
                    "token_file: cannot read {}: {e}",
                    path.display()
                )));
            }
        },
    };
    let token = value.trim();
    if token.is_empty() {
        return Err(setup(format!("bearer token from {origin} is empty")));
    }
    // From now on no message, record or log line may show it.
    crate::redact::register(token);
    if let Secret::Env(var) = secret {
        crate::redact::register_env_name(var);
    }
    Ok(token.to_string())
}

/// The request headers every query carries: the policy's extra headers and the bearer token.
fn default_headers(cfg: &PrometheusConfig, token: Option<&str>) -> Result<HeaderMap, MetricsError> {
    let mut headers = HeaderMap::new();
    for (name, value) in &cfg.headers {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| setup(format!("headers: `{name}` is not a valid HTTP header name")))?;
        let v = HeaderValue::from_str(value).map_err(|_| {
            setup(format!(
                "headers: the value of `{name}` is not a valid HTTP header value"
            ))
        })?;
        headers.insert(n, v);
    }
    if let Some(t) = token {
        if headers.contains_key(AUTHORIZATION) {
            return Err(setup(
                "both a bearer token and an `Authorization` header are configured; keep one",
            ));
        }
        let mut v = HeaderValue::from_str(&format!("Bearer {t}"))
            .map_err(|_| setup("the bearer token contains characters not allowed in a header"))?;
        v.set_sensitive(true);
        headers.insert(AUTHORIZATION, v);
    }
    Ok(headers)
}

/// `d` as a PromQL duration: whole seconds as `15s`, otherwise milliseconds (`15250ms`), so
/// consecutive windows tile time exactly; never below `1s`.
#[must_use]
pub fn promql_duration(d: Duration) -> String {
    let ms = d.as_millis().max(1000);
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `{a="1", b="2"}` with `__name__` in front, labels sorted: how Prometheus prints a series.
fn label_set(labels: &HashMap<String, String>) -> String {
    let sorted: BTreeMap<&String, &String> = labels.iter().collect();
    let name = labels.get("__name__").map_or("", String::as_str);
    let inner: Vec<String> = sorted
        .iter()
        .filter(|(k, _)| k.as_str() != "__name__")
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    format!("{name}{{{}}}", inner.join(", "))
}

fn ambiguous(query: &str, labels: impl Iterator<Item = String>) -> MetricsError {
    MetricsError::Ambiguous {
        query: query.to_string(),
        series: labels.collect(),
    }
}

fn invalid(query: &str, message: impl Into<String>) -> MetricsError {
    MetricsError::Invalid {
        query: query.to_string(),
        message: message.into(),
    }
}

/// A finite value, or `None` (NaN and infinities carry no data).
fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// The single value of an instant query: `None` for an empty result or NaN.
fn single_value(data: Data, query: &str) -> Result<Option<f64>, MetricsError> {
    match data {
        Data::Scalar(s) => Ok(finite(s.value())),
        Data::Vector(v) => match v.len() {
            0 => Ok(None),
            1 => Ok(finite(v[0].sample().value())),
            _ => Err(ambiguous(query, v.iter().map(|s| label_set(s.metric())))),
        },
        Data::Matrix(_) => Err(invalid(
            query,
            "the query returns a range vector; wrap the range selector in a function such as increase(...)",
        )),
    }
}

/// A count for the counts shape: non-negative, or `None` when there is no data.
fn count(data: Data, query: &str, role: &str) -> Result<Option<f64>, MetricsError> {
    match single_value(data, query)? {
        Some(v) if v < 0.0 => Err(invalid(
            query,
            format!("{role} must not be negative, got {v}; use increase() on counters"),
        )),
        other => Ok(other),
    }
}

fn parse_le(s: &str) -> Option<f64> {
    match s.trim() {
        "+Inf" | "Inf" | "inf" | "+inf" => Some(f64::INFINITY),
        t => t.parse::<f64>().ok().filter(|v| !v.is_nan()),
    }
}

/// A histogram from one series per `le` bucket (cumulative counts, `+Inf` required).
fn histogram(data: Data, query: &str) -> Result<Observation, MetricsError> {
    let series = match data {
        Data::Vector(v) => v,
        Data::Scalar(_) | Data::Matrix(_) => {
            return Err(invalid(
                query,
                "a histogram query must return an instant vector with one series per `le` bucket, e.g. sum by (le) (increase(x_bucket[{{window}}]))",
            ));
        }
    };
    if series.is_empty() {
        return Ok(Observation::Missing);
    }
    let mut by_le: BTreeMap<u64, Vec<&HashMap<String, String>>> = BTreeMap::new();
    let mut pairs = Vec::with_capacity(series.len());
    for s in &series {
        let Some(raw) = s.metric().get("le") else {
            return Err(invalid(
                query,
                format!(
                    "series {} has no `le` label; a histogram query must keep it, e.g. sum by (le) (...)",
                    label_set(s.metric())
                ),
            ));
        };
        let Some(le) = parse_le(raw) else {
            return Err(invalid(
                query,
                format!(
                    "series {} has an `le` that is not a number",
                    label_set(s.metric())
                ),
            ));
        };
        by_le.entry(le.to_bits()).or_default().push(s.metric());
        pairs.push((le, s.sample().value()));
    }
    let dup: Vec<String> = by_le
        .values()
        .filter(|v| v.len() > 1)
        .flatten()
        .map(|m| label_set(m))
        .collect();
    if !dup.is_empty() {
        return Err(ambiguous(query, dup.into_iter()));
    }
    if pairs.iter().any(|(_, c)| c.is_nan()) {
        return Ok(Observation::Missing);
    }
    if !pairs.iter().any(|(le, _)| le.is_infinite()) {
        return Err(invalid(
            query,
            "no le=\"+Inf\" bucket, so the total count is unknown; keep every bucket of the histogram",
        ));
    }
    match Histogram::from_cumulative(pairs) {
        Ok(h) => Ok(Observation::Histogram(h)),
        Err(HistogramError::NotCumulative { le, from, to }) => Err(invalid(
            query,
            format!(
                "cumulative bucket counts decrease at le={le} ({from} then {to}): a counter reset inside the window, or buckets of different histograms mixed"
            ),
        )),
        Err(e) => Err(invalid(query, e.to_string())),
    }
}

/// The points of one range query that fall inside the window `(start, end]`.
fn series(data: Data, query: &str, start: f64) -> Result<Observation, MetricsError> {
    let ranges: Vec<RangeVector> = match data {
        Data::Matrix(m) => m,
        Data::Vector(_) | Data::Scalar(_) => {
            return Err(invalid(
                query,
                "a range query did not return a range vector",
            ));
        }
    };
    match ranges.len() {
        0 => Ok(Observation::Missing),
        1 => {
            let values: Vec<f64> = ranges[0]
                .samples()
                .iter()
                .filter(|s| s.timestamp() > start)
                .filter_map(|s| finite(s.value()))
                .collect();
            Ok(if values.is_empty() {
                Observation::Missing
            } else {
                Observation::Series(values)
            })
        }
        _ => Err(ambiguous(
            query,
            ranges.iter().map(|r| label_set(r.metric())),
        )),
    }
}

/// `[baseline, canary]` as a pair; missing entries are missing data.
fn pair(obs: Vec<Observation>) -> (Observation, Observation) {
    let mut it = obs.into_iter();
    let baseline = it.next().unwrap_or(Observation::Missing);
    (baseline, it.next().unwrap_or(Observation::Missing))
}

/// `error` and the chain of its sources, joined with `: `.
fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut cur = error.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

/// What went wrong in a request, without reqwest's own first line: it repeats the URL with
/// the whole encoded query, which the error already names.
fn request_failure(e: &reqwest::Error) -> String {
    let text = std::error::Error::source(e).map_or_else(|| e.to_string(), chain);
    crate::redact::text(&text).into_owned()
}

/// What to ask Prometheus for one query.
#[derive(Clone, Copy, Debug)]
enum Eval {
    /// Instant query at this Unix time.
    Instant(f64),
    /// Range query: whole-second start and end, step in seconds.
    Range { start: i64, end: i64, step: i64 },
}

impl PrometheusSource {
    /// Builds the client: reads the bearer token (environment or file) and the CA file now,
    /// so a broken setup fails before the rollout starts.
    ///
    /// # Errors
    /// [`MetricsError::Setup`] when the token is missing or empty, the CA file is unreadable
    /// or holds no certificate, a header is malformed, or the URL does not parse.
    pub fn new(cfg: &PrometheusConfig) -> Result<Self, MetricsError> {
        Self::with_env(cfg, &|var| std::env::var(var).ok())
    }

    /// [`PrometheusSource::new`] with a custom environment lookup (tests).
    ///
    /// # Errors
    /// As [`PrometheusSource::new`].
    pub fn with_env(
        cfg: &PrometheusConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, MetricsError> {
        let token = cfg
            .token
            .as_ref()
            .map(|s| read_secret(s, env))
            .transpose()?;
        let headers = default_headers(cfg, token.as_deref())?;
        // reqwest is built without a default crypto provider (no aws-lc C build): install
        // ring once per process. A second install fails harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .default_headers(headers);
        if let Some(path) = &cfg.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| setup(format!("ca_file: cannot read {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                setup(format!(
                    "ca_file: {} is not PEM: {}",
                    path.display(),
                    chain(&e)
                ))
            })?;
            if certs.is_empty() {
                return Err(setup(format!(
                    "ca_file: {} holds no certificate",
                    path.display()
                )));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder
            .build()
            .map_err(|e| setup(format!("cannot build the HTTP client: {}", chain(&e))))?;
        // Only the redacted URL is kept for messages: a password in it never shows.
        crate::redact::register_url(&cfg.url, false);
        let shown = crate::redact::url(&cfg.url);
        let client = Client::from(http, &cfg.url).map_err(|e| {
            setup(format!(
                "url `{shown}`: {}",
                crate::redact::text(&chain(&e))
            ))
        })?;
        Ok(PrometheusSource {
            client,
            url: shown,
            timeout: cfg.timeout,
            variables: cfg.variables.clone(),
            series_step: cfg.series_step,
        })
    }

    /// Renders `t` for `arm` over `window`.
    fn render(&self, t: &Template, arm: Arm, window: &Window) -> Result<String, MetricsError> {
        let range = promql_duration(window.duration());
        t.render(|name| match name {
            "arm" => Some(Cow::Borrowed(arm.as_str())),
            "window" => Some(Cow::Owned(range.clone())),
            other => self
                .variables
                .get(other)
                .map(|v| Cow::Borrowed(v.value(arm))),
        })
        .map_err(|e| invalid(t.as_str(), e.to_string()))
    }

    /// Maps a client error to ours, naming the query.
    fn error(&self, e: PromError, query: &str) -> MetricsError {
        let unreachable = |message: String| MetricsError::Unreachable {
            source_name: NAME,
            message,
        };
        match e {
            PromError::Prometheus(p) => {
                if p.is_timeout() {
                    MetricsError::Timeout {
                        source_name: NAME,
                        after: self.timeout,
                    }
                } else if p.is_unavailable() {
                    unreachable(format!(
                        "{} answered: {}",
                        self.url,
                        crate::redact::text(p.message())
                    ))
                } else {
                    MetricsError::Query {
                        query: query.to_string(),
                        message: format!(
                            "Prometheus says {}: {}",
                            p.error_type(),
                            crate::redact::text(p.message())
                        ),
                    }
                }
            }
            PromError::Client(c) => match c.inner() {
                Some(r) if r.is_timeout() => MetricsError::Timeout {
                    source_name: NAME,
                    after: self.timeout,
                },
                Some(r) if r.is_connect() => {
                    unreachable(format!("{}: {}", self.url, request_failure(r)))
                }
                Some(r) => match r.status() {
                    Some(s) if s.is_server_error() || s.as_u16() == 429 => {
                        unreachable(format!("{} answered HTTP {s}", self.url))
                    }
                    Some(s) => MetricsError::Query {
                        query: query.to_string(),
                        message: format!(
                            "{} answered HTTP {s} without a Prometheus API response{}",
                            self.url,
                            if matches!(s.as_u16(), 401 | 403) {
                                " (check token_env/token_file and headers)"
                            } else {
                                ""
                            }
                        ),
                    },
                    None if r.is_decode() => MetricsError::Query {
                        query: query.to_string(),
                        message: format!(
                            "cannot read the answer ({}); native histograms are not supported, query the classic _bucket series",
                            request_failure(r)
                        ),
                    },
                    None => unreachable(format!("{}: {}", self.url, request_failure(r))),
                },
                None => MetricsError::Query {
                    query: query.to_string(),
                    message: format!(
                        "{} (is {} a Prometheus API?)",
                        crate::redact::text(&c.to_string()),
                        self.url
                    ),
                },
            },
            other => MetricsError::Query {
                query: query.to_string(),
                message: crate::redact::text(&chain(&other)).into_owned(),
            },
        }
    }

    /// Sends one query.
    async fn send(&self, query: &str, eval: Eval) -> Result<Data, MetricsError> {
        // Ask Prometheus to give up a little before we do, so its own message wins.
        let server_timeout = self.timeout.as_millis().saturating_sub(100).max(100) as i64;
        let res = match eval {
            Eval::Instant(at) => {
                self.client
                    .query(query)
                    .query("time", format!("{at:.3}"))
                    .timeout(server_timeout)
                    .get()
                    .await
            }
            Eval::Range { start, end, step } => {
                self.client
                    .query_range(query, start, end, step as f64)
                    .timeout(server_timeout)
                    .get()
                    .await
            }
        };
        res.map(|r| r.into_inner().0)
            .map_err(|e| self.error(e, query))
    }

    /// Range parameters for series over `window`: whole-second points `step` apart, the
    /// last at the window's end (rounded down), none at or before its start.
    fn range(&self, window: &Window) -> Eval {
        let step = self
            .series_step
            .unwrap_or_else(|| window.duration())
            .as_secs_f64()
            .round()
            .max(1.0) as i64;
        let start = unix_secs(window.start);
        let end = unix_secs(window.end).floor() as i64;
        let mut first = end;
        while ((first - step) as f64) > start {
            first -= step;
        }
        Eval::Range {
            start: first,
            end,
            step,
        }
    }

    /// Renders and sends `(arm, role, template)` queries concurrently.
    async fn run(
        &self,
        specs: &[(Arm, &'static str, &Template)],
        window: &Window,
        eval: Eval,
    ) -> Result<(Vec<RenderedQuery>, Vec<Data>), MetricsError> {
        let range = promql_duration(window.duration());
        let mut queries = Vec::with_capacity(specs.len());
        for (arm, role, t) in specs {
            let mut query = self.render(t, *arm, window)?;
            // Counts feed tests that need distinct requests in disjoint windows.
            if matches!(*role, "events" | "trials" | "histogram")
                && let Cow::Owned(exact) = exact::exact_increase(&query, &range)
            {
                query = exact;
            }
            queries.push(RenderedQuery {
                arm: *arm,
                role,
                query,
            });
        }
        let results = join_all(queries.iter().map(|q| self.send(&q.query, eval))).await;
        let data = results.into_iter().collect::<Result<Vec<_>, _>>()?;
        Ok((queries, data))
    }
}

impl MetricsSource for PrometheusSource {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn fetch(&self, metric: &MetricConfig, window: &Window) -> Result<Fetched, MetricsError> {
        let at = Eval::Instant(unix_secs(window.end));
        let share = window.weight.fraction();
        let (baseline, canary, queries) = match &metric.data {
            DataSpec::Counts { events, trials } => {
                let specs = [
                    (Arm::Baseline, "events", events),
                    (Arm::Baseline, "trials", trials),
                    (Arm::Canary, "events", events),
                    (Arm::Canary, "trials", trials),
                ];
                let (queries, data) = self.run(&specs, window, at).await?;
                let mut obs = Vec::with_capacity(2);
                let mut it = data.into_iter().zip(&queries);
                while let (Some((e, qe)), Some((t, qt))) = (it.next(), it.next()) {
                    let e = count(e, &qe.query, "events")?;
                    let t = count(t, &qt.query, "trials")?;
                    obs.push(match (e, t) {
                        (Some(events), Some(trials)) => {
                            Observation::Counts(Counts { events, trials })
                        }
                        _ => Observation::Missing,
                    });
                }
                let (baseline, canary) = pair(obs);
                (baseline, canary, queries)
            }
            DataSpec::Histogram(t) => {
                let specs = [
                    (Arm::Baseline, "histogram", t),
                    (Arm::Canary, "histogram", t),
                ];
                let (queries, data) = self.run(&specs, window, at).await?;
                let obs = data
                    .into_iter()
                    .zip(&queries)
                    .map(|(d, q)| histogram(d, &q.query))
                    .collect::<Result<Vec<_>, _>>()?;
                let (baseline, canary) = pair(obs);
                (baseline, canary, queries)
            }
            DataSpec::Series(t) => {
                let specs = [(Arm::Baseline, "series", t), (Arm::Canary, "series", t)];
                let start = unix_secs(window.start);
                let (queries, data) = self.run(&specs, window, self.range(window)).await?;
                let obs = data
                    .into_iter()
                    .zip(&queries)
                    .map(|(d, q)| series(d, &q.query, start))
                    .collect::<Result<Vec<_>, _>>()?;
                let (baseline, canary) = pair(obs);
                (baseline, canary, queries)
            }
            DataSpec::Scalar(t) => {
                // Threshold checks look at the canary alone: one query.
                let (queries, mut data) =
                    self.run(&[(Arm::Canary, "query", t)], window, at).await?;
                let canary = match data.pop() {
                    Some(d) => single_value(d, &queries[0].query)?
                        .map_or(Observation::Missing, Observation::Scalar),
                    None => Observation::Missing,
                };
                (Observation::Missing, canary, queries)
            }
            DataSpec::Builtin(_) => {
                return Err(MetricsError::Unsupported {
                    source_name: NAME,
                    metric: metric.name.clone(),
                    message: "`builtin` signals need [metrics] type = \"builtin\"".to_string(),
                });
            }
        };
        Ok(Fetched {
            segments: vec![Segment {
                share,
                baseline,
                canary,
            }],
            queries,
        })
    }

    async fn preflight(&self) -> Result<(), MetricsError> {
        let data = self
            .send("vector(1)", Eval::Instant(unix_secs(SystemTime::now())))
            .await?;
        if single_value(data, "vector(1)")? == Some(1.0) {
            Ok(())
        } else {
            Err(MetricsError::Query {
                query: "vector(1)".to_string(),
                message: format!("{} does not evaluate PromQL as expected", self.url),
            })
        }
    }
}

mod exact;
#[cfg(test)]
mod tests;
