//! The conformance suite every traffic provider must pass (vector's compliance helpers).
//!
//! Provider tests call [`check`] with a live provider: it sets weights, reads them back,
//! repeats calls, cancels a call half-way and checks that the next one converges.

use std::time::Duration;

use super::TrafficProvider;
use crate::model::Weight;

fn w(pct: f64) -> Weight {
    Weight::try_from_percent(pct).expect("constant weight")
}

/// Runs the suite; returns every failed expectation (empty = conformant).
///
/// `granularity` is the coarsest weight step the provider can represent (e.g. 1 % for a
/// provider that takes integer percentages): read-backs may differ from the request by at
/// most that much.
pub async fn check<P: TrafficProvider>(p: &P, granularity: Weight) -> Vec<String> {
    let mut failures = Vec::new();
    let tol = i32::from(granularity.bp());
    let near = |a: Weight, b: Weight| (i32::from(a.bp()) - i32::from(b.bp())).abs() <= tol;
    for target in [w(5.0), w(25.0), w(100.0), w(0.0), w(50.0)] {
        if let Err(e) = p.set_weight(target).await {
            failures.push(format!("set_weight({target}) failed: {e}"));
            continue;
        }
        match p.current().await {
            Ok(cur) if near(cur, target) => {}
            Ok(cur) => failures.push(format!("set {target}, read back {cur}")),
            Err(e) => failures.push(format!("current() after set {target} failed: {e}")),
        }
    }
    // Idempotent: the same weight twice is fine and changes nothing.
    for _ in 0..2 {
        if let Err(e) = p.set_weight(w(25.0)).await {
            failures.push(format!("repeated set_weight(25%) failed: {e}"));
        }
    }
    match p.current().await {
        Ok(cur) if near(cur, w(25.0)) => {}
        Ok(cur) => failures.push(format!("after repeated 25%, read back {cur}")),
        Err(e) => failures.push(format!("current() after repeats failed: {e}")),
    }
    // A set cancelled at its first await, then a new set: the new one must win.
    let cancelled = tokio::time::timeout(Duration::from_micros(1), p.set_weight(w(75.0))).await;
    drop(cancelled);
    if let Err(e) = p.set_weight(w(10.0)).await {
        failures.push(format!(
            "set_weight(10%) after a cancelled call failed: {e}"
        ));
    }
    match p.current().await {
        Ok(cur) if near(cur, w(10.0)) => {}
        Ok(cur) => failures.push(format!("after a cancelled 75% and a 10%, read back {cur}")),
        Err(e) => failures.push(format!("current() after cancel failed: {e}")),
    }
    failures
}

/// Checks how a provider that cannot do its job fails: `set_weight` must fail, with an
/// error whose [`is_transient`](super::TrafficError::is_transient) is `transient` and whose
/// message names the provider; `current` may succeed (a provider without read-back) or
/// fail the same way. Returns every failed expectation.
pub async fn check_failure<P: TrafficProvider>(p: &P, transient: bool) -> Vec<String> {
    let class = |t: bool| if t { "transient" } else { "permanent" };
    let prefix = format!("provider `{}`: ", p.name());
    let judge = |what: &str, e: &super::TrafficError| {
        let mut out = Vec::new();
        if e.is_transient() != transient {
            out.push(format!(
                "{what}: expected a {} error, got a {} one: {e}",
                class(transient),
                class(e.is_transient())
            ));
        }
        if !e.to_string().starts_with(&prefix) {
            out.push(format!("{what}: message does not name the provider: {e}"));
        }
        out
    };
    let mut failures = match p.set_weight(w(25.0)).await {
        Ok(()) => vec!["set_weight(25%) succeeded".to_string()],
        Err(e) => judge("set_weight", &e),
    };
    if let Err(e) = p.current().await {
        failures.extend(judge("current", &e));
    }
    failures
}
