//! Time-uniform confidence sequences (Howard & Ramdas; statistics.md §2.2–2.3).
//!
//! - [`cdf_band_epsilon`] and [`quantile_cs`]: a CDF band valid for all t and the quantile
//!   confidence sequence read off a sorted sample.
//! - [`NormalMixture`]: one- and two-sided normal-mixture boundaries with the ρ that makes
//!   them tightest at intrinsic time `v_opt`, and [`msprt_log_lambda`], the mSPRT as the
//!   same object.
//! - [`poly_stitching_bound`]: polynomial stitching.
//! - [`BetaBinomialMixture`], [`bernoulli_cs`] and [`quantile_ab_p_value`]: the
//!   beta-binomial mixture, its Bernoulli confidence sequence and the quantile A/B test
//!   (confseq's `QuantileABTest`).
//!
//! The algorithms follow the papers and the public confseq library's definitions; the
//! vectors in the tests are confseq's own unit-test values.

use crate::analysis::special::{bisect, ln_beta, norm_cdf};

/// Half-width ε_t of the Howard–Ramdas confidence band for a CDF, valid for all t ≥ 1 and
/// all x simultaneously at level `alpha`:
/// ε_t = 0.85·sqrt((ln ln(e·t) + 0.8·ln(1612/α)) / t).
///
/// Returns 1 (an uninformative band) for `t < 1` or `alpha` outside (0, 1).
#[must_use]
pub fn cdf_band_epsilon(t: f64, alpha: f64) -> f64 {
    if !(t >= 1.0) || !(alpha > 0.0 && alpha < 1.0) {
        return 1.0;
    }
    let e = std::f64::consts::E;
    (0.85 * (((e * t).ln().ln() + 0.8 * (1612.0 / alpha).ln()) / t).sqrt()).min(1.0)
}

/// Time-uniform confidence sequence for the `p`-quantile from a sorted sample of size t,
/// from the CDF band: lower = X_(⌊t(p−ε)⌋+1) (−∞ if that index is < 1), upper =
/// X_(⌈t(p+ε)⌉) (+∞ if it is > t), with ε = [`cdf_band_epsilon`]`(t, alpha)`.
#[must_use]
pub fn quantile_cs(sorted: &[f64], p: f64, alpha: f64) -> (f64, f64) {
    let t = sorted.len() as f64;
    let eps = cdf_band_epsilon(t, alpha);
    let lower_index = (t * (p - eps)).floor() + 1.0;
    let upper_index = (t * (p + eps)).ceil();
    let at = |i: f64| sorted[i as usize - 1];
    let lower = if lower_index >= 1.0 && lower_index <= t {
        at(lower_index)
    } else {
        f64::NEG_INFINITY
    };
    let upper = if upper_index >= 1.0 && upper_index <= t {
        at(upper_index)
    } else {
        f64::INFINITY
    };
    (lower, upper)
}

/// ρ*(v_opt, α) = v_opt / (2 ln(1/α) + ln(1 + 2 ln(1/α))): the two-sided normal mixture's
/// ρ that minimises the boundary at intrinsic time `v_opt`.
#[must_use]
pub fn best_rho(v_opt: f64, alpha: f64) -> f64 {
    let l = (1.0 / alpha).ln();
    v_opt / (2.0 * l + (1.0 + 2.0 * l).ln())
}

/// Finds the boundary s ≥ 0 where an increasing `log_m(s)` reaches `threshold`,
/// searching [0, upper] with `upper` doubled from `start` until it brackets the crossing.
fn mixture_crossing(start: f64, threshold: f64, log_m: impl Fn(f64) -> f64) -> f64 {
    let mut upper = start.max(1.0);
    for _ in 0..100 {
        if log_m(upper) > threshold {
            break;
        }
        upper *= 2.0;
    }
    bisect(0.0, upper, 1e-14, |s| log_m(s) - threshold).unwrap_or(upper)
}

