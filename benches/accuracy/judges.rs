//! The judges compared, each turning a window into metric statuses for the real controller
//! state machine (`coalmine::controller::step`).

use coalmine::analysis::bucket_test::isotonic_increasing;
use coalmine::analysis::fisher::{ErrorTable, fisher_exact};
use coalmine::analysis::histogram::Histogram;
use coalmine::analysis::kayenta::{
    self, Classification, Direction, KayentaConfig, ScoreConfig, ScoreOutcome, ScoredMetric,
};
use coalmine::analysis::mann_whitney::Alternative;
use coalmine::analysis::special::norm_sf;
use coalmine::analysis::{Counts, JudgeSpec, MetricJudge, Observation, Outcome, Segment};
use coalmine::controller::machine::MetricStatus;

use crate::sim::{ErrorMode, LatencyMode, Scenario, Window};

/// Which judge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// coalmine's default policy.
    Sequential,
    /// The default policy with `share = "observed"` (only where routing is not per request).
    SequentialObserved,
    /// The default policy with `warmup = "2m"` (only in the warm-up scenario).
    SequentialWarmup,
    /// The default policy with the latency metric's `test = "slow-thresholds"` (latency
    /// scenarios only).
    SequentialSlowThresholds,
    /// Kayenta-style Mann-Whitney on per-interval series, fail-fast.
    Kayenta,
    /// Flagger-style canary-only thresholds with a failed-checks counter.
    Flagger,
    /// One fixed-horizon look at the end (Fisher + Mann-Whitney).
    Fixed,
    /// SPRT that knows the true parameters, at the policy's α (the whole 0.05).
    Oracle,
    /// The same SPRT at the α the policy gives the metric the scenario changes (latency
    /// 0.01, error rate 0.04): the limit for a test run at that level.
    OracleMetricAlpha,
    /// The oracle restricted to what a one-sided latency test may use (latency scenarios
    /// only): the product of the best non-decreasing e-value of the true distributions,
    /// rejected at 1/α of the metric's α and never accepted, the limit for any test valid for
    /// every canary at most as slow as the baseline (statistics.md §2.5, "The one-sided
    /// limit").
    OracleMonotone,
}

impl Kind {
    /// All judges, in table order.
    pub const ALL: [Kind; 10] = [
        Kind::Sequential,
        Kind::SequentialObserved,
        Kind::SequentialWarmup,
        Kind::SequentialSlowThresholds,
        Kind::Kayenta,
        Kind::Flagger,
        Kind::Fixed,
        Kind::Oracle,
        Kind::OracleMetricAlpha,
        Kind::OracleMonotone,
    ];

    /// Name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Sequential => "sequential",
            Kind::SequentialObserved => "sequential-observed",
            Kind::SequentialWarmup => "sequential-warmup",
            Kind::SequentialSlowThresholds => "sequential-slow-thresholds",
            Kind::Kayenta => "kayenta",
            Kind::Flagger => "flagger",
            Kind::Fixed => "fixed-horizon",
            Kind::Oracle => "oracle-sprt",
            Kind::OracleMetricAlpha => "oracle-sprt-metric-alpha",
            Kind::OracleMonotone => "oracle-monotone-metric-alpha",
        }
    }
}

/// Where the controller is, as analyzers may need it.
pub struct Ctx {
    /// The canary weight in force during the window (0..=1).
    pub w: f64,
    /// Seconds since the current step's weight was applied, at the window's end.
    pub step_elapsed: f64,
    /// The plan's step duration, seconds.
    pub step_duration: f64,
    /// Whether this is the last analysed step.
    pub last_step: bool,
    /// The step index.
    pub step: usize,
    /// Window length, seconds.
    pub interval: f64,
    /// Whether the controller admits the window's comparison with the baseline
    /// (`coalmine::controller::judging`: not while the baseline is unhealthy). Only the
    /// `sequential` analyzer, which is the real runner's judges, honours it.
    pub comparable: bool,
}

/// Turns windows into metric statuses.
pub trait Analyzer {
    fn tick(&mut self, win: &Window, ctx: &Ctx) -> Vec<MetricStatus>;
    /// The baseline's latency before the rollout (the controller's history read); only
    /// coalmine's judges use it.
    fn history(&mut self, _baseline: &Histogram) {}
}

