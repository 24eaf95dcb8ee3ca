//! The serde side of a policy: what TOML may contain, before semantic checks.
//!
//! Every struct denies unknown fields. Sections chosen by a tag (`[traffic] type`,
//! `[metrics] type`, `[[metric]] judge`) are split by hand in [`super::validate`] and each
//! variant's struct is deserialized on its own, so spans survive (no internally tagged
//! enums, no `flatten`).
//!
//! These structs are also the single source of the policy's JSON Schema
//! ([`super::schema`]): each field's `///` comment is its description there, and
//! `#[schemars(extend("default" = ..))]` is its default, which a test holds against what the
//! parser does when the key is left out. `toml::Spanned` fields
//! say which type they hold with `#[schemars(with = ..)]`.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use super::schema::{Variants, dur_text};

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

impl JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A duration with a unit, e.g. \"30s\", \"5m\", \"1h30m\", \"250ms\" (humantime; units ns, us, ms, s, m, h, d, w, M, y and their long names).",
            // Lexically what humantime reads: numbers each followed by a unit, or a bare 0;
            // the units themselves are checked by the parser.
            "pattern": "^\\s*(0|([0-9]+(\\.[0-9]+)?\\s*[A-Za-zµ]+\\s*)+)\\s*$"
        })
    }
}

/// The top level of a policy: its name and the keys above the first `[section]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoot {
    /// Rollout name, used in decision records, logs and notifications (not empty).
    #[schemars(with = "String", extend("pattern" = "\\S"))]
    pub name: Spanned<String>,
    /// Free text about the rollout.
    pub description: Option<String>,
    /// False-rollback budget of the whole rollout, in (0, 0.5]: at most this share of
    /// rollouts of a canary as good as the baseline are rolled back, however often the data
    /// is looked at; split over the sequential metrics that do not set their own.
    #[schemars(
        with = "Option<f64>",
        extend("default" = 0.05, "exclusiveMinimum" = 0, "maximum" = 0.5)
    )]
    pub alpha: Option<Spanned<f64>>,
    /// File the decision records (JSON lines) are appended to; `--decisions FILE` overrides
    /// it. Default: none written.
    pub decisions: Option<String>,
}

/// How a step ends well.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Advance {
    /// After the step's duration and minimum requests, with data and without a Fail.
    NoFail,
    /// Only when every metric passes (and the step's duration and minimum requests are met).
    Pass,
}

/// Which step changes wait for an operator's approval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OnNoData {
    /// Keep holding the step (the deadline still applies).
    Hold,
    /// Roll back.
    Rollback,
}

/// What the controller does when it finds a weight in force that it did not apply (someone
/// changed traffic by hand, another controller acted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
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

/// How the canary gets its traffic (`[rollout] strategy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Traffic moves to the canary in steps, each compared with the baseline.
    #[default]
    Canary,
    /// Green (the canary) is checked while it takes no production traffic (the pre-rollout
    /// hooks and gates), then gets all of it in one switch; blue (the baseline) stays
    /// deployed for `keep_blue` so a rollback is one switch back.
    BlueGreen,
}

