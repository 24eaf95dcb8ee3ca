//! Analysis: pure, synchronous statistics and judges (no tokio, no I/O).
//!
//! Observations come in per window and per arm ([`observation`]); judges ([`judge`]) turn
//! them into metric verdicts ([`verdict`]) with the numbers behind them. The default judge
//! is sequential and anytime-valid ([`sequential`], [`errors`], [`latency`]): the controller
//! may look at every tick without inflating the false-rollback rate.
//!
//! Classical fixed-horizon statistics (statistics.md §3) back the offline judges, the
//! Kayenta-compatible judge ([`kayenta`]) and the benchmark baselines: [`mann_whitney`],
//! [`hodges_lehmann`], [`fisher`], [`proportions`] and [`welch`]. [`confseq`] holds the
//! time-uniform confidence sequences and boundaries of §2.2–2.3.

pub mod bucket_test;
pub mod confseq;
pub mod errors;
pub mod fisher;
pub mod fmt;
pub mod histogram;
pub mod hodges_lehmann;
pub mod judge;
pub mod kayenta;
pub mod latency;
pub mod mann_whitney;
pub mod mw_judge;
pub mod observation;
pub mod proportions;
#[cfg(test)]
mod props;
pub mod resolution;
pub mod sequential;
pub mod share;
pub mod slow_thresholds;
pub mod special;
pub mod threshold;
pub mod verdict;
pub mod welch;

pub use histogram::Histogram;
pub use judge::{JudgeSpec, MetricJudge};
pub use observation::{Counts, Observation, Segment, Shape};
pub use verdict::{MetricVerdict, Outcome, Stats};
