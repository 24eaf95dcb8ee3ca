//! Metrics sources: where observations come from.
//!
//! One trait, [`MetricsSource`], and one module per built-in source, chosen by
//! `[metrics] type = "..."` and dispatched through [`AnySource`]. A source returns, for one
//! metric and one analysis window, both arms' observations together with the canary's
//! assignment probability for the requests behind them ([`Segment`]s); the builtin source
//! knows it per request, others take the weight the controller had in force.

use std::future::Future;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::analysis::Segment;
use crate::model::{Arm, Weight};
use crate::policy::MetricConfig;

pub mod builtin;
pub mod haproxy;
pub mod mock;
pub mod prometheus;
pub mod replay;

use crate::policy::SourceConfig;
use crate::traffic::proxy::ProxyHandle;

/// One analysis window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// Sequence number (0 for the first window of a rollout); windows are contiguous.
    pub seq: u64,
    /// Wall-clock start (for sources that query by time).
    pub start: SystemTime,
    /// Wall-clock end.
    pub end: SystemTime,
    /// The canary weight the controller had in force during the window.
    pub weight: Weight,
}

impl Window {
    /// Length of the window.
    #[must_use]
    pub fn duration(&self) -> Duration {
        self.end.duration_since(self.start).unwrap_or_default()
    }
}

/// A query as sent, for the decision record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RenderedQuery {
    /// Which arm it was for.
    pub arm: Arm,
    /// What it measures (`events`, `trials`, `histogram`, `series`, `query`, or a builtin signal).
    pub role: &'static str,
    /// The text sent.
    pub query: String,
}

/// What a fetch returned.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fetched {
    /// Observations, one segment per traffic share (oldest first).
    pub segments: Vec<Segment>,
    /// The queries sent.
    pub queries: Vec<RenderedQuery>,
}

/// Why a fetch failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    /// The source could not be reached (connection refused, DNS, TLS): retrying may help.
    #[error("source `{source_name}` unreachable: {message}")]
    Unreachable {
        /// Source name.
        source_name: &'static str,
        /// What happened.
        message: String,
    },
    /// The source answered with an error for this query (syntax error, bad function).
    #[error("query rejected: {message}; query: {query}")]
    Query {
        /// The rendered query.
        query: String,
        /// The source's message.
        message: String,
    },
    /// Several series where one was expected.
    #[error("query returned {} series where one was expected ({}); aggregate it, e.g. with sum(...); query: {query}", .series.len(), .series.join("; "))]
    Ambiguous {
        /// The rendered query.
        query: String,
        /// The label sets returned.
        series: Vec<String>,
    },
    /// The data is unusable (e.g. a histogram whose buckets decrease: a counter reset).
    #[error("unusable data: {message}; query: {query}")]
    Invalid {
        /// The rendered query.
        query: String,
        /// What is wrong.
        message: String,
    },
    /// No answer within the configured time.
    #[error("source `{source_name}`: no answer within {}", humantime::format_duration(*.after))]
    Timeout {
        /// Source name.
        source_name: &'static str,
        /// The limit.
        after: Duration,
    },
    /// The source cannot be set up (missing token, unreadable CA file, malformed header).
    #[error("source `{source_name}`: {message}")]
    Setup {
        /// Source name.
        source_name: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A fetch error of a recorded rollout, replayed (backtests): the message as the
    /// controller reported it then.
    #[error("{message}")]
    Replayed {
        /// The error as recorded.
        message: String,
    },
    /// The source cannot produce this metric at all (a configuration problem).
    #[error("source `{source_name}` cannot serve metric `{metric}`: {message}")]
    Unsupported {
        /// Source name.
        source_name: &'static str,
        /// Metric name.
        metric: String,
        /// Why.
        message: String,
    },
}

impl MetricsError {
    /// Whether a later retry may succeed.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            MetricsError::Unreachable { .. } | MetricsError::Timeout { .. }
        )
    }

    /// Short label for logs and records.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            MetricsError::Unreachable { .. } => "unreachable",
            MetricsError::Query { .. } => "query",
            MetricsError::Ambiguous { .. } => "ambiguous",
            MetricsError::Invalid { .. } => "invalid",
            MetricsError::Timeout { .. } => "timeout",
            MetricsError::Setup { .. } => "setup",
            MetricsError::Unsupported { .. } => "unsupported",
            MetricsError::Replayed { .. } => "replayed",
        }
    }
}