/// `[rollout]`: the steps of the rollout and its timing.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRollout {
    /// Percentages of requests sent to the canary, strictly increasing, each in (0, 100];
    /// reaching 100 promotes.
    #[schemars(
        with = "Option<Vec<Percent>>",
        extend("default" = [5, 25, 100], "minItems" = 1)
    )]
    pub steps: Option<Spanned<Vec<Spanned<f64>>>>,
    /// Minimum time at each step (1s to 7 days).
    #[schemars(with = "Option<Dur>", extend("default" = "5m"))]
    pub step_duration: Option<Spanned<Dur>>,
    /// Time between analysis ticks, each of which writes one decision record (100ms to 1h, at
    /// most step_duration).
    #[schemars(with = "Option<Dur>", extend("default" = "15s"))]
    pub analysis_interval: Option<Spanned<Dur>>,
    /// Requests per arm in a step before the step may end well.
    #[schemars(extend("default" = 100))]
    pub min_requests: Option<u64>,
    /// Time limit of the whole rollout; then it rolls back. Default: 3 × the least time the
    /// analysed steps take (at least 1m).
    #[schemars(with = "Option<Dur>")]
    pub deadline: Option<Spanned<Dur>>,
    /// How a step ends well: "no-fail" (after step_duration and min_requests, with data and
    /// no Fail) or "pass" (only when every metric passes).
    #[schemars(extend("default" = "no-fail"))]
    pub advance: Option<Advance>,
    /// What missing data does once it lasts no_data_limit: "hold" (until the deadline) or
    /// "rollback". Missing data never promotes.
    #[schemars(extend("default" = "hold"))]
    pub on_no_data: Option<OnNoData>,
    /// Consecutive time without data before on_no_data applies (at least analysis_interval).
    /// Default: 10 × analysis_interval.
    #[schemars(with = "Option<Dur>")]
    pub no_data_limit: Option<Spanned<Dur>>,
    /// Consecutive ticks with metric query errors before rolling back (0: never).
    #[schemars(extend("default" = 10))]
    pub error_limit: Option<u32>,
    /// Retries of a failed transient traffic change (backoff 0.5 s to 10 s) before giving up.
    #[schemars(extend("default" = 5))]
    pub apply_retries: Option<u32>,
    /// Time limit of one traffic change and of its read-back (100ms to 10m).
    #[schemars(with = "Option<Dur>", extend("default" = "10s"))]
    pub apply_timeout: Option<Spanned<Dur>>,
    /// Which step changes wait for an operator's POST /approve on the status server:
    /// "none", "promotion" or "every-step" (needs `--status-addr`).
    #[schemars(extend("default" = "none"))]
    pub approval: Option<Approval>,
    /// Windows starting within this long after the canary's first traffic are discarded
    /// (cold caches, JIT); the rollout holds meanwhile. Shorter than the deadline.
    #[schemars(with = "Option<Dur>", extend("default" = "0s"))]
    pub warmup: Option<Spanned<Dur>>,
    /// Before the first traffic change, the baseline's latency over this long is read (from
    /// sources that can look back: Prometheus) and the all-buckets latency test bets with
    /// it from the first window on; it is never evidence (0s: not read). At most 1h.
    #[schemars(with = "Option<Dur>", extend("default" = "5m"))]
    pub baseline_history: Option<Spanned<Dur>>,
    /// The baseline counts as unhealthy when its own error rate is shown to exceed this, in
    /// (0, 1]: nothing advances or promotes and comparisons are not acted on (1 turns the
    /// check off).
    #[schemars(
        with = "Option<f64>",
        extend("default" = 0.1, "exclusiveMinimum" = 0, "maximum" = 1)
    )]
    pub baseline_max_error_rate: Option<Spanned<f64>>,
    /// What a weight in force that coalmine did not apply does: "pause" (touch nothing,
    /// notify, wait for an operator), "rollback" or "adopt" (go on from the weight found).
    #[schemars(extend("default" = "pause"))]
    pub on_external_change: Option<OnExternalChange>,
    /// True: a step ends before step_duration once every metric passes and min_requests is
    /// met (default: each step bakes for its full step_duration).
    #[schemars(extend("default" = false))]
    pub early_pass: Option<bool>,
    /// `[[rollout.step]]`: the plan step by step (weight, duration, min_requests, pause,
    /// analysis), instead of `steps`; not both.
    #[schemars(with = "Option<Vec<RawStep>>", extend("minItems" = 1))]
    pub step: Option<Vec<Spanned<RawStep>>>,
    /// `[[rollout.gate]]`: a webhook or command that must say yes before traffic moves
    /// (confirm-rollout, confirm-step, confirm-promotion), or is told after a rollback.
    #[schemars(with = "Option<Vec<super::gates::RawGate>>")]
    pub gate: Option<Vec<Spanned<super::gates::RawGate>>>,
    /// After the last step, keep judging the canary at 100 % this long with the judges that
    /// need no concurrent baseline (threshold guards) and roll back to 0 on a Fail; then
    /// promoted (0s: promoted as soon as 100 % is in force).
    #[schemars(with = "Option<Dur>", extend("default" = "0s"))]
    pub post_promotion: Option<Spanned<Dur>>,
    /// "canary" (steps, each compared with the baseline) or "blue-green" (green is checked
    /// at 0 % by the pre-rollout hooks and gates, then one switch 0 → 100, the
    /// post_promotion window, and keep_blue; no steps).
    #[schemars(with = "Option<Strategy>", extend("default" = "canary"))]
    pub strategy: Option<Spanned<Strategy>>,
    /// With strategy = "blue-green": how long blue stays deployed after the
    /// post-promotion window for a fast rollback (`coalmine rollback` switches back
    /// meanwhile); the `blue-retired` gates are told at its end (0s: at once).
    #[schemars(with = "Option<Dur>", extend("default" = "0s"))]
    pub keep_blue: Option<Spanned<Dur>>,
}