/// Normal-mixture uniform boundary (Howard et al. 2021) for a sum S_t with intrinsic time
/// V_t. Two-sided: log m(s, v) = ½ ln(ρ/(v+ρ)) + s²/(2(v+ρ)). One-sided: ½ ln(4ρ/(v+ρ)) +
/// s²/(2(v+ρ)) + ln Φ(s/√(v+ρ)).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormalMixture {
    /// Mixture variance ρ.
    pub rho: f64,
    /// One-sided (upper) rather than two-sided.
    pub one_sided: bool,
}

impl NormalMixture {
    /// The mixture tuned for intrinsic time `v_opt` at level `alpha_opt`: ρ*(v_opt, α) for
    /// two-sided, ρ*(v_opt, 2α) for one-sided.
    #[must_use]
    pub fn tuned(v_opt: f64, alpha_opt: f64, one_sided: bool) -> Self {
        let alpha = if one_sided {
            2.0 * alpha_opt
        } else {
            alpha_opt
        };
        Self {
            rho: best_rho(v_opt, alpha),
            one_sided,
        }
    }

    /// log m(s, v), the log of the mixture martingale.
    #[must_use]
    pub fn log_mixture(&self, s: f64, v: f64) -> f64 {
        let vr = v + self.rho;
        if self.one_sided {
            0.5 * (4.0 * self.rho / vr).ln() + s * s / (2.0 * vr) + norm_cdf(s / vr.sqrt()).ln()
        } else {
            0.5 * (self.rho / vr).ln() + s * s / (2.0 * vr)
        }
    }

    /// The boundary u_α(v) where log m reaches ln(1/α); closed form when two-sided:
    /// sqrt((v+ρ)·ln((v+ρ)/(ρα²))).
    #[must_use]
    pub fn bound(&self, v: f64, alpha: f64) -> f64 {
        let vr = v + self.rho;
        if self.one_sided {
            mixture_crossing(v, (1.0 / alpha).ln(), |s| self.log_mixture(s, v))
        } else {
            (vr * (vr / (self.rho * alpha * alpha)).ln()).sqrt()
        }
    }
}

/// mSPRT (Johari et al.) log Λ_n for n observations with mean `mean`, known variance
/// `variance` (V) and mixing variance `tau2` (τ²): the two-sided normal mixture at
/// s = n·x̄, v = n·V, ρ = V²/τ².
#[must_use]
pub fn msprt_log_lambda(n: f64, mean: f64, variance: f64, tau2: f64) -> f64 {
    msprt_mixture(variance, tau2).log_mixture(n * mean, n * variance)
}

/// Half-width of the mSPRT's always-valid confidence interval for the mean after n
/// observations: u_α(n·V)/n with ρ = V²/τ².
#[must_use]
pub fn msprt_half_width(n: f64, variance: f64, tau2: f64, alpha: f64) -> f64 {
    msprt_mixture(variance, tau2).bound(n * variance, alpha) / n
}

fn msprt_mixture(variance: f64, tau2: f64) -> NormalMixture {
    NormalMixture {
        rho: variance * variance / tau2,
        one_sided: false,
    }
}

/// Riemann ζ(s) for s > 1 by Euler-Maclaurin summation (|error| < 1e-15 for s ≥ 1.01).
#[must_use]
pub fn zeta(s: f64) -> f64 {
    const N: usize = 12;
    // B_{2k}/(2k)! for k = 1..6.
    const B: [f64; 6] = [
        1.0 / 12.0,
        -1.0 / 720.0,
        1.0 / 30_240.0,
        -1.0 / 1_209_600.0,
        1.0 / 47_900_160.0,
        -691.0 / 1_307_674_368_000.0,
    ];
    let n = N as f64;
    let head: f64 = (1..N).map(|k| (k as f64).powf(-s)).sum();
    let mut tail = n.powf(1.0 - s) / (s - 1.0) + 0.5 * n.powf(-s);
    // Rising factorial s(s+1)…(s+2k−2) times N^{−s−2k+1}.
    let mut rising = s;
    let mut power = n.powf(-s - 1.0);
    for (k, b) in B.iter().enumerate() {
        tail += b * rising * power;
        let j = 2.0 * k as f64;
        rising *= (s + j + 1.0) * (s + j + 2.0);
        power /= n * n;
    }
    head + tail
}

