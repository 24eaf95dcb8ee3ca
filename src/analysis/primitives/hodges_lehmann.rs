//! Hodges-Lehmann shift (canary − baseline) and its confidence interval (statistics.md §3.2).
//!
//! Two versions, both as R's `wilcox.test(x = canary, y = baseline, conf.int = TRUE)`:
//! - [`exact`]: the median of the n1·n2 differences and the interval
//!   [D_(q), D_(n1·n2−q+1)] with q from the exact rank-sum quantile (`qwilcox`). Order
//!   statistics of the differences are found by selection in the sorted-pair matrix
//!   (counting pairs below a probe value in O(n1 + n2), bisecting on the value), so the
//!   n1·n2 differences are never materialised.
//! - [`asymptotic`]: R's algorithm for large or tied samples, used by Kayenta: the roots of
//!   the standardized, continuity-corrected rank statistic W(d) of (x − d, y), found with
//!   R's `zeroin` at tolerance 1e-4, returning an endpoint when there is no sign change.
//!   With heavy ties W is a coarse step function and the roots can come out inverted
//!   (lower > upper); that is reproduced on purpose, Kayenta depends on it.

use serde::Serialize;

use crate::analysis::mann_whitney::{Alternative, ShiftedRanks, SortedSample, UDistribution};
use crate::analysis::special::{norm_ppf, zeroin};

/// Why a shift estimate could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An arm has no (non-NaN) observations.
    #[error("the {0} arm has no observations")]
    Empty(&'static str),
    /// An arm has an infinite value, so differences are undefined.
    #[error("the {0} arm has infinite values; the shift is undefined")]
    NotFinite(&'static str),
    /// The confidence level is not in (0, 1).
    #[error("confidence must be in (0, 1)")]
    Confidence,
    /// The exact distribution would be too large to tabulate.
    #[error("exact interval for sizes {n1} and {n2} is too large to tabulate")]
    ExactTooLarge {
        /// Canary size.
        n1: usize,
        /// Baseline size.
        n2: usize,
    },
}

/// A shift estimate with its confidence interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Shift {
    /// The Hodges-Lehmann estimate of canary − baseline.
    pub estimate: f64,
    /// Lower and upper ends of the interval (±∞ on the open side of a one-sided interval).
    pub ci: (f64, f64),
    /// The confidence level achieved by the exact interval (`None` for the asymptotic one).
    pub achieved_confidence: Option<f64>,
}

fn check(canary: &SortedSample, baseline: &SortedSample, confidence: f64) -> Result<(), Error> {
    if canary.is_empty() {
        return Err(Error::Empty("canary"));
    }
    if baseline.is_empty() {
        return Err(Error::Empty("baseline"));
    }
    if !canary.all_finite() {
        return Err(Error::NotFinite("canary"));
    }
    if !baseline.all_finite() {
        return Err(Error::NotFinite("baseline"));
    }
    if !(confidence > 0.0 && confidence < 1.0) {
        return Err(Error::Confidence);
    }
    Ok(())
}

/// Number of pairs with `x_i − y_j ≤ d` (differences computed in floating point).
///
/// For fixed i the differences fall as j grows, and the first j where they drop to `d` or
/// below moves right as i grows: one staircase walk, O(n1 + n2).
#[must_use]
pub fn count_le(xs: &[f64], ys: &[f64], d: f64) -> u64 {
    let n2 = ys.len();
    let mut s = 0usize;
    let mut count = 0u64;
    for &x in xs {
        while s < n2 && x - ys[s] > d {
            s += 1;
        }
        count += (n2 - s) as u64;
    }
    count
}

/// Order-preserving map of finite floats onto integers, for bisection that always ends.
fn key(x: f64) -> u64 {
    let b = x.to_bits();
    if b >> 63 == 1 { !b } else { b | (1 << 63) }
}

fn from_key(k: u64) -> f64 {
    f64::from_bits(if k >> 63 == 1 { k & !(1 << 63) } else { !k })
}

