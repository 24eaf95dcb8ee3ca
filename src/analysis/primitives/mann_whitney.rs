//! Mann-Whitney U test (Wilcoxon rank-sum), as scipy 1.17 `mannwhitneyu` computes it
//! (statistics.md §3.1).
//!
//! `x` is the canary and `y` the baseline; `U` is the canary's statistic (scipy's
//! `statistic` with `x = canary`), so `greater` means "the canary is stochastically larger".
//! Each arm is sorted once ([`SortedSample`]); ranks, `U` and the tie groups then come from a
//! single merge of the two sorted arms, so a million samples per arm cost two sorts and a
//! linear pass. The exact null distribution is the generating function of the Gaussian
//! binomial coefficient (the c(m, n, u) recurrence in closed form), computed only up to the
//! middle and used through its symmetry.

use serde::Serialize;

use crate::analysis::special::norm_sf;

/// Which way the alternative hypothesis points, for the canary relative to the baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Alternative {
    /// The arms' distributions differ.
    #[default]
    TwoSided,
    /// The canary is stochastically larger than the baseline.
    Greater,
    /// The canary is stochastically smaller than the baseline.
    Less,
}

/// How the p-value is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// scipy's rule: exact when `min(n1, n2) ≤ 8` and there are no ties, else asymptotic.
    #[default]
    Auto,
    /// The exact permutation distribution of `U` (not corrected for ties, like scipy).
    Exact,
    /// The normal approximation with tie correction.
    Asymptotic,
}

/// Why a Mann-Whitney test could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An arm has no (non-NaN) observations.
    #[error("the {0} arm has no observations")]
    Empty(&'static str),
    /// The exact distribution was asked for samples too large to tabulate.
    #[error(
        "exact distribution for sizes {n1} and {n2} is too large to tabulate; use the asymptotic method"
    )]
    ExactTooLarge {
        /// Canary size.
        n1: usize,
        /// Baseline size.
        n2: usize,
    },
}

/// One arm's observations sorted ascending, NaN removed: sort once, then reuse for `U`,
/// Hodges-Lehmann and effect sizes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SortedSample {
    values: Vec<f64>,
    nan_dropped: usize,
}

impl SortedSample {
    /// Copies and sorts `values`, dropping NaN (scipy's `nan_policy='omit'`).
    #[must_use]
    pub fn new(values: &[f64]) -> Self {
        Self::from_vec(values.to_vec())
    }

    /// Sorts `values` in place, dropping NaN.
    #[must_use]
    pub fn from_vec(mut values: Vec<f64>) -> Self {
        let before = values.len();
        values.retain(|v| !v.is_nan());
        let nan_dropped = before - values.len();
        sort_floats(&mut values);
        Self {
            values,
            nan_dropped,
        }
    }

    /// The sorted values.
    #[must_use]
    pub fn as_slice(&self) -> &[f64] {
        &self.values
    }

    /// Number of observations kept.
    #[must_use]
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether no observation was kept.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// How many NaN values were dropped.
    #[must_use]
    pub fn nan_dropped(&self) -> usize {
        self.nan_dropped
    }

    /// Whether every value is finite (true for an empty sample).
    #[must_use]
    pub fn all_finite(&self) -> bool {
        self.values.first().is_none_or(|v| v.is_finite())
            && self.values.last().is_none_or(|v| v.is_finite())
    }
}

/// Order-preserving map of a non-NaN float onto an integer (−0 just below +0).
fn float_key(x: f64) -> u64 {
    let b = x.to_bits();
    if b >> 63 == 1 { !b } else { b | (1 << 63) }
}

fn key_float(k: u64) -> f64 {
    f64::from_bits(if k >> 63 == 1 { k & !(1 << 63) } else { !k })
}

/// Sorts NaN-free floats ascending (the order of `f64::total_cmp`). Sorting the integer
/// keys is about twice as fast as comparing floats, and sorting is what a million-sample
/// Mann-Whitney test spends its time on.
fn sort_floats(values: &mut [f64]) {
    let mut keys: Vec<u64> = values.iter().map(|&v| float_key(v)).collect();
    keys.sort_unstable();
    for (v, k) in values.iter_mut().zip(keys) {
        *v = key_float(k);
    }
}

/// Rank statistics of `x − shift` pooled with `y`, from one merge of the sorted arms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RankStats {
    /// Twice `U` of the shifted `x`: 2·#{x−s > y} + #{x−s = y} (an integer, so exact).
    pub two_u: u64,
    /// Σ (t³ − t) over the tie groups of the pooled sample.
    pub tie_term: f64,
    /// Whether any tie group has more than one member.
    pub ties: bool,
}

