//! An open-loop HTTP load generator: a steady request rate, whatever the latency, with a cap
//! on requests in flight.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

/// What the load generator saw.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LoadStats {
    /// Requests sent.
    pub sent: u64,
    /// 2xx–4xx responses.
    pub ok: u64,
    /// 5xx responses.
    pub server_errors: u64,
    /// Connection failures and responses whose body broke after the headers.
    pub failed: u64,
    /// Requests not sent because too many were in flight.
    pub skipped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    ok: AtomicU64,
    server_errors: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
}

/// A running load generator.
#[derive(Debug)]
pub struct Load {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    counters: Arc<Counters>,
}

impl Load {
    /// Sends `rps` GET requests per second to `http://{target}/`, at most `max_in_flight`
    /// at a time.
    #[must_use]
    pub fn start(target: SocketAddr, rps: u32, max_in_flight: usize) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Client<HttpConnector, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build(connector);
        let counters = Arc::new(Counters::default());
        let (tx, mut rx) = watch::channel(false);
        let c = counters.clone();
        let uri: hyper::Uri = format!("http://{target}/demo").parse().expect("valid URI");
        let task = tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(max_in_flight.max(1)));
            let tick = Duration::from_millis(10);
            let mut ticker = tokio::time::interval(tick);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let start = Instant::now();
            let mut issued: u64 = 0;
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = rx.changed() => break,
                }
                let due = (start.elapsed().as_secs_f64() * f64::from(rps)) as u64;
                while issued < due {
                    issued += 1;
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        c.skipped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let (client, c, uri) = (client.clone(), c.clone(), uri.clone());
                    tokio::spawn(async move {
                        c.sent.fetch_add(1, Ordering::Relaxed);
                        let req = Request::get(uri).body(Empty::new()).expect("valid request");
                        match client.request(req).await {
                            Ok(resp) => {
                                let status = resp.status();
                                let body = resp.into_body().collect().await;
                                if body.is_err() {
                                    c.failed.fetch_add(1, Ordering::Relaxed);
                                } else if status.is_server_error() {
                                    c.server_errors.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    c.ok.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Err(_) => {
                                c.failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        drop(permit);
                    });
                }
            }
        });
        Load {
            stop: tx,
            task,
            counters,
        }
    }

    /// Counts so far.
    #[must_use]
    pub fn stats(&self) -> LoadStats {
        Load::read(&self.counters)
    }

    fn read(c: &Counters) -> LoadStats {
        LoadStats {
            sent: c.sent.load(Ordering::Relaxed),
            ok: c.ok.load(Ordering::Relaxed),
            server_errors: c.server_errors.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
        }
    }

    /// Stops sending and returns the counts.
    pub async fn stop(self) -> LoadStats {
        let _ = self.stop.send(true);
        let Load { task, counters, .. } = self;
        let _ = task.await;
        Load::read(&counters)
    }
}