/// The k-th smallest (1-based) of the differences `x_i − y_j`, both slices sorted and
/// finite; NaN when a slice is empty or k is not in 1..=n1·n2.
#[must_use]
pub fn kth_difference(xs: &[f64], ys: &[f64], k: u64) -> f64 {
    let (n1, n2) = (xs.len(), ys.len());
    if n1 == 0 || n2 == 0 || k == 0 || k > n1 as u64 * n2 as u64 {
        return f64::NAN;
    }
    let mut lo = xs[0] - ys[n2 - 1];
    let mut hi = xs[n1 - 1] - ys[0];
    let mut c_lo = count_le(xs, ys, lo);
    if c_lo >= k {
        return lo + 0.0;
    }
    let mut c_hi = n1 as u64 * n2 as u64;
    // Invariant: c_lo = count(≤ lo) < k ≤ count(≤ hi) = c_hi.
    let budget = (n1 + n2) as u64;
    loop {
        if c_hi - c_lo <= budget {
            return select_between(xs, ys, lo, hi, k - c_lo) + 0.0;
        }
        let (klo, khi) = (key(lo), key(hi));
        if khi - klo <= 1 {
            return hi + 0.0;
        }
        // Bisect on the value while that splits the interval, else on the float's bits.
        let mut mid = lo + (hi - lo) / 2.0;
        if !(mid > lo && mid < hi) {
            mid = from_key(klo + (khi - klo) / 2);
        }
        let c = count_le(xs, ys, mid);
        if c >= k {
            hi = mid;
            c_hi = c;
        } else {
            lo = mid;
            c_lo = c;
        }
    }
}

/// The r-th smallest of the differences in (lo, hi].
fn select_between(xs: &[f64], ys: &[f64], lo: f64, hi: f64, r: u64) -> f64 {
    let n2 = ys.len();
    let mut gathered = Vec::new();
    // For row i the differences in (lo, hi] are the j in [a, b): a = first j with
    // diff ≤ hi, b = first j with diff ≤ lo. Both move right as i grows.
    let (mut a, mut b) = (0usize, 0usize);
    for &x in xs {
        while a < n2 && x - ys[a] > hi {
            a += 1;
        }
        while b < n2 && x - ys[b] > lo {
            b += 1;
        }
        gathered.extend(ys[a..b.max(a)].iter().map(|y| x - y));
    }
    let idx = usize::try_from(r - 1)
        .unwrap_or(usize::MAX)
        .min(gathered.len() - 1);
    let (_, v, _) = gathered.select_nth_unstable_by(idx, f64::total_cmp);
    *v
}

/// Exact Hodges-Lehmann estimate and interval (R's exact `wilcox.test` branch).
///
/// # Errors
/// Empty or non-finite arms, a confidence outside (0, 1), or samples whose exact
/// distribution is too large to tabulate.
pub fn exact(
    canary: &SortedSample,
    baseline: &SortedSample,
    confidence: f64,
    alternative: Alternative,
) -> Result<Shift, Error> {
    check(canary, baseline, confidence)?;
    let (xs, ys) = (canary.as_slice(), baseline.as_slice());
    let (n1, n2) = (xs.len(), ys.len());
    let dist = UDistribution::new(n1, n2).ok_or(Error::ExactTooLarge { n1, n2 })?;
    let mn = dist.mn();
    let alpha = 1.0 - confidence;
    let kth = |k: u64| kth_difference(xs, ys, k);
    let estimate = if mn.is_multiple_of(2) {
        f64::midpoint(kth(mn / 2), kth(mn / 2 + 1))
    } else {
        kth(mn.div_ceil(2))
    };
    let tail = if alternative == Alternative::TwoSided {
        alpha / 2.0
    } else {
        alpha
    };
    let qu = dist.quantile_lower(tail).max(1);
    let achieved_tail = dist.cdf(qu - 1);
    let (ci, achieved_alpha) = match alternative {
        Alternative::TwoSided => ((kth(qu), kth(mn - qu + 1)), 2.0 * achieved_tail),
        Alternative::Greater => ((kth(qu), f64::INFINITY), achieved_tail),
        Alternative::Less => ((f64::NEG_INFINITY, kth(mn - qu + 1)), achieved_tail),
    };
    Ok(Shift {
        estimate,
        ci,
        achieved_confidence: Some(1.0 - achieved_alpha),
    })
}

/// Continuity correction of W(d), as R's `wilcox.test` applies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Correction {
    None,
    For(Alternative),
}

/// R's W(d): the standardized rank-sum statistic of (x − d, y).
fn w_stat(ranks: &ShiftedRanks<'_>, n1: usize, n2: usize, d: f64, correction: Correction) -> f64 {
    let rs = ranks.at(d);
    let (n1, n2) = (n1 as f64, n2 as f64);
    let dz = (rs.two_u as f64 - n1 * n2) / 2.0;
    let corr = match correction {
        Correction::None => 0.0,
        Correction::For(Alternative::TwoSided) => {
            if dz > 0.0 {
                0.5
            } else if dz < 0.0 {
                -0.5
            } else {
                0.0
            }
        }
        Correction::For(Alternative::Greater) => 0.5,
        Correction::For(Alternative::Less) => -0.5,
    };
    let n = n1 + n2;
    let sigma = ((n1 * n2 / 12.0) * ((n + 1.0) - rs.tie_term / (n * (n - 1.0)))).sqrt();
    (dz - corr) / sigma
}

