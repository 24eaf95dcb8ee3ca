//! Fisher's exact test on a 2×2 table of errors, as scipy 1.17 `fisher_exact`
//! (statistics.md §3.3).
//!
//! Orientation: rows are the arms, canary first (scipy's `x` row), columns are error / ok:
//! `[[canary_errors, canary_ok], [baseline_errors, baseline_ok]]`. Under H0 the canary's
//! error count is hypergeometric given the margins; `greater` (odds ratio > 1) means the
//! canary errs more, i.e. is worse. Probabilities are computed in log space with a
//! mirror-symmetric ln C(n, k), so probabilities that are mathematically equal compare
//! equal, which the two-sided test's relative tolerance (scipy's 1e-14) relies on.

use serde::Serialize;

use crate::analysis::mann_whitney::Alternative;
use crate::analysis::special::ln_choose;

/// A 2×2 table of counts, canary row first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ErrorTable {
    /// Errors on the canary.
    pub canary_errors: u64,
    /// Successful requests on the canary.
    pub canary_ok: u64,
    /// Errors on the baseline.
    pub baseline_errors: u64,
    /// Successful requests on the baseline.
    pub baseline_ok: u64,
}

impl ErrorTable {
    /// Builds the table from errors and totals; `None` if errors exceed a total.
    #[must_use]
    pub fn from_totals(
        canary_errors: u64,
        canary_total: u64,
        baseline_errors: u64,
        baseline_total: u64,
    ) -> Option<Self> {
        Some(Self {
            canary_errors,
            canary_ok: canary_total.checked_sub(canary_errors)?,
            baseline_errors,
            baseline_ok: baseline_total.checked_sub(baseline_errors)?,
        })
    }
}

/// Result of Fisher's exact test.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Fisher {
    /// The p-value for the chosen alternative.
    pub p_value: f64,
    /// The sample odds ratio (a·d)/(b·c), scipy's: +∞ when b or c is 0, NaN when a row or
    /// column of the table is empty.
    pub odds_ratio: f64,
}

/// scipy's relative tolerance when comparing probabilities in the two-sided test.
const REL_TOL: f64 = 1e-14;

/// Largest table total: counts are converted to floats for ln Γ, exact up to 2^53.
pub const MAX_TOTAL: u64 = 1 << 53;

/// Fisher's exact test of the canary's error odds against the baseline's. Tables whose
/// total exceeds [`MAX_TOTAL`] give NaN.
#[must_use]
pub fn fisher_exact(t: ErrorTable, alternative: Alternative) -> Fisher {
    let (a, b, c, d) = (
        t.canary_errors,
        t.canary_ok,
        t.baseline_errors,
        t.baseline_ok,
    );
    let total = [a, b, c, d]
        .iter()
        .try_fold(0u64, |acc, &v| acc.checked_add(v));
    if total.is_none_or(|n| n > MAX_TOTAL) {
        return Fisher {
            p_value: f64::NAN,
            odds_ratio: f64::NAN,
        };
    }
    if a + b == 0 || c + d == 0 || a + c == 0 || b + d == 0 {
        return Fisher {
            p_value: 1.0,
            odds_ratio: f64::NAN,
        };
    }
    let odds_ratio = if c > 0 && b > 0 {
        (u128::from(a) * u128::from(d)) as f64 / (u128::from(c) * u128::from(b)) as f64
    } else {
        f64::INFINITY
    };
    // X = canary errors ~ Hypergeometric(N, K = canary row total, n = error column total).
    let big_k = a + b;
    let big_n = big_k + c + d;
    let n = a + c;
    let h = Hypergeometric::new(big_n, big_k, n);
    let p = match alternative {
        Alternative::Less => h.cdf(a),
        Alternative::Greater => h.sf(a),
        Alternative::TwoSided => {
            let p_exact = h.pmf(a);
            let p_mode = h.pmf(h.mode);
            if (p_exact - p_mode).abs() / p_exact.max(p_mode) <= REL_TOL {
                1.0
            } else {
                // Every x with P(x) ≤ P(a)·(1 + 1e-14): a's whole tail, plus the far tail
                // from the first x past the mode whose probability drops to that bound.
                let bound = p_exact * (1.0 + REL_TOL);
                if a < h.mode {
                    let first = h.first_at_most(bound, h.mode, h.hi, true);
                    h.tail_down(a) + first.map_or(0.0, |x| h.tail_up(x))
                } else {
                    let last = h.first_at_most(bound, h.lo, h.mode, false);
                    h.tail_up(a) + last.map_or(0.0, |x| h.tail_down(x))
                }
            }
        }
    };
    Fisher {
        p_value: p.min(1.0),
        odds_ratio,
    }
}

/// The hypergeometric law of the canary's errors given the table's margins, summed from
/// the tails inwards (terms fall off past the mode, so sums stop once they are negligible
/// and huge tables cost only the terms that matter).
struct Hypergeometric {
    big_n: u64,
    big_k: u64,
    n: u64,
    lo: u64,
    hi: u64,
    mode: u64,
    ln_norm: f64,
}

impl Hypergeometric {
    fn new(big_n: u64, big_k: u64, n: u64) -> Self {
        let mode = ((u128::from(n) + 1) * (u128::from(big_k) + 1) / (u128::from(big_n) + 2)) as u64;
        Self {
            big_n,
            big_k,
            n,
            lo: n.saturating_sub(big_n - big_k),
            hi: big_k.min(n),
            mode,
            ln_norm: ln_choose(big_n as f64, n as f64),
        }
    }

