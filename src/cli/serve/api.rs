//! The daemon's control API: one listener for every rollout.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /health/live` | 200 while the process runs |
//! | `GET /health/ready` | 200 when the store answers (a probe write) and the replica's role is known; else 503 |
//! | `GET /metrics` | Prometheus text: the daemon's series and one series per rollout (`rollout` label) |
//! | `GET /rollouts` | every rollout in the store (running ones with their live state), JSON |
//! | `POST /rollouts` | `{"policy": TEXT, "path": FILE}`: validate and start (201); 400 with every problem, 409 when the name runs |
//! | `GET /rollouts/NAME` | one rollout, as in the list |
//! | `GET /rollouts/NAME/status` | the running rollout's live state (as `coalmine run`'s `/status`) |
//! | `POST /rollouts/NAME/{promote,approve,pause,resume,abort}` | the operator's levers, as with `coalmine run` |
//! | `POST /rollouts/NAME/retry` | a rolled-back rollout again from step 1 |
//!
//! | `GET /rollouts/NAME/records` | the rollout's decision records kept in the store (etcd), JSON lines |
//!
//! Every POST needs the bearer token and passes [`crate::net::check_control_request`].
//!
//! On a follower (etcd), reads of the store (`/rollouts`, `/rollouts/NAME`, `/records`,
//! the health and metrics endpoints) are answered here, from etcd; everything else (every
//! POST, and a running rollout's live `/status`) is forwarded to the leader's advertised
//! URL with its headers and body, and the leader's answer returned as it is. Forwarded
//! rather than redirected: a client following a 307 to another host drops the
//! `Authorization` header (reqwest and curl do, rightly), so every client would need to
//! be told to send its token again; one hop inside the cluster keeps every client as it
//! is. A request already forwarded once is never forwarded again (no loop between two
//! replicas that each think the other leads). With no known leader: 503, saying so.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use super::daemon::{Build, Daemon, Refusal, Role};
use crate::cli::control::view;
use crate::controller::store::Store;

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, ctype: &'static str, body: String) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    r
}

fn json(status: StatusCode, v: &serde_json::Value) -> Reply {
    reply(
        status,
        "application/json",
        serde_json::to_string_pretty(v).unwrap_or_default(),
    )
}

fn error(status: u16, message: &str) -> Reply {
    json(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &serde_json::json!({ "error": message }),
    )
}

/// What `POST /rollouts` carries.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyBody {
    policy: String,
    #[serde(default)]
    path: Option<String>,
}

/// Serves the API on `listener` until `shutdown` resolves.
pub(crate) async fn serve<S: Store + 'static, B: Build>(
    d: Arc<Daemon<S, B>>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) {
    crate::net::serve(
        listener,
        crate::net::ServeLimits::default(),
        crate::net::ConnBudget::global(),
        Arc::default(),
        shutdown,
        move |req| {
            let d = d.clone();
            async move { Ok::<_, Infallible>(answer(&d, req).await) }
        },
    )
    .await;
}

/// The header a forwarded request carries.
const FORWARDED: &str = "x-coalmine-forwarded-by";

/// Whether a request is answered here on any replica: the health and metrics endpoints
/// and the reads of the store.
fn answered_anywhere(method: &Method, parts: &[&str]) -> bool {
    *method == Method::GET
        && matches!(
            parts,
            ["health" | "rollouts", _] | ["metrics" | "rollouts"] | ["rollouts", _, "records"]
        )
}

