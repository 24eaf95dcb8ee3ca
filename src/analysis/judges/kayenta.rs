//! Kayenta-compatible judge (NetflixACAJudge semantics) and scorer (statistics.md §4).
//!
//! Per metric, [`judge`] classifies the canary against the baseline from the two arms'
//! series values: NaN handling, optional IQR outlier removal, the no-data and degenerate
//! cases, then R's asymptotic Mann-Whitney interval for canary − baseline
//! ([`hodges_lehmann::asymptotic`]) against a tolerance of `tolerance·|estimate|`, gated by
//! an effect size (mean ratio or CLES). [`score`] turns the metric classifications into
//! Kayenta's weighted group score with pass / marginal thresholds.
//!
//! # Deviations from Kayenta, all deliberate
//! - Both arms constant but different: Kayenta adds random noise so that R's algorithm can
//!   run. coalmine is deterministic instead: the shift is then known exactly, so the
//!   estimate and both interval ends are `canary − baseline`, and the usual rules (direction,
//!   tolerance, effect-size and critical gates) apply to that. A constant canary above a
//!   constant baseline is therefore High (tolerance < 1), below it Low.
//! - A mean-ratio effect size with a zero mean is NaN (Kayenta uses 1.0 for a zero
//!   baseline mean); a NaN effect size does not block a High/Low or a critical failure.
//! - An arm with an infinite value cannot be judged (Kayenta's classification would fail
//!   with an error): the metric is Nodata, and critical when the metric is critical.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::analysis::fmt::{interval, num};
use crate::analysis::hodges_lehmann;
use crate::analysis::mann_whitney::{Alternative, SortedSample, rank_stats};

/// Which changes of the canary count against it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Both High and Low fail.
    #[default]
    Either,
    /// Only High fails (e.g. latency, errors).
    Increase,
    /// Only Low fails (e.g. throughput).
    Decrease,
}

/// Effect size that gates High/Low.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EffectSizeKind {
    /// mean(canary)/mean(baseline); gates default to 1.0.
    #[default]
    MeanRatio,
    /// Common-language effect size U_canary/(n1·n2); gates default to 0.5.
    Cles,
}

impl EffectSizeKind {
    /// The neutral value, Kayenta's default gate: 1.0 for the mean ratio, 0.5 for CLES.
    #[must_use]
    pub fn neutral(self) -> f64 {
        match self {
            Self::MeanRatio => 1.0,
            Self::Cles => 0.5,
        }
    }
}

/// What to do with NaN values in the series.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NanStrategy {
    /// Drop NaN values.
    #[default]
    Remove,
    /// Replace NaN values by 0.
    Replace,
}

/// A metric's classification, serialized as Kayenta's labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Classification {
    /// No significant difference (or not in a direction that counts).
    Pass,
    /// The canary is significantly higher.
    High,
    /// The canary is significantly lower.
    Low,
    /// An arm has no data (or cannot be judged).
    Nodata,
    /// An arm has no data and the metric requires data: counts as a failure in its group.
    NodataFailMetric,
}

/// Configuration of one metric's judge; `Default` is Kayenta's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KayentaConfig {
    /// Confidence level of the Mann-Whitney interval (Kayenta: 0.98).
    pub confidence: f64,
    /// Fraction of |estimate| the interval must clear (Kayenta: 0.25).
    pub tolerance: f64,
    /// Which changes count.
    pub direction: Direction,
    /// Effect size used by the gates.
    pub effect_size: EffectSizeKind,
    /// High needs effect size ≥ this (default: the effect size's neutral value).
    pub allowed_increase: Option<f64>,
    /// Low needs effect size ≤ this (default: the effect size's neutral value).
    pub allowed_decrease: Option<f64>,
    /// A critical metric's failure fails the whole analysis.
    pub critical: bool,
    /// A critical High is a critical failure when effect size ≥ this (default: neutral).
    pub critical_increase: Option<f64>,
    /// A critical Low is a critical failure when effect size ≤ this (default: neutral).
    pub critical_decrease: Option<f64>,
    /// Missing data fails the metric (NodataFailMetric) rather than being ignored.
    pub must_have_data: bool,
    /// NaN handling.
    pub nan_strategy: NanStrategy,
    /// Remove IQR outliers per arm before judging.
    pub remove_outliers: bool,
    /// IQR fence factor (Kayenta: 3).
    pub outlier_factor: f64,
}

