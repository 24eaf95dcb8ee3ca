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
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration such as \"30s\", \"5m\" or \"1h30m\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Dur, E> {
                humantime::parse_duration(s.trim()).map(Dur).map_err(|e| {
                    E::custom(format!(
                        "invalid duration `{s}`: {e}; write e.g. \"30s\", \"5m\" or \"1h30m\""
                    ))
                })
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "durations need a unit: write \"{n}s\" or \"{n}ms\", not {n}"
                )))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Dur, E> {
                self.visit_i64(i64::try_from(n).unwrap_or(i64::MAX))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "durations need a unit: write \"{n}s\", not {n}"
                )))
            }
        }
        d.deserialize_any(V)
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

/// Which step changes wait for an operator's approval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Approval {
    /// None: the controller decides alone.
    #[default]
    None,
    /// The promotion to 100 % waits for approval.
    Promotion,
    /// Every step change waits for approval.
    EveryStep,
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

/// What the controller does when it finds a weight in force that it did not apply (someone
/// changed traffic by hand, another controller acted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnExternalChange {
    /// Pause: touch nothing, notify, and wait for an operator to resume or abort.
    #[default]
    Pause,
    /// Roll back: put 0 % on the canary.
    Rollback,
    /// Adopt the weight found and go on from there.
    Adopt,
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
    pub approval: Option<Approval>,
    pub warmup: Option<Spanned<Dur>>,
    pub baseline_max_error_rate: Option<Spanned<f64>>,
    pub on_external_change: Option<OnExternalChange>,
    pub early_pass: Option<bool>,
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
    pub share: Option<crate::analysis::share::ShareMode>,
    pub prior: Option<Spanned<RawPrior>>,
    pub pass_ratio: Option<Spanned<f64>>,
    pub alpha: Option<Spanned<f64>>,
    pub quantiles: Option<Spanned<Vec<f64>>>,
    pub thresholds: Option<Spanned<Vec<Dur>>>,
    /// Latency only: `"buckets"` (default) or `"slow-thresholds"`.
    pub test: Option<Spanned<String>>,
}

/// `prior = { min_ratio = 1.2, max_ratio = 10, points = 9 }` of a sequential metric.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPrior {
    pub min_ratio: f64,
    pub max_ratio: f64,
    pub points: usize,
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

/// Kayenta effect sizes, spelt as on the command line.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RawEffectSize {
    MeanRatio,
    Cles,
}

/// `outliers = "remove" | "keep"`.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawOutliers {
    Remove,
    Keep,
}

/// Options of `judge = "mann-whitney"` (Kayenta's NetflixACAJudge settings).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMannWhitney {
    pub confidence: Option<Spanned<f64>>,
    pub tolerance: Option<Spanned<f64>>,
    pub direction: Option<crate::analysis::kayenta::Direction>,
    pub effect_size: Option<RawEffectSize>,
    pub allowed_increase: Option<Spanned<f64>>,
    pub allowed_decrease: Option<Spanned<f64>>,
    pub critical: Option<bool>,
    pub critical_increase: Option<Spanned<f64>>,
    pub critical_decrease: Option<Spanned<f64>>,
    pub must_have_data: Option<bool>,
    pub nan_strategy: Option<crate::analysis::kayenta::NanStrategy>,
    pub outliers: Option<RawOutliers>,
    pub outlier_factor: Option<Spanned<f64>>,
    pub group: Option<String>,
    pub muted: Option<bool>,
}

/// `[scoring]`: Kayenta's score over the `mann-whitney` metrics.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawScoring {
    pub pass: Option<Spanned<f64>>,
    pub marginal: Option<Spanned<f64>>,
    pub min_points: Option<usize>,
    pub weights: Option<Spanned<std::collections::BTreeMap<String, f64>>>,
}

/// `[traffic] type = "proxy"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProxy {
    pub listen: Spanned<String>,
    pub baseline: Spanned<String>,
    pub canary: Spanned<String>,
    pub upstream_timeout: Option<Spanned<Dur>>,
    pub readiness_path: Option<Spanned<String>>,
    pub readiness_statuses: Option<Spanned<Vec<Spanned<i64>>>>,
    pub readiness_timeout: Option<Spanned<Dur>>,
    pub readiness_attempts: Option<Spanned<u32>>,
    pub header_read_timeout: Option<Spanned<Dur>>,
    pub idle_timeout: Option<Spanned<Dur>>,
    pub max_headers: Option<Spanned<i64>>,
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

/// `[traffic] type = "haproxy"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHaproxy {
    pub socket: Spanned<String>,
    pub backend: Spanned<String>,
    pub baseline: Spanned<String>,
    pub canary: Spanned<String>,
    pub timeout: Option<Spanned<Dur>>,
}

/// `[traffic] type = "nginx"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNginx {
    pub file: Spanned<String>,
    pub baseline: Spanned<String>,
    pub canary: Spanned<String>,
    pub server_params: Option<Spanned<String>>,
    pub test_command: Option<Spanned<Vec<Spanned<String>>>>,
    pub reload_command: Option<Spanned<Vec<Spanned<String>>>>,
    pub timeout: Option<Spanned<Dur>>,
}

/// `[traffic] type = "exec"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExec {
    pub command: Spanned<Vec<Spanned<String>>>,
    pub read_command: Option<Spanned<Vec<Spanned<String>>>>,
    pub timeout: Option<Spanned<Dur>>,
    pub resolution: Option<Spanned<f64>>,
    pub transient_exit_codes: Option<Vec<i32>>,
    pub env: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[traffic] type = "http"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttp {
    pub url: Spanned<String>,
    pub method: Option<Spanned<String>>,
    pub headers: Option<BTreeMap<String, Spanned<String>>>,
    pub body: Option<Spanned<String>>,
    pub token_env: Option<Spanned<String>>,
    pub token_file: Option<Spanned<String>>,
    pub token: Option<Spanned<toml::Value>>,
    pub token_header: Option<Spanned<String>>,
    pub token_prefix: Option<String>,
    pub success_statuses: Option<Spanned<Vec<Spanned<i64>>>>,
    pub timeout: Option<Spanned<Dur>>,
    pub resolution: Option<Spanned<f64>>,
    pub read_url: Option<Spanned<String>>,
    pub read_pointer: Option<Spanned<String>>,
}

/// `[traffic] type = "gateway-api"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGatewayApi {
    pub namespace: Spanned<String>,
    pub route: Spanned<String>,
    pub rule: Option<Spanned<i64>>,
    pub baseline: Spanned<String>,
    pub canary: Spanned<String>,
    pub kubeconfig: Option<Spanned<String>>,
    pub context: Option<Spanned<String>>,
    pub timeout: Option<Spanned<Dur>>,
}

/// `[metrics] type = "haproxy"`: no keys; it reads the `[traffic]` HAProxy's counters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHaproxyStats {}