/// Polynomial stitching boundary (Howard et al. 2021, Theorem 1) with η = 2, s = 1.4 as in
/// the paper's recommendation: S_α(v) = sqrt(k1²·v·ℓ + (k2·c·ℓ)²) + k2·c·ℓ,
/// ℓ = s·ln ln(η·v/m) + ln(ζ(s)/(α·(ln η)^s)), for v ≥ m (v is raised to m below it).
#[must_use]
pub fn poly_stitching_bound(v: f64, alpha: f64, m: f64, c: f64) -> f64 {
    poly_stitching_bound_with(v, alpha, m, c, 1.4, 2.0)
}

/// [`poly_stitching_bound`] with explicit `s` and `eta`.
#[must_use]
pub fn poly_stitching_bound_with(v: f64, alpha: f64, m: f64, c: f64, s: f64, eta: f64) -> f64 {
    let v = v.max(m);
    let k1 = (eta.powf(0.25) + eta.powf(-0.25)) / 2f64.sqrt();
    let k2 = f64::midpoint(eta.sqrt(), 1.0);
    let ell = s * (eta * v / m).ln().ln() + (zeta(s) / (alpha * eta.ln().powf(s))).ln();
    let term2 = k2 * c * ell;
    (k1 * k1 * v * ell + term2 * term2).sqrt() + term2
}

/// ln of the (unregularised) incomplete beta function B_x(a, b); x = 1 is ln B(a, b).
fn ln_incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x >= 1.0 {
        ln_beta(a, b)
    } else {
        statrs::function::beta::beta_reg(a, b, x).ln() + ln_beta(a, b)
    }
}

/// Beta-binomial mixture for sums of observations bounded in [−g, h] (Howard et al. 2021,
/// Proposition 7), one- or two-sided, with its parameter r tuned to `v_opt`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BetaBinomialMixture {
    r: f64,
    g: f64,
    h: f64,
    one_sided: bool,
    normalizer: f64,
}

impl BetaBinomialMixture {
    /// The mixture tuned for intrinsic time `v_opt` at level `alpha_opt`:
    /// r = max(ρ − g·h, 10⁻³·g·h) with ρ the matching normal mixture's.
    #[must_use]
    pub fn tuned(v_opt: f64, alpha_opt: f64, g: f64, h: f64, one_sided: bool) -> Self {
        let rho = NormalMixture::tuned(v_opt, alpha_opt, one_sided).rho;
        let r = (rho - g * h).max(1e-3 * g * h);
        let x = if one_sided { h / (g + h) } else { 1.0 };
        let normalizer = ln_incomplete_beta(r / (g * (g + h)), r / (h * (g + h)), x);
        Self {
            r,
            g,
            h,
            one_sided,
            normalizer,
        }
    }

    /// log m(s, v).
    #[must_use]
    pub fn log_mixture(&self, s: f64, v: f64) -> f64 {
        let (g, h, r) = (self.g, self.h, self.r);
        let x = if self.one_sided { h / (g + h) } else { 1.0 };
        v / (g * h) * (g + h).ln()
            - ((v + h * s) / (h * (g + h))) * g.ln()
            - ((v - g * s) / (g * (g + h))) * h.ln()
            + ln_incomplete_beta(
                (r + v - g * s) / (g * (g + h)),
                (r + v + h * s) / (h * (g + h)),
                x,
            )
            - self.normalizer
    }

    /// The boundary where log m(·, v) reaches ln(1/α), at most v/g (the largest possible
    /// sum).
    #[must_use]
    pub fn bound(&self, v: f64, alpha: f64) -> f64 {
        let threshold = (1.0 / alpha).ln();
        let top = v / self.g;
        if self.log_mixture(top, v) < threshold {
            return top;
        }
        bisect(0.0, top, 1e-14, |s| self.log_mixture(s, v) - threshold).unwrap_or(top)
    }
}