    fn pmf(&self, x: u64) -> f64 {
        if x < self.lo || x > self.hi {
            return 0.0;
        }
        (ln_choose(self.big_k as f64, x as f64)
            + ln_choose((self.big_n - self.big_k) as f64, (self.n - x) as f64)
            - self.ln_norm)
            .exp()
    }

    /// Sums `pmf` over `xs`, walking away from the mode, until the terms stop mattering.
    fn walk(&self, xs: impl Iterator<Item = u64>) -> f64 {
        let mut acc = 0.0;
        for x in xs {
            let t = self.pmf(x);
            acc += t;
            if t <= acc * 1e-18 {
                break;
            }
        }
        acc
    }

    /// P(X ≥ from), summed upwards when `from` is past the mode.
    fn tail_up(&self, from: u64) -> f64 {
        if from <= self.mode {
            return if from <= self.lo {
                1.0
            } else {
                1.0 - self.tail_down(from - 1)
            };
        }
        self.walk(from..=self.hi)
    }

    /// P(X ≤ to), summed downwards when `to` is below the mode.
    fn tail_down(&self, to: u64) -> f64 {
        if to >= self.mode {
            return if to >= self.hi {
                1.0
            } else {
                1.0 - self.tail_up(to + 1)
            };
        }
        self.walk((self.lo..=to).rev())
    }

    fn cdf(&self, x: u64) -> f64 {
        self.tail_down(x)
    }

    fn sf(&self, x: u64) -> f64 {
        self.tail_up(x)
    }

    /// On a monotone stretch [from, to] of the pmf, the x nearest the mode with
    /// pmf(x) ≤ bound: the smallest such x when the stretch falls (`falling`), the largest
    /// when it rises. `None` if there is none.
    fn first_at_most(&self, bound: f64, from: u64, to: u64, falling: bool) -> Option<u64> {
        let (mut l, mut r) = (from, to);
        if falling {
            if self.pmf(r) > bound {
                return None;
            }
            while l < r {
                let m = l + (r - l) / 2;
                if self.pmf(m) <= bound {
                    r = m;
                } else {
                    l = m + 1;
                }
            }
            Some(l)
        } else {
            if self.pmf(l) > bound {
                return None;
            }
            while l < r {
                let m = l + (r - l).div_ceil(2);
                if self.pmf(m) <= bound {
                    l = m;
                } else {
                    r = m - 1;
                }
            }
            Some(l)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(a: u64, b: u64, c: u64, d: u64) -> ErrorTable {
        ErrorTable {
            canary_errors: a,
            canary_ok: b,
            baseline_errors: c,
            baseline_ok: d,
        }
    }

    #[test]
    fn scipy_documentation_example() {
        // scipy.stats.fisher_exact([[6, 2], [1, 4]]): odds 12, p = 0.10256410256410257.
        let r = fisher_exact(table(6, 2, 1, 4), Alternative::TwoSided);
        assert_eq!(r.odds_ratio, 12.0);
        assert!(
            (r.p_value - 0.102_564_102_564_102_57).abs() < 1e-12,
            "{r:?}"
        );
        let g = fisher_exact(table(6, 2, 1, 4), Alternative::Greater);
        let l = fisher_exact(table(6, 2, 1, 4), Alternative::Less);
        assert!(g.p_value < r.p_value && l.p_value > 0.9);
    }

    #[test]
    fn symmetric_tables_keep_mirrored_terms() {
        // Equal arms: the distribution is symmetric, so the two-sided p is twice the tail.
        let two = fisher_exact(table(12, 988, 30, 970), Alternative::TwoSided).p_value;
        let less = fisher_exact(table(12, 988, 30, 970), Alternative::Less).p_value;
        assert!((two - 2.0 * less).abs() <= 1e-12 * two, "{two} {less}");
    }

    #[test]
    fn degenerate_tables() {
        let r = fisher_exact(table(0, 0, 3, 4), Alternative::TwoSided);
        assert!(r.odds_ratio.is_nan() && r.p_value == 1.0);
        let r = fisher_exact(table(2, 0, 0, 3), Alternative::Greater);
        assert!(r.odds_ratio.is_infinite() && r.p_value < 0.2);
        let r = fisher_exact(table(0, 5, 3, 0), Alternative::TwoSided);
        assert_eq!(r.odds_ratio, 0.0);
        assert!(ErrorTable::from_totals(5, 4, 0, 1).is_none());
        // Huge counts stay finite, in [0, 1], and quick (only the terms that matter).
        let r = fisher_exact(table(u64::from(u32::MAX), 1, 1, 1), Alternative::TwoSided);
        assert!((0.0..=1.0).contains(&r.p_value));
        let r = fisher_exact(table(u64::MAX, 1, 1, 1), Alternative::TwoSided);
        assert!(r.p_value.is_nan());
        let big = 1_000_000_000;
        for alt in [
            Alternative::TwoSided,
            Alternative::Less,
            Alternative::Greater,
        ] {
            let r = fisher_exact(table(big, big, big + 100_000, big), alt);
            assert!((0.0..=1.0).contains(&r.p_value), "{r:?}");
        }
    }
}
