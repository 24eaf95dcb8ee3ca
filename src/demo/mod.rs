//! The embedded default: in-process baseline and canary services behind the built-in proxy,
//! a load generator, and one rollout of `policies/demo.toml`.

use std::net::SocketAddr;
use std::time::Duration;

use crate::policy::{Policy, TrafficConfig, Upstream};

pub mod load;
pub mod service;

/// The demo policy, embedded in the binary.
pub const DEMO_POLICY: &str = include_str!("../../policies/demo.toml");

/// What the canary does wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Canary and baseline behave the same: expect a promotion.
    Healthy,
    /// The canary serves about 5 % errors against 0.5 % on the baseline: expect a rollback.
    Errors,
    /// The canary's median latency is about 50 % higher: expect a rollback.
    Latency,
    /// Only the canary's slowest 5 % of requests are slower, twice as slow (its p99 ×2, its
    /// median unchanged): expect a rollback.
    LatencyTail,
    /// The canary sends 200 headers, then resets every connection half-way through the
    /// body: expect a rollback (every canary response is broken).
    BrokenBodies,
}

/// Baseline and canary behaviour for a scenario.
#[must_use]
pub fn behaviours(scenario: Scenario, seed: u64) -> (service::Behaviour, service::Behaviour) {
    let base = service::Behaviour {
        track: "baseline".to_string(),
        error_rate: 0.005,
        median: Duration::from_millis(20),
        sigma: 0.35,
        slow_tail: 1.0,
        seed: seed.wrapping_mul(2).wrapping_add(1),
        body: service::BodyMode::Complete,
    };
    let mut canary = service::Behaviour {
        track: "canary".to_string(),
        seed: seed.wrapping_mul(2).wrapping_add(2),
        ..base.clone()
    };
    match scenario {
        Scenario::Healthy => {}
        Scenario::Errors => canary.error_rate = 0.05,
        Scenario::Latency => canary.median = Duration::from_millis(30),
        Scenario::LatencyTail => canary.slow_tail = 2.0,
        Scenario::BrokenBodies => canary.body = service::BodyMode::ResetMidBody,
    }
    (base, canary)
}

/// Points the policy's built-in proxy at the demo services and a free loopback port.
///
/// # Errors
/// When the policy does not use the built-in proxy.
pub fn wire(policy: &mut Policy, baseline: SocketAddr, canary: SocketAddr) -> Result<(), String> {
    let TrafficConfig::Proxy(p) = &mut policy.traffic else {
        return Err(format!(
            "the demo needs [traffic] type = \"proxy\", not \"{}\"",
            policy.traffic.kind()
        ));
    };
    p.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    p.baseline = Upstream {
        url: format!("http://{baseline}"),
        authority: baseline.to_string(),
    };
    p.canary = Upstream {
        url: format!("http://{canary}"),
        authority: canary.to_string(),
    };
    Ok(())
}
