//! The seeded scenario generator: traffic, assignment, errors, latency and data faults on a
//! simulated clock (no sleeping). Each call to [`World::tick`] produces one analysis window.

use coalmine::analysis::histogram::{Histogram, log_bounds};
use coalmine::analysis::special::norm_cdf;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Binomial, Distribution, LogNormal, Poisson};

/// How requests reach the canary.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Assignment {
    /// Each request goes to the canary with probability w (the ideal).
    PerRequest,
    /// Routing by instance: a few canary pods, each pod with its own error and latency
    /// multiplier (log-normal, σ below), so the arms differ a little even in an A/A test.
    PerInstance { canary_pods: u32, sigma: f64 },
    /// The router's real share is the set weight times this factor.
    Misspecified(f64),
}

/// What the canary does to errors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ErrorMode {
    /// Canary error rate = effect × baseline rate.
    Ratio,
    /// Canary error rate = baseline rate + effect × p0 of new, independent errors.
    Additive,
    /// Ratio `effect` for 60 s starting 60 s into the rollout, then back to 1.
    Burst60s,
}

/// What the canary does to latency.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LatencyMode {
    /// Every request `effect` times slower.
    Shift,
    /// Requests above the baseline's p95 `effect` times slower.
    Tail,
    /// `effect` (a fraction) of requests take 200 ms longer.
    Bimodal,
    /// `effect` times slower for the first two minutes, then normal.
    Warmup,
}

/// What is wrong with the data.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Nothing.
    None,
    /// The canary's metrics never arrive.
    CanaryMissing,
    /// Each window is missing for both arms with this probability.
    Gaps(f64),
    /// Each window's samples arrive late with this probability: the window reports nothing
    /// and its counts arrive with the next window's.
    Late(f64),
    /// Each window's samples are counted twice with this probability (a duplicated scrape
    /// target or a replayed remote-write batch).
    Duplicated(f64),
    /// From this many seconds into the rollout every baseline request fails (the baseline
    /// is dead: the proxy answers 502); failed requests are not in the latency histogram.
    BaselineDies(f64),
}

/// The latency histogram's buckets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Buckets {
    /// The built-in proxy's: 2^(1/8) apart (9 %).
    Fine,
    /// Classic Prometheus buckets doubling at each bound: 5 ms … 40.96 s, then `+∞`.
    Doubling,
    /// The Prometheus client libraries' default buckets (5 ms, 10, 25, 50, 100, 250 ms, …,
    /// 10 s, then `+∞`): ×2 and ×2.5 apart, the baseline's median on a bound.
    PrometheusDefault,
}

impl Buckets {
    /// The bounds, seconds.
    pub fn bounds(self) -> Vec<f64> {
        match self {
            Buckets::Fine => log_bounds(),
            Buckets::Doubling => {
                let mut b: Vec<f64> = (0..14).map(|i| 0.005 * 2f64.powi(i)).collect();
                b.push(f64::INFINITY);
                b
            }
            Buckets::PrometheusDefault => vec![
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1.0,
                2.5,
                5.0,
                10.0,
                f64::INFINITY,
            ],
        }
    }
}

/// Counts a window reports (what the metrics source returns).
#[derive(Clone, Debug)]
struct Reported {
    requests: [u64; 2],
    errors: [u64; 2],
    latency: [Histogram; 2],
}

impl Reported {
    fn add(&mut self, o: &Reported) {
        for arm in 0..2 {
            self.requests[arm] += o.requests[arm];
            self.errors[arm] += o.errors[arm];
            self.latency[arm]
                .merge(&o.latency[arm])
                .expect("same bounds");
        }
    }
}

/// One benchmark scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// Scenario family, as in the JSON (`aa`, `errors`, `latency`, ...).
    pub name: &'static str,
    /// Free-text variant (diurnal, per-instance, ...), shown in the table.
    pub variant: &'static str,
    /// Error-rate ratio or latency multiplier (1 = no change).
    pub effect: f64,
    /// Requests per second (both arms).
    pub rate: f64,
    /// Baseline error rate.
    pub p0: f64,
    /// Shared diurnal load factor (both arms): 1 ± 0.5 over a 20-minute period.
    pub diurnal: bool,
    /// Shared log-normal burst factor per 10 s bucket (σ = 0.5) on load and on the error rate.
    pub bursts: bool,
    /// Routing.
    pub assignment: Assignment,
    /// Errors changed by the canary (None: errors behave the same).
    pub errors: Option<ErrorMode>,
    /// Latency changed by the canary (None: latency behaves the same).
    pub latency: Option<LatencyMode>,
    /// Data faults.
    pub fault: Fault,
    /// Latency histogram buckets.
    pub buckets: Buckets,
    /// The latency metric's `allowed_ratio` when not the default policy's.
    pub allowed_ratio: Option<f64>,
}