fn t3(t: usize) -> f64 {
    let t = t as f64;
    t * t * t - t
}

/// Merges sorted `xs − shift` with sorted `ys`, returning `U` (doubled) and the tie groups.
///
/// Both slices must be sorted ascending and free of NaN; `xs[i] − shift` is computed in
/// floating point exactly as R and scipy compute the shifted sample, so values that round
/// together form a tie group.
#[must_use]
pub fn rank_stats(xs: &[f64], ys: &[f64], shift: f64) -> RankStats {
    let (n1, n2) = (xs.len(), ys.len());
    let (mut i, mut j) = (0usize, 0usize);
    let mut two_u: u64 = 0;
    let mut tie_term = 0.0;
    let mut ties = false;
    // Consumes the run of equal baseline values starting at `j` (no canary value ties it).
    let y_run = |j: &mut usize, tie_term: &mut f64, ties: &mut bool| {
        let start = *j;
        let w = ys[start];
        *j += 1;
        while *j < n2 && ys[*j] == w {
            *j += 1;
        }
        if *j - start > 1 {
            *tie_term += t3(*j - start);
            *ties = true;
        }
    };
    while i < n1 {
        let v = xs[i] - shift;
        while j < n2 && ys[j] < v {
            y_run(&mut j, &mut tie_term, &mut ties);
        }
        let start_i = i;
        i += 1;
        while i < n1 && xs[i] - shift == v {
            i += 1;
        }
        let a = i - start_i;
        let below = j;
        while j < n2 && ys[j] == v {
            j += 1;
        }
        let b = j - below;
        two_u += a as u64 * (2 * below as u64 + b as u64);
        if a + b > 1 {
            tie_term += t3(a + b);
            ties = true;
        }
    }
    while j < n2 {
        y_run(&mut j, &mut tie_term, &mut ties);
    }
    RankStats {
        two_u,
        tie_term,
        ties,
    }
}

/// [`rank_stats`] for many shifts of the same two sorted arms, as R's interval search needs.
///
/// Most shifts of continuous data create no tie across the arms and no new tie within the
/// shifted canary, and then the tie groups are those of the arms alone (precomputed): one
/// lean merge counts the pairs and detects whether that holds, and falls back to the
/// general merge otherwise.
#[derive(Clone, Debug)]
pub struct ShiftedRanks<'a> {
    xs: &'a [f64],
    ys: &'a [f64],
    /// Σ(t³ − t) over ties within x alone plus within y alone.
    own_ties: f64,
    /// Number of adjacent equal pairs in x.
    x_adjacent_equal: usize,
}

impl<'a> ShiftedRanks<'a> {
    /// Prepares the merge of sorted, NaN-free `xs` (shifted) and `ys`.
    #[must_use]
    pub fn new(xs: &'a [f64], ys: &'a [f64]) -> Self {
        let own_ties = |v: &[f64]| {
            v.chunk_by(|a, b| a == b)
                .filter(|g| g.len() > 1)
                .map(|g| t3(g.len()))
                .sum::<f64>()
        };
        Self {
            xs,
            ys,
            own_ties: own_ties(xs) + own_ties(ys),
            x_adjacent_equal: xs.windows(2).filter(|w| w[0] == w[1]).count(),
        }
    }

