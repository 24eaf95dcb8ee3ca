//! A tiny in-process HTTP service with a configurable error rate and log-normal latency,
//! exposing its own Prometheus `/metrics` (requests by code, latency histogram).
//!
//! For tests it can also break its responses *after* the headers ([`BodyMode`]): a 200
//! whose body is reset, truncated against its `Content-Length`, or stalls half-way. Its own
//! `/metrics` still counts those as the 200s it sent, as a real service would.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Bucket bounds (seconds) of the `/metrics` latency histogram.
pub const METRIC_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The problem with `bounds` as histogram bucket bounds, if any: 1 to 100 finite,
/// positive, strictly increasing values (seconds).
#[must_use]
pub fn check_buckets(bounds: &[f64]) -> Option<String> {
    if bounds.is_empty() || bounds.len() > 100 {
        return Some(format!("1 to 100 bucket bounds, got {}", bounds.len()));
    }
    if let Some(b) = bounds.iter().find(|b| !b.is_finite() || **b <= 0.0) {
        return Some(format!("bucket bounds must be positive seconds, got {b}"));
    }
    bounds
        .windows(2)
        .find(|w| w[1] <= w[0])
        .map(|w| format!("bucket bounds must increase ({} after {})", w[1], w[0]))
}

/// How a service behaves.
#[derive(Clone, Debug, PartialEq)]
pub struct Behaviour {
    /// `track` label on its metrics: `baseline` or `canary`.
    pub track: String,
    /// Probability that a request gets a 500.
    pub error_rate: f64,
    /// Median latency.
    pub median: Duration,
    /// Log-normal shape σ of the latency.
    pub sigma: f64,
    /// Requests slower than the log-normal's p95 take this many times as long (1: none): a
    /// tail-only slowdown, the median unchanged.
    pub slow_tail: f64,
    /// Seed of its random draws.
    pub seed: u64,
    /// What happens to every response's body after the headers.
    pub body: BodyMode,
}

/// How a service ends its responses' bodies (every response, `/metrics` excepted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BodyMode {
    /// The whole body, as announced by `Content-Length`.
    #[default]
    Complete,
    /// Headers and half the body, then the connection is reset (RST).
    ResetMidBody,
    /// Headers and half the body, then the connection is closed (FIN): fewer bytes than
    /// `Content-Length` announced.
    Truncated,
    /// Headers and half the body, then nothing for an hour (an upstream that hangs).
    Stalled,
}

/// Length of the demo's response bodies: big enough to be cut in half visibly.
const BODY_LEN: usize = 256;

type ServiceBody = BoxBody<Bytes, std::io::Error>;

#[derive(Debug)]
struct Counters {
    ok: AtomicU64,
    errors: AtomicU64,
    buckets: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    behaviour: Behaviour,
    /// Bucket bounds of the `/metrics` histogram, seconds.
    bounds: Vec<f64>,
    rng: Mutex<SmallRng>,
    counters: Counters,
}

impl Shared {
    fn draw(&self) -> (bool, Duration) {
        let mut rng = self
            .rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let error = rng.random::<f64>() < self.behaviour.error_rate;
        // Box–Muller: one standard normal from two uniforms.
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random();
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        let mut secs = self.behaviour.median.as_secs_f64() * (self.behaviour.sigma * z).exp();
        // z above Φ⁻¹(0.95).
        if z > 1.644_853_6 {
            secs *= self.behaviour.slow_tail;
        }
        (error, Duration::from_secs_f64(secs.min(30.0)))
    }

