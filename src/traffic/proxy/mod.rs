//! The built-in weighted reverse proxy: the embedded default traffic provider and the
//! source of the `builtin` metrics.
//!
//! Every request is routed to the canary with probability equal to the weight in force
//! when it arrived, so the assignment probability of each request is known exactly. Counters
//! live in *epochs*: a weight change starts a new epoch, and each request is counted in the
//! epoch it was routed in, even if it completes after the change. Memory is constant in
//! the number of requests (two counters and a log-spaced latency histogram per arm and
//! epoch). Changing the weight never drops a connection: routing is per request.
//!
//! A request is counted once, when its response ends: after the last byte of the body, or
//! when it fails. A response whose body breaks after the headers (reset, fewer bytes than
//! `Content-Length`, the upstream silent for longer than `upstream_timeout` mid-body) is an
//! error, like a 5xx or an unreachable upstream. Latency is measured to the last byte and
//! only for requests that did not fail: a failed request is an error, not a fast request.
//! A request the client abandons before its end is counted without an error, with the time
//! it had taken so far (a lower bound of its latency), so that a canary too slow for its
//! clients is not silently left out of the counts.
//!
//! The proxy's own failures are never an arm's: a connection refused at the connection cap
//! (503), an upstream connection that cannot be opened for a reason of this host (no
//! descriptors: 503), accept errors and connections closed by the header-read and idle
//! timeouts are counted in [`LocalStats`], not in any epoch. The client side is served by
//! [`crate::net::serve`] with the policy's limits.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{TrafficError, TrafficProvider};
use crate::analysis::histogram::{log_bounds, log_bucket_index};
use crate::model::{Arm, Weight};
use crate::net::{ConnBudget, ServerStats, ServerStatsSnapshot};
use crate::policy::ProxyConfig;

mod metered;
mod server;

pub use server::ARM_HEADER;

/// One arm's counters in one epoch.
#[derive(Debug)]
struct ArmCounters {
    requests: AtomicU64,
    errors: AtomicU64,
    buckets: Vec<AtomicU64>,
}

impl ArmCounters {
    fn new() -> Self {
        ArmCounters {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            buckets: (0..log_bounds().len()).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn snapshot(&self) -> ArmSnapshot {
        ArmSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// A period with one weight in force.
#[derive(Debug)]
pub struct Epoch {
    id: u64,
    weight: Weight,
    arms: [ArmCounters; 2],
}

impl Epoch {
    /// Records one completed request: an error, or a success with its latency (to the
    /// last byte). Failed requests stay out of the latency histogram.
    pub fn record(&self, arm: Arm, latency: Duration, error: bool) {
        let a = &self.arms[arm.index()];
        if error {
            a.errors.fetch_add(1, Ordering::Relaxed);
        } else {
            a.buckets[log_bucket_index(latency.as_secs_f64())].fetch_add(1, Ordering::Relaxed);
        }
        // Requests last, so a reader that sees the request also sees its error and bucket.
        a.requests.fetch_add(1, Ordering::Release);
    }
}

/// Cumulative counters of one arm in one epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArmSnapshot {
    /// Completed requests.
    pub requests: u64,
    /// 5xx responses, upstream failures and bodies broken after the headers.
    pub errors: u64,
    /// Latency histogram over [`log_bounds`] of the requests that did not fail (to the last
    /// byte): it sums to `requests - errors`.
    pub buckets: Vec<u64>,
}

/// Cumulative counters of one epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochSnapshot {
    /// Epoch id (increasing).
    pub id: u64,
    /// The weight in force during the epoch.
    pub weight: Weight,
    /// Baseline and canary counters.
    pub arms: [ArmSnapshot; 2],
}

/// The proxy's own failures, counted against no arm (cumulative since the proxy started).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LocalStats {
    /// Requests and connections the proxy failed for its own reasons, each answered 503:
    /// `upstream_local_errors + server.rejected_at_cap`.
    pub local_errors: u64,
    /// Routed requests whose upstream connection could not be opened for a reason of this
    /// host (out of descriptors, buffers or local ports); not counted in any epoch.
    pub upstream_local_errors: u64,
    /// The client side: accepts, accept errors, shed and timed-out connections.
    pub server: ServerStatsSnapshot,
}

/// Routing state shared by the server, the provider and the metrics source.
#[derive(Debug)]
pub struct ProxyState {
    current: RwLock<Arc<Epoch>>,
    epochs: Mutex<Vec<Arc<Epoch>>>,
    rng: Mutex<SmallRng>,
    server: Arc<ServerStats>,
    upstream_local_errors: AtomicU64,
}

impl ProxyState {
    /// Starts with all traffic on the baseline. `seed` makes routing reproducible.
    #[must_use]
    pub fn new(seed: Option<u64>) -> Self {
        let first = Arc::new(Epoch {
            id: 0,
            weight: Weight::ZERO,
            arms: [ArmCounters::new(), ArmCounters::new()],
        });
        let rng = match seed {
            Some(s) => SmallRng::seed_from_u64(s),
            None => SmallRng::from_rng(&mut rand::rng()),
        };
        ProxyState {
            current: RwLock::new(first.clone()),
            epochs: Mutex::new(vec![first]),
            rng: Mutex::new(rng),
            server: Arc::default(),
            upstream_local_errors: AtomicU64::new(0),
        }
    }

