//! Layer 2, sequential machinery: the anytime-valid pieces the sequential judges are built
//! from (statistics.md §2).
//!
//! - [`event_test`] (re-exported here): e-processes on event counts given the share in
//!   force, the conjugate beta mixture and the grid mixture [`EventTest`] (§2.1);
//! - [`bucket_test`]: the all-buckets latency e-process (§2.5);
//! - [`slow_thresholds`]: the slow-request event tests at a few latency thresholds (§2.2);
//! - [`confseq`]: time-uniform confidence sequences and boundaries (§2.2–2.3);
//! - [`resolution`]: what a histogram's buckets can resolve of an allowed ratio (§2.2.1);
//! - [`share`]: where the canary's share comes from (assigned or observed).
//!
//! Nothing here makes a decision: [`crate::analysis::judges`] does.

pub mod bucket_test;
pub mod confseq;
pub mod event_test;
pub mod resolution;
pub mod share;
pub mod slow_thresholds;

pub use event_test::{
    BetaMixture, EventTest, Prior, beta_mixture, canary_event_probability, ratio_from_theta,
};