impl Scenario {
    /// Whether the canary is worse than the baseline (a rollback is the right answer).
    pub fn is_regression(&self) -> bool {
        // A warm-up artefact is transient: not counted as a regression.
        match (self.errors, self.latency) {
            (Some(ErrorMode::Ratio | ErrorMode::Burst60s), _)
            | (_, Some(LatencyMode::Shift | LatencyMode::Tail)) => self.effect > 1.0,
            (Some(ErrorMode::Additive), _) | (_, Some(LatencyMode::Bimodal)) => self.effect > 0.0,
            _ => false,
        }
    }
}

/// Latency model: log-normal body (median 50 ms, σ = 0.5) with a 2 % Pareto tail from the
/// body's p98 (shape 1.5) and 0.05 % timeouts at 30 s.
#[derive(Clone, Debug)]
pub struct LatencyModel {
    median: f64,
    sigma: f64,
    tail_weight: f64,
    tail_xm: f64,
    tail_shape: f64,
    timeout_weight: f64,
    timeout: f64,
}

impl LatencyModel {
    /// The model every scenario uses (for reports).
    pub fn standard_for_report() -> Self {
        Self::standard()
    }

    fn standard() -> Self {
        let median = 0.05;
        let sigma = 0.5;
        LatencyModel {
            median,
            sigma,
            tail_weight: 0.02,
            // The body's p98: z = 2.054.
            tail_xm: median * (sigma * 2.054f64).exp(),
            tail_shape: 1.5,
            timeout_weight: 0.0005,
            timeout: 30.0,
        }
    }

    /// CDF of the baseline distribution.
    pub fn cdf(&self, x: f64) -> f64 {
        if x <= 0.0 {
            return 0.0;
        }
        let body = norm_cdf((x / self.median).ln() / self.sigma);
        let tail = if x < self.tail_xm {
            0.0
        } else {
            1.0 - (self.tail_xm / x).powf(self.tail_shape)
        };
        let to = if x >= self.timeout { 1.0 } else { 0.0 };
        (1.0 - self.tail_weight - self.timeout_weight) * body
            + self.tail_weight * tail
            + self.timeout_weight * to
    }