    /// The rank statistics of `xs − shift` pooled with `ys`; equal to [`rank_stats`].
    #[must_use]
    pub fn at(&self, shift: f64) -> RankStats {
        // Four independent merges over four blocks of the canary, advanced in lockstep:
        // each merge is a chain of dependent loads, so running several at once lets the
        // processor overlap them.
        const K: usize = 4;
        let (xs, ys) = (self.xs, self.ys);
        let n1 = xs.len();
        let block = n1.div_ceil(K).max(1);
        let mut i = [0usize; K];
        let mut end = [0usize; K];
        let mut j = [0usize; K];
        for k in 0..K {
            i[k] = (k * block).min(n1);
            end[k] = ((k + 1) * block).min(n1);
            if let Some(&x) = xs.get(i[k]) {
                let v = x - shift;
                j[k] = ys.partition_point(|&y| y < v);
            }
        }
        let mut below = [0u64; K];
        let mut adjacent = [0usize; K];
        let mut prev = [f64::NAN; K];
        for _ in 0..block {
            for k in 0..K {
                if i[k] >= end[k] {
                    continue;
                }
                let v = xs[i[k]] - shift;
                let Some(jk) = advance_below(ys, j[k], v) else {
                    // A tie across the arms: the general merge accounts for it.
                    return rank_stats(xs, ys, shift);
                };
                j[k] = jk;
                adjacent[k] += usize::from(v == prev[k]);
                prev[k] = v;
                below[k] += jk as u64;
                i[k] += 1;
            }
        }
        // Pairs of equal neighbours that straddle two blocks.
        let mut straddling = 0;
        for k in 1..K {
            let start = (k * block).min(n1);
            if start > 0 && start < n1 && xs[start] - shift == xs[start - 1] - shift {
                straddling += 1;
            }
        }
        if adjacent.iter().sum::<usize>() + straddling != self.x_adjacent_equal {
            return rank_stats(xs, ys, shift);
        }
        RankStats {
            two_u: 2 * below.iter().sum::<u64>(),
            tie_term: self.own_ties,
            ties: self.own_ties > 0.0,
        }
    }
}

/// The first index at or after `j` whose baseline value is not below `v`, advancing eight
/// values at a time (a fixed-width count instead of a loop exit the branch predictor keeps
/// missing); `None` when that value equals `v` (a tie across the arms).
fn advance_below(ys: &[f64], mut j: usize, v: f64) -> Option<usize> {
    loop {
        if let Some(w) = ys.get(j..j + 8) {
            let c: usize = w.iter().map(|&y| usize::from(y < v)).sum();
            j += c;
            if c < 8 {
                break;
            }
        } else {
            while j < ys.len() && ys[j] < v {
                j += 1;
            }
            break;
        }
    }
    if ys.get(j) == Some(&v) { None } else { Some(j) }
}

/// The result of a Mann-Whitney test.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct MannWhitney {
    /// `U` of the canary: #{canary > baseline} + ½·#{ties}.
    pub u: f64,
    /// The p-value for the chosen alternative.
    pub p_value: f64,
    /// The method actually used (never `Auto`).
    pub method: Method,
    /// The standardized statistic of the asymptotic method (`None` for the exact one).
    pub z: Option<f64>,
    /// Canary size.
    pub n1: usize,
    /// Baseline size.
    pub n2: usize,
    /// Whether the pooled sample has ties.
    pub ties: bool,
}

/// Options of [`mann_whitney`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MannWhitneyConfig {
    /// The alternative hypothesis.
    pub alternative: Alternative,
    /// Exact, asymptotic or scipy's automatic choice.
    pub method: Method,
    /// Continuity correction of the asymptotic method (scipy's `use_continuity`).
    pub continuity: bool,
}

impl Default for MannWhitneyConfig {
    fn default() -> Self {
        Self {
            alternative: Alternative::TwoSided,
            method: Method::Auto,
            continuity: true,
        }
    }
}

/// scipy's `method='auto'` rule.
#[must_use]
pub fn choose_method(n1: usize, n2: usize, ties: bool) -> Method {
    if (n1 > 8 && n2 > 8) || ties {
        Method::Asymptotic
    } else {
        Method::Exact
    }
}

/// Mann-Whitney U test of `canary` (x) against `baseline` (y); NaN values are dropped.
///
/// # Errors
/// [`Error::Empty`] when an arm has no observations; [`Error::ExactTooLarge`] when the
/// exact method is forced on samples whose distribution would not fit in memory and time.
pub fn mann_whitney(
    canary: &[f64],
    baseline: &[f64],
    cfg: MannWhitneyConfig,
) -> Result<MannWhitney, Error> {
    mann_whitney_sorted(
        &SortedSample::new(canary),
        &SortedSample::new(baseline),
        cfg,
    )
}

