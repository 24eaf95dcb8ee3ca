//! The proxy's request handling (hyper) on the shared accept loop of [`crate::net`]:
//! routing, forwarding, WebSocket and other upgrades, and telling the arm's failures from
//! the proxy's own.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

use super::ProxyState;
use super::metered::{BoxError, MeteredBody, Tally};
use crate::model::Arm;
use crate::net::{self, ConnActivity, ConnBudget, ServeLimits};
use crate::policy::ProxyConfig;

type Body = BoxBody<Bytes, BoxError>;
type UpstreamClient = Client<HttpConnector, Incoming>;

/// Header added to every response: which arm served it.
pub const ARM_HEADER: &str = "x-coalmine-arm";

/// Idle pooled connections kept per upstream: part of the descriptor reserve
/// ([`net::cap_for_fd_limit`]), so bounded.
const POOL_IDLE_PER_UPSTREAM: usize = 32;

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

fn text(status: StatusCode, msg: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(msg)).map_err(|n| match n {}).boxed());
    *r.status_mut() = status;
    r
}

/// The limits of the proxy's client side.
pub(super) fn limits(cfg: &ProxyConfig) -> ServeLimits {
    ServeLimits {
        header_read_timeout: cfg.header_read_timeout,
        idle_timeout: cfg.idle_timeout,
        max_headers: cfg.max_headers,
        ..ServeLimits::default()
    }
}

pub(super) async fn serve(
    listener: TcpListener,
    state: Arc<ProxyState>,
    cfg: ProxyConfig,
    budget: Arc<ConnBudget>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: UpstreamClient = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(POOL_IDLE_PER_UPSTREAM)
        .build(connector);
    let limits = limits(&cfg);
    let cfg = Arc::new(cfg);
    let stats = state.server.clone();
    let stop = async move {
        while !*shutdown.borrow_and_update() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
    };
    net::serve(listener, limits, budget, stats, stop, move |req| {
        forward(state.clone(), client.clone(), cfg.clone(), req)
    })
    .await;
}

/// `Connection: upgrade` with an `Upgrade` protocol: a WebSocket handshake or the like.
fn wants_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Drops hop-by-hop headers; an upgrade keeps `Upgrade` and says `Connection: upgrade`.
fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool) {
    let protocol = upgrade.then(|| h.get(header::UPGRADE).cloned()).flatten();
    for name in HOP_BY_HOP {
        h.remove(*name);
    }
    if let Some(p) = protocol {
        h.insert(header::UPGRADE, p);
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The upstream connection could not be opened for a reason of this host (no descriptors,
/// buffers or local ports): the proxy's failure, not the arm's.
fn local_failure(e: &hyper_util::client::legacy::Error) -> Option<String> {
    if !e.is_connect() {
        return None;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && net::is_local_exhaustion(io)
        {
            return Some(io.to_string());
        }
        source = s.source();
    }
    None
}

async fn forward(
    state: Arc<ProxyState>,
    client: UpstreamClient,
    cfg: Arc<ProxyConfig>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (arm, epoch) = state.route();
    let upstream = match arm {
        Arm::Baseline => &cfg.baseline,
        Arm::Canary => &cfg.canary,
    };
    let mut tally = Tally::new(epoch, arm, Instant::now());
    let upgrade = wants_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| {
        (
            hyper::upgrade::on(&mut req),
            req.extensions().get::<ConnActivity>().cloned(),
        )
    });
    let (mut parts, body) = req.into_parts();
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("http://{}{pq}", upstream.authority).parse::<Uri>() else {
        // Not routed anywhere: a client's mistake, counted against no arm.
        tally.discard();
        return Ok(text(
            StatusCode::BAD_REQUEST,
            "bad request target\n".to_string(),
        ));
    };
    parts.uri = uri;
    strip_hop_by_hop(&mut parts.headers, upgrade);
    if let Ok(v) = HeaderValue::from_str(&upstream.authority) {
        parts.headers.insert(header::HOST, v);
    }
    let result = tokio::time::timeout(
        cfg.upstream_timeout,
        client.request(Request::from_parts(parts, body)),
    )
    .await;
    let arm_value = HeaderValue::from_static(arm.as_str());
    let mut resp = match result {
        Ok(Ok(resp)) => match client_upgrade {
            Some((client_side, conn)) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                // Counted once, as a success, with the handshake's latency; what then flows
                // through the tunnel is not judged.
                tally.finish(false);
                upgraded(resp, client_side, conn)
            }
            _ => {
                let status_error = resp.status().is_server_error();
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers, false);
                // Counted when the body ends: after its last byte, or as an error if it breaks.
                let body = MeteredBody::new(body, tally, status_error, cfg.upstream_timeout);
                Response::from_parts(parts, body.boxed())
            }
        },
        Ok(Err(e)) => {
            if let Some(why) = local_failure(&e) {
                tally.discard();
                state.upstream_local_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%arm, error = %why, "proxy could not open an upstream connection");
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "coalmine proxy: cannot open a connection to the {arm} upstream {} for a \
                         reason of this host ({why}); not counted against the {arm}\n",
                        upstream.url
                    ),
                )
            } else {
                tally.finish(true);
                text(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "coalmine proxy: {arm} upstream {} failed: {e}\n",
                        upstream.url
                    ),
                )
            }
        }
        Err(_) => {
            tally.finish(true);
            text(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "coalmine proxy: {arm} upstream {} gave no answer within {}\n",
                    upstream.url,
                    humantime::format_duration(cfg.upstream_timeout)
                ),
            )
        }
    };
    resp.headers_mut().insert(ARM_HEADER, arm_value);
    Ok(resp)
}

/// Answers the client's upgrade with the upstream's 101 and starts the tunnel.
fn upgraded(
    mut resp: Response<Incoming>,
    client_side: hyper::upgrade::OnUpgrade,
    conn: Option<ConnActivity>,
) -> Response<Body> {
    let upstream_side = hyper::upgrade::on(&mut resp);
    tokio::spawn(tunnel(client_side, upstream_side, conn));
    let (mut parts, _) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, true);
    let empty = http_body_util::Empty::new().map_err(|n| match n {}).boxed();
    Response::from_parts(parts, empty)
}

/// Copies bytes both ways between an upgraded client and upstream until either side
/// closes; the client's connection stays busy (never shed or timed out) meanwhile.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    conn: Option<ConnActivity>,
) {
    let _busy = conn.as_ref().map(ConnActivity::busy);
    let (Ok(client), Ok(upstream)) = tokio::join!(client, upstream) else {
        return;
    };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}
