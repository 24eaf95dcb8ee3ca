//! Bucketed latency distributions: the built-in proxy's log-spaced buckets and Prometheus
//! `le` histograms share this type.

use serde::{Deserialize, Serialize};

/// Why a histogram could not be built or combined.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HistogramError {
    /// Bounds and counts differ in length, or there are no buckets.
    #[error("histogram has {bounds} bounds and {counts} counts")]
    Shape {
        /// Number of bounds.
        bounds: usize,
        /// Number of counts.
        counts: usize,
    },
    /// Bounds are not strictly increasing, or a bound is NaN.
    #[error("histogram bounds are not strictly increasing at bound {0}")]
    Unordered(f64),
    /// A count is negative or not finite.
    #[error("histogram count {0} is negative or not finite")]
    BadCount(f64),
    /// Two histograms with different buckets were combined.
    #[error("histograms have different buckets")]
    Mismatch,
    /// Cumulative bucket counts decrease with `le` (a counter reset inside the window).
    #[error("cumulative bucket count decreases at le={le} ({from} then {to}): counter reset?")]
    NotCumulative {
        /// Bucket bound where the count decreased.
        le: f64,
        /// Count at the previous bound.
        from: f64,
        /// Count at this bound.
        to: f64,
    },
}

/// Upper-bounded buckets: `counts[i]` values fell in `(bounds[i-1], bounds[i]]`.
/// The last bound may be `+∞`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "HistogramParts")]
pub struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<f64>,
}

/// A histogram as stored (a rollout's saved judge state): checked by [`Histogram::try_new`]
/// when read back, so a damaged record cannot build an inconsistent one.
#[derive(Deserialize)]
struct HistogramParts {
    bounds: Vec<f64>,
    counts: Vec<f64>,
}

impl TryFrom<HistogramParts> for Histogram {
    type Error = HistogramError;
    fn try_from(p: HistogramParts) -> Result<Self, HistogramError> {
        Histogram::try_new(p.bounds, p.counts)
    }
}

/// The built-in log-spaced bucket bounds, in seconds: 100 µs × 2^(i/8) up to about two
/// minutes, then `+∞` (163 buckets, a relative resolution of 9 %).
#[must_use]
pub fn log_bounds() -> Vec<f64> {
    let mut v: Vec<f64> = (0..162)
        .map(|i| 1e-4 * 2f64.powf(f64::from(i) / 8.0))
        .collect();
    v.push(f64::INFINITY);
    v
}

/// Index of the built-in bucket that holds `seconds`.
#[must_use]
pub fn log_bucket_index(seconds: f64) -> usize {
    if !(seconds > 1e-4) {
        return 0;
    }
    let i = ((seconds / 1e-4).log2() * 8.0).ceil();
    if i >= 162.0 { 162 } else { i as usize }
}

impl Histogram {
    /// Builds a histogram from bounds and per-bucket (non-cumulative) counts.
    pub fn try_new(bounds: Vec<f64>, counts: Vec<f64>) -> Result<Self, HistogramError> {
        if bounds.len() != counts.len() || bounds.is_empty() {
            return Err(HistogramError::Shape {
                bounds: bounds.len(),
                counts: counts.len(),
            });
        }
        for w in bounds.windows(2) {
            if !(w[0] < w[1]) {
                return Err(HistogramError::Unordered(w[1]));
            }
        }
        if bounds[0].is_nan() {
            return Err(HistogramError::Unordered(bounds[0]));
        }
        if let Some(&c) = counts.iter().find(|c| !(c.is_finite() && **c >= 0.0)) {
            return Err(HistogramError::BadCount(c));
        }
        Ok(Histogram { bounds, counts })
    }

    /// An empty histogram over `bounds`.
    pub fn empty(bounds: Vec<f64>) -> Result<Self, HistogramError> {
        let n = bounds.len();
        Self::try_new(bounds, vec![0.0; n])
    }

    /// From Prometheus-style cumulative `(le, count)` pairs in any order. Tiny negative
    /// steps (floating-point noise from `increase()`, below 1e-9 relative) are clamped.
    pub fn from_cumulative(mut pairs: Vec<(f64, f64)>) -> Result<Self, HistogramError> {
        if pairs.iter().any(|(le, _)| le.is_nan()) {
            return Err(HistogramError::Unordered(f64::NAN));
        }
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut bounds = Vec::with_capacity(pairs.len());
        let mut counts = Vec::with_capacity(pairs.len());
        let mut prev = 0.0;
        for (le, cum) in pairs {
            if !(cum.is_finite() && cum >= 0.0) {
                return Err(HistogramError::BadCount(cum));
            }
            let mut d = cum - prev;
            if d < 0.0 {
                if -d <= 1e-9 * prev.max(1.0) {
                    d = 0.0;
                } else {
                    return Err(HistogramError::NotCumulative {
                        le,
                        from: prev,
                        to: cum,
                    });
                }
            }
            bounds.push(le);
            counts.push(d);
            prev = prev.max(cum);
        }
        Self::try_new(bounds, counts)
    }

    /// Upper bounds of the buckets.
    #[must_use]
    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    /// Per-bucket counts.
    #[must_use]
    pub fn counts(&self) -> &[f64] {
        &self.counts
    }

    /// Total number of values.
    #[must_use]
    pub fn total(&self) -> f64 {
        self.counts.iter().sum()
    }