/// [`mann_whitney`] on arms that are already sorted.
///
/// # Errors
/// As [`mann_whitney`].
pub fn mann_whitney_sorted(
    canary: &SortedSample,
    baseline: &SortedSample,
    cfg: MannWhitneyConfig,
) -> Result<MannWhitney, Error> {
    let (n1, n2) = (canary.len(), baseline.len());
    if n1 == 0 {
        return Err(Error::Empty("canary"));
    }
    if n2 == 0 {
        return Err(Error::Empty("baseline"));
    }
    let rs = ShiftedRanks::new(canary.as_slice(), baseline.as_slice()).at(0.0);
    let mn = n1 as u64 * n2 as u64;
    let u1 = rs.two_u as f64 / 2.0;
    let u2 = mn as f64 - u1;
    let (u, factor) = match cfg.alternative {
        Alternative::Greater => (u1, 1.0),
        Alternative::Less => (u2, 1.0),
        Alternative::TwoSided => (u1.max(u2), 2.0),
    };
    let method = match cfg.method {
        Method::Auto => choose_method(n1, n2, rs.ties),
        m => m,
    };
    let (p, z) = if method == Method::Exact {
        let dist = UDistribution::new(n1, n2).ok_or(Error::ExactTooLarge { n1, n2 })?;
        // scipy truncates a half-integer U (ties) to an integer here.
        (dist.sf(u.floor() as u64), None)
    } else {
        let z = asymptotic_z(u, n1, n2, rs.tie_term, cfg.continuity);
        (norm_sf(z), Some(z))
    };
    Ok(MannWhitney {
        u: u1,
        p_value: (p * factor).clamp(0.0, 1.0),
        method,
        z,
        n1,
        n2,
        ties: rs.ties,
    })
}

/// The standardized statistic (U − n1·n2/2 − ½·continuity)/σ with the tie-corrected σ.
#[must_use]
pub fn asymptotic_z(u: f64, n1: usize, n2: usize, tie_term: f64, continuity: bool) -> f64 {
    let (n1, n2) = (n1 as f64, n2 as f64);
    let mu = n1 * n2 / 2.0;
    let n = n1 + n2;
    let s = (n1 * n2 / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)))).sqrt();
    let mut numerator = u - mu;
    if continuity {
        numerator -= 0.5;
    }
    numerator / s
}

/// Largest `m · (m·n/2)` work the exact distribution may take (about a second).
const EXACT_WORK_LIMIT: u128 = 2_000_000_000;

/// The exact null distribution of `U` for sizes `(m, n)`, tabulated up to its middle.
#[derive(Clone, Debug)]
pub struct UDistribution {
    mn: u64,
    /// counts[k] = number of arrangements with U = k, for k ≤ ⌊mn/2⌋.
    counts: Vec<f64>,
    total: f64,
}

impl UDistribution {
    /// Tabulates the distribution; `None` if either size is 0 or it would be too large.
    #[must_use]
    pub fn new(n1: usize, n2: usize) -> Option<Self> {
        let (m, n) = (n1.min(n2), n1.max(n2));
        if m == 0 {
            return None;
        }
        let mn = m as u64 * n as u64;
        let half = mn / 2;
        if m as u128 * u128::from(half) > EXACT_WORK_LIMIT {
            return None;
        }
        let half = usize::try_from(half).ok()?;
        // Gaussian binomial [m+n choose m]_q = Π_{i=1..m} (1 − q^{n+i}) / (1 − q^i),
        // truncated at degree ⌊mn/2⌋. Multiplying by (1 − q^{n+i}) first and then dividing
        // by (1 − q^i) as a strided running sum keeps every intermediate a partial count.
        let mut c = vec![0.0f64; half + 1];
        c[0] = 1.0;
        for i in 1..=m {
            let up = n + i;
            for k in (up..=half).rev() {
                c[k] -= c[k - up];
            }
            for k in i..=half {
                c[k] += c[k - i];
            }
        }
        let lower: f64 = c.iter().take(usize::try_from(mn.div_ceil(2)).ok()?).sum();
        let total = if mn.is_multiple_of(2) {
            2.0 * lower + c[half]
        } else {
            2.0 * lower
        };
        Some(Self {
            mn,
            counts: c,
            total,
        })
    }

    /// P(U = k).
    #[must_use]
    pub fn pmf(&self, k: u64) -> f64 {
        if k > self.mn {
            return 0.0;
        }
        let k = k.min(self.mn - k);
        self.counts[k as usize] / self.total
    }

    /// P(U ≤ k).
    #[must_use]
    pub fn cdf(&self, k: u64) -> f64 {
        if k >= self.mn {
            return 1.0;
        }
        if k <= self.mn - k {
            self.lower_sum(k)
        } else {
            // P(U ≤ k) = 1 − P(U ≥ k+1) = 1 − P(U ≤ mn − k − 1).
            1.0 - self.lower_sum(self.mn - k - 1)
        }
    }

    /// P(U ≥ k), including k (scipy's `sf` convention for the p-value).
    #[must_use]
    pub fn sf(&self, k: u64) -> f64 {
        if k == 0 {
            return 1.0;
        }
        if k > self.mn {
            return 0.0;
        }
        let kc = self.mn - k;
        if k >= kc {
            // Symmetry: P(U ≥ k) = P(U ≤ mn − k), summed from the left.
            self.lower_sum(kc)
        } else {
            1.0 - self.lower_sum(k - 1)
        }
    }

