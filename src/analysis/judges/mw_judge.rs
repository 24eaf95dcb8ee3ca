//! The `mann-whitney` judge: Kayenta's NetflixACAJudge on the series of each arm so far
//! (statistics.md §4), re-judged at every tick on the growing window, plus the scorecard
//! that turns the classifications of all such metrics into one score.

use serde::{Deserialize, Serialize};

use crate::analysis::fmt;
use crate::analysis::kayenta::{
    self, Classification, KayentaConfig, ScoreConfig, ScoreOutcome, ScoredMetric,
};
use crate::analysis::observation::{Observation, Segment};
use crate::analysis::verdict::{MetricVerdict, Outcome, Stats};

/// Settings of one `mann-whitney` metric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MannWhitneySpec {
    /// Kayenta's per-metric configuration.
    pub cfg: KayentaConfig,
    /// Scorecard group (default: the metric's name).
    pub group: String,
    /// Left out of the score.
    pub muted: bool,
}

/// The numbers behind a `mann-whitney` verdict.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MannWhitneyStats {
    /// Kayenta's classification.
    pub classification: Classification,
    /// A critical failure.
    pub critical: bool,
    /// Hodges-Lehmann shift canary − baseline.
    pub estimate: f64,
    /// Its confidence interval.
    pub ci: [f64; 2],
    /// Mean ratio canary/baseline.
    pub ratio: Option<f64>,
    /// The configured effect size.
    pub effect_size: Option<f64>,
    /// Baseline points judged.
    pub baseline_n: usize,
    /// Canary points judged.
    pub canary_n: usize,
    /// Scorecard group.
    pub group: String,
}

/// The scorecard over all `mann-whitney` metrics.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScoreStats {
    /// Summary score 0–100.
    pub score: f64,
    /// Score per group.
    pub groups: std::collections::BTreeMap<String, f64>,
    /// Pass threshold.
    pub pass: f64,
    /// Marginal threshold.
    pub marginal: f64,
    /// A critical metric failed.
    pub critical_failure: bool,
}

/// The scorecard's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Scoring {
    /// Kayenta's thresholds and group weights.
    pub cfg: ScoreConfig,
    /// Points per arm every scored metric needs before the score is acted on.
    pub min_points: usize,
}

impl Default for Scoring {
    fn default() -> Self {
        Scoring {
            cfg: ScoreConfig::default(),
            min_points: 5,
        }
    }
}

/// Incremental state: each arm's series so far.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MannWhitneyJudge {
    spec: MannWhitneySpec,
    baseline: Vec<f64>,
    canary: Vec<f64>,
    last: Option<kayenta::KayentaResult>,
}

/// One value per window from any shape: series and samples as they are, the rate of
/// counts, the mean of a histogram, a scalar; NaN for missing data (Kayenta's NaN strategy
/// then applies).
fn values(o: &Observation) -> Vec<f64> {
    match o {
        Observation::Series(v) | Observation::Samples(v) => v.clone(),
        Observation::Counts(c) => vec![c.rate()],
        Observation::Histogram(h) => vec![h.approx_mean()],
        Observation::Scalar(v) => vec![*v],
        Observation::Missing => vec![f64::NAN],
    }
}

impl MannWhitneyJudge {
    /// A fresh judge.
    #[must_use]
    pub fn new(spec: MannWhitneySpec) -> Self {
        MannWhitneyJudge {
            spec,
            baseline: Vec::new(),
            canary: Vec::new(),
            last: None,
        }
    }

    /// Adds one window and re-judges the whole series.
    pub fn observe(&mut self, metric: &str, seg: &Segment) -> MetricVerdict {
        // Bound the series: Kayenta re-judges its window; beyond 10 000 points per arm the
        // oldest go (memory stays constant over long rollouts).
        const MAX: usize = 10_000;
        self.baseline.extend(values(&seg.baseline));
        self.canary.extend(values(&seg.canary));
        for v in [&mut self.baseline, &mut self.canary] {
            if v.len() > MAX {
                v.drain(..v.len() - MAX);
            }
        }
        let r = kayenta::judge(&self.baseline, &self.canary, &self.spec.cfg);
        let outcome = match r.classification {
            _ if r.critical => Outcome::Fail,
            Classification::Pass => Outcome::Pass,
            Classification::High | Classification::Low | Classification::NodataFailMetric => {
                Outcome::Inconclusive
            }
            Classification::Nodata => Outcome::NoData,
        };
        let reason = format!(
            "{}{}",
            r.reason,
            if r.critical { " (critical)" } else { "" }
        );
        let stats = Stats::MannWhitney(MannWhitneyStats {
            classification: r.classification,
            critical: r.critical,
            estimate: r.estimate,
            ci: [r.ci.0, r.ci.1],
            ratio: r.ratio,
            effect_size: r.effect_size,
            baseline_n: r.baseline_n,
            canary_n: r.canary_n,
            group: self.spec.group.clone(),
        });
        self.last = Some(r);
        MetricVerdict {
            metric: metric.to_string(),
            judge: "mann-whitney",
            outcome,
            reason,
            stats,
        }
    }

