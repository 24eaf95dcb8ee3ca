//! coalmine: canary analysis with metrics-driven auto-rollback.
//!
//! A controller moves traffic from the baseline to the canary in steps through a
//! [traffic provider](traffic), while judges ([analysis]) compare the two arms on metrics
//! from a [metrics source](metrics) with anytime-valid statistics, and promote or roll back
//! as a [policy] says. See `README.md` for the user guide and `design.md` for the design.

pub mod analysis;
pub mod cli;
pub mod controller;
pub mod demo;
pub mod metrics;
pub mod model;
pub mod net;
pub mod policy;
pub mod redact;
pub mod report;
pub mod traffic;