/// `[[rollout.step]]`: one step of the plan.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStep {
    /// Percentage of requests sent to the canary, in (0, 100], above the previous step's;
    /// 100 promotes.
    #[schemars(with = "Percent")]
    pub weight: Spanned<f64>,
    /// Least analysed time at this weight (1s to 7 days). Default: [rollout] step_duration.
    #[schemars(with = "Option<Dur>")]
    pub duration: Option<Spanned<Dur>>,
    /// Requests per arm at this weight before the step may end well. Default: [rollout]
    /// min_requests.
    pub min_requests: Option<u64>,
    /// Once the step is otherwise done, wait: a duration ("10m"), or "until-promoted" (until
    /// an operator runs `coalmine promote`). Metrics are still judged while it waits, a Fail
    /// still rolls back, and the deadline still applies.
    #[schemars(with = "Option<String>")]
    pub pause: Option<Spanned<String>>,
    /// False: the step only moves traffic; nothing is judged at this weight (its windows are
    /// discarded) and it ends after its duration (and pause).
    #[schemars(extend("default" = true))]
    pub analysis: Option<bool>,
    /// `[[rollout.step.gate]]`: gates (without `type`) asked before traffic moves to this
    /// step.
    #[schemars(with = "Option<Vec<super::gates::RawGate>>")]
    pub gate: Option<Vec<Spanned<super::gates::RawGate>>>,
}

/// A step's percentage of requests to the canary, in (0, 100].
#[derive(JsonSchema)]
#[schemars(inline, extend("exclusiveMinimum" = 0, "maximum" = 100))]
#[allow(
    dead_code,
    reason = "a schema-only type: steps are read as `Spanned<f64>`"
)]
pub(crate) struct Percent(f64);

/// `[[metric]]` keys shared by every judge.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetricCommon {
    /// Unique name of the metric, used in records and messages.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Free text about the metric.
    pub description: Option<String>,
    /// With [metrics] type = "builtin" or "haproxy": the signal, "errors" (5xx responses,
    /// upstream failures, bodies broken after the headers) or "latency" (to the last byte,
    /// successes only; not with haproxy).
    #[schemars(with = "Option<BuiltinSignalName>")]
    pub builtin: Option<Spanned<String>>,
    /// With Prometheus: the query counting events (e.g. errors) per arm over `{{window}}`;
    /// goes with trials.
    #[schemars(with = "Option<String>")]
    pub events: Option<Spanned<String>>,
    /// With Prometheus: the query counting trials (requests) per arm over `{{window}}`; goes
    /// with events.
    #[schemars(with = "Option<String>")]
    pub trials: Option<Spanned<String>>,
    /// With Prometheus: `sum by (le)` of histogram bucket increases per arm (latency).
    #[schemars(with = "Option<String>")]
    pub histogram: Option<Spanned<String>>,
    /// With Prometheus: a range query per arm, one point per step (for mann-whitney).
    #[schemars(with = "Option<String>")]
    pub series: Option<Spanned<String>>,
    /// With Prometheus: one value for the canary alone (for threshold).
    #[schemars(with = "Option<String>")]
    pub query: Option<Spanned<String>>,
    /// Recorded and reported, never acted on.
    #[serde(default)]
    pub dry_run: bool,
}