    /// Adds `other`'s counts.
    pub fn merge(&mut self, other: &Histogram) -> Result<(), HistogramError> {
        if self.bounds != other.bounds {
            return Err(HistogramError::Mismatch);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        Ok(())
    }

    /// Number of values strictly above `bounds[i]`.
    #[must_use]
    pub fn count_above(&self, i: usize) -> f64 {
        self.counts.get(i + 1..).map_or(0.0, |s| s.iter().sum())
    }

    /// Index of the bucket holding the `p`-quantile (the first bucket whose cumulative
    /// count reaches `p·total`); `None` when empty.
    #[must_use]
    pub fn quantile_bucket(&self, p: f64) -> Option<usize> {
        let total = self.total();
        if total <= 0.0 || p.is_nan() {
            return None;
        }
        let target = p.clamp(0.0, 1.0) * total;
        let mut cum = 0.0;
        for (i, c) in self.counts.iter().enumerate() {
            cum += c;
            if cum >= target && cum > 0.0 {
                return Some(i);
            }
        }
        Some(self.counts.len() - 1)
    }

    /// The `p`-quantile, interpolated linearly inside its bucket as Prometheus's
    /// `histogram_quantile` does (the first bucket's lower edge is 0; a quantile in the
    /// `+∞` bucket returns the largest finite bound). `NaN` when empty.
    #[must_use]
    pub fn quantile(&self, p: f64) -> f64 {
        let Some(i) = self.quantile_bucket(p) else {
            return f64::NAN;
        };
        let upper = self.bounds[i];
        let lower = if i == 0 { 0.0 } else { self.bounds[i - 1] };
        if upper.is_infinite() {
            return lower;
        }
        let total = self.total();
        let before: f64 = self.counts[..i].iter().sum();
        let inside = self.counts[i];
        if inside <= 0.0 {
            return upper;
        }
        let frac = ((p.clamp(0.0, 1.0) * total - before) / inside).clamp(0.0, 1.0);
        lower + (upper - lower) * frac
    }

    /// Bounds on the `p`-quantile from the empirical CDF band of half-width `eps`:
    /// the lower edge of the bucket holding the `(p − eps)`-quantile and the upper edge of
    /// the bucket holding the `(p + eps)`-quantile (`-∞`/`+∞` past the ends).
    #[must_use]
    pub fn quantile_bounds(&self, p: f64, eps: f64) -> (f64, f64) {
        let lo = if p - eps <= 0.0 {
            f64::NEG_INFINITY
        } else {
            self.quantile_bucket(p - eps)
                .map_or(f64::NEG_INFINITY, |i| {
                    if i == 0 { 0.0 } else { self.bounds[i - 1] }
                })
        };
        let hi = if p + eps >= 1.0 {
            f64::INFINITY
        } else {
            self.quantile_bucket(p + eps)
                .map_or(f64::INFINITY, |i| self.bounds[i])
        };
        (lo, hi)
    }

    /// Mean, taking each value at its bucket's midpoint (the `+∞` bucket at its lower edge).
    #[must_use]
    pub fn approx_mean(&self) -> f64 {
        let total = self.total();
        if total <= 0.0 {
            return f64::NAN;
        }
        let mut lower = 0.0;
        let mut sum = 0.0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let mid = if b.is_infinite() {
                lower
            } else {
                0.5 * (lower + b)
            };
            sum += mid * c;
            lower = *b;
        }
        sum / total
    }

    /// Index of the smallest bound ≥ `x` (with a relative tolerance of 1e-9); `None` when
    /// `x` exceeds every finite bound.
    #[must_use]
    pub fn bound_at_or_above(&self, x: f64) -> Option<usize> {
        self.bounds
            .iter()
            .position(|b| *b >= x * (1.0 - 1e-9) && b.is_finite())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_buckets_cover_values() {
        let b = log_bounds();
        assert_eq!(b.len(), 163);
        for x in [1e-5, 1e-4, 0.0123, 0.5, 1.0, 99.0, 1e9] {
            let i = log_bucket_index(x);
            assert!(x <= b[i] * (1.0 + 1e-12), "{x} in bucket {i} <= {}", b[i]);
            if i > 0 {
                assert!(x > b[i - 1], "{x} above {}", b[i - 1]);
            }
        }
    }

    #[test]
    fn cumulative_and_quantiles() {
        let h = Histogram::from_cumulative(vec![
            (0.5, 50.0),
            (0.1, 10.0),
            (f64::INFINITY, 100.0),
            (1.0, 90.0),
        ])
        .unwrap();
        assert_eq!(h.bounds(), &[0.1, 0.5, 1.0, f64::INFINITY]);
        assert_eq!(h.counts(), &[10.0, 40.0, 40.0, 10.0]);
        assert_eq!(h.total(), 100.0);
        assert_eq!(h.count_above(1), 50.0);
        // Median at 50 of 100: the end of the 0.1–0.5 bucket.
        assert!((h.quantile(0.5) - 0.5).abs() < 1e-12);
        assert!((h.quantile(0.3) - 0.3).abs() < 1e-12);
        assert_eq!(h.quantile(0.99), 1.0);
        assert_eq!(h.quantile_bounds(0.5, 0.1), (0.1, 1.0));
        assert!(Histogram::from_cumulative(vec![(0.1, 10.0), (0.5, 5.0)]).is_err());
        assert!(Histogram::from_cumulative(vec![(f64::NAN, 1.0)]).is_err());
        assert!(Histogram::empty(vec![]).is_err());
        assert!(Histogram::try_new(vec![1.0, 1.0], vec![0.0, 0.0]).is_err());
        assert!(Histogram::empty(vec![1.0]).unwrap().quantile(0.5).is_nan());
    }
}
