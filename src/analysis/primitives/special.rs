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

/// `ln C(n, k)` for `0 ≤ k ≤ n`, written so that `ln_choose(n, k)` and `ln_choose(n, n − k)`
/// are bit-for-bit equal (the two `ln Γ` terms are added before subtracting). Exact ties of
/// mirrored probabilities matter to the two-sided Fisher test.
#[must_use]
pub fn ln_choose(n: f64, k: f64) -> f64 {
    ln_gamma(n + 1.0) - (ln_gamma(k + 1.0) + ln_gamma(n - k + 1.0))
}

/// Brent's root finder exactly as R's `zeroin2` (behind `uniroot`), so that step functions
/// such as the Wilcoxon rank statistic give the same roots as R.
///
/// `fa` and `fb` are `f(ax)` and `f(bx)`, already evaluated by the caller. The rules are R's:
/// an endpoint with `f = 0` is returned at once; each step is the inverse quadratic (or
/// secant) interpolation when it falls well inside the bracket, bisection otherwise, and at
/// least `tol_act = 2·ε·|b| + tol/2`; iteration stops when the bracket half-width is within
/// `tol_act`. After `max_iter` iterations the last approximation is returned, as R does
/// (with a warning there). The bracket is not checked: R's `uniroot` does that before.
#[must_use]
pub fn zeroin(
    ax: f64,
    bx: f64,
    fa: f64,
    fb: f64,
    tol: f64,
    max_iter: u32,
    mut f: impl FnMut(f64) -> f64,
) -> f64 {
    let (mut a, mut b, mut fa, mut fb) = (ax, bx, fa, fb);
    let (mut c, mut fc) = (a, fa);
    if fa == 0.0 {
        return a;
    }
    if fb == 0.0 {
        return b;
    }
    for _ in 0..=max_iter {
        let prev_step = b - a;
        if fc.abs() < fb.abs() {
            // Make b the best approximation so far.
            a = b;
            b = c;
            c = a;
            fa = fb;
            fb = fc;
            fc = fa;
        }
        let tol_act = 2.0 * f64::EPSILON * b.abs() + tol / 2.0;
        let mut new_step = (c - b) / 2.0;
        if new_step.abs() <= tol_act || fb == 0.0 {
            return b;
        }
        if prev_step.abs() >= tol_act && fa.abs() > fb.abs() {
            let cb = c - b;
            let (mut p, mut q);
            if a == c {
                // Two distinct points: secant.
                let t1 = fb / fa;
                p = cb * t1;
                q = 1.0 - t1;
            } else {
                // Inverse quadratic interpolation.
                let qa = fa / fc;
                let t1 = fb / fc;
                let t2 = fb / fa;
                p = t2 * (cb * qa * (qa - t1) - (b - a) * (t1 - 1.0));
                q = (qa - 1.0) * (t1 - 1.0) * (t2 - 1.0);
            }
            if p > 0.0 {
                q = -q;
            } else {
                p = -p;
            }
            if p < 0.75 * cb * q - (tol_act * q).abs() / 2.0 && p < (prev_step * q / 2.0).abs() {
                new_step = p / q;
            }
        }
        if new_step.abs() < tol_act {
            new_step = if new_step > 0.0 { tol_act } else { -tol_act };
        }
        a = b;
        fa = fb;
        b += new_step;
        fb = f(b);
        if (fb > 0.0 && fc > 0.0) || (fb < 0.0 && fc < 0.0) {
            c = a;
            fc = fa;
        }
    }
    b
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
        assert_eq!(ln_choose(10.0, 3.0), ln_choose(10.0, 7.0));
        assert!((ln_choose(10.0, 3.0) - 120f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn zeroin_finds_roots_like_uniroot() {
        // Smooth function: converges to within the tolerance.
        let f = |x: f64| x * x - 2.0;
        let r = zeroin(0.0, 2.0, f(0.0), f(2.0), 1e-10, 1000, f);
        assert!((r - 2f64.sqrt()).abs() < 1e-9, "{r}");
        // An endpoint that is already a root is returned as is.
        assert_eq!(zeroin(1.0, 3.0, 0.0, 5.0, 1e-4, 1000, |x| x - 1.0), 1.0);
        // A step function: any point of the jump within tol is acceptable.
        let step = |x: f64| if x < 0.3 { -1.0 } else { 1.0 };
        let r = zeroin(0.0, 1.0, -1.0, 1.0, 1e-4, 1000, step);
        assert!((r - 0.3).abs() < 1e-4, "{r}");
    }
}