    /// The proxy's own failures so far, none of them counted against an arm.
    #[must_use]
    pub fn local_stats(&self) -> LocalStats {
        let server = self.server.snapshot();
        let upstream_local_errors = self.upstream_local_errors.load(Ordering::Relaxed);
        LocalStats {
            local_errors: upstream_local_errors + server.rejected_at_cap,
            upstream_local_errors,
            server,
        }
    }

    fn current_epoch(&self) -> Arc<Epoch> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The weight in force.
    #[must_use]
    pub fn weight(&self) -> Weight {
        self.current_epoch().weight
    }

    /// Puts `weight` in force, starting a new epoch; a no-op if it is already in force.
    pub fn set_weight(&self, weight: Weight) {
        let mut epochs = self
            .epochs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut cur = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cur.weight == weight {
            return;
        }
        let next = Arc::new(Epoch {
            id: cur.id + 1,
            weight,
            arms: [ArmCounters::new(), ArmCounters::new()],
        });
        epochs.push(next.clone());
        *cur = next;
    }

    /// Chooses the arm for a new request, with the epoch to count it in.
    #[must_use]
    pub fn route(&self) -> (Arm, Arc<Epoch>) {
        let epoch = self.current_epoch();
        let draw: u16 = self
            .rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .random_range(0..10_000);
        let arm = if draw < epoch.weight.bp() {
            Arm::Canary
        } else {
            Arm::Baseline
        };
        (arm, epoch)
    }

    /// Cumulative counters of every epoch, oldest first.
    #[must_use]
    pub fn snapshot(&self) -> Vec<EpochSnapshot> {
        let epochs: Vec<Arc<Epoch>> = self
            .epochs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        epochs
            .iter()
            .map(|e| EpochSnapshot {
                id: e.id,
                weight: e.weight,
                arms: [e.arms[0].snapshot(), e.arms[1].snapshot()],
            })
            .collect()
    }
}

/// The traffic-provider side of the built-in proxy.
#[derive(Clone, Debug)]
pub struct ProxyProvider {
    state: Arc<ProxyState>,
    cfg: Arc<ProxyConfig>,
}

impl TrafficProvider for ProxyProvider {
    fn name(&self) -> &'static str {
        "proxy"
    }

    async fn current(&self) -> Result<Weight, TrafficError> {
        Ok(self.state.weight())
    }

    async fn set_weight(&self, weight: Weight) -> Result<(), TrafficError> {
        self.state.set_weight(weight);
        Ok(())
    }

    /// Both upstreams accept TCP connections.
    async fn preflight(&self) -> Result<(), TrafficError> {
        for (arm, up) in [
            ("baseline", &self.cfg.baseline),
            ("canary", &self.cfg.canary),
        ] {
            let connect = tokio::net::TcpStream::connect(up.authority.as_str());
            match tokio::time::timeout(Duration::from_secs(3), connect).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    return Err(TrafficError::Unavailable {
                        provider: "proxy",
                        message: format!("{arm} upstream {} unreachable: {e}", up.url),
                    });
                }
                Err(_) => {
                    return Err(TrafficError::Timeout {
                        provider: "proxy",
                        after: Duration::from_secs(3),
                    });
                }
            }
        }
        Ok(())
    }
}

