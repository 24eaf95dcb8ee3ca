//! Integration tests: one binary (house style), one module per area.

mod cli;
mod fuzz;
mod policy_fixtures;
mod proxy;
mod status;
mod support;