impl Default for KayentaConfig {
    fn default() -> Self {
        Self {
            confidence: 0.98,
            tolerance: 0.25,
            direction: Direction::Either,
            effect_size: EffectSizeKind::MeanRatio,
            allowed_increase: None,
            allowed_decrease: None,
            critical: false,
            critical_increase: None,
            critical_decrease: None,
            must_have_data: false,
            nan_strategy: NanStrategy::Remove,
            remove_outliers: false,
            outlier_factor: 3.0,
        }
    }
}

impl KayentaConfig {
    /// Checks the numeric settings; the message names the offending setting.
    ///
    /// # Errors
    /// `confidence` outside (0, 1), a negative or non-finite `tolerance` or
    /// `outlier_factor`, or a NaN gate.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.confidence > 0.0 && self.confidence < 1.0) {
            return Err(format!(
                "confidence must be in (0, 1), got {}",
                self.confidence
            ));
        }
        if !(self.tolerance >= 0.0 && self.tolerance.is_finite()) {
            return Err(format!(
                "tolerance must be finite and ≥ 0, got {}",
                self.tolerance
            ));
        }
        if !(self.outlier_factor > 0.0 && self.outlier_factor.is_finite()) {
            return Err(format!(
                "outlier factor must be finite and > 0, got {}",
                self.outlier_factor
            ));
        }
        for (name, gate) in [
            ("allowed increase", self.allowed_increase),
            ("allowed decrease", self.allowed_decrease),
            ("critical increase", self.critical_increase),
            ("critical decrease", self.critical_decrease),
        ] {
            if gate.is_some_and(f64::is_nan) {
                return Err(format!("{name} must be a number"));
            }
        }
        Ok(())
    }

    fn gate(&self, g: Option<f64>) -> f64 {
        g.unwrap_or_else(|| self.effect_size.neutral())
    }
}

/// One metric's verdict with the numbers behind it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KayentaResult {
    /// The classification.
    pub classification: Classification,
    /// Whether this result is a critical failure (fails the whole analysis).
    pub critical: bool,
    /// Hodges-Lehmann estimate of canary − baseline (NaN when not computed).
    pub estimate: f64,
    /// Confidence interval of the shift (NaN when not computed; may be inverted with heavy
    /// ties, as in Kayenta).
    pub ci: (f64, f64),
    /// mean(canary)/mean(baseline), `None` when undefined.
    pub ratio: Option<f64>,
    /// The configured effect size, `None` when undefined.
    pub effect_size: Option<f64>,
    /// Baseline values judged (after NaN handling and outlier removal).
    pub baseline_n: usize,
    /// Canary values judged (after NaN handling and outlier removal).
    pub canary_n: usize,
    /// Why, in one line.
    pub reason: String,
}

/// R type 7 percentile (linear interpolation) of sorted data, `p` in [0, 1] (clamped);
/// NaN for an empty slice or a NaN `p`.
#[must_use]
pub fn percentile_r7(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() || p.is_nan() {
        return f64::NAN;
    }
    let p = p.clamp(0.0, 1.0);
    let h = (sorted.len() - 1) as f64 * p;
    let lo = h.floor() as usize;
    let frac = h - h.floor();
    match sorted.get(lo + 1) {
        Some(&next) if frac > 0.0 => sorted[lo] + frac * (next - sorted[lo]),
        _ => sorted[lo],
    }
}

