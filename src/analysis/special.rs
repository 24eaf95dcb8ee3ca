//! Numerical helpers shared by the judges: log-gamma, log-beta, log-sum-exp, the normal
//! distribution and a bracketing root finder.

use statrs::distribution::{ContinuousCDF, Normal};

/// `ln Γ(x)` for `x > 0`.
#[must_use]
pub fn ln_gamma(x: f64) -> f64 {
    statrs::function::gamma::ln_gamma(x)
}

/// `ln B(a, b)` for `a, b > 0`.
#[must_use]
pub fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// `ln Σ exp(xᵢ)`, stable; `-∞` for an empty slice.
#[must_use]
pub fn log_sum_exp(xs: &[f64]) -> f64 {
    let m = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY || m.is_nan() {
        return m;
    }
    if m == f64::INFINITY {
        return f64::INFINITY;
    }
    m + xs.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

fn std_normal() -> Normal {
    // Parameters are constants, so construction cannot fail.
    Normal::new(0.0, 1.0).expect("standard normal")
}

/// Standard normal CDF Φ(z).
#[must_use]
pub fn norm_cdf(z: f64) -> f64 {
    std_normal().cdf(z)
}

/// Standard normal survival function 1 − Φ(z), accurate in the upper tail.
#[must_use]
pub fn norm_sf(z: f64) -> f64 {
    std_normal().sf(z)
}

/// Standard normal quantile Φ⁻¹(p).
#[must_use]
pub fn norm_ppf(p: f64) -> f64 {
    std_normal().inverse_cdf(p)
}

/// `x·ln(y)` with the convention `0·ln(0) = 0`.
#[must_use]
pub fn xlogy(x: f64, y: f64) -> f64 {
    if x == 0.0 { 0.0 } else { x * y.ln() }
}

/// Finds a root of a monotone (or at least sign-changing) function on `[lo, hi]` by bisection.
///
/// Returns `None` when `f(lo)` and `f(hi)` have the same sign or either is NaN.
#[must_use]
pub fn bisect(mut lo: f64, mut hi: f64, tol: f64, f: impl Fn(f64) -> f64) -> Option<f64> {
    let mut flo = f(lo);
    let fhi = f(hi);
    if flo.is_nan() || fhi.is_nan() || (flo > 0.0) == (fhi > 0.0) {
        return None;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if (hi - lo).abs() <= tol * (1.0 + mid.abs()) {
            return Some(mid);
        }
        let fm = f(mid);
        if fm.is_nan() {
            return None;
        }
        if (fm > 0.0) == (flo > 0.0) {
            lo = mid;
            flo = fm;
        } else {
            hi = mid;
        }
    }
    Some(0.5 * (lo + hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basics() {
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-12);
        assert!((ln_beta(2.0, 3.0) - (1.0f64 / 12.0).ln()).abs() < 1e-12);
        assert!((log_sum_exp(&[0.0, 0.0]) - 2f64.ln()).abs() < 1e-15);
        assert_eq!(log_sum_exp(&[]), f64::NEG_INFINITY);
        let d = norm_cdf(1.959_963_984_540_054) - 0.975;
        assert!(d.abs() < 1e-11, "{d}");
        assert!((norm_ppf(0.975) - 1.959_963_984_540_054).abs() < 1e-9);
        let r = bisect(0.0, 2.0, 1e-12, |x| x * x - 2.0).unwrap();
        assert!((r - 2f64.sqrt()).abs() < 1e-10);
        assert!(bisect(0.0, 1.0, 1e-12, |x| x + 1.0).is_none());
    }
}