    /// R's `qwilcox(p)`: the smallest q with P(U ≤ q) ≥ p (with R's 10·ε fuzz), p ≤ ½.
    #[must_use]
    pub fn quantile_lower(&self, p: f64) -> u64 {
        let target = p - 10.0 * f64::EPSILON;
        let mut acc = 0.0;
        for (q, c) in self.counts.iter().enumerate() {
            acc += c / self.total;
            if acc >= target {
                return q as u64;
            }
        }
        self.mn / 2
    }

    /// Σ_{j ≤ k} P(U = j) for k ≤ ⌊mn/2⌋.
    fn lower_sum(&self, k: u64) -> f64 {
        let k = (k as usize).min(self.counts.len() - 1);
        self.counts[..=k].iter().sum::<f64>() / self.total
    }

    /// m·n.
    #[must_use]
    pub fn mn(&self) -> u64 {
        self.mn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-300)
    }

    const X: [f64; 10] = [0.80, 0.83, 1.89, 1.04, 1.45, 1.38, 1.91, 1.64, 0.73, 1.46];
    const Y: [f64; 5] = [1.15, 0.88, 0.90, 0.74, 1.21];

    fn run(x: &[f64], y: &[f64], alternative: Alternative, method: Method, cont: bool) -> f64 {
        let cfg = MannWhitneyConfig {
            alternative,
            method,
            continuity: cont,
        };
        mann_whitney(x, y, cfg).unwrap().p_value
    }

    #[test]
    fn statistics_md_vectors() {
        use Alternative::{Greater, TwoSided};
        use Method::{Asymptotic, Exact};
        // statistics.md §3.1 (scipy 1.17.1).
        let r = mann_whitney(&X, &Y, MannWhitneyConfig::default()).unwrap();
        assert_eq!(r.u, 35.0);
        assert_eq!(r.method, Method::Exact);
        assert!(close(run(&X, &Y, Greater, Exact, true), 0.127_206_1, 1e-6));
        assert!(close(
            run(&X, &Y, Greater, Asymptotic, true),
            0.122_311_8,
            1e-6
        ));
        assert!(close(run(&X, &Y, TwoSided, Exact, true), 0.254_412_3, 1e-6));
        assert!(close(
            run(&X, &Y, TwoSided, Asymptotic, true),
            0.244_623_6,
            1e-6
        ));

        let x = [1.0, 2.0, 2.0, 3.0, 3.0, 3.0, 4.0, 5.0, 5.0, 6.0];
        let y = [2.0, 3.0, 4.0, 4.0, 5.0, 6.0, 6.0, 7.0, 8.0, 8.0, 9.0];
        let r = mann_whitney(&x, &y, MannWhitneyConfig::default()).unwrap();
        assert_eq!(r.u, 23.5);
        assert_eq!(r.method, Method::Asymptotic);
        assert!(close(r.p_value, 0.027_640_9, 1e-5));
        assert!(close(
            run(&x, &y, TwoSided, Asymptotic, false),
            0.025_229_7,
            1e-5
        ));
    }

    /// c(m, n, u) = c(m−1, n, u−n) + c(m, n−1, u), the textbook recurrence, for checking.
    fn recurrence_counts(m: usize, n: usize) -> Vec<f64> {
        // table[a][b][u] = c(a, b, u), filled for a ≤ m, b ≤ n.
        let len = m * n + 1;
        let mut table = vec![vec![vec![0.0f64; len]; n + 1]; m + 1];
        for a in 0..=m {
            for b in 0..=n {
                if a == 0 || b == 0 {
                    table[a][b][0] = 1.0;
                    continue;
                }
                for u in 0..=a * b {
                    let from_a = u.checked_sub(b).map_or(0.0, |v| table[a - 1][b][v]);
                    table[a][b][u] = from_a + table[a][b - 1][u];
                }
            }
        }
        table.swap_remove(m).swap_remove(n)
    }

    #[test]
    fn exact_distribution_matches_recurrence() {
        for (m, n) in [(1, 1), (1, 7), (3, 4), (5, 5), (4, 9), (8, 12), (10, 10)] {
            let full = recurrence_counts(m, n);
            let total: f64 = full.iter().sum();
            let d = UDistribution::new(m, n).unwrap();
            let d2 = UDistribution::new(n, m).unwrap();
            let mut cdf = 0.0;
            for (k, c) in full.iter().enumerate() {
                let k = k as u64;
                cdf += c / total;
                assert!(close(d.pmf(k), c / total, 1e-12), "pmf {m} {n} {k}");
                assert!(close(d.cdf(k), cdf, 1e-12), "cdf {m} {n} {k}");
                let sf: f64 = full[k as usize..].iter().sum::<f64>() / total;
                assert!(close(d.sf(k), sf, 1e-12), "sf {m} {n} {k}");
                assert_eq!(d.sf(k), d2.sf(k));
            }
        }
    }

    #[test]
    fn rank_stats_with_ties_and_shift() {
        // Pooled [1,2,2,3] vs [2,3,3]: U = #{x>y} + ½#{x=y}.
        let rs = rank_stats(&[1.0, 2.0, 2.0, 3.0], &[2.0, 3.0, 3.0], 0.0);
        // pairs: 1:0; 2: 0 + ½ (vs 2) twice → 1; 3: vs 2 → 1, vs 3,3 → ½+½ → 2.
        assert_eq!(rs.two_u, 2 * 3);
        // tie groups: {2,2,2} t=3 → 24; {3,3,3} → 24.
        assert_eq!(rs.tie_term, 48.0);
        // Shifting x by 1 gives [0,1,1,2] vs [2,3,3]: only the tie 2 = 2.
        let rs = rank_stats(&[1.0, 2.0, 2.0, 3.0], &[2.0, 3.0, 3.0], 1.0);
        assert_eq!(rs.two_u, 1);
        assert_eq!(rs.tie_term, 6.0 + 6.0 + 6.0);
    }

    #[test]
    fn fast_shifted_merge_equals_general_merge() {
        let x = SortedSample::new(&[1.0, 2.0, 2.0, 3.5, 4.0, 7.25, 7.25, 9.0]);
        let y = SortedSample::new(&[0.5, 2.0, 3.0, 3.0, 5.0, 6.0, 8.0]);
        let fast = ShiftedRanks::new(x.as_slice(), y.as_slice());
        for k in -40..=40 {
            let shift = f64::from(k) * 0.25;
            let want = rank_stats(x.as_slice(), y.as_slice(), shift);
            assert_eq!(fast.at(shift), want, "shift {shift}");
        }
        // Shifts so large that distinct values round together.
        let x = SortedSample::new(&[1.0, 1.0 + f64::EPSILON, 3.0]);
        let fast = ShiftedRanks::new(x.as_slice(), y.as_slice());
        assert_eq!(
            fast.at(-1e17),
            rank_stats(x.as_slice(), y.as_slice(), -1e17)
        );
        assert_eq!(fast.at(1e17), rank_stats(x.as_slice(), y.as_slice(), 1e17));
    }

    #[test]
    fn key_sort_orders_like_total_cmp() {
        let v = [
            3.0,
            -0.0,
            0.0,
            f64::NEG_INFINITY,
            -2.5,
            f64::INFINITY,
            1e-310,
            -1e-310,
        ];
        let mut a = v.to_vec();
        sort_floats(&mut a);
        let mut b = v.to_vec();
        b.sort_unstable_by(f64::total_cmp);
        assert_eq!(
            a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let cfg = MannWhitneyConfig::default();
        assert_eq!(mann_whitney(&[], &[1.0], cfg), Err(Error::Empty("canary")));
        assert_eq!(
            mann_whitney(&[f64::NAN], &[1.0], cfg),
            Err(Error::Empty("canary"))
        );
        // All tied: σ = 0; with continuity z = −∞ and p = 1, as scipy.
        let r = mann_whitney(&[1.0, 1.0], &[1.0, 1.0, 1.0], cfg).unwrap();
        assert_eq!(r.p_value, 1.0);
        let r = mann_whitney(
            &[f64::INFINITY, 1.0],
            &[f64::NEG_INFINITY, f64::INFINITY],
            cfg,
        )
        .unwrap();
        assert_eq!(r.u, 2.5);
        assert!(r.p_value > 0.0 && r.p_value <= 1.0);
        let big = MannWhitneyConfig {
            method: Method::Exact,
            ..cfg
        };
        let xs: Vec<f64> = (0..5000).map(f64::from).collect();
        assert!(matches!(
            mann_whitney(&xs, &xs, big),
            Err(Error::ExactTooLarge { .. })
        ));
    }
}