/// Sends a follower's request on to the leader and returns the leader's answer.
async fn forward<S: Store + 'static, B: Build>(d: &Daemon<S, B>, req: Request<Incoming>) -> Reply {
    if req.headers().contains_key(FORWARDED) {
        return error(
            503,
            "this replica is not the leader either (the request was forwarded here by another \
             replica): the leadership is changing, try again in a moment",
        );
    }
    let Some(leader) = d.leader_url() else {
        return error(
            503,
            &format!(
                "this replica is not the leader ({}) and no leader is known yet: the \
                 election is under way or etcd is unreachable; try again in a moment",
                if d.role() == Role::Unknown {
                    "role unknown"
                } else {
                    "follower"
                }
            ),
        );
    };
    let url = format!(
        "{}{}",
        leader.trim_end_matches('/'),
        req.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    let (parts, body) = req.into_parts();
    let limit = crate::policy::MAX_POLICY_BYTES * 2 + 64 * 1024;
    let body = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(400, &format!("reading the body: {e}")),
    };
    let Ok(method) = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()) else {
        return error(405, "method not allowed");
    };
    let client = forwarding_client();
    let mut out = client.request(method, &url).body(body.to_vec());
    for (k, v) in &parts.headers {
        if matches!(
            k.as_str(),
            "authorization"
                | "content-type"
                | "origin"
                | "user-agent"
                | "accept"
                | "sec-fetch-site"
        ) {
            out = out.header(k.as_str(), v.as_bytes());
        }
    }
    out = out.header(FORWARDED, "follower");
    match out.send().await {
        Ok(r) => {
            let status =
                StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let ctype = r
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let auth = r.headers().get("www-authenticate").cloned();
            let bytes = r.bytes().await.unwrap_or_default();
            let mut reply = Response::new(Full::new(bytes));
            *reply.status_mut() = status;
            if let Some(c) = ctype.and_then(|c| hyper::header::HeaderValue::from_str(&c).ok()) {
                reply.headers_mut().insert(hyper::header::CONTENT_TYPE, c);
            }
            if let Some(a) =
                auth.and_then(|a| hyper::header::HeaderValue::from_bytes(a.as_bytes()).ok())
            {
                reply
                    .headers_mut()
                    .insert(hyper::header::WWW_AUTHENTICATE, a);
            }
            reply
        }
        Err(e) => error(
            503,
            &format!(
                "this replica is not the leader, and the leader at {leader} did not answer: {e}"
            ),
        ),
    }
}

fn forwarding_client() -> &'static reqwest::Client {
    static C: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    C.get_or_init(|| {
        crate::traffic::install_tls_provider();
        reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .unwrap_or_default()
    })
}

async fn answer<S: Store + 'static, B: Build>(
    d: &Arc<Daemon<S, B>>,
    req: Request<Incoming>,
) -> Reply {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if d.role() != Role::Leader && !answered_anywhere(&method, &parts) {
        return forward(d, req).await;
    }
    match (&method, parts.as_slice()) {
        (&Method::GET, ["health", "live"]) => {
            json(StatusCode::OK, &serde_json::json!({ "status": "live" }))
        }
        (&Method::GET, ["health", "ready"]) => ready(d).await,
        (&Method::GET, ["metrics"]) => {
            reply(StatusCode::OK, "text/plain; version=0.0.4", exposition(d))
        }
        (&Method::GET, ["rollouts"]) => list(d).await,
        (&Method::POST, ["rollouts"]) => {
            if let Some(refused) = refuse(d, &req) {
                return refused;
            }
            match read_json::<ApplyBody>(req.into_body()).await {
                Ok(b) => started(d.apply(&b.policy, b.path, true).await),
                Err(why) => error(400, &why),
            }
        }
        (&Method::GET, ["rollouts", name]) => one(d, name).await,
        (&Method::GET, ["rollouts", name, "records"]) => match d.store().records(name).await {
            Ok(lines) => {
                let mut body = lines.join("\n");
                if !body.is_empty() {
                    body.push('\n');
                }
                reply(StatusCode::OK, "application/x-ndjson", body)
            }
            Err(e) => error(503, &e.to_string()),
        },
        (&Method::POST, ["rollouts", name, "retry"]) => {
            if let Some(refused) = refuse(d, &req) {
                return refused;
            }
            started(d.retry(name).await)
        }
        (_, ["rollouts", name, rest]) => {
            let name = (*name).to_string();
            let rest = format!("/{rest}");
            match d.board(&name) {
                Some((_, Some(phase))) if method == Method::POST => error(
                    409,
                    &format!("rollout `{name}` has finished ({phase}): nothing to act on"),
                ),
                Some((board, _)) => board.answer_at(req, &rest).await,
                None if method == Method::POST => error(
                    409,
                    &format!("rollout `{name}` is not running in this daemon"),
                ),
                None => error(
                    404,
                    &format!("rollout `{name}` is not running in this daemon"),
                ),
            }
        }
        (_, ["health", "live" | "ready"] | ["metrics" | "rollouts"] | ["rollouts", _]) => {
            error(405, "method not allowed")
        }
        _ => error(404, "not found"),
    }
}

