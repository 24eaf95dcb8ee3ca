//! The proxy's HTTP/1.1 server and upstream client (hyper).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
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
use crate::policy::ProxyConfig;

type Body = BoxBody<Bytes, BoxError>;
type UpstreamClient = Client<HttpConnector, Incoming>;

/// Header added to every response: which arm served it.
pub const ARM_HEADER: &str = "x-coalmine-arm";

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

pub(super) async fn serve(
    listener: TcpListener,
    state: Arc<ProxyState>,
    cfg: ProxyConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: UpstreamClient = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    let cfg = Arc::new(cfg);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        let Ok((stream, _)) = accepted else {
            // Out of file descriptors or similar: back off briefly instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (state, client, cfg) = (state.clone(), client.clone(), cfg.clone());
        let svc = service_fn(move |req| forward(state.clone(), client.clone(), cfg.clone(), req));
        let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

async fn forward(
    state: Arc<ProxyState>,
    client: UpstreamClient,
    cfg: Arc<ProxyConfig>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (arm, epoch) = state.route();
    let upstream = match arm {
        Arm::Baseline => &cfg.baseline,
        Arm::Canary => &cfg.canary,
    };
    let mut tally = Tally::new(epoch, arm, Instant::now());
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
    for h in HOP_BY_HOP {
        parts.headers.remove(*h);
    }
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
        Ok(Ok(resp)) => {
            let status_error = resp.status().is_server_error();
            let (mut parts, body) = resp.into_parts();
            for h in HOP_BY_HOP {
                parts.headers.remove(*h);
            }
            // Counted when the body ends: after its last byte, or as an error if it breaks.
            let body = MeteredBody::new(body, tally, status_error, cfg.upstream_timeout);
            Response::from_parts(parts, body.boxed())
        }
        Ok(Err(e)) => {
            tally.finish(true);
            text(
                StatusCode::BAD_GATEWAY,
                format!(
                    "coalmine proxy: {arm} upstream {} failed: {e}\n",
                    upstream.url
                ),
            )
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