/// Kayenta's IQR detector with reduced sensitivity: drops values strictly outside
/// [min(p1, p25 − f·IQR), max(p99, p75 + f·IQR)]. `sorted` stays sorted.
fn remove_outliers(sorted: &mut Vec<f64>, factor: f64) {
    let p25 = percentile_r7(sorted, 0.25);
    let p75 = percentile_r7(sorted, 0.75);
    let iqr = p75 - p25;
    let lower = percentile_r7(sorted, 0.01).min(p25 - factor * iqr);
    let upper = percentile_r7(sorted, 0.99).max(p75 + factor * iqr);
    sorted.retain(|&x| !(x < lower || x > upper));
}

fn prepare(values: &[f64], cfg: &KayentaConfig) -> SortedSample {
    let v: Vec<f64> = match cfg.nan_strategy {
        NanStrategy::Remove => values.iter().copied().filter(|x| !x.is_nan()).collect(),
        NanStrategy::Replace => values
            .iter()
            .map(|&x| if x.is_nan() { 0.0 } else { x })
            .collect(),
    };
    let mut s = SortedSample::from_vec(v);
    if cfg.remove_outliers && !s.is_empty() {
        let mut v = s.as_slice().to_vec();
        remove_outliers(&mut v, cfg.outlier_factor);
        s = SortedSample::from_vec(v);
    }
    s
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// Judges one metric, canary against baseline. Never panics, whatever the input.
#[must_use]
pub fn judge(baseline: &[f64], canary: &[f64], cfg: &KayentaConfig) -> KayentaResult {
    let b = prepare(baseline, cfg);
    let c = prepare(canary, cfg);
    let mut r = KayentaResult {
        classification: Classification::Nodata,
        critical: false,
        estimate: f64::NAN,
        ci: (f64::NAN, f64::NAN),
        ratio: None,
        effect_size: None,
        baseline_n: b.len(),
        canary_n: c.len(),
        reason: String::new(),
    };
    if let Err(e) = cfg.validate() {
        r.reason = format!("invalid configuration: {e}");
        return r;
    }
    if c.is_empty() || b.is_empty() {
        let arm = if c.is_empty() { "canary" } else { "baseline" };
        if cfg.nan_strategy == NanStrategy::Replace {
            r.classification = Classification::Pass;
            r.reason = format!("no data for the {arm}; passes under the replace NaN strategy");
        } else if cfg.must_have_data && !cfg.critical {
            r.classification = Classification::NodataFailMetric;
            r.reason = format!("no data for the {arm}, and the metric must have data");
        } else {
            r.critical = cfg.critical;
            r.reason = format!("no data for the {arm}");
        }
        return r;
    }
    if !c.all_finite() || !b.all_finite() {
        let arm = if c.all_finite() { "baseline" } else { "canary" };
        r.critical = cfg.critical;
        r.reason = format!("the {arm} has infinite values; the shift cannot be estimated");
        return r;
    }
    let (xs, ys) = (c.as_slice(), b.as_slice());
    let (mc, mb) = (mean(xs), mean(ys));
    let ratio = if mc == 0.0 || mb == 0.0 {
        f64::NAN
    } else {
        mc / mb
    };
    let cles = rank_stats(xs, ys, 0.0).two_u as f64 / 2.0 / (xs.len() as f64 * ys.len() as f64);
    let es = match cfg.effect_size {
        EffectSizeKind::MeanRatio => ratio,
        EffectSizeKind::Cles => cles,
    };
    r.ratio = finite(ratio);
    r.effect_size = finite(es);

    let constant = |v: &[f64]| v[0] == v[v.len() - 1];
    if xs == ys {
        r.classification = Classification::Pass;
        r.estimate = 0.0;
        r.ci = (0.0, 0.0);
        if !constant(xs)
            && let Ok(s) =
                hodges_lehmann::asymptotic(&c, &b, cfg.confidence, Alternative::TwoSided, true)
        {
            r.ci = s.ci;
        }
        r.reason = "canary and baseline values are identical".to_string();
        return r;
    }
    if constant(xs) && constant(ys) && xs[0] == ys[0] {
        // Same single value in both arms (the sizes differ, or the check above caught it).
        r.classification = Classification::Pass;
        r.estimate = 0.0;
        r.ci = (0.0, 0.0);
        r.reason = "only one distinct value across both arms".to_string();
        return r;
    }
    // Both arms constant but different: the shift is known exactly (see module docs).
    let shift =
        match hodges_lehmann::asymptotic(&c, &b, cfg.confidence, Alternative::TwoSided, true) {
            Ok(s) => s,
            Err(e) => {
                r.critical = cfg.critical;
                r.reason = format!("cannot estimate the shift: {e}");
                return r;
            }
        };
    r.estimate = shift.estimate;
    r.ci = shift.ci;
    classify(&mut r, es, cfg);
    r
}

fn classify(r: &mut KayentaResult, es: f64, cfg: &KayentaConfig) {
    let bound = cfg.tolerance * r.estimate.abs();
    let (lo, hi) = r.ci;
    // A NaN effect size does not block the gate (statistics.md §4).
    let at_least = |g: f64| es.is_nan() || es >= g;
    let at_most = |g: f64| es.is_nan() || es <= g;
    let counts_up = cfg.direction != Direction::Decrease;
    let counts_down = cfg.direction != Direction::Increase;
    let effect = match cfg.effect_size {
        EffectSizeKind::MeanRatio => format!("mean ratio {}", num(es)),
        EffectSizeKind::Cles => format!("CLES {}", num(es)),
    };
    let ci_text = format!(
        "{:.0}% CI of canary − baseline {} (estimate {})",
        cfg.confidence * 100.0,
        interval(lo, hi),
        num(r.estimate)
    );
    if counts_up && lo > bound && at_least(cfg.gate(cfg.allowed_increase)) {
        r.classification = Classification::High;
        r.critical = cfg.critical && at_least(cfg.gate(cfg.critical_increase));
        r.reason = format!("High: {ci_text} lies above +{}; {effect}", num(bound));
    } else if counts_down && hi < -bound && at_most(cfg.gate(cfg.allowed_decrease)) {
        r.classification = Classification::Low;
        r.critical = cfg.critical && at_most(cfg.gate(cfg.critical_decrease));
        r.reason = format!("Low: {ci_text} lies below −{}; {effect}", num(bound));
    } else {
        r.classification = Classification::Pass;
        r.reason = format!("Pass: {ci_text} within tolerance ±{}; {effect}", num(bound));
    }
    if r.critical {
        r.reason.push_str(" (critical)");
    }
}

/// One metric's result as the scorer sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoredMetric {
    /// Metric name.
    pub name: String,
    /// The group the metric belongs to.
    pub group: String,
    /// Its classification.
    pub classification: Classification,
    /// Whether the result is a critical failure ([`KayentaResult::critical`]).
    pub critical: bool,
    /// Muted metrics are left out of everything.
    pub muted: bool,
}