/// The signals of the built-in source.
#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
#[allow(
    dead_code,
    reason = "a schema-only type: `builtin` is read as a string"
)]
#[schemars(rename = "BuiltinSignal")]
pub(crate) enum BuiltinSignalName {
    /// 5xx responses, upstream failures and bodies broken after the headers.
    Errors,
    /// Response latency to the last byte, successes only.
    Latency,
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

/// Options of `judge = "sequential"`: anytime-valid tests on error events (counts) or on
/// slow-request events (a latency histogram).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSequential {
    /// Counts: the canary's error rate may be up to this many times the baseline's; latency:
    /// the canary may be up to this many times slower (at least 1).
    #[schemars(with = "Option<f64>", extend("default" = 1.0, "exclusiveMinimum" = 0))]
    pub allowed_ratio: Option<Spanned<f64>>,
    /// The canary's assignment probability: "assigned" (the weight in force; exact for
    /// per-request routers) or "observed" (its share of requests in earlier windows at that
    /// weight; for per-instance routing).
    #[schemars(
        with = "Option<Variants<crate::analysis::share::ShareMode>>",
        extend("default" = "assigned")
    )]
    pub share: Option<crate::analysis::share::ShareMode>,
    /// The mixture over rate ratios, points spaced geometrically in ln ratio. Default:
    /// errors { min_ratio = 1.2, max_ratio = 10, points = 7 }, latency { min_ratio = 1.05,
    /// max_ratio = 5, points = 10 }.
    #[schemars(with = "Option<RawPrior>")]
    pub prior: Option<Spanned<RawPrior>>,
    /// The metric passes once its confidence interval's upper end is below this ratio.
    /// Default: 1.5 × allowed_ratio for counts, 1.25 × allowed_ratio for latency.
    #[schemars(with = "Option<f64>", extend("exclusiveMinimum" = 0))]
    pub pass_ratio: Option<Spanned<f64>>,
    /// This metric's share of the policy's alpha, in (0, 0.5). Default: what explicit values
    /// leave of the policy's alpha, split equally over the sequential metrics without one.
    #[schemars(
        with = "Option<f64>",
        extend("exclusiveMinimum" = 0, "exclusiveMaximum" = 0.5)
    )]
    pub alpha: Option<Spanned<f64>>,
    /// Latency: slow-request thresholds at these quantiles of the baseline (estimated from
    /// earlier windows only), each in (0, 1).
    #[schemars(with = "Option<Vec<Quantile>>", extend("default" = [0.5, 0.9, 0.99], "minItems" = 1))]
    pub quantiles: Option<Spanned<Vec<f64>>>,
    /// Latency: fixed slow-request thresholds instead of quantiles, e.g. `["100ms", "500ms"]`.
    #[schemars(with = "Option<Vec<Dur>>", extend("minItems" = 1))]
    pub thresholds: Option<Spanned<Vec<Dur>>>,
    /// Latency only: `"buckets"` (default: the whole-histogram test) or `"slow-thresholds"`
    /// (the test at a few slow-request thresholds; fixed `thresholds` select it).
    #[schemars(
        with = "Option<String>",
        extend("enum" = ["buckets", "slow-thresholds"], "default" = "buckets")
    )]
    pub test: Option<Spanned<String>>,
}

/// A quantile, in (0, 1).
#[derive(JsonSchema)]
#[schemars(inline, extend("exclusiveMinimum" = 0, "exclusiveMaximum" = 1))]
#[allow(dead_code, reason = "a schema-only type: quantiles are read as `f64`")]
pub(crate) struct Quantile(f64);

/// `prior = { min_ratio = 1.2, max_ratio = 10, points = 9 }` of a sequential metric.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Prior")]
pub(crate) struct RawPrior {
    /// Smallest rate ratio of the mixture (above 1).
    #[schemars(extend("exclusiveMinimum" = 1))]
    pub min_ratio: f64,
    /// Largest rate ratio of the mixture (above min_ratio).
    pub max_ratio: f64,
    /// Number of ratios in the mixture (1 to 200).
    #[schemars(extend("minimum" = 1, "maximum" = 200))]
    pub points: usize,
}

/// Options of `judge = "threshold"`: an absolute bound on the canary alone in each window.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawThreshold {
    /// Lower bound on the canary's value: the error rate for counts, a quantile (seconds)
    /// for histograms, the value for scalars, the last point for series. Default: none (at
    /// least one of min and max).
    #[schemars(with = "Option<f64>")]
    pub min: Option<Spanned<f64>>,
    /// Upper bound on the canary's value (as for min). Default: none (at least one of min
    /// and max).
    #[schemars(with = "Option<f64>")]
    pub max: Option<Spanned<f64>>,
    /// Histograms: which quantile is bounded, in (0, 1).
    #[schemars(
        with = "Option<f64>",
        extend("default" = 0.99, "exclusiveMinimum" = 0, "exclusiveMaximum" = 1)
    )]
    pub quantile: Option<Spanned<f64>>,
    /// Failing windows that make a Fail.
    #[schemars(with = "Option<u32>", extend("default" = 1, "minimum" = 1))]
    pub failure_limit: Option<Spanned<u32>>,
    /// How failing windows are counted: "consecutive" (a passing window resets the count) or
    /// "total" (they add up over the rollout, Flagger's failedChecks).
    #[schemars(
        with = "Option<Variants<crate::analysis::threshold::FailureCount>>",
        extend("default" = "consecutive")
    )]
    pub count_failures: Option<crate::analysis::threshold::FailureCount>,
    /// Windows with fewer canary requests than this are inconclusive, not failures.
    #[schemars(with = "Option<f64>", extend("default" = 1.0, "minimum" = 0))]
    pub min_trials: Option<Spanned<f64>>,
}

