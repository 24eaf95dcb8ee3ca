//! The control API of a running rollout: health endpoints, the current state as JSON, the
//! rollout's own Prometheus metrics, and the operator's levers. Every `coalmine run` starts
//! it (on a free loopback port unless `--control-addr` says otherwise) and records its
//! address in the rollout store, where the operator's verbs (`coalmine status`, `promote`,
//! `pause`, `resume`, `abort`) find it.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /health/live` | 200 while the process runs |
//! | `GET /health/ready` | 200 while the rollout is in progress, 503 once it has ended |
//! | `GET /status` | the phase, weight, step, last decision and every metric's state (JSON) |
//! | `GET /metrics` | the same as Prometheus text: weight, step, phase, e-values, outcomes |
//! | `POST /promote` | `{"step": N, "full": false}`: releases step N (its approval gate, the rest of its time and requests; it moves on at the next tick unless a metric fails or evidence is missing); 409 when the rollout is not at step N; `full` promotes to 100 % now; after the switch to 100 % (phase `watching` or `keeping-blue`) `{"full": true}` with no step ends the post-promotion window or keep_blue; a lever the rollout cannot take where it is (a promote while a gate holds it, any lever answered 409) is recorded in the decision log as refused, with who asked |
//! | `POST /approve` | the same as `/promote` |
//! | `POST /pause` | pauses a progressing rollout: no traffic change until resumed |
//! | `POST /resume` | resumes a paused rollout (puts the step's weight back if another is in force) |
//! | `POST /abort` | rolls back |
//!
//! Every POST needs `Authorization: Bearer TOKEN` (compared in constant time; no token or
//! a wrong one is a 401 and changes nothing) and may carry `{"reason": "..."}`; the action
//! is recorded in the decision log with its actor (the token's name) and reason. POSTs
//! must also carry `Content-Type: application/json` or the `Authorization` header, and an
//! `Origin`, when present, must be this server's ([`crate::net::check_control_request`]):
//! a web page cannot make a browser move traffic.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::analysis::{Outcome, Stats};
use crate::controller::record::RecordKind;
use crate::controller::{Decision, Lever, Observer, OperatorAction, Record};
use crate::model::Weight;

/// One metric's latest state.
#[derive(Clone, Debug, Serialize)]
struct MetricState {
    metric: String,
    judge: &'static str,
    outcome: Option<Outcome>,
    reason: String,
    log_e: Option<f64>,
    log_threshold: Option<f64>,
    p_value: Option<f64>,
}

/// What `/status` shows.
#[derive(Clone, Debug, Default, Serialize)]
struct Snapshot {
    rollout: String,
    phase: &'static str,
    weight: Weight,
    step: Option<usize>,
    steps: usize,
    elapsed_s: f64,
    ticks: u64,
    finished: bool,
    last_event: Option<String>,
    last_decision: Option<Decision>,
    metrics: Vec<MetricState>,
}

/// The bearer token mutating requests must carry, and the actor it names.
#[derive(Clone)]
pub(crate) struct Auth {
    pub(crate) token: Vec<u8>,
    pub(crate) actor: String,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("actor", &self.actor)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// Whether the request's `Authorization: Bearer` token is this one (constant time).
    pub(crate) fn admits<B>(&self, req: &Request<B>) -> bool {
        use subtle::ConstantTimeEq as _;
        let Some(v) = req.headers().get(hyper::header::AUTHORIZATION) else {
            return false;
        };
        let v = v.as_bytes();
        let Some(given) = v
            .strip_prefix(b"Bearer ")
            .or_else(|| v.strip_prefix(b"bearer "))
        else {
            return false;
        };
        bool::from(given.ct_eq(self.token.as_slice()))
    }
}

/// What a control POST may carry.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlBody {
    step: Option<usize>,
    #[serde(default)]
    full: bool,
    #[serde(default)]
    reason: String,
}

/// Shared state between the controller's observer side and the HTTP side.
#[derive(Clone, Debug)]
pub(crate) struct StatusBoard {
    snap: Arc<Mutex<Snapshot>>,
    abort: watch::Sender<Option<String>>,
    levers: mpsc::UnboundedSender<Lever>,
    auth: Option<Auth>,
}

