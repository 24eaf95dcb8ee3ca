//! Integration tests: one binary (house style), one module per area.

mod cli;
#[path = "../common/mod.rs"]
mod common;
mod fuzz;
mod policies;
mod policy_fixtures;
mod proxy;
mod rollout;
mod status;
mod support;