/// Kayenta effect sizes, spelt as on the command line.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
#[schemars(rename = "EffectSize")]
pub(crate) enum RawEffectSize {
    /// The ratio of the arms' means.
    MeanRatio,
    /// The common-language effect size (probability that a canary value exceeds a baseline
    /// value).
    Cles,
}

/// `outliers = "remove" | "keep"`.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "Outliers")]
pub(crate) enum RawOutliers {
    /// Drop the points beyond the IQR fences (outlier_factor × IQR).
    Remove,
    /// Keep every point.
    Keep,
}

/// Options of `judge = "mann-whitney"`: Kayenta's NetflixACAJudge on each arm's series,
/// scored by [scoring].
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMannWhitney {
    /// Confidence of the Mann-Whitney interval for canary − baseline (R's algorithm), in
    /// (0, 1).
    #[schemars(with = "Option<f64>", extend("default" = 0.98))]
    pub confidence: Option<Spanned<f64>>,
    /// The interval must clear tolerance × |estimate| to count as a difference.
    #[schemars(with = "Option<f64>", extend("default" = 0.25))]
    pub tolerance: Option<Spanned<f64>>,
    /// Which changes count against the canary: "increase", "decrease" or "either".
    #[schemars(
        with = "Option<Variants<crate::analysis::kayenta::Direction>>",
        extend("default" = "either")
    )]
    pub direction: Option<crate::analysis::kayenta::Direction>,
    /// The effect size that gates High and Low: "mean-ratio" or "cles".
    #[schemars(extend("default" = "mean-ratio"))]
    pub effect_size: Option<RawEffectSize>,
    /// Effect-size gate for an increase. Default: 1.0 with mean-ratio, 0.5 with cles.
    #[schemars(with = "Option<f64>")]
    pub allowed_increase: Option<Spanned<f64>>,
    /// Effect-size gate for a decrease. Default: 1.0 with mean-ratio, 0.5 with cles.
    #[schemars(with = "Option<f64>")]
    pub allowed_decrease: Option<Spanned<f64>>,
    /// A critical metric's High or Low (or missing data) fails the whole analysis.
    #[schemars(extend("default" = false))]
    pub critical: Option<bool>,
    /// Effect size beyond which an increase is critical. Default: none.
    #[schemars(with = "Option<f64>")]
    pub critical_increase: Option<Spanned<f64>>,
    /// Effect size beyond which a decrease is critical. Default: none.
    #[schemars(with = "Option<f64>")]
    pub critical_decrease: Option<Spanned<f64>>,
    /// Missing data counts as a failure (NodataFailMetric).
    #[schemars(extend("default" = false))]
    pub must_have_data: Option<bool>,
    /// What NaN points become: "remove" (dropped) or "replace" (0).
    #[schemars(
        with = "Option<Variants<crate::analysis::kayenta::NanStrategy>>",
        extend("default" = "remove")
    )]
    pub nan_strategy: Option<crate::analysis::kayenta::NanStrategy>,
    /// "remove" drops points beyond the IQR fences; "keep" keeps them.
    #[schemars(extend("default" = "keep"))]
    pub outliers: Option<RawOutliers>,
    /// The IQR fences' factor for outliers = "remove".
    #[schemars(with = "Option<f64>", extend("default" = 3.0))]
    pub outlier_factor: Option<Spanned<f64>>,
    /// Scorecard group of the metric. Default: the metric's name.
    pub group: Option<String>,
    /// Muted metrics are judged and recorded but left out of the score.
    #[schemars(extend("default" = false))]
    pub muted: Option<bool>,
}

/// `[scoring]`: Kayenta's score over the `mann-whitney` metrics.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawScoring {
    /// A score at or above this passes (0 to 100).
    #[schemars(with = "Option<f64>", extend("default" = 95.0, "minimum" = 0, "maximum" = 100))]
    pub pass: Option<Spanned<f64>>,
    /// A score below this (or a critical failure) fails at once (0 to pass).
    #[schemars(with = "Option<f64>", extend("default" = 75.0, "minimum" = 0, "maximum" = 100))]
    pub marginal: Option<Spanned<f64>>,
    /// Points per arm before the score is acted on.
    #[schemars(extend("default" = 5))]
    pub min_points: Option<usize>,
    /// Weight of each group (the metrics' group names), adding up to at most 100;
    /// unweighted groups share the rest.
    #[schemars(with = "Option<BTreeMap<String, NonNegative>>")]
    pub weights: Option<Spanned<std::collections::BTreeMap<String, f64>>>,
}

/// A number ≥ 0.
#[derive(JsonSchema)]
#[schemars(inline, extend("minimum" = 0))]
#[allow(dead_code, reason = "a schema-only type: weights are read as `f64`")]
pub(crate) struct NonNegative(f64);