fn status(metric: &str, outcome: Outcome) -> MetricStatus {
    MetricStatus {
        metric: metric.to_string(),
        outcome: Some(outcome),
        reason: String::new(),
        dry_run: false,
        comparative: true,
    }
}

/// A verdict on the canary alone (not discounted when the baseline is unhealthy).
fn canary_only(mut s: MetricStatus) -> MetricStatus {
    s.comparative = false;
    s
}

pub fn observations(win: &Window) -> (Observation, Observation, Observation, Observation) {
    let counts = |arm: usize| {
        Observation::Counts(Counts {
            events: win.errors[arm] as f64,
            trials: win.requests[arm] as f64,
        })
    };
    let hist = |arm: usize| Observation::Histogram(win.latency[arm].clone());
    if win.all_missing {
        return (
            Observation::Missing,
            Observation::Missing,
            Observation::Missing,
            Observation::Missing,
        );
    }
    if win.canary_missing {
        return (
            counts(0),
            Observation::Missing,
            hist(0),
            Observation::Missing,
        );
    }
    (counts(0), counts(1), hist(0), hist(1))
}

/// coalmine's default policy: the real judges built from the policy's metric specs.
pub struct Sequential {
    judges: Vec<(String, MetricJudge)>,
}

impl Sequential {
    pub fn new(specs: &[(String, JudgeSpec)]) -> Self {
        Sequential {
            judges: specs
                .iter()
                .map(|(n, s)| (n.clone(), MetricJudge::new(s)))
                .collect(),
        }
    }
}

impl Analyzer for Sequential {
    fn history(&mut self, baseline: &Histogram) {
        let seg = Segment {
            share: 0.0,
            baseline: Observation::Histogram(baseline.clone()),
            canary: Observation::Missing,
        };
        for (_, j) in &mut self.judges {
            j.learn_history(std::slice::from_ref(&seg));
        }
    }

    fn tick(&mut self, win: &Window, ctx: &Ctx) -> Vec<MetricStatus> {
        let (eb, ec, lb, lc) = observations(win);
        self.judges
            .iter_mut()
            .map(|(name, j)| {
                let latency = matches!(j, MetricJudge::Latency(_));
                let seg = if latency {
                    Segment {
                        share: ctx.w,
                        baseline: lb.clone(),
                        canary: lc.clone(),
                    }
                } else {
                    Segment {
                        share: ctx.w,
                        baseline: eb.clone(),
                        canary: ec.clone(),
                    }
                };
                let absolute = matches!(j, MetricJudge::Threshold(_));
                if !absolute && !ctx.comparable {
                    // As the runner: comparative judges never see a window against a broken
                    // baseline.
                    return status(name, Outcome::Inconclusive);
                }
                let v = j.observe(name, &seg);
                let st = status(name, v.outcome);
                if absolute { canary_only(st) } else { st }
            })
            .collect()
    }
}

/// Kayenta-style: per-interval error-rate and mean-latency series (one point per analysis
/// window), judged once a minute on the growing window of the current step (each step is
/// one canary analysis, as in a Spinnaker pipeline), fail-fast when the score is at most
/// marginal; the step's last judgement must pass.
pub struct KayentaStyle {
    series: [[Vec<f64>; 2]; 2],
    step: usize,
    since_judged: f64,
    last: Outcome,
    cfg: KayentaConfig,
    score: ScoreConfig,
}

/// How often the Kayenta- and Flagger-style judges look, seconds.
const LOOK_EVERY: f64 = 60.0;

impl KayentaStyle {
    pub fn new() -> Self {
        KayentaStyle {
            series: Default::default(),
            step: usize::MAX,
            since_judged: 0.0,
            last: Outcome::Inconclusive,
            cfg: KayentaConfig {
                direction: Direction::Increase,
                ..KayentaConfig::default()
            },
            score: ScoreConfig::default(),
        }
    }
}

