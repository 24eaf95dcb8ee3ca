//! Hostile input and signals: request floods, fuzzed bytes, size and time limits, raw HTTP,
//! SIGINT/SIGTERM/SIGKILL during a rollout.

mod floods;
mod fuzz;
mod limits;
pub(crate) mod raw_http;
mod signals;