/// `[traffic] type = "proxy"`: coalmine's own weighted reverse proxy, which serves while the
/// rollout runs.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProxy {
    /// Address the proxy listens on, e.g. "127.0.0.1:8080" (port 0 picks a free port).
    #[schemars(with = "String")]
    pub listen: Spanned<String>,
    /// The baseline upstream, an http:// URL with a host and a port.
    #[schemars(with = "String")]
    pub baseline: Spanned<String>,
    /// The canary upstream, an http:// URL with a host and a port.
    #[schemars(with = "String")]
    pub canary: Spanned<String>,
    /// Time limit for the upstream's response headers (504 after it) and for each wait for
    /// more of its body; either timeout counts as an error (10ms to 1h).
    #[schemars(with = "Option<Dur>", extend("default" = "30s"))]
    pub upstream_timeout: Option<Spanned<Dur>>,
    /// Path `run` GETs from the canary before any traffic moves (starting with `/`); the
    /// canary must answer one of readiness_statuses, else `run` exits 3 with nothing moved.
    #[schemars(with = "Option<String>", extend("default" = "/", "pattern" = "^\\s*/\\S*\\s*$"))]
    pub readiness_path: Option<Spanned<String>>,
    /// Statuses of the readiness probe that mean ready (100 to 599); empty: any 2xx.
    #[schemars(with = "Option<Vec<HttpStatus>>", extend("default" = []))]
    pub readiness_statuses: Option<Spanned<Vec<Spanned<i64>>>>,
    /// Time limit of one readiness probe (positive).
    #[schemars(with = "Option<Dur>", extend("default" = "2s"))]
    pub readiness_timeout: Option<Spanned<Dur>>,
    /// Readiness probes before giving up, 1 s apart (at least 1).
    #[schemars(with = "Option<u32>", extend("default" = 3, "minimum" = 1))]
    pub readiness_attempts: Option<Spanned<u32>>,
    /// Time a client has for a whole request head (from the accept, or from the first byte
    /// of its next request); then the connection closes.
    #[schemars(
        with = "Option<Dur>",
        extend("default" = dur_text(crate::net::DEFAULT_HEADER_READ_TIMEOUT))
    )]
    pub header_read_timeout: Option<Spanned<Dur>>,
    /// Time a kept-alive client connection may wait for its next request; then it closes.
    #[schemars(
        with = "Option<Dur>",
        extend("default" = dur_text(crate::net::DEFAULT_IDLE_TIMEOUT))
    )]
    pub idle_timeout: Option<Spanned<Dur>>,
    /// Request headers a client may send (1 to 10000); more is a 431.
    #[schemars(
        with = "Option<i64>",
        extend("default" = crate::net::DEFAULT_MAX_HEADERS, "minimum" = 1, "maximum" = 10000)
    )]
    pub max_headers: Option<Spanned<i64>>,
}

/// `[metrics] type = "builtin"`: the built-in proxy's own counters and latency histograms
/// (needs [traffic] type = "proxy"); the default when [metrics] is left out.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBuiltin {}

/// `[metrics] type = "prometheus"`: PromQL templates per arm against a Prometheus-compatible
/// HTTP API.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPrometheus {
    /// Base URL of the HTTP API, e.g. "http://127.0.0.1:9090".
    #[schemars(with = "String")]
    pub url: Spanned<String>,
    /// Time limit of one query (10ms to 1h).
    #[schemars(with = "Option<Dur>", extend("default" = "10s"))]
    pub timeout: Option<Spanned<Dur>>,
    /// Environment variable holding a bearer token (never write the token in a policy).
    #[schemars(with = "Option<String>")]
    pub token_env: Option<Spanned<String>>,
    /// File holding a bearer token (surrounding whitespace trimmed).
    #[schemars(with = "Option<String>")]
    pub token_file: Option<Spanned<String>>,
    /// Never accepted: tokens come from token_env or token_file.
    #[schemars(skip)]
    pub token: Option<Spanned<toml::Value>>,
    /// Extra request headers.
    pub headers: Option<BTreeMap<String, String>>,
    /// Variables of the query templates (`{{name}}`): a string, or one value per arm as
    /// { baseline = "..", canary = ".." }. `arm` and `window` are reserved.
    #[schemars(with = "Option<BTreeMap<String, Variable>>")]
    pub variables: Option<BTreeMap<String, Spanned<toml::Value>>>,
    /// Extra CA certificate (PEM) for TLS.
    #[schemars(with = "Option<String>")]
    pub ca_file: Option<Spanned<String>>,
    /// Resolution of the range queries of series metrics (1s to 1h). Default: the window's
    /// length (about the analysis interval).
    #[schemars(with = "Option<Dur>")]
    pub series_step: Option<Spanned<Dur>>,
}

