//! Serving HTTP/1.1 with limits: the one accept loop of the built-in proxy and the status
//! server.
//!
//! - **Timeouts.** A request head must arrive within `header_read_timeout` (a new
//!   connection counts from its accept, a kept-alive one from the first byte of its next
//!   request), and a kept-alive connection with no request for `idle_timeout` is closed.
//!   Slow-loris connections go away instead of holding descriptors for ever.
//! - **A connection cap below the descriptor limit.** Every server of the process shares
//!   one [`ConnBudget`], sized from the soft `RLIMIT_NOFILE` with room for each accepted
//!   connection's upstream connection. At the cap the idle connection that should go first
//!   is shed (one that never completed a request, then the one idle the longest); when
//!   every connection is busy the new one gets a 503 and is closed. Connections with a
//!   request in flight are never shed.
//! - **Accept errors** (out of descriptors) shed an idle connection and back off from
//!   10 ms to 1 s instead of spinning.
//! - Every such local event is counted in [`ServerStats`]: they are the server's own
//!   failures, never an arm's.
//!
//! [`check_control_request`] is the cross-origin guard for control endpoints.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

mod conn;
mod origin;

use conn::{Admission, Expiry, Guarded, Watched};
pub use conn::{Busy, ConnActivity, ConnBudget, cap_for_fd_limit, is_local_exhaustion};
pub use origin::{Refused, check_control_request};

/// hyper's own limit on request headers (more is a 431).
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Default time for a whole request head.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a kept-alive connection may wait for its next request.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// At shutdown, how long an idle connection waits for a request its client may already
/// have sent (a kept-alive client reuses its connection at any moment, a new one sends its
/// request right after connecting): closing at once would reset the connection and lose
/// that request. A request that arrives is answered with `Connection: close`.
const SHUTDOWN_LINGER: Duration = Duration::from_millis(300);
/// How often a lingering connection looks whether its request arrived.
const LINGER_POLL: Duration = Duration::from_millis(5);

/// Per-server limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeLimits {
    /// Time for a whole request head (from the accept, or from the first byte of the next
    /// request on a kept-alive connection).
    pub header_read_timeout: Duration,
    /// Time a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Request headers allowed; more is a 431.
    pub max_headers: usize,
    /// How long shutdown waits for requests in flight.
    pub drain: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_headers: DEFAULT_MAX_HEADERS,
            drain: Duration::from_secs(5),
        }
    }
}

/// A server's own failures and the connections it closed (cumulative).
#[derive(Debug, Default)]
pub struct ServerStats {
    accepted: AtomicU64,
    accept_errors: AtomicU64,
    shed_idle: AtomicU64,
    rejected_at_cap: AtomicU64,
    header_timeouts: AtomicU64,
    idle_timeouts: AtomicU64,
}

/// A snapshot of [`ServerStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServerStatsSnapshot {
    /// Connections accepted.
    pub accepted: u64,
    /// Failed `accept` calls (out of descriptors and the like).
    pub accept_errors: u64,
    /// Idle connections closed to make room at the connection cap.
    pub shed_idle: u64,
    /// Connections answered 503 and closed at the cap because every connection was busy.
    pub rejected_at_cap: u64,
    /// Connections closed because a request head took longer than `header_read_timeout`.
    pub header_timeouts: u64,
    /// Kept-alive connections closed after `idle_timeout` without a request.
    pub idle_timeouts: u64,
}