    /// The baseline's `p`-quantile, by bisection on the CDF.
    pub fn quantile(&self, p: f64) -> f64 {
        let (mut lo, mut hi) = (1e-6_f64, 100.0_f64);
        for _ in 0..100 {
            let mid = (lo * hi).sqrt();
            if self.cdf(mid) < p {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        hi
    }
}

/// A transformed latency distribution (canary variants).
#[derive(Clone, Debug)]
pub enum Latency {
    /// As the baseline.
    Same,
    /// All values × m.
    Shift(f64),
    /// Values above `q95` × m.
    Tail { q95: f64, m: f64 },
    /// A fraction `f` of requests + `add` seconds.
    Bimodal { f: f64, add: f64 },
}

impl Latency {
    fn cdf(&self, base: &LatencyModel, x: f64) -> f64 {
        match *self {
            Latency::Same => base.cdf(x),
            Latency::Shift(m) => base.cdf(x / m),
            Latency::Tail { q95, m } => {
                if x < q95 {
                    base.cdf(x)
                } else if x < q95 * m {
                    base.cdf(q95)
                } else {
                    base.cdf(x / m)
                }
            }
            Latency::Bimodal { f, add } => (1.0 - f) * base.cdf(x) + f * base.cdf(x - add),
        }
    }

    /// Bucket probabilities over `bounds`.
    pub fn bucket_probs(&self, base: &LatencyModel, bounds: &[f64]) -> Vec<f64> {
        let mut prev = 0.0;
        bounds
            .iter()
            .map(|b| {
                let c = if b.is_infinite() {
                    1.0
                } else {
                    self.cdf(base, *b)
                };
                let p = (c - prev).max(0.0);
                prev = c.max(prev);
                p
            })
            .collect()
    }
}

/// What one window produced, for the judges (observations) and for scoring (truth).
#[derive(Clone, Debug)]
pub struct Window {
    /// Seconds since the rollout started, at the end of the window.
    pub t: f64,
    /// Requests per arm (baseline, canary), as reported.
    pub requests: [u64; 2],
    /// Requests per arm really served in this window (differs from `requests` under
    /// late or duplicated samples).
    pub served: [u64; 2],
    /// Errors per arm.
    pub errors: [u64; 2],
    /// Latency histograms per arm.
    pub latency: [Histogram; 2],
    /// The canary's metrics are missing.
    pub canary_missing: bool,
    /// Both arms' metrics are missing.
    pub all_missing: bool,
    /// True error rates this window (baseline, canary).
    pub true_error: [f64; 2],
    /// Expected requests this window at full traffic (for harm after a decision).
    pub expected_requests: f64,
}

/// Simulation state for one run.
pub struct World {
    sc: Scenario,
    rng: SmallRng,
    base_latency: LatencyModel,
    bounds: Vec<f64>,
    base_probs: Vec<f64>,
    canary_probs: Vec<f64>,
    warm_probs: Vec<f64>,
    pod_err: [f64; 2],
    pod_lat: [f64; 2],
    interval: f64,
    t: f64,
    burst: f64,
    /// Late samples waiting for the next window.
    late: Option<Reported>,
}

fn binomial(rng: &mut SmallRng, n: u64, p: f64) -> u64 {
    if n == 0 || p <= 0.0 {
        return 0;
    }
    if p >= 1.0 {
        return n;
    }
    Binomial::new(n, p).map_or(0, |d| d.sample(rng))
}

fn multinomial(rng: &mut SmallRng, n: u64, probs: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; probs.len()];
    let mut left = n;
    let mut mass: f64 = probs.iter().sum();
    for (o, p) in out.iter_mut().zip(probs) {
        if left == 0 || mass <= 0.0 {
            break;
        }
        let k = if *p >= mass {
            left
        } else {
            binomial(rng, left, p / mass)
        };
        *o = k as f64;
        left -= k;
        mass -= p;
    }
    out
}

impl World {
    /// A run of `sc` with analysis windows of `interval` seconds.
    pub fn new(sc: &Scenario, seed: u64, interval: f64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let base_latency = LatencyModel::standard();
        let bounds = sc.buckets.bounds();
        let base_probs = Latency::Same.bucket_probs(&base_latency, &bounds);
        let canary_latency = match sc.latency {
            Some(LatencyMode::Shift) => Latency::Shift(sc.effect),
            Some(LatencyMode::Tail) => Latency::Tail {
                q95: base_latency.quantile(0.95),
                m: sc.effect,
            },
            Some(LatencyMode::Bimodal) => Latency::Bimodal {
                f: sc.effect,
                add: 0.2,
            },
            Some(LatencyMode::Warmup) | None => Latency::Same,
        };
        let canary_probs = canary_latency.bucket_probs(&base_latency, &bounds);
        let warm_probs = match sc.latency {
            Some(LatencyMode::Warmup) => {
                Latency::Shift(sc.effect).bucket_probs(&base_latency, &bounds)
            }
            _ => base_probs.clone(),
        };
        // Per-instance routing: the canary's pods and the baseline's pods each have their
        // own multipliers; the arm's rate is the mean over its pods.
        let (pod_err, pod_lat) = match sc.assignment {
            Assignment::PerInstance { canary_pods, sigma } => {
                let ln = LogNormal::new(0.0, sigma).expect("valid σ");
                let mean = |rng: &mut SmallRng, k: u32| {
                    (0..k.max(1)).map(|_| ln.sample(rng)).sum::<f64>() / f64::from(k.max(1))
                };
                let base_pods = canary_pods * 19;
                let e = [mean(&mut rng, base_pods), mean(&mut rng, canary_pods)];
                let l = [mean(&mut rng, base_pods), mean(&mut rng, canary_pods)];
                (e, [l[0].powf(0.1), l[1].powf(0.1)])
            }
            _ => ([1.0, 1.0], [1.0, 1.0]),
        };
        World {
            sc: sc.clone(),
            rng,
            base_latency,
            bounds,
            base_probs,
            canary_probs,
            warm_probs,
            pod_err,
            pod_lat,
            interval,
            t: 0.0,
            burst: 1.0,
            late: None,
        }
    }

    /// Shared load factor at time t.
    fn load(&self) -> f64 {
        if self.sc.diurnal {
            1.0 + 0.5 * (std::f64::consts::TAU * self.t / 1200.0).sin()
        } else {
            1.0
        }
    }