/// Group weights and score thresholds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreConfig {
    /// Weight (percent) per group; groups without one share 100 − Σ weights equally.
    pub group_weights: BTreeMap<String, f64>,
    /// Score at or above which the analysis passes.
    pub pass: f64,
    /// Score at or above which (and below `pass`) it is marginal.
    pub marginal: f64,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        Self {
            group_weights: BTreeMap::new(),
            pass: 95.0,
            marginal: 75.0,
        }
    }
}

/// The analysis outcome from the summary score.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScoreOutcome {
    /// score ≥ pass threshold.
    Pass,
    /// marginal ≤ score < pass.
    Marginal,
    /// score < marginal, a critical failure, or too much missing data.
    Fail,
}

/// Summary and group scores.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Scorecard {
    /// Summary score, 0–100, rounded half-up to 2 decimals.
    pub score: f64,
    /// Score per group (100 for a group with no Pass/High/Low/NodataFailMetric).
    pub groups: BTreeMap<String, f64>,
    /// Pass, Marginal or Fail.
    pub outcome: ScoreOutcome,
    /// A critical metric failed: the score is 0 and the outcome Fail.
    pub critical_failure: bool,
    /// Why, in one line.
    pub reason: String,
}

/// Share of (unmuted) metrics with Nodata at or above which the score is 0.
const NODATA_LIMIT: f64 = 0.5;