/// R's `uniroot` tolerance and iteration limit in `wilcox.test`.
const R_TOL: f64 = 1e-4;
const R_MAXIT: u32 = 1000;

/// R's asymptotic Hodges-Lehmann estimate and interval (`exact = FALSE`).
///
/// `continuity` is R's `correct` (default true; Kayenta uses it): it applies to the
/// interval; the estimate is always the root of the uncorrected W(d), as in R. When both
/// arms are constant (R stops with "all observations are tied") the shift is known
/// exactly: estimate and both interval ends are the difference of the two constants.
///
/// # Errors
/// Empty or non-finite arms, or a confidence outside (0, 1).
pub fn asymptotic(
    canary: &SortedSample,
    baseline: &SortedSample,
    confidence: f64,
    alternative: Alternative,
    continuity: bool,
) -> Result<Shift, Error> {
    check(canary, baseline, confidence)?;
    let (xs, ys) = (canary.as_slice(), baseline.as_slice());
    let mumin = xs[0] - ys[ys.len() - 1];
    let mumax = xs[xs.len() - 1] - ys[0];
    if xs[0] == xs[xs.len() - 1] && ys[0] == ys[ys.len() - 1] {
        return Ok(Shift {
            estimate: mumin,
            ci: (mumin, mumin),
            achieved_confidence: None,
        });
    }
    let alpha = 1.0 - confidence;
    let corr = if continuity {
        Correction::For(alternative)
    } else {
        Correction::None
    };
    let ranks = ShiftedRanks::new(xs, ys);
    let (n1, n2) = (xs.len(), ys.len());
    let w = |d: f64| w_stat(&ranks, n1, n2, d, corr);
    let (w_min, w_max) = (w(mumin), w(mumax));
    let root = |zq: f64| {
        let f_lower = w_min - zq;
        if f_lower <= 0.0 {
            return mumin;
        }
        let f_upper = w_max - zq;
        if f_upper >= 0.0 {
            return mumax;
        }
        zeroin(mumin, mumax, f_lower, f_upper, R_TOL, R_MAXIT, |d| {
            w(d) - zq
        })
    };
    let ci = match alternative {
        Alternative::TwoSided => (
            root(norm_ppf(1.0 - alpha / 2.0)),
            root(norm_ppf(alpha / 2.0)),
        ),
        Alternative::Greater => (root(norm_ppf(1.0 - alpha)), f64::INFINITY),
        Alternative::Less => (f64::NEG_INFINITY, root(norm_ppf(alpha))),
    };
    let w0 = |d: f64| w_stat(&ranks, n1, n2, d, Correction::None);
    let (f_lower, f_upper) = (w0(mumin), w0(mumax));
    // R's uniroot refuses a bracket without a sign change; W(min x − max y) ≥ 0 ≥
    // W(max x − min y) always holds, so that only leaves the exact-zero cases zeroin handles.
    let estimate = if f_lower * f_upper > 0.0 {
        f64::NAN
    } else {
        zeroin(mumin, mumax, f_lower, f_upper, R_TOL, R_MAXIT, w0)
    };
    Ok(Shift {
        estimate,
        ci,
        achieved_confidence: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const X: [f64; 10] = [0.80, 0.83, 1.89, 1.04, 1.45, 1.38, 1.91, 1.64, 0.73, 1.46];
    const Y: [f64; 5] = [1.15, 0.88, 0.90, 0.74, 1.21];

    fn s(v: &[f64]) -> SortedSample {
        SortedSample::new(v)
    }

    fn all_diffs(x: &[f64], y: &[f64]) -> Vec<f64> {
        let mut d: Vec<f64> = x
            .iter()
            .flat_map(|a| y.iter().map(move |b| a - b))
            .collect();
        d.sort_unstable_by(f64::total_cmp);
        d
    }

    #[test]
    fn r_example_exact() {
        // statistics.md §3.2: exact 0.305, CI [−0.15, 0.76], achieved 0.96004.
        let r = exact(&s(&X), &s(&Y), 0.95, Alternative::TwoSided).unwrap();
        assert!((r.estimate - 0.305).abs() < 1e-12, "{r:?}");
        assert!(
            (r.ci.0 + 0.15).abs() < 1e-12 && (r.ci.1 - 0.76).abs() < 1e-12,
            "{r:?}"
        );
        assert!(
            (r.achieved_confidence.unwrap() - 0.960_04).abs() < 5e-6,
            "{r:?}"
        );
    }

    #[test]
    fn r_example_asymptotic() {
        // statistics.md §3.2: CI [−0.15, 0.76], estimate 0.30251 (to 1e-4).
        let r = asymptotic(&s(&X), &s(&Y), 0.95, Alternative::TwoSided, true).unwrap();
        assert!((r.estimate - 0.302_51).abs() < 1e-4, "{r:?}");
        assert!(
            (r.ci.0 + 0.15).abs() < 1e-4 && (r.ci.1 - 0.76).abs() < 1e-4,
            "{r:?}"
        );
        // statistics.md §4 vector (Kayenta): canary [10..40], baseline [1..4] at 95%.
        let r = asymptotic(
            &s(&[10.0, 20.0, 30.0, 40.0]),
            &s(&[1.0, 2.0, 3.0, 4.0]),
            0.95,
            Alternative::TwoSided,
            true,
        )
        .unwrap();
        assert_eq!(r.ci, (6.0, 39.0));
        assert!((r.estimate - 22.5).abs() < 1e-4, "{r:?}");
    }

    #[test]
    fn selection_matches_materialised_differences() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) as f64 / f64::from(1u32 << 31)
        };
        for (n1, n2, ties) in [(1, 1, false), (3, 7, true), (17, 5, false), (40, 60, true)] {
            let mut gen_arm = |n: usize| -> Vec<f64> {
                (0..n)
                    .map(|_| {
                        let v = next() * 10.0 - 5.0;
                        if ties { v.round() } else { v }
                    })
                    .collect()
            };
            let (x, y) = (gen_arm(n1), gen_arm(n2));
            let (sx, sy) = (s(&x), s(&y));
            let d = all_diffs(sx.as_slice(), sy.as_slice());
            for k in 1..=d.len() as u64 {
                let v = kth_difference(sx.as_slice(), sy.as_slice(), k);
                assert_eq!(v, d[k as usize - 1] + 0.0, "n1={n1} n2={n2} k={k}");
            }
        }
    }

    #[test]
    fn one_sided_intervals() {
        let g = exact(&s(&X), &s(&Y), 0.95, Alternative::Greater).unwrap();
        assert!(g.ci.1.is_infinite() && g.ci.0 > -0.15);
        let l = asymptotic(&s(&X), &s(&Y), 0.95, Alternative::Less, true).unwrap();
        assert!(l.ci.0 == f64::NEG_INFINITY && l.ci.1 < 0.76);
    }

    #[test]
    fn heavy_ties_can_invert_the_interval() {
        // A coarse step function: R's zeroin stops on the jumps and returns lower > upper.
        // Reference values from a direct Python transcription of R's wilcox.test code
        // (scipy rankdata for the ranks), scripts/gen_fixtures.py `r_hl_asymptotic`.
        let mut canary = vec![1.0; 25];
        canary.push(2.0);
        let mut baseline = vec![0.0; 21];
        baseline.extend([1.0; 9]);
        baseline.push(2.0);
        let r = asymptotic(
            &s(&canary),
            &s(&baseline),
            0.95,
            Alternative::TwoSided,
            true,
        );
        let r = r.unwrap();
        assert!(r.ci.0 > r.ci.1, "{r:?}");
        assert!((r.ci.0 - 0.999_992_684_762_968_8).abs() < 1e-9, "{r:?}");
        assert!((r.ci.1 - 0.999_955_890_081_694_8).abs() < 1e-9, "{r:?}");
        assert!((r.estimate - 0.999_930_710_644_899_4).abs() < 1e-9, "{r:?}");
    }

    #[test]
    fn errors_instead_of_panics() {
        let a = s(&[1.0]);
        assert_eq!(
            exact(&s(&[]), &a, 0.95, Alternative::TwoSided),
            Err(Error::Empty("canary"))
        );
        assert_eq!(
            asymptotic(&a, &s(&[f64::INFINITY]), 0.95, Alternative::TwoSided, true),
            Err(Error::NotFinite("baseline"))
        );
        assert_eq!(
            exact(&a, &a, 1.0, Alternative::TwoSided),
            Err(Error::Confidence)
        );
        assert!(kth_difference(&[], &[1.0], 1).is_nan());
        assert!(kth_difference(&[1.0], &[1.0], 2).is_nan());
        let c = asymptotic(&s(&[3.0, 3.0]), &a, 0.95, Alternative::TwoSided, true).unwrap();
        assert_eq!((c.estimate, c.ci), (2.0, (2.0, 2.0)));
    }
}
