//! The serde side of a policy: what TOML may contain, before semantic checks.
//!
//! Every struct denies unknown fields. Sections chosen by a tag (`[traffic] type`,
//! `[metrics] type`, `[[metric]] judge`) are split by hand in [`super::validate`] and each
//! variant's struct is deserialized on its own, so spans survive (no internally tagged
//! enums, no `flatten`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// A human duration (`"30s"`, `"5m"`, `"1h30m"`), parsed with `humantime`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration `{s}`: {e}; write e.g. \"30s\", \"5m\" or \"1h30m\""
            ))
        })
    }
}

/// The top level, without the sections parsed on their own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoot {
    pub name: Spanned<String>,
    pub description: Option<String>,
    pub alpha: Option<Spanned<f64>>,
    pub decisions: Option<String>,
}

/// How a step ends well.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Advance {
    /// After the step's duration and minimum requests, with data and without a Fail.
    NoFail,
    /// Only when every metric passes (and the step's duration and minimum requests are met).
    Pass,
}

/// What no data does past the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnNoData {
    /// Keep holding the step (the deadline still applies).
    Hold,
    /// Roll back.
    Rollback,
}

/// `[rollout]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRollout {
    pub steps: Option<Spanned<Vec<Spanned<f64>>>>,
    pub step_duration: Option<Spanned<Dur>>,
    pub analysis_interval: Option<Spanned<Dur>>,
    pub min_requests: Option<u64>,
    pub deadline: Option<Spanned<Dur>>,
    pub advance: Option<Advance>,
    pub on_no_data: Option<OnNoData>,
    pub no_data_limit: Option<Spanned<Dur>>,
    pub error_limit: Option<u32>,
    pub apply_retries: Option<u32>,
    pub apply_timeout: Option<Spanned<Dur>>,
}

/// `[[metric]]` keys shared by every judge.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetricCommon {
    pub name: Spanned<String>,
    pub description: Option<String>,
    pub builtin: Option<Spanned<String>>,
    pub events: Option<Spanned<String>>,
    pub trials: Option<Spanned<String>>,
    pub histogram: Option<Spanned<String>>,
    pub series: Option<Spanned<String>>,
    pub query: Option<Spanned<String>>,
    #[serde(default)]
    pub dry_run: bool,
}

/// Keys of [`RawMetricCommon`], for splitting a metric table.
pub(crate) const METRIC_COMMON_KEYS: &[&str] = &[
    "name",
    "description",
    "builtin",
    "events",
    "trials",
    "histogram",
    "series",
    "query",
    "dry_run",
];

/// Options of `judge = "sequential"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSequential {
    pub allowed_ratio: Option<Spanned<f64>>,
    pub pass_ratio: Option<Spanned<f64>>,
    pub alpha: Option<Spanned<f64>>,
    pub quantiles: Option<Spanned<Vec<f64>>>,
    pub thresholds: Option<Spanned<Vec<Dur>>>,
}

/// Options of `judge = "threshold"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawThreshold {
    pub min: Option<Spanned<f64>>,
    pub max: Option<Spanned<f64>>,
    pub quantile: Option<Spanned<f64>>,
    pub failure_limit: Option<Spanned<u32>>,
    pub count_failures: Option<crate::analysis::threshold::FailureCount>,
    pub min_trials: Option<Spanned<f64>>,
}

/// `[traffic] type = "proxy"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProxy {
    pub listen: Spanned<String>,
    pub baseline: Spanned<String>,
    pub canary: Spanned<String>,
    pub upstream_timeout: Option<Spanned<Dur>>,
}

/// `[metrics] type = "builtin"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBuiltin {}

/// `[metrics] type = "prometheus"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPrometheus {
    pub url: Spanned<String>,
    pub timeout: Option<Spanned<Dur>>,
    pub token_env: Option<Spanned<String>>,
    pub token_file: Option<Spanned<String>>,
    pub token: Option<Spanned<toml::Value>>,
    pub headers: Option<BTreeMap<String, String>>,
    /// A string, or a table `{ baseline = "..", canary = ".." }` (checked in validate).
    pub variables: Option<BTreeMap<String, Spanned<toml::Value>>>,
    pub ca_file: Option<Spanned<String>>,
    pub series_step: Option<Spanned<Dur>>,
}