/// The checks of every mutating request: the request's shape, the token, the role.
fn refuse<S: Store + 'static, B: Build>(
    d: &Daemon<S, B>,
    req: &Request<Incoming>,
) -> Option<Reply> {
    if let Err(refused) = crate::net::check_control_request(req) {
        return Some(reply(refused.status, "application/json", refused.json()));
    }
    if !d.auth().admits(req) {
        let mut r = error(
            401,
            "a control request needs Authorization: Bearer TOKEN (COALMINE_TOKEN, --token-file, or the token file in the state directory)",
        );
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer"),
        );
        return Some(r);
    }
    None
}

fn started(r: Result<super::daemon::Started, Refusal>) -> Reply {
    match r {
        Ok(s) => json(
            StatusCode::CREATED,
            &serde_json::to_value(&s).unwrap_or_default(),
        ),
        Err(Refusal { status, message }) => error(status, &message),
    }
}

/// Reads a JSON body of at most a policy's size and some.
async fn read_json<T: serde::de::DeserializeOwned>(body: Incoming) -> Result<T, String> {
    let limit = crate::policy::MAX_POLICY_BYTES * 2 + 64 * 1024;
    let bytes = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| format!("reading the body: {e}"))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| format!("body: {e}"))
}

async fn ready<S: Store + 'static, B: Build>(d: &Daemon<S, B>) -> Reply {
    let role = d.role();
    let role_name = match role {
        Role::Unknown => "unknown",
        Role::Leader => "leader",
        Role::Follower => "follower",
    };
    match d.store().ready().await {
        Ok(()) if role != Role::Unknown => json(
            StatusCode::OK,
            &serde_json::json!({ "status": "ready", "role": role_name }),
        ),
        Ok(()) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "status": "not ready", "role": role_name, "why": "role unknown" }),
        ),
        Err(e) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "status": "not ready", "role": role_name, "why": e.to_string() }),
        ),
    }
}

/// Every stored rollout, with the live state of those running here.
async fn list<S: Store + 'static, B: Build>(d: &Daemon<S, B>) -> Reply {
    match d.store().list().await {
        Ok(records) => {
            let out: Vec<serde_json::Value> = records
                .iter()
                .map(|s| {
                    let live = d
                        .board(&s.rollout)
                        .filter(|(_, f)| f.is_none() && !s.finished())
                        .and_then(|(b, _)| b.snapshot());
                    shown(d, s, live)
                })
                .collect();
            json(StatusCode::OK, &serde_json::Value::Array(out))
        }
        Err(e) => error(503, &e.to_string()),
    }
}

async fn one<S: Store + 'static, B: Build>(d: &Daemon<S, B>, name: &str) -> Reply {
    match d.store().load(name).await {
        Ok(Some(s)) => {
            let live = d
                .board(name)
                .filter(|(_, f)| f.is_none() && !s.finished())
                .and_then(|(b, _)| b.snapshot());
            json(StatusCode::OK, &shown(d, &s, live))
        }
        Ok(None) => error(404, &format!("no rollout `{name}` in the store")),
        Err(e) => error(503, &e.to_string()),
    }
}

/// A stored rollout as the API shows it. On a follower, a rollout whose record names a
/// controller (the leader writes it while its task runs) is shown running, as the leader
/// shows it.
fn shown<S: Store + 'static, B: Build>(
    d: &Daemon<S, B>,
    s: &crate::controller::store::RolloutState,
    live: Option<serde_json::Value>,
) -> serde_json::Value {
    let mut v = view(s, live);
    if d.role() != Role::Leader && s.control.is_some() && !s.finished() {
        v["running"] = serde_json::json!(true);
    }
    v
}

fn exposition<S: Store + 'static, B: Build>(d: &Daemon<S, B>) -> String {
    let mut out = String::new();
    d.obs.write(&mut out, d.role() == Role::Leader);
    let fams: Vec<_> = d
        .boards()
        .iter()
        .filter_map(crate::cli::status::StatusBoard::families)
        .collect();
    crate::cli::status::write_families(&mut out, &fams);
    out
}
