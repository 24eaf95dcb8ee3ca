//! Layer 1, primitives: special functions and the classical fixed-horizon tests
//! (statistics.md §3), with no notion of windows, arms or verdicts.
//!
//! [`special`] (normal and gamma functions, log-sum-exp, root finding), [`mann_whitney`] and
//! its [`hodges_lehmann`] interval, [`fisher`]'s exact test, [`proportions`] (Wilson and
//! Newcombe intervals) and [`welch`]'s t-test. They back the offline judges, the
//! Kayenta-compatible judge and the benchmark's fixed-horizon baseline.

pub mod fisher;
pub mod hodges_lehmann;
pub mod mann_whitney;
pub mod proportions;
pub mod special;
pub mod welch;