    /// The next window, with the canary's set weight `w` (0..=1) in force.
    pub fn tick(&mut self, w: f64) -> Window {
        let dt = self.interval;
        // A new burst factor every 10 s bucket (windows are multiples of 10 s here).
        if self.sc.bursts {
            self.burst = LogNormal::new(-0.125, 0.5)
                .expect("valid")
                .sample(&mut self.rng);
        }
        let mult = self.load() * self.burst;
        let expected = self.sc.rate * dt * mult;
        let total =
            Poisson::new(expected.max(1e-9)).map_or(0.0, |d| d.sample(&mut self.rng)) as u64;
        let real_w = match self.sc.assignment {
            Assignment::Misspecified(f) => (w * f).min(1.0),
            _ => w,
        };
        let nc = binomial(&mut self.rng, total, real_w);
        let nb = total - nc;
        // Error rates: shared overdispersion follows the burst factor (incidents hit both).
        let p_base = (self.sc.p0 * if self.sc.bursts { self.burst } else { 1.0 }).min(1.0);
        let t_mid = self.t + dt / 2.0;
        let p_canary = match self.sc.errors {
            Some(ErrorMode::Ratio) => p_base * self.sc.effect,
            Some(ErrorMode::Additive) => p_base + self.sc.effect * self.sc.p0,
            Some(ErrorMode::Burst60s) if (60.0..120.0).contains(&t_mid) => p_base * self.sc.effect,
            _ => p_base,
        };
        let baseline_dead = matches!(self.sc.fault, Fault::BaselineDies(at) if t_mid >= at);
        let pb = if baseline_dead {
            1.0
        } else {
            (p_base * self.pod_err[0]).min(1.0)
        };
        let pc = (p_canary * self.pod_err[1]).min(1.0);
        let eb = binomial(&mut self.rng, nb, pb);
        let ec = binomial(&mut self.rng, nc, pc);
        let canary_probs = if matches!(self.sc.latency, Some(LatencyMode::Warmup)) && t_mid < 120.0
        {
            self.warm_probs.clone()
        } else if self.pod_lat[1] != 1.0 || self.pod_lat[0] != 1.0 {
            let m = self.pod_lat[1] / self.pod_lat[0];
            match self.sc.latency {
                Some(LatencyMode::Shift) => Latency::Shift(self.sc.effect * m),
                _ => Latency::Shift(m),
            }
            .bucket_probs(&self.base_latency, &self.bounds)
        } else {
            self.canary_probs.clone()
        };
        // A dead baseline's requests all failed: none has a latency.
        let timed = if baseline_dead { 0 } else { nb };
        let hb = multinomial(&mut self.rng, timed, &self.base_probs);
        let hc = multinomial(&mut self.rng, nc, &canary_probs);
        let mut rep = Reported {
            requests: [nb, nc],
            errors: [eb, ec],
            latency: [
                Histogram::try_new(self.bounds.clone(), hb).expect("valid histogram"),
                Histogram::try_new(self.bounds.clone(), hc).expect("valid histogram"),
            ],
        };
        let (canary_missing, all_missing) = match self.sc.fault {
            Fault::None | Fault::BaselineDies(_) => (false, false),
            Fault::CanaryMissing => (true, false),
            Fault::Gaps(q) => (false, self.rng.random::<f64>() < q),
            Fault::Late(q) => {
                if let Some(held) = self.late.take() {
                    rep.add(&held);
                }
                if self.rng.random::<f64>() < q {
                    self.late = Some(rep.clone());
                    (false, true)
                } else {
                    (false, false)
                }
            }
            Fault::Duplicated(q) => {
                if self.rng.random::<f64>() < q {
                    let copy = rep.clone();
                    rep.add(&copy);
                }
                (false, false)
            }
        };
        self.t += dt;
        Window {
            t: self.t,
            requests: rep.requests,
            served: [nb, nc],
            errors: rep.errors,
            latency: rep.latency,
            canary_missing,
            all_missing,
            true_error: [pb, pc],
            expected_requests: expected,
        }
    }

    /// The baseline's latency over the `secs` seconds before the rollout, serving all of
    /// the traffic at the scenario's rate: the history the controller reads before the
    /// first weight change. Drawn from its own stream (`seed`), so every later window is the
    /// same whether or not a judge reads it.
    pub fn history(&self, seed: u64, secs: f64) -> Histogram {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x6869_7374_6f72_7921);
        let expected = self.sc.rate * secs;
        let total = Poisson::new(expected.max(1e-9)).map_or(0.0, |d| d.sample(&mut rng)) as u64;
        let counts = multinomial(&mut rng, total, &self.base_probs);
        Histogram::try_new(self.bounds.clone(), counts).expect("valid histogram")
    }

    /// Bucket probabilities of the baseline and of the (steady-state) canary, for the oracle.
    pub fn latency_truth(&self) -> (&[f64], &[f64]) {
        (&self.base_probs, &self.canary_probs)
    }
}