/// A query template variable: the same value for both arms, or one per arm.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(
    dead_code,
    reason = "a schema-only type: variables are read as TOML values"
)]
pub(crate) enum Variable {
    /// The same value for both arms, e.g. a job or namespace.
    Same(String),
    /// One value per arm.
    PerArm(PerArm),
}

/// One value per arm of a variable.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(
    dead_code,
    reason = "a schema-only type: variables are read as TOML values"
)]
pub(crate) struct PerArm {
    /// The baseline's value.
    baseline: String,
    /// The canary's value.
    canary: String,
}

/// `[traffic] type = "haproxy"`: two servers' weights through HAProxy's runtime API.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHaproxy {
    /// The admin socket: a unix socket path ("/run/haproxy/admin.sock") or a TCP address
    /// ("ipv4@127.0.0.1:9999").
    #[schemars(with = "String")]
    pub socket: Spanned<String>,
    /// The backend holding both servers.
    #[schemars(with = "String")]
    pub backend: Spanned<String>,
    /// The baseline server's name in the backend.
    #[schemars(with = "String")]
    pub baseline: Spanned<String>,
    /// The canary server's name in the backend.
    #[schemars(with = "String")]
    pub canary: Spanned<String>,
    /// Time limit of one runtime-API command (10ms to 1h).
    #[schemars(with = "Option<Dur>", extend("default" = "5s"))]
    pub timeout: Option<Spanned<Dur>>,
}

/// `[traffic] type = "nginx"`: a weighted upstream include file, tested and reloaded.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNginx {
    /// The include file coalmine writes (the server lines of one upstream).
    #[schemars(with = "String")]
    pub file: Spanned<String>,
    /// The baseline server's address, as nginx's server directive takes it.
    #[schemars(with = "String")]
    pub baseline: Spanned<String>,
    /// The canary server's address.
    #[schemars(with = "String")]
    pub canary: Spanned<String>,
    /// Extra parameters for both server lines, e.g. "max_fails=3 fail_timeout=10s" (not
    /// weight, down or backup).
    #[schemars(with = "Option<String>")]
    pub server_params: Option<Spanned<String>>,
    /// Configuration test command (argv).
    #[schemars(with = "Option<Vec<String>>", extend("default" = ["nginx", "-t"]))]
    pub test_command: Option<Spanned<Vec<Spanned<String>>>>,
    /// Graceful reload command (argv).
    #[schemars(
        with = "Option<Vec<String>>",
        extend("default" = ["nginx", "-s", "reload"])
    )]
    pub reload_command: Option<Spanned<Vec<Spanned<String>>>>,
    /// Time limit of each command (10ms to 1h).
    #[schemars(with = "Option<Dur>", extend("default" = "30s"))]
    pub timeout: Option<Spanned<Dur>>,
}