/// A running proxy server.
#[derive(Debug)]
pub struct ProxyHandle {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    cfg: Arc<ProxyConfig>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl ProxyHandle {
    /// Binds `cfg.listen` and starts serving. `seed` makes routing reproducible. Client
    /// connections count against the process's [`ConnBudget::global`].
    ///
    /// # Errors
    /// [`TrafficError::Rejected`] when the address cannot be bound.
    pub async fn start(cfg: &ProxyConfig, seed: Option<u64>) -> Result<Self, TrafficError> {
        Self::start_with_budget(cfg, seed, ConnBudget::global()).await
    }

    /// [`ProxyHandle::start`] with its own connection budget (tests of the cap).
    ///
    /// # Errors
    /// [`TrafficError::Rejected`] when the address cannot be bound.
    pub async fn start_with_budget(
        cfg: &ProxyConfig,
        seed: Option<u64>,
        budget: Arc<ConnBudget>,
    ) -> Result<Self, TrafficError> {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| TrafficError::Rejected {
                provider: "proxy",
                message: format!("cannot listen on {}: {e}", cfg.listen),
            })?;
        let addr = listener.local_addr().map_err(|e| TrafficError::Rejected {
            provider: "proxy",
            message: format!("no local address: {e}"),
        })?;
        let state = Arc::new(ProxyState::new(seed));
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(server::serve(
            listener,
            state.clone(),
            cfg.clone(),
            budget,
            rx,
        ));
        Ok(ProxyHandle {
            addr,
            state,
            cfg: Arc::new(cfg.clone()),
            shutdown: tx,
            task: Some(task),
        })
    }

    /// The address the proxy listens on.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shared routing state (for the builtin metrics source).
    #[must_use]
    pub fn state(&self) -> Arc<ProxyState> {
        self.state.clone()
    }

    /// A provider handle.
    #[must_use]
    pub fn provider(&self) -> ProxyProvider {
        ProxyProvider {
            state: self.state.clone(),
            cfg: self.cfg.clone(),
        }
    }

    /// Stops accepting, lets in-flight requests finish (up to 5 s), and waits.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(6), t).await;
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_split_counts_by_weight() {
        let s = ProxyState::new(Some(7));
        let (_, e0) = s.route();
        s.set_weight(Weight::try_from_percent(25.0).unwrap());
        // A request routed before the change completes after it: counted in epoch 0.
        e0.record(Arm::Baseline, Duration::from_millis(10), false);
        let (_, e1) = s.route();
        e1.record(Arm::Canary, Duration::from_millis(20), true);
        e1.record(Arm::Canary, Duration::from_millis(30), false);
        s.set_weight(Weight::try_from_percent(25.0).unwrap());
        let snap = s.snapshot();
        assert_eq!(snap.len(), 2, "a repeated weight starts no epoch");
        assert_eq!(snap[0].arms[0].requests, 1);
        assert_eq!(snap[1].weight.bp(), 2500);
        assert_eq!(snap[1].arms[1].requests, 2);
        assert_eq!(snap[1].arms[1].errors, 1);
        // The failed request has no latency.
        assert_eq!(snap[1].arms[1].buckets.iter().sum::<u64>(), 1);
    }

    #[test]
    fn split_is_within_binomial_bounds() {
        let s = ProxyState::new(Some(42));
        for pct in [5.0, 25.0, 50.0] {
            s.set_weight(Weight::try_from_percent(pct).unwrap());
            let n = 40_000_u32;
            let canary = (0..n).filter(|_| s.route().0 == Arm::Canary).count() as f64;
            let p = pct / 100.0;
            let sd = (f64::from(n) * p * (1.0 - p)).sqrt();
            // 5 standard deviations: a false failure has probability below 1e-6.
            assert!(
                (canary - f64::from(n) * p).abs() < 5.0 * sd,
                "{pct}%: {canary} of {n}"
            );
        }
        s.set_weight(Weight::ZERO);
        assert!((0..1000).all(|_| s.route().0 == Arm::Baseline));
        s.set_weight(Weight::FULL);
        assert!((0..1000).all(|_| s.route().0 == Arm::Canary));
    }
}
