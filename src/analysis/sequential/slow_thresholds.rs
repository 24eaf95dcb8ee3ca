//! The slow-thresholds latency test (statistics.md §2.2): the conditional event test of
//! [`crate::analysis::sequential`] on requests slower than a few thresholds.
//!
//! A request slower than a threshold τ is an event. Under H0 (same latency distribution,
//! per-request assignment) a slow request comes from the canary with probability `w`, so
//! the conditional event test applies unchanged, and drift that slows both arms cancels.
//! With an allowed slowdown `m`, the canary's events are counted above the largest bucket
//! bound at most `m·τ` ([`crate::analysis::resolution`]): if the canary is at most that many times
//! slower, its events are no likelier than the baseline's, and the test is never looser
//! than the policy says.
//!
//! Thresholds are the baseline's quantiles estimated from *earlier* windows only (or fixed
//! bounds), so they are predictable and each window's factor keeps its null expectation.
//! The per-threshold e-processes are averaged, which is itself an e-process. The same test
//! runs at the ladder of larger margins ([`crate::analysis::resolution::LADDER`]) for the lower bound
//! a Fail reports.

use crate::analysis::fmt;
use crate::analysis::histogram::Histogram;
use crate::analysis::latency::{SlowStat, Thresholds};
use crate::analysis::resolution::{self, LADDER, Ladder, Resolved};
use crate::analysis::sequential::{EventTest, Prior};
use crate::analysis::special::log_sum_exp;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Slot {
    q: Option<f64>,
    fixed: Option<f64>,
    /// One test per ladder margin; the first is the policy's.
    tests: Vec<EventTest>,
    last: Option<(f64, f64)>,
}

/// State of the slow-thresholds test.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SlowThresholdTest {
    allowed: f64,
    slots: Vec<Slot>,
    ladder: Ladder,
}

impl SlowThresholdTest {
    /// A fresh test of "at most `allowed` times slower" at level `alpha`.
    #[must_use]
    pub fn new(thresholds: &Thresholds, prior: &Prior, allowed: f64, alpha: f64) -> Self {
        let mk = |q, fixed| Slot {
            q,
            fixed,
            tests: LADDER
                .iter()
                .map(|_| EventTest::new(prior.clone(), 1.0, alpha).tracking_lower_bound(false))
                .collect(),
            last: None,
        };
        let slots = match thresholds {
            Thresholds::Quantiles(qs) => qs.iter().map(|q| mk(Some(*q), None)).collect(),
            Thresholds::Fixed(ts) => ts.iter().map(|t| mk(None, Some(*t))).collect(),
        };
        SlowThresholdTest {
            allowed,
            slots,
            ladder: Ladder::default(),
        }
    }

    /// Adds one window at canary share `w`; thresholds come from `earlier` (the baseline
    /// before this window).
    pub fn update(&mut self, earlier: Option<&Histogram>, b: &Histogram, c: &Histogram, w: f64) {
        let bounds = b.bounds();
        for slot in &mut self.slots {
            let bi = match (slot.q, slot.fixed) {
                (_, Some(t)) => b.bound_at_or_above(t),
                (Some(q), None) => earlier
                    .and_then(|h| h.quantile_bucket(q))
                    .filter(|&i| i < bounds.len() && bounds[i].is_finite()),
                (None, None) => None,
            };
            let Some(bi) = bi else { continue };
            let tau = bounds[bi];
            let base_slow = b.count_above(bi);
            for (n, test) in slot.tests.iter_mut().enumerate() {
                let m = self.allowed * LADDER[n];
                let r = Resolved::at_threshold(bounds, bi, m);
                let ci = resolution::canary_bound(bounds, bi, m);
                if n == 0 {
                    slot.last = Some((tau, bounds[ci]));
                }
                self.ladder.judged(n, r);
                test.update(w, c.count_above(ci), base_slow);
            }
        }
        for n in 0..LADDER.len() {
            self.ladder.looked(n, self.log_e_at(n));
        }
    }

    /// Averaged log e-value at ladder step `n`.
    fn log_e_at(&self, n: usize) -> f64 {
        if self.slots.is_empty() {
            return 0.0;
        }
        let l: Vec<f64> = self.slots.iter().map(|s| s.tests[n].log_e()).collect();
        log_sum_exp(&l) - (self.slots.len() as f64).ln()
    }

    /// Current log e-value at the policy's margin.
    #[must_use]
    pub fn log_e(&self) -> f64 {
        self.log_e_at(0)
    }

    /// The ladder's record: running maxima, margins judged at, the coarsest resolution.
    #[must_use]
    pub fn ladder(&self) -> &Ladder {
        &self.ladder
    }

    /// Each threshold's numbers at the policy's margin.
    #[must_use]
    pub fn slot_stats(&self) -> Vec<SlowStat> {
        self.slots
            .iter()
            .map(|s| {
                let (bs, cs) = s.tests[0].events();
                let (bt, ct) = s.last.unwrap_or((f64::NAN, f64::NAN));
                SlowStat {
                    q: s.q,
                    baseline_threshold: bt,
                    canary_threshold: ct,
                    effective_ratio: ct / bt,
                    baseline_slow: bs,
                    canary_slow: cs,
                    log_e: s.tests[0].log_e(),
                    ratio: s.tests[0].ratio_estimate(),
                }
            })
            .collect()
    }

    /// The threshold with the strongest evidence, for the reason.
    #[must_use]
    pub fn evidence(&self) -> String {
        let stats = self.slot_stats();
        let worst = stats
            .iter()
            .filter(|t| t.baseline_threshold.is_finite())
            .max_by(|a, b| a.log_e.total_cmp(&b.log_e));
        worst.map_or(String::new(), |t| {
            format!(
                "; strongest evidence above {} (canary above {}): canary {} slow vs baseline {}, slow-rate ratio {}",
                fmt::secs(t.baseline_threshold),
                fmt::secs(t.canary_threshold),
                fmt::count(t.canary_slow),
                fmt::count(t.baseline_slow),
                fmt::num(t.ratio)
            )
        })
    }
}