/// Fetches observations for a metric and a window.
pub trait MetricsSource: Send + Sync {
    /// Stable lowercase name, e.g. `"prometheus"`.
    fn name(&self) -> &'static str;

    /// Both arms' observations of `metric` over `window`.
    fn fetch(
        &self,
        metric: &MetricConfig,
        window: &Window,
    ) -> impl Future<Output = Result<Fetched, MetricsError>> + Send;

    /// Cheap reachability check for `coalmine validate`; by default always ready.
    fn preflight(&self) -> impl Future<Output = Result<(), MetricsError>> + Send {
        async { Ok(()) }
    }

    /// The arms' observations of `metric` over `window`, a time *before* the rollout (the
    /// canary at weight 0), from a source that can look back in time; `Ok(None)` from one
    /// that only counts from when it is asked (the default).
    fn history(
        &self,
        metric: &MetricConfig,
        window: &Window,
    ) -> impl Future<Output = Result<Option<Fetched>, MetricsError>> + Send {
        let _ = (metric, window);
        async { Ok(None) }
    }
}

/// The built-in sources, chosen by `[metrics] type`.
#[derive(Debug)]
pub enum AnySource {
    /// The built-in proxy's counters.
    Builtin(builtin::BuiltinSource),
    /// HAProxy's per-server counters.
    Haproxy(haproxy::HaproxySource),
    /// A Prometheus-compatible HTTP API.
    Prometheus(prometheus::PrometheusSource),
}

impl MetricsSource for AnySource {
    fn name(&self) -> &'static str {
        match self {
            AnySource::Builtin(s) => s.name(),
            AnySource::Haproxy(s) => s.name(),
            AnySource::Prometheus(s) => s.name(),
        }
    }

    async fn fetch(&self, metric: &MetricConfig, window: &Window) -> Result<Fetched, MetricsError> {
        match self {
            AnySource::Builtin(s) => s.fetch(metric, window).await,
            AnySource::Haproxy(s) => s.fetch(metric, window).await,
            AnySource::Prometheus(s) => s.fetch(metric, window).await,
        }
    }

    async fn preflight(&self) -> Result<(), MetricsError> {
        match self {
            AnySource::Builtin(s) => s.preflight().await,
            AnySource::Haproxy(s) => s.preflight().await,
            AnySource::Prometheus(s) => s.preflight().await,
        }
    }

    async fn history(
        &self,
        metric: &MetricConfig,
        window: &Window,
    ) -> Result<Option<Fetched>, MetricsError> {
        match self {
            // Their counters start with the proxy or are read at the window's bounds only.
            AnySource::Builtin(_) | AnySource::Haproxy(_) => Ok(None),
            // A query over any past range: the same one as a window's.
            AnySource::Prometheus(s) => s.fetch(metric, window).await.map(Some),
        }
    }
}

/// Builds the source a policy names. The builtin source needs the running built-in proxy;
/// the Prometheus source reads its bearer token and CA file here.
///
/// # Errors
/// [`MetricsError::Unsupported`] when the builtin source has no proxy to read;
/// [`MetricsError::Setup`] when the Prometheus client cannot be set up.
pub fn build(cfg: &SourceConfig, proxy: Option<&ProxyHandle>) -> Result<AnySource, MetricsError> {
    match cfg {
        SourceConfig::Builtin => match proxy {
            Some(p) => Ok(AnySource::Builtin(builtin::BuiltinSource::new(p.state()))),
            None => Err(MetricsError::Unsupported {
                source_name: "builtin",
                metric: "*".to_string(),
                message:
                    "the builtin source reads the built-in proxy; use [traffic] type = \"proxy\""
                        .to_string(),
            }),
        },
        SourceConfig::Haproxy(c) => Ok(AnySource::Haproxy(haproxy::HaproxySource::new(c))),
        SourceConfig::Prometheus(c) => {
            prometheus::PrometheusSource::new(c).map(AnySource::Prometheus)
        }
    }
}
