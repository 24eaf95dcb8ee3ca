//! The controller: a pure state machine ([`machine`]) inside a thin async shell
//! ([`runner`]) that moves traffic, fetches metrics, judges them and records every decision
//! ([`record`]) before acting on it.

pub mod dry_run;
pub mod gates;
pub mod health;
pub mod hooks;
pub mod machine;
pub mod readiness;
pub mod record;
pub mod runner;
pub mod store;

#[cfg(test)]
pub(crate) mod tests;

pub use machine::{Command, Decision, Event, Note, Phase, Reason, WindowFacts, judging, step};
pub use record::Record;
pub use runner::{
    DryRun, Durable, FinalOutcome, Lever, Observer, OperatorAction, Quiet, Reconciler, RunOptions,
    RunReport, Wake, run, run_durable,
};
pub use store::{FileStore, RolloutState, Store, StoreError};
