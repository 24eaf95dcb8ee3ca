//! Layer 3, judges: per-metric state machines that turn each window's observations into a
//! verdict with the numbers behind it.
//!
//! [`judge`] dispatches on the policy's judge ([`JudgeSpec`], [`MetricJudge`]); the
//! sequential judges are [`errors`] (event counts) and [`latency`] (histograms, either test
//! of [`crate::analysis::sequential`]); [`threshold`] is an absolute bound on the canary;
//! [`mw_judge`] and [`kayenta`] are the Kayenta-compatible Mann-Whitney classification and
//! score.

pub mod errors;
pub mod judge;
pub mod kayenta;
pub mod latency;
pub mod mw_judge;
pub mod threshold;

pub use judge::{JudgeSpec, MetricJudge};
