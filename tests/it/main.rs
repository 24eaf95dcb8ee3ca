//! Integration tests: one binary (house style), one module per area.

mod cli;
mod floods;
mod fuzz;
mod limits;
mod policy_fixtures;
mod proxy;
mod raw_http;
mod status;
mod support;