impl Analyzer for KayentaStyle {
    fn tick(&mut self, win: &Window, ctx: &Ctx) -> Vec<MetricStatus> {
        if ctx.step != self.step {
            self.step = ctx.step;
            self.series = Default::default();
            self.since_judged = 0.0;
            self.last = Outcome::Inconclusive;
        }
        for arm in 0..2 {
            let missing = win.all_missing || (arm == 1 && win.canary_missing);
            let rate = if missing || win.requests[arm] == 0 {
                f64::NAN
            } else {
                win.errors[arm] as f64 / win.requests[arm] as f64
            };
            let lat = if missing {
                f64::NAN
            } else {
                win.latency[arm].approx_mean()
            };
            self.series[0][arm].push(rate);
            self.series[1][arm].push(lat);
        }
        self.since_judged += ctx.interval;
        let end_of_step = ctx.step_elapsed + 1e-9 >= ctx.step_duration;
        if self.since_judged + 1e-9 < LOOK_EVERY && !end_of_step {
            return vec![status("kayenta-score", self.last)];
        }
        self.since_judged = 0.0;
        let metrics: Vec<ScoredMetric> = ["error-rate", "latency"]
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let r = kayenta::judge(&self.series[i][0], &self.series[i][1], &self.cfg);
                ScoredMetric {
                    name: (*name).to_string(),
                    group: (*name).to_string(),
                    classification: r.classification,
                    critical: r.critical,
                    muted: false,
                }
            })
            .collect();
        let card = kayenta::score(&metrics, &self.score);
        self.last = match card.outcome {
            ScoreOutcome::Fail => Outcome::Fail,
            ScoreOutcome::Marginal if end_of_step => Outcome::Fail,
            ScoreOutcome::Marginal => Outcome::Inconclusive,
            ScoreOutcome::Pass => {
                if metrics
                    .iter()
                    .all(|m| m.classification == Classification::Nodata)
                {
                    Outcome::NoData
                } else {
                    Outcome::Pass
                }
            }
        };
        vec![status("kayenta-score", self.last)]
    }
}

/// Flagger-style: once a minute, canary-only checks over the last minute (error rate at
/// most `max_error`, p99 at most `max_p99`); a failed check or no data adds one to a counter
/// that never resets, and the rollout fails when it reaches `threshold` (5, as in Flagger's
/// examples).
pub struct FlaggerStyle {
    failed: u32,
    threshold: u32,
    max_error: f64,
    max_p99: f64,
    since: f64,
    requests: u64,
    errors: u64,
    missing: bool,
    latency: Option<Histogram>,
    last: Outcome,
}

impl FlaggerStyle {
    /// Tuned thresholds: twice the baseline's error rate, 1.5 × its p99.
    pub fn new(p0: f64, baseline_p99: f64) -> Self {
        FlaggerStyle {
            failed: 0,
            threshold: 5,
            max_error: 2.0 * p0,
            max_p99: 1.5 * baseline_p99,
            since: 0.0,
            requests: 0,
            errors: 0,
            missing: false,
            latency: None,
            last: Outcome::Inconclusive,
        }
    }
}

impl Analyzer for FlaggerStyle {
    fn tick(&mut self, win: &Window, ctx: &Ctx) -> Vec<MetricStatus> {
        if win.all_missing || win.canary_missing {
            self.missing = true;
        } else {
            self.requests += win.requests[1];
            self.errors += win.errors[1];
            match &mut self.latency {
                Some(h) => {
                    let _ = h.merge(&win.latency[1]);
                }
                None => self.latency = Some(win.latency[1].clone()),
            }
        }
        self.since += ctx.interval;
        if self.since + 1e-9 < LOOK_EVERY {
            return vec![canary_only(status("flagger-checks", self.last))];
        }
        let missing = self.missing || self.requests == 0;
        let bad = missing || {
            let rate = self.errors as f64 / self.requests as f64;
            let p99 = self.latency.as_ref().map_or(f64::NAN, |h| h.quantile(0.99));
            rate > self.max_error || p99 > self.max_p99
        };
        if bad {
            self.failed += 1;
        }
        self.last = if self.failed >= self.threshold {
            Outcome::Fail
        } else if missing {
            Outcome::NoData
        } else {
            Outcome::Pass
        };
        self.since = 0.0;
        self.requests = 0;
        self.errors = 0;
        self.missing = false;
        self.latency = None;
        vec![canary_only(status("flagger-checks", self.last))]
    }
}