/// Two-sided confidence sequence for a Bernoulli mean after `successes` of `trials`, from
/// the beta-binomial mixture tuned at `t_opt` trials (confseq's
/// `bernoulli_confidence_interval`, α_opt = 0.05): the set of p whose mixture stays below
/// 1/α, found by bisection on each side of the empirical rate.
#[must_use]
pub fn bernoulli_cs(successes: f64, trials: f64, alpha: f64, t_opt: f64) -> (f64, f64) {
    let threshold = (1.0 / alpha).ln();
    let p_hat = successes / trials;
    // > 0 where p is rejected; outside (0, 1) the caller's side decides.
    let excess = |p: f64| {
        let m = BetaBinomialMixture::tuned(p * (1.0 - p) * t_opt, 0.05, p, 1.0 - p, false);
        m.log_mixture((p_hat - p) * trials, p * (1.0 - p) * trials) - threshold
    };
    let lower = if p_hat > 0.0 {
        bisect(
            0.0,
            p_hat,
            1e-13,
            |p| if p <= 0.0 { 1.0 } else { excess(p) },
        )
        .unwrap_or(0.0)
    } else {
        0.0
    };
    let upper = if p_hat < 1.0 {
        bisect(
            p_hat,
            1.0,
            1e-13,
            |p| if p >= 1.0 { 1.0 } else { excess(p) },
        )
        .unwrap_or(1.0)
    } else {
        1.0
    };
    (lower, upper)
}

/// Minimises a unimodal function on [a, b] by golden-section search.
fn golden_min(mut a: f64, mut b: f64, f: impl Fn(f64) -> f64) -> f64 {
    let inv_phi = (5f64.sqrt() - 1.0) / 2.0;
    let mut c = b - inv_phi * (b - a);
    let mut d = a + inv_phi * (b - a);
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..200 {
        if (b - a).abs() < 1e-13 {
            break;
        }
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - inv_phi * (b - a);
            fc = f(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + inv_phi * (b - a);
            fd = f(d);
        }
    }
    f64::midpoint(a, b)
}

/// One arm of the quantile A/B test: its sorted sample and the mixture bound G(x) on the
/// evidence that its `p`-quantile is x.
struct QuantileArm<'a> {
    sorted: &'a [f64],
    p: f64,
    mixture: &'a BetaBinomialMixture,
    minimizer: f64,
    /// G is flat (at its minimum) on [min_start, min_end].
    min_start: f64,
    min_end: f64,
}

impl<'a> QuantileArm<'a> {
    fn new(sorted: &'a [f64], p: f64, mixture: &'a BetaBinomialMixture) -> Self {
        let mut arm = Self {
            sorted,
            p,
            mixture,
            minimizer: p,
            min_start: 0.0,
            min_end: 0.0,
        };
        arm.minimizer = golden_min(0.0, 1.0, |a| arm.log_mixture(a));
        let n = sorted.len() as f64;
        arm.min_start = arm.order_stat((arm.minimizer * n).ceil());
        arm.min_end = arm.order_stat((arm.minimizer * n).floor() + 1.0);
        arm
    }

    /// X_(i), 1-based, clamped to the sample.
    fn order_stat(&self, i: f64) -> f64 {
        let i = (i.max(1.0) as usize).min(self.sorted.len());
        self.sorted[i - 1]
    }

    fn count_le(&self, x: f64) -> usize {
        self.sorted.partition_point(|&v| v <= x)
    }

    fn log_mixture(&self, prop_below: f64) -> f64 {
        let n = self.sorted.len() as f64;
        let s = (prop_below - self.p) * n;
        let v = self.p * (1.0 - self.p) * n;
        self.mixture.log_mixture(s, v)
    }

    fn g(&self, x: f64) -> f64 {
        let n = self.sorted.len() as f64;
        let prop = if x < self.min_start {
            self.count_le(x) as f64 / n
        } else if x > self.min_end {
            self.sorted.partition_point(|&v| v < x) as f64 / n
        } else {
            self.minimizer
        };
        self.log_mixture(prop)
    }
}