impl ServerStats {
    /// The counts so far.
    #[must_use]
    pub fn snapshot(&self) -> ServerStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ServerStatsSnapshot {
            accepted: get(&self.accepted),
            accept_errors: get(&self.accept_errors),
            shed_idle: get(&self.shed_idle),
            rejected_at_cap: get(&self.rejected_at_cap),
            header_timeouts: get(&self.header_timeouts),
            idle_timeouts: get(&self.idle_timeouts),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Answers requests: any `Fn(Request<Incoming>) -> impl Future<Output = Result<Response<B>,
/// Infallible>>` that can be shared between connections.
pub trait Handler: Clone + Send + Sync + 'static {
    /// The response body.
    type Body: Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + Unpin
        + 'static;
    /// The answer.
    type Future: Future<Output = Result<Response<Self::Body>, Infallible>> + Send + 'static;
    /// Answers one request.
    fn call(&self, req: Request<Incoming>) -> Self::Future;
}

impl<F, Fut, B> Handler for F
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + Unpin
        + 'static,
{
    type Body = B;
    type Future = Fut;

    fn call(&self, req: Request<Incoming>) -> Fut {
        self(req)
    }
}

/// What the server answers, itself, when every connection it may hold is busy.
fn full_response() -> String {
    let body = "coalmine: every connection this server may hold is busy; retry in a moment\n";
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\n\
         Retry-After: 1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Serves HTTP/1.1 on `listener` until `shutdown` completes, then lets requests in flight
/// finish for up to `limits.drain`: connections still in the listen queue are taken in, and
/// an idle connection waits `SHUTDOWN_LINGER` for a request its client may already have
/// sent, so that what was sent before the stop is answered, not reset. `handler` answers
/// each request; the extensions of a request with an `Upgrade` header carry its
/// [`ConnActivity`]. Upgrades (101) are supported.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    limits: ServeLimits,
    budget: Arc<ConnBudget>,
    stats: Arc<ServerStats>,
    shutdown: impl Future<Output = ()> + Send,
    handler: H,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    // One clone per connection task: shutdown waits for them to go.
    let live = Arc::new(());
    let mut backoff = Duration::from_millis(10);
    tokio::pin!(shutdown);
    let spawn = |stream: TcpStream| {
        bump(&stats.accepted);
        let conn = match budget.admit() {
            Admission::Admitted(c) => c,
            Admission::AfterShedding(c) => {
                bump(&stats.shed_idle);
                c
            }
            Admission::Full => {
                bump(&stats.rejected_at_cap);
                tokio::spawn(refuse(stream));
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        let task = connection(
            stream,
            conn,
            limits.clone(),
            stats.clone(),
            stop_rx.clone(),
            handler.clone(),
        );
        let live = live.clone();
        tokio::spawn(async move {
            task.await;
            drop(live);
        });
    };
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut shutdown => break,
        };
        match accepted {
            Ok((stream, _)) => {
                backoff = Duration::from_millis(10);
                spawn(stream);
            }
            Err(e) => {
                bump(&stats.accept_errors);
                if is_local_exhaustion(&e) && budget.shed_one() {
                    bump(&stats.shed_idle);
                }
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis(), "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    let _ = stop_tx.send(true);
    // Connections the kernel completed before the stop but nobody accepted yet would be
    // reset when the listener closes, their requests lost: take them in (each serves the
    // request its client sent, then closes).
    // Asked of the socket itself: the runtime may not have seen them yet.
    if let Ok(listener) = listener.into_std() {
        while let Ok((stream, _)) = listener.accept() {
            if let Ok(stream) = stream
                .set_nonblocking(true)
                .and_then(|()| TcpStream::from_std(stream))
            {
                spawn(stream);
            }
        }
    }
    let deadline = tokio::time::Instant::now() + limits.drain;
    while Arc::strong_count(&live) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Answers 503 on a connection over the cap, then closes it.
async fn refuse(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(full_response().as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

async fn connection<H: Handler>(
    stream: TcpStream,
    conn: ConnActivity,
    limits: ServeLimits,
    stats: Arc<ServerStats>,
    mut stop: watch::Receiver<bool>,
    handler: H,
) {
    let io = TokioIo::new(Watched::new(stream, conn.clone()));
    let per_request = conn.clone();
    let stopping = stop.clone();
    let svc = service_fn(move |mut req: Request<Incoming>| {
        let busy = per_request.busy();
        if req.headers().contains_key(hyper::header::UPGRADE) {
            // Only an upgrade outlives its response (saves an allocation per request).
            req.extensions_mut().insert(per_request.clone());
        }
        // Asked while the server stops: the client must not send another on this connection.
        let closing = *stopping.borrow();
        let fut = handler.call(req);
        async move {
            let mut resp = fut.await?;
            if closing {
                resp.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, Infallible>(resp.map(|b| Guarded::new(b, busy)))
        }
    });
    let mut builder = http1::Builder::new();
    if limits.max_headers != DEFAULT_MAX_HEADERS {
        // Only when asked: hyper then allocates the headers on the heap for every request.
        builder.max_headers(limits.max_headers);
    }
    let served = builder.serve_connection(io, svc).with_upgrades();
    tokio::pin!(served);
    let mut draining = false;
    // Stopping while idle: until when a request its client may already have sent is
    // waited for.
    let mut linger = stop.borrow().then(|| {
        (
            tokio::time::Instant::now() + SHUTDOWN_LINGER,
            conn.info().served(),
        )
    });
    loop {
        if linger
            .is_some_and(|(_, before)| !conn.info().is_idle() || conn.info().served() != before)
        {
            // The request arrived: answer it (or the next) with `Connection: close`, then
            // close.
            linger = None;
            draining = true;
            served.as_mut().graceful_shutdown();
        }
        let deadline = conn
            .info()
            .deadline(limits.header_read_timeout, limits.idle_timeout);
        // While busy, look again after the shorter timeout.
        let mut wake = deadline.map_or_else(
            || tokio::time::Instant::now() + limits.header_read_timeout.min(limits.idle_timeout),
            |(at, _)| at,
        );
        if let Some((until, _)) = linger {
            if tokio::time::Instant::now() >= until {
                return;
            }
            wake = wake
                .min(until)
                .min(tokio::time::Instant::now() + LINGER_POLL);
        }
        tokio::select! {
            _ = served.as_mut() => return,
            () = conn.info().shed.notified() => {
                if conn.info().is_idle() {
                    return;
                }
                // A request started just as it was picked: finish it, then close.
                linger = None;
                draining = true;
                served.as_mut().graceful_shutdown();
            }
            _ = stop.changed(), if !draining && linger.is_none() => {
                // Shutting down: busy connections finish their request first; idle ones
                // (a request head half-sent included) wait a moment for a request already
                // on its way, then go.
                if conn.info().is_idle() {
                    linger = Some((
                        tokio::time::Instant::now() + SHUTDOWN_LINGER,
                        conn.info().served(),
                    ));
                } else {
                    draining = true;
                    served.as_mut().graceful_shutdown();
                }
            }
            () = tokio::time::sleep_until(wake) => {
                let now = tokio::time::Instant::now();
                let expired = conn
                    .info()
                    .deadline(limits.header_read_timeout, limits.idle_timeout)
                    .filter(|(at, _)| *at <= now);
                match expired {
                    Some((_, Expiry::Header)) => {
                        bump(&stats.header_timeouts);
                        return;
                    }
                    Some((_, Expiry::Idle)) => {
                        bump(&stats.idle_timeouts);
                        return;
                    }
                    None => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