/// Mann-Whitney U on two histograms over the same buckets (values tied within a bucket),
/// one-sided "canary slower", asymptotic with tie correction. Returns the p-value.
pub fn binned_mann_whitney_greater(canary: &Histogram, baseline: &Histogram) -> f64 {
    let (n1, n2) = (canary.total(), baseline.total());
    if n1 == 0.0 || n2 == 0.0 {
        return 1.0;
    }
    let mut below = 0.0;
    let mut u = 0.0;
    let mut ties = 0.0;
    for (c, b) in canary.counts().iter().zip(baseline.counts()) {
        u += c * (below + 0.5 * b);
        below += b;
        let t = c + b;
        ties += t * t * t - t;
    }
    let n = n1 + n2;
    let mu = n1 * n2 / 2.0;
    let var = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    if var <= 0.0 {
        return 1.0;
    }
    norm_sf((u - mu - 0.5) / var.sqrt())
}

/// One look at the end of the last analysed step: Fisher on the pooled error counts and
/// Mann-Whitney on the pooled latency, each at α/2.
pub struct Fixed {
    alpha: f64,
    errors: [u64; 2],
    requests: [u64; 2],
    latency: Option<[Histogram; 2]>,
}

impl Fixed {
    pub fn new(alpha: f64) -> Self {
        Fixed {
            alpha,
            errors: [0, 0],
            requests: [0, 0],
            latency: None,
        }
    }
}

impl Analyzer for Fixed {
    fn tick(&mut self, win: &Window, ctx: &Ctx) -> Vec<MetricStatus> {
        if !(win.all_missing || win.canary_missing) {
            for arm in 0..2 {
                self.errors[arm] += win.errors[arm];
                self.requests[arm] += win.requests[arm];
            }
            match &mut self.latency {
                Some(h) => {
                    for (acc, new) in h.iter_mut().zip(&win.latency) {
                        let _ = acc.merge(new);
                    }
                }
                None => self.latency = Some(win.latency.clone()),
            }
        }
        let look = ctx.last_step && ctx.step_elapsed + 1e-9 >= ctx.step_duration;
        if !look {
            let outcome = if self.requests[1] == 0 {
                Outcome::NoData
            } else {
                Outcome::Inconclusive
            };
            return vec![status("fixed", outcome)];
        }
        let Some(h) = &self.latency else {
            return vec![status("fixed", Outcome::NoData)];
        };
        if self.requests[1] == 0 {
            return vec![status("fixed", Outcome::NoData)];
        }
        let table = ErrorTable::from_totals(
            self.errors[1],
            self.requests[1],
            self.errors[0],
            self.requests[0],
        );
        let p_err = table.map_or(1.0, |t| fisher_exact(t, Alternative::Greater).p_value);
        let p_lat = binned_mann_whitney_greater(&h[1], &h[0]);
        let fail = p_err < self.alpha / 2.0 || p_lat < self.alpha / 2.0;
        vec![status(
            "fixed",
            if fail { Outcome::Fail } else { Outcome::Pass },
        )]
    }
}

/// Wald's SPRT with the true null and alternative: the physical limit. Errors use the
/// conditional model (θ1 = w·r/(1 − w + w·r) against θ0 = w); latency uses the canary's
/// histogram with the true bucket probabilities. Only the signal the scenario changes.
pub struct Oracle {
    llr: f64,
    upper: f64,
    lower: f64,
    mode: OracleMode,
    decided: Option<Outcome>,
}

/// What the oracle tests.
pub enum OracleMode {
    /// Error events with this rate ratio.
    Errors(f64),
    /// Canary latency: the log e-value per bucket (ln(q1/q0), or the log of its best
    /// non-decreasing version).
    Latency(Vec<f64>),
}