/// `[traffic] type = "exec"`: your program, run with the weight as an argument.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExec {
    /// Program and arguments (argv, never a shell string); arguments may hold `{{weight}}`
    /// (basis points), `{{percent}}` or `{{fraction}}`.
    #[schemars(with = "Vec<String>", extend("minItems" = 1))]
    pub command: Spanned<Vec<Spanned<String>>>,
    /// Program (argv, no placeholders) printing the percentage in force on stdout. Default:
    /// none (the weight is not read back).
    #[schemars(with = "Option<Vec<String>>", extend("minItems" = 1))]
    pub read_command: Option<Spanned<Vec<Spanned<String>>>>,
    /// Time limit of one run (10ms to 1h).
    #[schemars(with = "Option<Dur>", extend("default" = "30s"))]
    pub timeout: Option<Spanned<Dur>>,
    /// Finest step the program takes, in percent, dividing 100 (e.g. 0.01, 1, 5).
    #[schemars(with = "Option<f64>", extend("default" = 0.01))]
    pub resolution: Option<Spanned<f64>>,
    /// Exit codes that mean "try again later" (all other non-zero codes are permanent).
    #[schemars(extend("default" = [75]))]
    pub transient_exit_codes: Option<Vec<i32>>,
    /// Variables of coalmine's environment passed to the program, beyond PATH, HOME, USER,
    /// LOGNAME, LANG, LC_*, TZ, TMPDIR and COALMINE_*; never a token variable.
    #[schemars(with = "Option<Vec<String>>", extend("default" = []))]
    pub env: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[traffic] type = "http"`: a templated request to a feature-flag service.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttp {
    /// URL template (http:// or https://); may hold `{{weight}}`, `{{percent}}` or
    /// `{{fraction}}`.
    #[schemars(with = "String")]
    pub url: Spanned<String>,
    /// HTTP method: GET, POST, PUT, PATCH or DELETE.
    #[schemars(with = "Option<String>", extend("default" = "PUT"))]
    pub method: Option<Spanned<String>>,
    /// Header templates (no Authorization: use token_env or token_file).
    #[schemars(with = "Option<BTreeMap<String, String>>")]
    pub headers: Option<BTreeMap<String, Spanned<String>>>,
    /// JSON body template, e.g. '{"rollout": {"percentage": {{percent}}}}'. Default: no body.
    #[schemars(with = "Option<String>")]
    pub body: Option<Spanned<String>>,
    /// Environment variable holding the token sent in token_header.
    #[schemars(with = "Option<String>")]
    pub token_env: Option<Spanned<String>>,
    /// File holding the token sent in token_header.
    #[schemars(with = "Option<String>")]
    pub token_file: Option<Spanned<String>>,
    /// Never accepted: tokens come from token_env or token_file.
    #[schemars(skip)]
    pub token: Option<Spanned<toml::Value>>,
    /// Header carrying the token.
    #[schemars(with = "Option<String>", extend("default" = "Authorization"))]
    pub token_header: Option<Spanned<String>>,
    /// Text before the token in token_header.
    #[schemars(extend("default" = "Bearer "))]
    pub token_prefix: Option<String>,
    /// Statuses that mean success (100 to 599). Default: any 2xx.
    #[schemars(with = "Option<Vec<HttpStatus>>", extend("minItems" = 1))]
    pub success_statuses: Option<Spanned<Vec<Spanned<i64>>>>,
    /// Time limit of one request (10ms to 1h).
    #[schemars(with = "Option<Dur>", extend("default" = "10s"))]
    pub timeout: Option<Spanned<Dur>>,
    /// Finest step the service takes, in percent, dividing 100 (e.g. 0.01, 1, 5).
    #[schemars(with = "Option<f64>", extend("default" = 0.01))]
    pub resolution: Option<Spanned<f64>>,
    /// URL to GET for reading the percentage in force back (with read_pointer). Default: no
    /// read-back.
    #[schemars(with = "Option<String>")]
    pub read_url: Option<Spanned<String>>,
    /// JSON pointer (RFC 6901) to the percentage in read_url's answer, e.g.
    /// "/rollout/percentage".
    #[schemars(with = "Option<String>")]
    pub read_pointer: Option<Spanned<String>>,
}

/// An HTTP status, 100 to 599.
#[derive(JsonSchema)]
#[schemars(inline, extend("minimum" = 100, "maximum" = 599))]
#[allow(dead_code, reason = "a schema-only type: statuses are read as `i64`")]
pub(crate) struct HttpStatus(i64);

/// `[traffic] type = "gateway-api"`: Kubernetes HTTPRoute backendRef weights.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGatewayApi {
    /// The HTTPRoute's namespace.
    #[schemars(with = "String")]
    pub namespace: Spanned<String>,
    /// The HTTPRoute's name.
    #[schemars(with = "String")]
    pub route: Spanned<String>,
    /// Index of the rule in spec.rules.
    #[schemars(with = "Option<i64>", extend("default" = 0, "minimum" = 0))]
    pub rule: Option<Spanned<i64>>,
    /// The baseline backendRef's name.
    #[schemars(with = "String")]
    pub baseline: Spanned<String>,
    /// The canary backendRef's name.
    #[schemars(with = "String")]
    pub canary: Spanned<String>,
    /// Kubeconfig file. Default: KUBECONFIG, ~/.kube/config, then in-cluster.
    #[schemars(with = "Option<String>")]
    pub kubeconfig: Option<Spanned<String>>,
    /// Kubeconfig context. Default: the current one.
    #[schemars(with = "Option<String>")]
    pub context: Option<Spanned<String>>,
    /// Time limit of one API call (10ms to 1h).
    #[schemars(with = "Option<Dur>", extend("default" = "10s"))]
    pub timeout: Option<Spanned<Dur>>,
}

/// `[metrics] type = "haproxy"`: per-server error counters (`show stat`) of the [traffic]
/// HAProxy (needs [traffic] type = "haproxy"); takes no other keys.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHaproxyStats {}