    /// The latest classification for the scorecard, once both arms have `min_points`.
    #[must_use]
    pub fn scored(&self, metric: &str, min_points: usize) -> Option<ScoredMetric> {
        let r = self.last.as_ref()?;
        let enough = r.classification == Classification::Nodata
            || (r.baseline_n >= min_points && r.canary_n >= min_points);
        enough.then(|| ScoredMetric {
            name: metric.to_string(),
            group: self.spec.group.clone(),
            classification: r.classification,
            critical: r.critical,
            muted: self.spec.muted,
        })
    }
}

/// The scorecard as a verdict: Fail below the marginal score or on a critical failure
/// (Kayenta's fail-fast), Pass at or above the pass score, Inconclusive in between or while
/// a metric has fewer than `min_points` per arm, NoData when every metric has none.
#[must_use]
pub fn score_verdict(metrics: &[Option<ScoredMetric>], scoring: &Scoring) -> MetricVerdict {
    let verdict = |outcome, reason: String, stats| MetricVerdict {
        metric: "score".to_string(),
        judge: "mann-whitney",
        outcome,
        reason,
        stats,
    };
    let ready: Vec<ScoredMetric> = metrics.iter().flatten().cloned().collect();
    if ready.len() < metrics.len() {
        return verdict(
            Outcome::Inconclusive,
            format!(
                "{} of {} metrics have {} points per arm yet",
                ready.len(),
                metrics.len(),
                scoring.min_points
            ),
            Stats::None,
        );
    }
    if ready
        .iter()
        .all(|m| m.muted || m.classification == Classification::Nodata)
    {
        return verdict(
            Outcome::NoData,
            "no metric has data".to_string(),
            Stats::None,
        );
    }
    let card = kayenta::score(&ready, &scoring.cfg);
    let outcome = match card.outcome {
        ScoreOutcome::Fail => Outcome::Fail,
        ScoreOutcome::Marginal => Outcome::Inconclusive,
        ScoreOutcome::Pass => Outcome::Pass,
    };
    let reason = format!(
        "score {} (pass ≥ {}, marginal ≥ {}): {}",
        fmt::num(card.score),
        fmt::num(scoring.cfg.pass),
        fmt::num(scoring.cfg.marginal),
        card.reason
    );
    verdict(
        outcome,
        reason,
        Stats::Score(ScoreStats {
            score: card.score,
            groups: card.groups,
            pass: scoring.cfg.pass,
            marginal: scoring.cfg.marginal,
            critical_failure: card.critical_failure,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> MannWhitneySpec {
        MannWhitneySpec {
            cfg: KayentaConfig {
                confidence: 0.95,
                ..KayentaConfig::default()
            },
            group: "latency".into(),
            muted: false,
        }
    }

    #[test]
    fn a_shifted_series_is_high_and_fails_the_score() {
        let mut j = MannWhitneyJudge::new(spec());
        for i in 0..12 {
            let x = f64::from(i % 4);
            let seg = Segment {
                share: 0.1,
                baseline: Observation::Series(vec![x]),
                canary: Observation::Series(vec![x + 10.0]),
            };
            let v = j.observe("p99", &seg);
            assert_ne!(v.outcome, Outcome::Fail, "not critical: {}", v.reason);
        }
        let scored = j.scored("p99", 5).unwrap();
        assert_eq!(scored.classification, Classification::High);
        let v = score_verdict(&[Some(scored)], &Scoring::default());
        assert_eq!(v.outcome, Outcome::Fail, "{}", v.reason);
    }

    #[test]
    fn too_few_points_are_inconclusive() {
        let mut j = MannWhitneyJudge::new(spec());
        let seg = Segment {
            share: 0.1,
            baseline: Observation::Series(vec![1.0]),
            canary: Observation::Series(vec![9.0]),
        };
        j.observe("p99", &seg);
        assert!(j.scored("p99", 5).is_none());
        let v = score_verdict(&[j.scored("p99", 5)], &Scoring::default());
        assert_eq!(v.outcome, Outcome::Inconclusive);
    }

    #[test]
    fn equal_series_pass() {
        let mut j = MannWhitneyJudge::new(spec());
        for i in 0..8 {
            let seg = Segment {
                share: 0.1,
                baseline: Observation::Series(vec![f64::from(i)]),
                canary: Observation::Series(vec![f64::from(i)]),
            };
            j.observe("p99", &seg);
        }
        let v = score_verdict(&[j.scored("p99", 5)], &Scoring::default());
        assert_eq!(v.outcome, Outcome::Pass, "{}", v.reason);
    }
}