impl StatusBoard {
    /// A board that aborts through `abort`, and the receiving end of its levers (for
    /// [`crate::controller::RunOptions::levers`]).
    pub(crate) fn new(
        abort: watch::Sender<Option<String>>,
    ) -> (Self, mpsc::UnboundedReceiver<Lever>) {
        let (levers, rx) = mpsc::unbounded_channel();
        (
            StatusBoard {
                snap: Arc::default(),
                abort,
                levers,
                auth: None,
            },
            rx,
        )
    }

    /// Requires `auth`'s bearer token on every mutating request.
    #[must_use]
    pub(crate) fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = Some(auth);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Snapshot> {
        self.snap
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn update(&self, r: &Record) {
        let mut s = self.lock();
        s.rollout.clone_from(&r.rollout);
        s.phase = r.next_phase;
        s.weight = r.weight;
        s.step = r.step;
        s.steps = r.steps;
        s.elapsed_s = r.elapsed_s;
        s.finished = r.kind == RecordKind::Final;
        if r.event.is_some() {
            s.last_event.clone_from(&r.event);
        }
        if r.kind == RecordKind::Tick {
            s.ticks += 1;
            s.last_decision.clone_from(&r.decision);
            s.metrics = r
                .metrics
                .iter()
                .map(|m| {
                    let (log_e, log_threshold, p_value) = match &m.stats {
                        Stats::ErrorEvents(x) => {
                            (Some(x.log_e), Some(x.log_threshold), Some(x.p_value))
                        }
                        Stats::SlowEvents(x) => {
                            (Some(x.log_e), Some(x.log_threshold), Some(x.p_value))
                        }
                        _ => (None, None, None),
                    };
                    MetricState {
                        metric: m.metric.clone(),
                        judge: m.judge,
                        outcome: m.outcome,
                        reason: m.reason.clone(),
                        log_e,
                        log_threshold,
                        p_value,
                    }
                })
                .collect();
        }
    }

    /// Starts serving on `addr`; returns the bound address. The accept loop is the shared
    /// one of [`crate::net`]: header-read and idle timeouts, the process's connection cap.
    pub(crate) async fn serve(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let board = self.clone();
        tokio::spawn(crate::net::serve(
            listener,
            crate::net::ServeLimits::default(),
            crate::net::ConnBudget::global(),
            Arc::default(),
            std::future::pending(),
            move |req| {
                let board = board.clone();
                async move { Ok::<_, Infallible>(board.answer(req).await) }
            },
        ));
        Ok(bound)
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        // `/rollouts/NAME/X` is `/X` for this rollout: the verbs name the rollout, so they
        // talk the same way to one `coalmine run` and to a `coalmine serve` of many.
        let path = req.uri().path().to_string();
        let prefix = format!("/rollouts/{}/", self.lock().rollout);
        let path = match path.strip_prefix(prefix.as_str()) {
            Some(rest) => format!("/{rest}"),
            None => path,
        };
        self.answer_at(req, &path).await
    }

    /// Answers `req` as if its path were `path` (the daemon routes `/rollouts/NAME/X` here
    /// as `/X`).
    pub(crate) async fn answer_at(
        &self,
        req: Request<Incoming>,
        path: &str,
    ) -> Response<Full<Bytes>> {
        let reply = |status: StatusCode, ctype: &'static str, body: String| {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = status;
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(ctype),
            );
            r
        };
        let json = "application/json";
        let method = req.method().clone();
        if req.method() == Method::POST {
            let mut actor = "local".to_string();
            if let Err(refused) = crate::net::check_control_request(&req) {
                return reply(refused.status, json, refused.json());
            }
            if let Some(auth) = &self.auth {
                if !auth.admits(&req) {
                    let mut r = reply(
                        StatusCode::UNAUTHORIZED,
                        json,
                        r#"{"error":"a control request needs Authorization: Bearer TOKEN (COALMINE_TOKEN, --token-file, or the token file in the state directory)"}"#.into(),
                    );
                    r.headers_mut().insert(
                        hyper::header::WWW_AUTHENTICATE,
                        hyper::header::HeaderValue::from_static("Bearer"),
                    );
                    return r;
                }
                actor.clone_from(&auth.actor);
            }
            return match read_body(req.into_body()).await {
                Ok(body) => self.lever(path, body, &actor, &reply),
                Err(why) => {
                    let body = serde_json::json!({ "error": why }).to_string();
                    reply(StatusCode::BAD_REQUEST, json, body)
                }
            };
        }
        match (&method, path) {
            (&Method::GET, "/health/live") => {
                reply(StatusCode::OK, json, r#"{"status":"live"}"#.into())
            }
            (&Method::GET, "/health/ready") => {
                let s = self.lock();
                if s.finished {
                    let body = format!(r#"{{"status":"finished","phase":"{}"}}"#, s.phase);
                    reply(StatusCode::SERVICE_UNAVAILABLE, json, body)
                } else {
                    let body = format!(r#"{{"status":"ready","phase":"{}"}}"#, s.phase);
                    reply(StatusCode::OK, json, body)
                }
            }
            (&Method::GET, "/status") => {
                let body = serde_json::to_string_pretty(&*self.lock()).unwrap_or_default();
                reply(StatusCode::OK, json, body)
            }
            (&Method::GET, "/metrics") => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                exposition(&self.lock()),
            ),
            (
                _,
                "/health/live" | "/health/ready" | "/status" | "/metrics" | "/approve" | "/pause"
                | "/resume" | "/abort",
            ) => reply(
                StatusCode::METHOD_NOT_ALLOWED,
                json,
                r#"{"error":"method not allowed"}"#.into(),
            ),
            _ => reply(
                StatusCode::NOT_FOUND,
                json,
                r#"{"error":"not found"}"#.into(),
            ),
        }
    }
}

type Reply<'a> = &'a dyn Fn(StatusCode, &'static str, String) -> Response<Full<Bytes>>;

impl StatusBoard {
    /// An authenticated POST: checks it against the rollout's state and sends the lever.
    fn lever(
        &self,
        path: &str,
        body: ControlBody,
        actor: &str,
        reply: Reply<'_>,
    ) -> Response<Full<Bytes>> {
        let json = "application/json";
        let (phase, step) = {
            let s = self.lock();
            (s.phase, s.step)
        };
        let reason = body.reason;
        // A refusal is an operator's action too: the decision log records it.
        let conflict = |action, what: &str| {
            let _ = self.levers.send(Lever::Refused {
                action,
                actor: actor.to_string(),
                why: what.to_string(),
            });
            let body = serde_json::json!({ "error": what, "phase": phase, "step": step });
            reply(StatusCode::CONFLICT, json, body.to_string())
        };
        let send = |action, answer: &str| {
            let _ = self.levers.send(Lever::Operator {
                action,
                actor: actor.to_string(),
                reason: reason.clone(),
            });
            reply(StatusCode::ACCEPTED, json, answer.to_string())
        };
        match path {
            // After the switch to 100 % (the post-promotion window, keep_blue) there is no
            // step to name: `full` ends that phase now.
            "/promote" if body.full && matches!(phase, "watching" | "keeping-blue") => send(
                OperatorAction::Promote {
                    step: body.step.unwrap_or(0),
                    full: true,
                },
                r#"{"promoting":true}"#,
            ),
            "/promote" | "/approve" => {
                let Some(named) = body.step else {
                    let body = serde_json::json!({
                        "error": "name the step to release: {\"step\": N} (the step `coalmine status` shows)",
                        "step": step,
                    });
                    return reply(StatusCode::BAD_REQUEST, json, body.to_string());
                };
                if step != Some(named) {
                    return conflict(
                        OperatorAction::Promote {
                            step: named,
                            full: body.full,
                        },
                        &format!(
                            "the rollout is not at step {named}: an approval releases only the step it names"
                        ),
                    );
                }
                send(
                    OperatorAction::Promote {
                        step: named,
                        full: body.full,
                    },
                    r#"{"promoting":true}"#,
                )
            }
            "/pause" if phase == "progressing" => {
                send(OperatorAction::Pause, r#"{"pausing":true}"#)
            }
            "/pause" => conflict(OperatorAction::Pause, "not progressing"),
            "/resume" if phase == "paused" => send(OperatorAction::Resume, r#"{"resuming":true}"#),
            "/resume" => conflict(OperatorAction::Resume, "not paused"),
            "/abort" => {
                if self.levers.is_closed() {
                    // No controller loop listens any more: the signal path still does.
                    let _ = self.abort.send(Some(format!("aborted by {actor}")));
                }
                send(OperatorAction::Abort, r#"{"aborting":true}"#)
            }
            "/health/live" | "/health/ready" | "/status" | "/metrics" => reply(
                StatusCode::METHOD_NOT_ALLOWED,
                json,
                r#"{"error":"method not allowed"}"#.into(),
            ),
            _ => reply(
                StatusCode::NOT_FOUND,
                json,
                r#"{"error":"not found"}"#.into(),
            ),
        }
    }
}

/// Reads a control request's body: empty, or a small JSON object.
async fn read_body(body: Incoming) -> Result<ControlBody, String> {
    use http_body_util::BodyExt as _;
    let limited = http_body_util::Limited::new(body, 16 * 1024);
    let bytes = limited
        .collect()
        .await
        .map_err(|e| format!("reading the body: {e}"))?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(ControlBody::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("body: {e}"))
}

impl Observer for StatusBoard {
    fn on_record(&mut self, r: &Record) {
        self.update(r);
    }
}

/// A Prometheus label value, escaped.
pub(crate) fn label(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// One gauge family of a rollout's exposition: name, help, and its series (the labels
/// after `rollout`, the value).
pub(crate) struct Family {
    pub(crate) name: &'static str,
    pub(crate) help: &'static str,
    pub(crate) series: Vec<(String, f64)>,
}

/// The gauge families of one rollout: the daemon merges those of all its rollouts, family
/// by family (a family's HELP and TYPE appear once in an exposition).
fn families(s: &Snapshot) -> Vec<Family> {
    let metric = |m: &MetricState| format!(",metric=\"{}\"", label(&m.metric));
    let fam = |name, help, series| Family { name, help, series };
    vec![
        fam(
            "coalmine_canary_weight_percent",
            "Canary weight in force, percent.",
            vec![(String::new(), s.weight.percent())],
        ),
        fam(
            "coalmine_rollout_step",
            "Current step, 1-based (0 before the first).",
            vec![(String::new(), s.step.unwrap_or(0) as f64)],
        ),
        fam(
            "coalmine_rollout_phase",
            "1 for the phase the rollout is in.",
            vec![(format!(",phase=\"{}\"", s.phase), 1.0)],
        ),
        fam(
            "coalmine_analysis_ticks",
            "Analysis ticks so far.",
            vec![(String::new(), s.ticks as f64)],
        ),
        fam(
            "coalmine_metric_outcome",
            "1 for each metric's current outcome.",
            s.metrics
                .iter()
                .map(|m| {
                    let o = m.outcome.map_or("error", Outcome::as_str);
                    (format!("{},outcome=\"{o}\"", metric(m)), 1.0)
                })
                .collect(),
        ),
        fam(
            "coalmine_metric_log_evalue",
            "Natural log of each sequential metric's e-value (it fails at the log threshold).",
            s.metrics
                .iter()
                .filter_map(|m| Some((metric(m), m.log_e?)))
                .collect(),
        ),
        fam(
            "coalmine_metric_log_threshold",
            "Natural log of 1/alpha for each sequential metric.",
            s.metrics
                .iter()
                .filter_map(|m| Some((metric(m), m.log_threshold?)))
                .collect(),
        ),
        fam(
            "coalmine_metric_p_value",
            "Anytime-valid p-value of each sequential metric.",
            s.metrics
                .iter()
                .filter_map(|m| Some((metric(m), m.p_value?)))
                .collect(),
        ),
    ]
}

/// Writes the gauge families of many rollouts (`(rollout, its families)`), each family
/// once with every rollout's series under it.
pub(crate) fn write_families(out: &mut String, rollouts: &[(String, Vec<Family>)]) {
    let Some((_, first)) = rollouts.first() else {
        return;
    };
    for (i, f) in first.iter().enumerate() {
        let _ = writeln!(out, "# HELP {} {}\n# TYPE {} gauge", f.name, f.help, f.name);
        for (rollout, fams) in rollouts {
            let r = label(rollout);
            for (labels, v) in &fams[i].series {
                let _ = writeln!(out, "{}{{rollout=\"{r}\"{labels}}} {v}", f.name);
            }
        }
    }
}

fn exposition(s: &Snapshot) -> String {
    let mut out = String::new();
    write_families(&mut out, &[(s.rollout.clone(), families(s))]);
    out
}

impl StatusBoard {
    /// This rollout's gauge families (for the daemon's `/metrics`); `None` before its
    /// first record.
    pub(crate) fn families(&self) -> Option<(String, Vec<Family>)> {
        let s = self.lock();
        (!s.rollout.is_empty()).then(|| (s.rollout.clone(), families(&s)))
    }

    /// What `/status` shows, as JSON; `None` before the rollout's first record.
    pub(crate) fn snapshot(&self) -> Option<serde_json::Value> {
        let s = self.lock();
        (!s.rollout.is_empty()).then(|| serde_json::to_value(&*s).unwrap_or_default())
    }
}

/// Forwards records to two observers.
pub(crate) struct Tee<'a>(
    pub(crate) &'a mut dyn Observer,
    pub(crate) Option<&'a mut dyn Observer>,
);

impl Observer for Tee<'_> {
    fn on_record(&mut self, r: &Record) {
        self.0.on_record(r);
        if let Some(o) = &mut self.1 {
            o.on_record(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_admitted() {
        let auth = Auth {
            token: b"s3cret-token".to_vec(),
            actor: "test".into(),
        };
        let with = |value: Option<&[u8]>| {
            let mut b = Request::builder();
            if let Some(v) = value {
                b = b.header(hyper::header::AUTHORIZATION, v);
            }
            auth.admits(&b.body(()).unwrap())
        };
        assert!(with(Some(b"Bearer s3cret-token")));
        assert!(with(Some(b"bearer s3cret-token")));
        for refused in [
            None,
            Some(&b""[..]),
            Some(b"s3cret-token"),
            Some(b"Bearer "),
            Some(b"Bearer s3cret"),
            Some(b"Bearer s3cret-token-and-more"),
            Some(b"Bearer S3CRET-TOKEN"),
            Some(b"Basic s3cret-token"),
            Some(b"Bearer  s3cret-token"),
            Some(b"Bearer \xffs3cret-token"),
        ] {
            assert!(!with(refused), "{refused:?} admitted");
        }
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn exposition_has_weight_and_metrics() {
        let s = Snapshot {
            rollout: "demo".into(),
            phase: "progressing",
            weight: Weight::try_from_percent(25.0).unwrap(),
            step: Some(2),
            steps: 3,
            metrics: vec![MetricState {
                metric: "error-rate".into(),
                judge: "sequential",
                outcome: Some(Outcome::Inconclusive),
                reason: String::new(),
                log_e: Some(1.5),
                log_threshold: Some(3.0),
                p_value: Some(0.2),
            }],
            ..Snapshot::default()
        };
        let text = exposition(&s);
        assert!(
            text.contains("coalmine_canary_weight_percent{rollout=\"demo\"} 25\n"),
            "{text}"
        );
        assert!(text.contains("coalmine_rollout_phase{rollout=\"demo\",phase=\"progressing\"} 1"));
        assert!(
            text.contains("coalmine_metric_log_evalue{rollout=\"demo\",metric=\"error-rate\"} 1.5")
        );
        assert!(text.contains(
            "coalmine_metric_outcome{rollout=\"demo\",metric=\"error-rate\",outcome=\"inconclusive\"} 1"
        ));
    }
}
