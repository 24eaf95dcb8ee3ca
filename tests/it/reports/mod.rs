//! After a rollout: the post-deployment report and the backtest of a policy on recorded or
//! Prometheus history.

mod backtest;
pub(crate) mod report;
