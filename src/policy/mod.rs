//! Policies: one TOML file says what to measure, how to move traffic and when to promote
//! or roll back.
//!
//! Parsing happens in two stages: [`raw`] holds serde structs (unknown fields denied
//! everywhere), [`validate`] turns them into the checked types below and collects every
//! problem as `path:line:col: message`. This module is pure: no I/O, no network; the caller
//! reads the file and reachability checks live in the providers' `preflight`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::analysis::JudgeSpec;
use crate::analysis::observation::Shape;
use crate::model::{Arm, Weight};

pub mod diag;
pub mod raw;
pub mod template;
pub mod validate;

pub use diag::{Diagnostic, Diagnostics};
pub use raw::{Advance, OnNoData};
pub use template::Template;
pub use validate::parse;

/// A validated policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Rollout name, used in records and logs.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// False-rollback budget for the whole rollout, split across the sequential metrics.
    pub alpha: f64,
    /// Where decision records go (JSON lines), if the policy names a file.
    pub decisions: Option<PathBuf>,
    /// Steps and timing.
    pub rollout: Rollout,
    /// How traffic is moved.
    pub traffic: TrafficConfig,
    /// Where metrics come from.
    pub source: SourceConfig,
    /// What is compared.
    pub metrics: Vec<MetricConfig>,
}

/// Steps and timing of a rollout.
#[derive(Clone, Debug, PartialEq)]
pub struct Rollout {
    /// Canary weights, strictly increasing; reaching 100 % promotes.
    pub steps: Vec<Weight>,
    /// Minimum time at each step.
    pub step_duration: Duration,
    /// Time between analysis ticks.
    pub analysis_interval: Duration,
    /// Requests per arm in a step before it may end well.
    pub min_requests: u64,
    /// Time limit for the whole rollout; then roll back.
    pub deadline: Duration,
    /// How a step ends well.
    pub advance: Advance,
    /// What happens when data is missing for longer than `no_data_limit`.
    pub on_no_data: OnNoData,
    /// Consecutive time without data before `on_no_data` applies.
    pub no_data_limit: Duration,
    /// Consecutive ticks with metric query errors before rolling back (0: never).
    pub error_limit: u32,
    /// Retries of a failed traffic change before giving up.
    pub apply_retries: u32,
    /// Time limit of one traffic change.
    pub apply_timeout: Duration,
}

impl Rollout {
    /// Defaults for everything but the steps.
    #[must_use]
    pub fn with_steps(steps: Vec<Weight>) -> Self {
        Rollout {
            steps,
            step_duration: Duration::from_secs(300),
            analysis_interval: Duration::from_secs(15),
            min_requests: 100,
            deadline: Duration::from_secs(3600),
            advance: Advance::NoFail,
            on_no_data: OnNoData::Hold,
            no_data_limit: Duration::from_secs(150),
            error_limit: 10,
            apply_retries: 5,
            apply_timeout: Duration::from_secs(10),
        }
    }
}

/// The built-in weighted reverse proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Address the proxy listens on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Baseline upstream, `http://host:port`.
    pub baseline: Upstream,
    /// Canary upstream.
    pub canary: Upstream,
    /// Time limit for one upstream request; a timeout counts as an error.
    pub upstream_timeout: Duration,
}

/// An HTTP upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// As written, e.g. `http://127.0.0.1:9001`.
    pub url: String,
    /// `host:port`.
    pub authority: String,
}

/// How traffic is moved (`[traffic] type = ...`).
#[derive(Clone, Debug, PartialEq)]
pub enum TrafficConfig {
    /// The built-in weighted reverse proxy.
    Proxy(ProxyConfig),
}

impl TrafficConfig {
    /// The `type` name.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            TrafficConfig::Proxy(_) => "proxy",
        }
    }
}

/// Where a bearer token comes from (never inline in a policy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Secret {
    /// An environment variable's name.
    Env(String),
    /// A file's path; surrounding whitespace is trimmed.
    File(PathBuf),
}

/// A query template variable (`[metrics.variables]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Variable {
    /// The same value for both arms, e.g. a job or namespace.
    Same(String),
    /// One value per arm, e.g. each arm's deployment label when it is not literally
    /// `baseline`/`canary`.
    PerArm {
        /// The baseline's value.
        baseline: String,
        /// The canary's value.
        canary: String,
    },
}

impl Variable {
    /// The value for `arm`.
    #[must_use]
    pub fn value(&self, arm: Arm) -> &str {
        match (self, arm) {
            (Variable::Same(v), _) => v,
            (Variable::PerArm { baseline, .. }, Arm::Baseline) => baseline,
            (Variable::PerArm { canary, .. }, Arm::Canary) => canary,
        }
    }

    /// Whether the value differs by arm.
    #[must_use]
    pub fn is_per_arm(&self) -> bool {
        matches!(self, Variable::PerArm { .. })
    }
}

/// `[metrics] type = "prometheus"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrometheusConfig {
    /// Base URL of the Prometheus HTTP API, e.g. `http://127.0.0.1:9090`.
    pub url: String,
    /// Time limit of one query.
    pub timeout: Duration,
    /// Bearer token.
    pub token: Option<Secret>,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Variables for query templates.
    pub variables: BTreeMap<String, Variable>,
    /// Extra CA certificate (PEM) for TLS.
    pub ca_file: Option<PathBuf>,
    /// Resolution of range queries for `series` metrics (default: the window's length,
    /// about the analysis interval).
    pub series_step: Option<Duration>,
}

/// Where metrics come from (`[metrics] type = ...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceConfig {
    /// The built-in proxy's own counters and latency histograms.
    Builtin,
    /// A Prometheus-compatible HTTP API.
    Prometheus(PrometheusConfig),
}

impl SourceConfig {
    /// The `type` name.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Builtin => "builtin",
            SourceConfig::Prometheus(_) => "prometheus",
        }
    }
}

/// A signal of the built-in source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BuiltinSignal {
    /// 5xx responses and upstream failures of requests.
    Errors,
    /// Response latency.
    Latency,
}

/// What to fetch for a metric.
#[derive(Clone, Debug, PartialEq)]
pub enum DataSpec {
    /// A built-in signal, in the shape the judge takes.
    Builtin(BuiltinSignal),
    /// An events query and a trials query per arm.
    Counts {
        /// Events, e.g. `sum(increase(http_requests_total{code=~"5.."}[{{window}}]))`.
        events: Template,
        /// Trials, e.g. `sum(increase(http_requests_total[{{window}}]))`.
        trials: Template,
    },
    /// `sum by (le)` of bucket increases per arm.
    Histogram(Template),
    /// A range query per arm.
    Series(Template),
    /// One value for the canary (threshold checks).
    Scalar(Template),
}

/// One metric: what to fetch and how to judge it.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricConfig {
    /// Unique name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// What to fetch.
    pub data: DataSpec,
    /// The shape the source must deliver.
    pub shape: Shape,
    /// How to judge it.
    pub judge: JudgeSpec,
    /// Recorded and reported, never acted on.
    pub dry_run: bool,
}
