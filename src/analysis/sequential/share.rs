//! Which canary share the sequential tests use for a window.
//!
//! The conditional tests need the *assignment probability* w. A per-request router (the
//! built-in proxy, HAProxy, nginx weights) routes each request with the weight in force, so
//! the assigned weight is exactly right. Routers that split by instance (a few canary pods
//! behind a Service) or that do not honour weights exactly have a different real share;
//! there, the share observed in the request counts of *earlier* windows at the same
//! assigned weight is the better estimate. The current window is never used: its own
//! counts would leak the outcome into the test (statistics.md §2.1).

use serde::{Deserialize, Serialize};

/// Where the share comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShareMode {
    /// The weight the controller had in force (exact for per-request routing).
    #[default]
    Assigned,
    /// The canary's share of requests in earlier windows at the same weight.
    Observed,
}

/// Requests of earlier windows an observed share needs before it replaces the assigned one
/// (below, the estimate's noise would be worse than the assignment's error).
pub const MIN_OBSERVED_REQUESTS: f64 = 200.0;

/// Tracks request counts per assigned weight to estimate the observed share.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ShareTracker {
    mode: ShareMode,
    /// (assigned share, baseline requests, canary requests) so far.
    seen: Vec<(f64, f64, f64)>,
}

impl ShareTracker {
    /// A tracker in `mode`.
    #[must_use]
    pub fn new(mode: ShareMode) -> Self {
        ShareTracker {
            mode,
            seen: Vec::new(),
        }
    }

    /// The share to use for a window assigned `w`, from earlier windows only; then records
    /// this window's requests (`trials` = baseline, canary) for later ones.
    pub fn share(&mut self, w: f64, trials: Option<(f64, f64)>) -> f64 {
        let entry = self.seen.iter().position(|(a, _, _)| *a == w);
        let estimate = match (self.mode, entry) {
            (ShareMode::Observed, Some(i)) => {
                let (_, b, c) = self.seen[i];
                // A few hundred requests at least, and never 0 or 1 exactly.
                if b + c >= MIN_OBSERVED_REQUESTS {
                    (c / (b + c)).clamp(1e-4, 1.0 - 1e-4)
                } else {
                    w
                }
            }
            _ => w,
        };
        if let Some((b, c)) = trials
            && b.is_finite()
            && c.is_finite()
            && b >= 0.0
            && c >= 0.0
        {
            match entry {
                Some(i) => {
                    self.seen[i].1 += b;
                    self.seen[i].2 += c;
                }
                None => self.seen.push((w, b, c)),
            }
        }
        estimate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observed_share_uses_earlier_windows_only() {
        let mut t = ShareTracker::new(ShareMode::Observed);
        assert_eq!(t.share(0.05, Some((900.0, 100.0))), 0.05);
        // Now 10 % observed at the 5 % weight.
        assert!((t.share(0.05, Some((900.0, 100.0))) - 0.1).abs() < 1e-12);
        // A new weight starts from its assigned value.
        assert_eq!(t.share(0.25, Some((750.0, 250.0))), 0.25);
        let mut a = ShareTracker::new(ShareMode::Assigned);
        a.share(0.05, Some((900.0, 100.0)));
        assert_eq!(a.share(0.05, Some((900.0, 100.0))), 0.05);
    }
}