    fn record(&self, error: bool, latency: Duration) {
        let c = &self.counters;
        let s = latency.as_secs_f64();
        let i = self.bounds.partition_point(|b| *b < s);
        c.buckets[i].fetch_add(1, Ordering::Relaxed);
        c.sum_micros
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
        if error {
            c.errors.fetch_add(1, Ordering::Relaxed);
        } else {
            c.ok.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn exposition(&self) -> String {
        let c = &self.counters;
        let t = &self.behaviour.track;
        let mut out = String::new();
        out.push_str("# HELP coalmine_demo_requests_total Requests served, by status code.\n");
        out.push_str("# TYPE coalmine_demo_requests_total counter\n");
        let _ = writeln!(
            out,
            "coalmine_demo_requests_total{{track=\"{t}\",code=\"200\"}} {}",
            c.ok.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "coalmine_demo_requests_total{{track=\"{t}\",code=\"500\"}} {}",
            c.errors.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP coalmine_demo_request_duration_seconds Time to serve a request.\n\
             # TYPE coalmine_demo_request_duration_seconds histogram\n",
        );
        let mut cum = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            cum += c.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "coalmine_demo_request_duration_seconds_bucket{{track=\"{t}\",le=\"{b}\"}} {cum}"
            );
        }
        cum += c.buckets[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "coalmine_demo_request_duration_seconds_bucket{{track=\"{t}\",le=\"+Inf\"}} {cum}"
        );
        let _ = writeln!(
            out,
            "coalmine_demo_request_duration_seconds_sum{{track=\"{t}\"}} {}",
            c.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "coalmine_demo_request_duration_seconds_count{{track=\"{t}\"}} {cum}"
        );
        out
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<ServiceBody>, Infallible> {
    if req.uri().path() == "/metrics" {
        let mut r = Response::new(full(shared.exposition()));
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        return Ok(r);
    }
    if req.uri().path() == "/healthz" {
        // Readiness (`[traffic] readiness_path`): always ready, never counted.
        return Ok(Response::new(full("ok\n".to_string())));
    }
    let (error, latency) = shared.draw();
    let mode = shared.behaviour.body;
    // A broken body spends half the latency before the headers and half before it breaks,
    // so the break is unambiguously after the headers and mid-body.
    let before = if mode == BodyMode::Complete {
        latency
    } else {
        latency / 2
    };
    tokio::time::sleep(before).await;
    shared.record(error, latency);
    let line = format!(
        "{} {}\n",
        shared.behaviour.track,
        if error { "error" } else { "ok" }
    );
    // Padded to a fixed length so that half of it is still a readable prefix.
    let mut text = line.into_bytes();
    text.resize(BODY_LEN.max(text.len()), b'.');
    let len = text.len();
    let body = match mode {
        BodyMode::Complete => Full::new(Bytes::from(text)).map_err(|n| match n {}).boxed(),
        BodyMode::ResetMidBody | BodyMode::Truncated | BodyMode::Stalled => broken(
            Bytes::from(text).slice(..len / 2),
            latency.saturating_sub(before),
            mode,
        ),
    };
    let mut r = Response::new(body);
    r.headers_mut().insert(
        hyper::header::CONTENT_LENGTH,
        hyper::header::HeaderValue::from(len),
    );
    if error {
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    }
    Ok(r)
}

fn full(text: String) -> ServiceBody {
    Full::new(Bytes::from(text)).map_err(|n| match n {}).boxed()
}

/// The first half of a body, then (after `wait`) an error that makes hyper close the
/// connection: with zero linger (set at accept for [`BodyMode::ResetMidBody`]) that is a
/// reset, otherwise a plain close short of `Content-Length`. Stalled bodies never go on.
fn broken(half: Bytes, wait: Duration, mode: BodyMode) -> ServiceBody {
    // State: the half still to send, then the break, then nothing.
    let stream = futures_util::stream::unfold(Some(Some(half)), move |state| async move {
        if let Some(half) = state? {
            return Some((Ok(Frame::data(half)), Some(None)));
        }
        let wait = if mode == BodyMode::Stalled {
            Duration::from_secs(3600)
        } else {
            wait
        };
        tokio::time::sleep(wait).await;
        Some((
            Err(std::io::Error::other(
                "demo service: body broken on purpose",
            )),
            None,
        ))
    });
    StreamBody::new(stream).boxed()
}

/// A running demo service.
#[derive(Debug)]
pub struct Service {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Service {
    /// Starts a service on `listen` (port 0 picks a free port).
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn start(listen: SocketAddr, behaviour: Behaviour) -> std::io::Result<Self> {
        Self::start_with_buckets(listen, behaviour, METRIC_BUCKETS.to_vec()).await
    }

    /// Starts a service whose `/metrics` histogram has these bucket bounds (seconds,
    /// increasing; see [`check_buckets`]), e.g. a classic histogram doubling at each bound.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn start_with_buckets(
        listen: SocketAddr,
        behaviour: Behaviour,
        bounds: Vec<f64>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            rng: Mutex::new(SmallRng::seed_from_u64(behaviour.seed)),
            behaviour,
            counters: Counters {
                ok: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                sum_micros: AtomicU64::new(0),
            },
            bounds,
        });
        let (tx, mut rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = rx.changed() => break,
                };
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                if shared.behaviour.body == BodyMode::ResetMidBody {
                    // Closing with zero linger sends RST instead of FIN.
                    let _ = stream.set_zero_linger();
                }
                let shared = shared.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(shared.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Service {
            addr,
            shutdown: tx,
            task,
        })
    }

    /// The address it listens on.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections.
    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.task.abort();
    }
}
