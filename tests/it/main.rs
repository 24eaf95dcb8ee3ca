//! Integration tests: one binary (house style), one module per area.

mod blue_green;
mod cli;
#[path = "../common/mod.rs"]
mod common;
mod durable;
mod etcd;
mod hostile;
mod policy;
mod proxy;
mod reports;
mod rollout;
mod serve;
mod status;
mod support;
