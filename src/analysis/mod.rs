//! Analysis: pure, synchronous statistics and judges (no tokio, no I/O).
//!
//! Three layers, one folder each:
//! 1. [`primitives`]: special functions and the classical fixed-horizon tests (Mann-Whitney,
//!    Hodges-Lehmann, Fisher, Welch, proportions; statistics.md §3);
//! 2. [`sequential`]: the anytime-valid machinery (e-processes on events and on latency
//!    buckets, confidence sequences, histogram resolution, canary shares; statistics.md §2);
//! 3. [`judges`]: per-metric judges built from them, turning observations into verdicts.
//!
//! At this level: the data they share, observations per window and per arm
//! ([`observation`], [`histogram`]) and verdicts ([`verdict`]), with number formatting
//! ([`fmt`]). Every module of the layers is also re-exported here
//! (`crate::analysis::latency`, `crate::analysis::special`, …), the paths the rest of the
//! crate uses.
//!
//! The default judge is sequential and anytime-valid: the controller may look at every tick
//! without inflating the false-rollback rate.

pub mod fmt;
pub mod histogram;
pub mod judges;
pub mod observation;
pub mod primitives;
#[cfg(test)]
mod props;
pub mod sequential;
pub mod verdict;

pub use judges::{errors, judge, kayenta, latency, mw_judge, threshold};
pub use primitives::{fisher, hodges_lehmann, mann_whitney, proportions, special, welch};
pub use sequential::{bucket_test, confseq, resolution, share, slow_thresholds};

pub use histogram::Histogram;
pub use judge::{JudgeSpec, MetricJudge};
pub use observation::{Counts, Observation, Segment, Shape};
pub use verdict::{MetricVerdict, Outcome, Stats};
