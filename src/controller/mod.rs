//! The controller: a pure state machine ([`machine`]) inside a thin async shell
//! ([`runner`]) that moves traffic, fetches metrics, judges them and records every decision
//! ([`record`]) before acting on it.

pub mod hooks;
pub mod machine;
pub mod record;
pub mod runner;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_hooks;
#[cfg(test)]
mod tests_sources;

pub use machine::{Command, Decision, Event, Phase, Reason, step};
pub use record::Record;
pub use runner::{FinalOutcome, Observer, Quiet, RunOptions, RunReport, run};
