//! What the terminal shows: colours, diagnostics and machine output ([`output`]), and the
//! live progress of a rollout ([`progress`]).

pub mod output;
pub mod progress;