/// ln e_b of the best non-decreasing e-value for baseline bucket probabilities `q0` against
/// the canary's `q1`: e maximises Σ q1·ln e subject to Σ q0·e = 1 and e non-decreasing, which
/// is the isotonic regression of q1/q0 weighted by q0 (Robertson, Wright and Dykstra 1988,
/// Thm 1.5.1; the block means keep Σ q0·e = Σ q1 = 1). Any canary at most as slow as the
/// baseline has E[e] ≤ 1, so it is a valid one-sided bet. A bucket the baseline never reaches
/// costs nothing under it: it takes the value of the next bucket up that the baseline reaches
/// (the most it can have without raising that one), or, above them all, the SPRT oracle's
/// cap of e^20.
pub fn monotone_log_e(q0: &[f64], q1: &[f64]) -> Vec<f64> {
    let points: Vec<(f64, f64)> = q0
        .iter()
        .zip(q1)
        .map(|(b, c)| if *b > 0.0 { (c / b, *b) } else { (0.0, 0.0) })
        .collect();
    let fitted = isotonic_increasing(&points);
    let mut up = 20.0;
    let mut out = vec![0.0; q0.len()];
    for i in (0..q0.len()).rev() {
        if q0[i] > 0.0 {
            up = if fitted[i] > 0.0 {
                fitted[i].ln()
            } else {
                -20.0
            };
        }
        out[i] = up;
    }
    out
}

impl Oracle {
    /// `None` when the scenario has no well-defined alternative (A/A, bursts, faults).
    pub fn new(
        sc: &Scenario,
        base_probs: &[f64],
        canary_probs: &[f64],
        alpha: f64,
        monotone: bool,
    ) -> Option<Self> {
        let beta: f64 = 0.2;
        // The one-sided limit is for latency scenarios only.
        let latency_only = sc.errors.is_none()
            && matches!(
                sc.latency,
                Some(LatencyMode::Shift | LatencyMode::Tail | LatencyMode::Bimodal)
            );
        if monotone && !latency_only {
            return None;
        }
        let mode = match (sc.errors, sc.latency) {
            _ if monotone => OracleMode::Latency(monotone_log_e(base_probs, canary_probs)),
            (Some(ErrorMode::Ratio), _) if sc.effect != 1.0 => OracleMode::Errors(sc.effect),
            (Some(ErrorMode::Additive), _) if sc.effect > 0.0 => {
                OracleMode::Errors(1.0 + sc.effect)
            }
            (_, Some(LatencyMode::Shift | LatencyMode::Tail | LatencyMode::Bimodal)) => {
                OracleMode::Latency(
                    base_probs
                        .iter()
                        .zip(canary_probs)
                        .map(|(q0, q1)| {
                            if *q0 > 0.0 && *q1 > 0.0 {
                                (q1 / q0).ln()
                            } else if *q1 > 0.0 {
                                20.0
                            } else {
                                0.0
                            }
                        })
                        .collect(),
                )
            }
            _ => return None,
        };
        // The one-sided limit is an e-process like coalmine's tests: rejected at Ville's
        // 1/α and never accepted (a test of power one, so its median counts every run, not
        // only those an early acceptance left).
        let (upper, lower) = if monotone {
            ((1.0 / alpha).ln(), f64::NEG_INFINITY)
        } else {
            (((1.0 - beta) / alpha).ln(), (beta / (1.0 - alpha)).ln())
        };
        Some(Oracle {
            llr: 0.0,
            upper,
            lower,
            mode,
            decided: None,
        })
    }
}

impl Analyzer for Oracle {
    fn tick(&mut self, win: &Window, ctx: &Ctx) -> Vec<MetricStatus> {
        if let Some(d) = self.decided {
            return vec![status("oracle", d)];
        }
        if win.all_missing || win.canary_missing {
            return vec![status("oracle", Outcome::NoData)];
        }
        match &self.mode {
            OracleMode::Errors(r) => {
                let w = ctx.w;
                if w > 0.0 && w < 1.0 {
                    let t1 = w * r / (1.0 - w + w * r);
                    let (c, b) = (win.errors[1] as f64, win.errors[0] as f64);
                    self.llr += c * (t1 / w).ln() + b * ((1.0 - t1) / (1.0 - w)).ln();
                }
            }
            OracleMode::Latency(l) => {
                self.llr += win.latency[1]
                    .counts()
                    .iter()
                    .zip(l)
                    .map(|(c, l)| c * l)
                    .sum::<f64>();
            }
        }
        if self.llr >= self.upper {
            self.decided = Some(Outcome::Fail);
        } else if self.llr <= self.lower {
            self.decided = Some(Outcome::Pass);
        }
        vec![status(
            "oracle",
            self.decided.unwrap_or(Outcome::Inconclusive),
        )]
    }
}