/// Kayenta's weighted-sum scorer. Muted metrics are excluded; with no unmuted metric the
/// score is 0 (nothing passed).
#[must_use]
pub fn score(metrics: &[ScoredMetric], cfg: &ScoreConfig) -> Scorecard {
    let active: Vec<&ScoredMetric> = metrics.iter().filter(|m| !m.muted).collect();
    let mut counts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for m in &active {
        let e = counts.entry(m.group.as_str()).or_default();
        match m.classification {
            Classification::Pass => {
                e.0 += 1;
                e.1 += 1;
            }
            Classification::High | Classification::Low | Classification::NodataFailMetric => {
                e.1 += 1;
            }
            Classification::Nodata => {}
        }
    }
    let groups: BTreeMap<String, f64> = counts
        .iter()
        .map(|(g, &(pass, total))| {
            let s = if total == 0 {
                100.0
            } else {
                100.0 * pass as f64 / total as f64
            };
            ((*g).to_string(), s)
        })
        .collect();
    let outcome_of = |s: f64| {
        if s >= cfg.pass {
            ScoreOutcome::Pass
        } else if s >= cfg.marginal {
            ScoreOutcome::Marginal
        } else {
            ScoreOutcome::Fail
        }
    };
    if let Some(m) = active
        .iter()
        .find(|m| m.critical && m.classification != Classification::Pass)
    {
        return Scorecard {
            score: 0.0,
            groups,
            outcome: ScoreOutcome::Fail,
            critical_failure: true,
            reason: format!(
                "critical metric `{}` failed ({:?})",
                m.name, m.classification
            ),
        };
    }
    let nodata = active
        .iter()
        .filter(|m| m.classification == Classification::Nodata)
        .count();
    if !active.is_empty() && nodata as f64 / active.len() as f64 >= NODATA_LIMIT {
        return Scorecard {
            score: 0.0,
            groups,
            outcome: outcome_of(0.0),
            critical_failure: false,
            reason: format!("{nodata} of {} metrics have no data", active.len()),
        };
    }
    let weight_sum: f64 = cfg.group_weights.values().sum();
    let unweighted = groups
        .keys()
        .filter(|g| !cfg.group_weights.contains_key(*g))
        .count();
    let shared = if unweighted == 0 {
        0.0
    } else {
        (100.0 - weight_sum) / unweighted as f64
    };
    let total: f64 = groups
        .iter()
        .map(|(g, s)| s * cfg.group_weights.get(g).copied().unwrap_or(shared) / 100.0)
        .sum();
    let score = round_half_up_2(total);
    Scorecard {
        score,
        groups,
        outcome: outcome_of(score),
        critical_failure: false,
        reason: format!(
            "score {score} of {} metrics in {} groups",
            active.len(),
            counts.len()
        ),
    }
}

/// Rounds half-up (away from zero) to 2 decimals on the shortest decimal representation,
/// as Java's `BigDecimal.setScale(2, HALF_UP)` does in Kayenta: 83.335 → 83.34.
#[must_use]
pub fn round_half_up_2(x: f64) -> f64 {
    if !x.is_finite() || x.abs() >= 1e15 {
        return x;
    }
    let text = format!("{}", x.abs());
    let (int_part, frac) = text.split_once('.').unwrap_or((&text, ""));
    let digit = |i: usize| u64::from(frac.as_bytes().get(i).map_or(0, |d| d - b'0'));
    let Ok(int_part) = int_part.parse::<u64>() else {
        return x;
    };
    let mut cents = int_part * 100 + digit(0) * 10 + digit(1);
    if digit(2) >= 5 {
        cents += 1;
    }
    (cents as f64 / 100.0).copysign(x)
}

#[cfg(test)]
mod tests;
