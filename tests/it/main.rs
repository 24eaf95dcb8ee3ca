//! Integration tests: one binary (house style), one module per area.

mod authoring;
mod backtest;
mod cli;
#[path = "../common/mod.rs"]
mod common;
mod durable;
mod etcd;
mod floods;
mod fuzz;
mod limits;
mod policies;
mod policy_fixtures;
mod proxy;
mod raw_http;
mod report;
mod rollout;
mod schema;
mod serve;
mod signals;
mod status;
mod support;