/// Howard & Ramdas sequential test that two arms share their `p`-quantile (confseq's
/// `QuantileABTest`): an anytime-valid p-value, the smallest over candidate common
/// quantiles x of exp(−(G₁(x) + G₂(x))), with each arm's beta-binomial mixture tuned at
/// `t_opt` observations and level `alpha_opt`. Both samples must be sorted and non-empty;
/// `None` otherwise or when `p` is not in (0, 1).
#[must_use]
pub fn quantile_ab_p_value(
    arm1_sorted: &[f64],
    arm2_sorted: &[f64],
    p: f64,
    t_opt: f64,
    alpha_opt: f64,
) -> Option<f64> {
    if arm1_sorted.is_empty() || arm2_sorted.is_empty() || !(p > 0.0 && p < 1.0) {
        return None;
    }
    let mixture = BetaBinomialMixture::tuned(t_opt * p * (1.0 - p), alpha_opt, p, 1.0 - p, false);
    let a1 = QuantileArm::new(arm1_sorted, p, &mixture);
    let a2 = QuantileArm::new(arm2_sorted, p, &mixture);
    // Scan the second arm's order statistics between the first arm's flat region and the
    // second's: the sum G₁ + G₂ only changes there, at those points.
    let (first, second) = if a1.min_end <= a2.min_end {
        (&a1, &a2)
    } else {
        (&a2, &a1)
    };
    let objective = |x: f64| first.g(x) + second.g(x);
    let mut min_value = objective(first.min_end).min(objective(second.min_start));
    let start = second.count_le(first.min_end).max(1);
    let end = second.count_le(second.min_start);
    let mut i = start;
    while i <= end {
        let x = second.sorted[i - 1];
        min_value = min_value.min(objective(x));
        // Skip ties: the next distinct order statistic.
        i = second.count_le(x) + 1;
    }
    Some((-min_value).exp().min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_band_vectors() {
        // statistics.md §2.2 at α = 0.05.
        assert!((cdf_band_epsilon(100.0, 0.05) - 0.2692).abs() < 5e-5);
        assert!((cdf_band_epsilon(1000.0, 0.05) - 0.0866).abs() < 5e-5);
        assert!((cdf_band_epsilon(1e4, 0.05) - 0.0277).abs() < 5e-5);
        assert_eq!(cdf_band_epsilon(0.0, 0.05), 1.0);
        assert_eq!(cdf_band_epsilon(f64::NAN, 0.05), 1.0);
    }

    fn rel(a: f64, b: f64) -> f64 {
        (a - b).abs() / b.abs()
    }

    #[test]
    fn quantile_cs_reads_order_statistics() {
        let xs: Vec<f64> = (1..=1000).map(f64::from).collect();
        let eps = cdf_band_epsilon(1000.0, 0.05);
        let (lo, hi) = quantile_cs(&xs, 0.5, 0.05);
        assert_eq!(lo, (1000.0 * (0.5 - eps)).floor() + 1.0);
        assert_eq!(hi, (1000.0 * (0.5 + eps)).ceil());
        let (lo, hi) = quantile_cs(&xs[..10], 0.99, 0.05);
        assert!(lo.is_finite() && hi == f64::INFINITY);
    }

    #[test]
    fn normal_mixture_vectors() {
        // statistics.md §2.3 (confseq unit tests), v_opt = 100, α = 0.05.
        assert!(rel(best_rho(100.0, 0.05), 12.600_56) < 1e-6);
        let two = NormalMixture::tuned(100.0, 0.05, false);
        assert!(rel(two.log_mixture(10.0, 100.0), -0.651_005_2) < 1e-6);
        assert!(rel(two.bound(100.0, 0.05), 30.352_09) < 1e-6);
        let one = NormalMixture::tuned(100.0, 0.05, true);
        assert!(rel(one.log_mixture(10.0, 100.0), -0.065_023_91) < 1e-6);
        assert!(rel(one.bound(100.0, 0.05), 27.660_71) < 1e-6);
        // The one-sided bound is where the mixture crosses 1/α.
        assert!((one.log_mixture(one.bound(100.0, 0.05), 100.0) - 20f64.ln()).abs() < 1e-9);
    }

    #[test]
    fn msprt_vectors() {
        // V = 1, τ² = 0.1, n = 100, x̄ = 0.2.
        assert!(rel(msprt_log_lambda(100.0, 0.2, 1.0, 0.1), 0.619_234_2) < 1e-6);
        assert!(rel(msprt_half_width(100.0, 1.0, 0.1, 0.05), 0.303_781_1) < 1e-6);
        // Johari's closed form agrees.
        let (n, v, t2, x): (f64, f64, f64, f64) = (100.0, 1.0, 0.1, 0.2);
        let direct = 0.5 * (v / (v + n * t2)).ln() + n * n * t2 * x * x / (2.0 * v * (v + n * t2));
        assert!((direct - msprt_log_lambda(n, x, v, t2)).abs() < 1e-12);
    }

    #[test]
    fn zeta_and_poly_stitching_vectors() {
        assert!((zeta(2.0) - std::f64::consts::PI.powi(2) / 6.0).abs() < 1e-14);
        // scipy.special.zeta.
        assert!((zeta(1.4) - 3.105_547_277_977_580_6).abs() < 1e-13);
        assert!((zeta(1.01) - 100.577_943_338_496_77).abs() < 1e-11);
        assert!((zeta(3.0) - 1.202_056_903_159_594_2).abs() < 1e-14);
        assert!(rel(poly_stitching_bound(100.0, 0.05, 10.0, 3.0), 64.487_55) < 1e-6);
        assert!(rel(poly_stitching_bound(100.0, 0.05, 10.0, -1.0), 28.993_89) < 1e-6);
    }

    #[test]
    fn beta_binomial_vectors() {
        // confseq unit tests: v_opt 100, α 0.05, g 0.2, h 0.8.
        let two = BetaBinomialMixture::tuned(100.0, 0.05, 0.2, 0.8, false);
        assert!(rel(two.log_mixture(10.0, 100.0), -0.694_101_2) < 1e-6);
        assert!(rel(two.bound(100.0, 0.05), 31.430_8) < 2e-6);
        let one = BetaBinomialMixture::tuned(100.0, 0.05, 0.2, 0.8, true);
        assert!(rel(one.log_mixture(10.0, 100.0), -0.071_340_19) < 1e-6);
        assert!(rel(one.bound(100.0, 0.05), 28.412_38) < 1e-6);
    }

    #[test]
    fn bernoulli_cs_vectors() {
        // statistics.md §2.3; the doc gives 6 decimals.
        let (lo, hi) = bernoulli_cs(700.0, 1000.0, 0.05, 100.0);
        assert!(
            (lo - 0.651_629).abs() < 1e-6 && (hi - 0.745_949).abs() < 1e-6,
            "{lo} {hi}"
        );
        let (lo, hi) = bernoulli_cs(15.0, 50.0, 0.05, 50.0);
        assert!(
            (lo - 0.129_556).abs() < 1e-6 && (hi - 0.511_896).abs() < 1e-6,
            "{lo} {hi}"
        );
        let (lo, hi) = bernoulli_cs(1.0, 50.0, 0.05, 50.0);
        assert!(lo.abs() < 1e-5 && (hi - 0.134_89).abs() < 1e-5, "{lo} {hi}");
    }

    #[test]
    fn quantile_ab_vectors() {
        // statistics.md §2.2: A = 1..1000, B = A + offset, t_opt = 100, α_opt = 0.05.
        let a: Vec<f64> = (1..=1000).map(f64::from).collect();
        let p = |q: f64, offset: f64| {
            let b: Vec<f64> = a.iter().map(|x| x + offset).collect();
            quantile_ab_p_value(&a, &b, q, 100.0, 0.05).unwrap()
        };
        for (q, offset, want) in [
            (0.5, 70.0, 0.814_704),
            (0.5, 85.0, 0.083_805_5),
            (0.5, 100.0, 0.005_494_7),
            (0.9, 55.0, 0.034_046_3),
        ] {
            let got = p(q, offset);
            assert!(
                (got - want).abs() < 5e-7 + 5e-6 * want,
                "p={q} offset={offset}: {got}"
            );
        }
        assert_eq!(quantile_ab_p_value(&a, &[], 0.5, 100.0, 0.05), None);
        assert!(p(0.5, 0.0) > 0.99);
    }
}
