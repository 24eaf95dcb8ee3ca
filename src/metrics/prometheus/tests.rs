//! The Prometheus source against an in-process fake of the HTTP API, one scenario per test.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::*;
use crate::analysis::errors::EventJudgeSpec;
use crate::analysis::latency::LatencyJudgeSpec;
use crate::analysis::observation::Shape;
use crate::analysis::threshold::ThresholdSpec;
use crate::analysis::{JudgeSpec, MetricJudge, Outcome};
use crate::model::Weight;
use crate::policy::SourceConfig;

/// One request the fake received.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    params: Vec<(String, String)>,
    headers: hyper::HeaderMap,
}

impl Seen {
    fn param(&self, k: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    fn query(&self) -> &str {
        self.param("query").unwrap_or("")
    }
}

/// The fake's answer: status, content type, body, delay.
struct Answer {
    status: u16,
    content_type: &'static str,
    body: String,
    delay: Duration,
}

fn ok(data: &str) -> Answer {
    Answer {
        status: 200,
        content_type: "application/json",
        body: format!(r#"{{"status":"success","data":{data}}}"#),
        delay: Duration::ZERO,
    }
}

fn api_error(status: u16, kind: &str, message: &str) -> Answer {
    Answer {
        status,
        content_type: "application/json",
        body: serde_json::json!({"status": "error", "errorType": kind, "error": message})
            .to_string(),
        delay: Duration::ZERO,
    }
}

/// A non-API answer, as a proxy or another server in front would send.
fn raw(status: u16, content_type: &'static str, body: &str) -> Answer {
    Answer {
        status,
        content_type,
        body: body.to_string(),
        delay: Duration::ZERO,
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Answer + Send + Sync>;

struct Fake {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fake {
    async fn start(handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> Fake {
        let handler: Handler = Arc::new(handler);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (handler, log) = (handler.clone(), log.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (handler, log) = (handler.clone(), log.clone());
                        async move {
                            let s = Seen {
                                path: req.uri().path().to_string(),
                                params: decode_form(req.uri().query().unwrap_or("")),
                                headers: req.headers().clone(),
                            };
                            log.lock().unwrap().push(s.clone());
                            let a = handler(&s);
                            tokio::time::sleep(a.delay).await;
                            let mut r = Response::new(Full::new(Bytes::from(a.body)));
                            *r.status_mut() = hyper::StatusCode::from_u16(a.status).unwrap();
                            r.headers_mut().insert(
                                hyper::header::CONTENT_TYPE,
                                hyper::header::HeaderValue::from_static(a.content_type),
                            );
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Fake { addr, seen, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte.
fn decode_form(q: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 2;
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8(out).unwrap()
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// A vector result; values are strings as Prometheus sends them (`"NaN"`, `"+Inf"`).
/// Label pairs of a fake series.
type Labels<'a> = &'a [(&'a str, &'a str)];

fn vector(series: &[(Labels<'_>, &str)]) -> String {
    let result: Vec<serde_json::Value> = series
        .iter()
        .map(|(labels, v)| {
            let metric: serde_json::Map<String, serde_json::Value> = labels
                .iter()
                .map(|(k, v)| ((*k).to_string(), serde_json::Value::from(*v)))
                .collect();
            serde_json::json!({"metric": metric, "value": [1015.0, v]})
        })
        .collect();
    serde_json::json!({"resultType": "vector", "result": result}).to_string()
}

fn matrix(series: &[(Labels<'_>, &[(f64, &str)])]) -> String {
    let result: Vec<serde_json::Value> = series
        .iter()
        .map(|(labels, points)| {
            let metric: serde_json::Map<String, serde_json::Value> = labels
                .iter()
                .map(|(k, v)| ((*k).to_string(), serde_json::Value::from(*v)))
                .collect();
            let values: Vec<serde_json::Value> = points
                .iter()
                .map(|(t, v)| serde_json::json!([t, v]))
                .collect();
            serde_json::json!({"metric": metric, "values": values})
        })
        .collect();
    serde_json::json!({"resultType": "matrix", "result": result}).to_string()
}

fn one(v: &str) -> String {
    vector(&[(&[], v)])
}

fn config(url: String) -> PrometheusConfig {
    PrometheusConfig {
        url,
        timeout: Duration::from_secs(2),
        token: None,
        headers: Vec::new(),
        variables: BTreeMap::from([
            ("job".to_string(), Variable::Same("api".to_string())),
            (
                "deployment".to_string(),
                Variable::PerArm {
                    baseline: "checkout-stable".to_string(),
                    canary: "checkout-v2".to_string(),
                },
            ),
        ]),
        ca_file: None,
        series_step: None,
    }
}

fn source(url: String) -> PrometheusSource {
    PrometheusSource::new(&config(url)).unwrap()
}

fn window() -> Window {
    Window {
        seq: 3,
        start: SystemTime::UNIX_EPOCH + Duration::from_secs(1000),
        end: SystemTime::UNIX_EPOCH + Duration::from_secs(1015),
        weight: Weight::try_from_percent(25.0).unwrap(),
    }
}

fn metric(data: DataSpec, shape: Shape) -> MetricConfig {
    let judge = match shape {
        Shape::Counts => JudgeSpec::Events(EventJudgeSpec::new(0.01)),
        Shape::Histogram => JudgeSpec::Latency(LatencyJudgeSpec::new(0.01)),
        _ => JudgeSpec::Threshold(ThresholdSpec {
            max: Some(0.05),
            ..ThresholdSpec::default()
        }),
    };
    MetricConfig {
        name: "m".into(),
        description: None,
        data,
        shape,
        judge,
        dry_run: false,
    }
}

fn t(s: &str) -> Template {
    Template::parse(s).unwrap()
}

fn counts_metric() -> MetricConfig {
    metric(
        DataSpec::Counts {
            events: t(
                r#"sum(increase(req_total{job="{{job}}",track="{{arm}}",code=~"5.."}[{{window}}]))"#,
            ),
            trials: t(r#"sum(increase(req_total{job="{{job}}",track="{{arm}}"}[{{window}}]))"#),
        },
        Shape::Counts,
    )
}

fn histogram_metric() -> MetricConfig {
    metric(
        DataSpec::Histogram(t(
            r#"sum by (le) (increase(lat_bucket{track="{{arm}}"}[{{window}}]))"#,
        )),
        Shape::Histogram,
    )
}

/// Answers counts queries: `(baseline events, trials, canary events, trials)`.
fn counts_answer(values: [&'static str; 4]) -> impl Fn(&Seen) -> Answer + Send + Sync {
    move |s| {
        let q = s.query();
        let i = usize::from(q.contains("canary")) * 2 + usize::from(!q.contains("code"));
        if values[i].is_empty() {
            ok(&vector(&[]))
        } else {
            ok(&one(values[i]))
        }
    }
}

#[tokio::test]
async fn counts_are_rendered_sent_and_parsed() {
    let fake = Fake::start(counts_answer(["2", "100", "3", "30.5"])).await;
    let mut cfg = config(fake.url());
    cfg.token = Some(Secret::Env("PROM_TOKEN".into()));
    cfg.headers = vec![("X-Scope-OrgID".into(), "team-a".into())];
    let src = PrometheusSource::with_env(&cfg, &|v| {
        (v == "PROM_TOKEN").then(|| " s3cret\n".to_string())
    })
    .unwrap();
    let f = src.fetch(&counts_metric(), &window()).await.unwrap();
    assert_eq!(f.segments.len(), 1);
    let seg = &f.segments[0];
    assert_eq!(seg.share, 0.25);
    assert_eq!(
        seg.baseline,
        Observation::Counts(Counts {
            events: 2.0,
            trials: 100.0
        })
    );
    assert_eq!(
        seg.canary,
        Observation::Counts(Counts {
            events: 3.0,
            trials: 30.5
        })
    );
    let rendered: Vec<(Arm, &str, &str)> = f
        .queries
        .iter()
        .map(|q| (q.arm, q.role, q.query.as_str()))
        .collect();
    assert_eq!(
        rendered,
        vec![
            (
                Arm::Baseline,
                "events",
                exact(r#"sum(increase(req_total{job="api",track="baseline",code=~"5.."}[15s]))"#)
                    .as_str()
            ),
            (
                Arm::Baseline,
                "trials",
                exact(r#"sum(increase(req_total{job="api",track="baseline"}[15s]))"#).as_str()
            ),
            (
                Arm::Canary,
                "events",
                exact(r#"sum(increase(req_total{job="api",track="canary",code=~"5.."}[15s]))"#)
                    .as_str()
            ),
            (
                Arm::Canary,
                "trials",
                exact(r#"sum(increase(req_total{job="api",track="canary"}[15s]))"#).as_str()
            ),
        ]
    );
    let seen = fake.seen();
    assert_eq!(seen.len(), 4);
    for s in &seen {
        assert_eq!(s.path, "/api/v1/query");
        assert_eq!(
            s.param("time"),
            Some("1015.000"),
            "evaluated at the window's end"
        );
        assert_eq!(s.param("timeout"), Some("1900ms"));
        assert_eq!(s.headers["authorization"], "Bearer s3cret");
        assert_eq!(s.headers["x-scope-orgid"], "team-a");
        assert!(f.queries.iter().any(|q| q.query == s.query()));
    }
}

#[tokio::test]
async fn empty_results_and_nan_are_missing_and_never_pass() {
    // Canary events: no series; then NaN trials for the baseline.
    for values in [["0", "100", "", "40"], ["0", "NaN", "1", "40"]] {
        let fake = Fake::start(counts_answer(values)).await;
        let f = source(fake.url())
            .fetch(&counts_metric(), &window())
            .await
            .unwrap();
        let seg = &f.segments[0];
        let missing = if values[2].is_empty() {
            &seg.canary
        } else {
            &seg.baseline
        };
        assert_eq!(missing, &Observation::Missing, "{values:?}");
        let mut judge = MetricJudge::new(&counts_metric().judge);
        assert_eq!(judge.observe("m", seg).outcome, Outcome::NoData);
    }
}

#[tokio::test]
async fn several_series_are_ambiguous_and_named() {
    let fake = Fake::start(|_| {
        ok(&vector(&[
            (&[("__name__", "up"), ("instance", "a:1")], "1"),
            (&[("instance", "b:2"), ("job", "x")], "2"),
        ]))
    })
    .await;
    let err = source(fake.url())
        .fetch(&counts_metric(), &window())
        .await
        .unwrap_err();
    let MetricsError::Ambiguous { series, query } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        series,
        &vec![
            r#"up{instance="a:1"}"#.to_string(),
            r#"{instance="b:2", job="x"}"#.to_string()
        ]
    );
    assert!(query.contains("track=\"baseline\""), "{query}");
    let shown = err.to_string();
    assert!(
        shown.contains("2 series") && shown.contains("sum(...)"),
        "{shown}"
    );
}

#[tokio::test]
async fn query_errors_carry_prometheus_message_and_the_query() {
    let fake = Fake::start(|_| {
        api_error(
            400,
            "bad_data",
            "invalid parameter \"query\": 1:5: parse error: unexpected right parenthesis ')'",
        )
    })
    .await;
    let m = metric(
        DataSpec::Scalar(t("rate(x{track=\"{{arm}}\"}))")),
        Shape::Scalar,
    );
    let err = source(fake.url()).fetch(&m, &window()).await.unwrap_err();
    let MetricsError::Query { query, message } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(query, "rate(x{track=\"canary\"}))");
    assert!(message.contains("bad_data"), "{message}");
    assert!(
        message.contains("unexpected right parenthesis"),
        "{message}"
    );
    assert!(!err.is_transient());
    assert_eq!(fake.seen().len(), 1, "scalar metrics query the canary only");
}

#[tokio::test]
async fn unreachable_timeout_and_http_errors() {
    // Nothing listens on a port that was just released.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let err = source(format!("http://{addr}"))
        .fetch(&counts_metric(), &window())
        .await
        .unwrap_err();
    assert!(matches!(err, MetricsError::Unreachable { .. }), "{err:?}");
    assert!(err.is_transient());
    // The cause, not reqwest's first line with the whole encoded query again.
    let shown = err.to_string();
    assert!(
        shown.contains("onnect") && !shown.contains("query="),
        "{shown}"
    );
    assert!(source(format!("http://{addr}")).preflight().await.is_err());

    let slow = Fake::start(|_| Answer {
        delay: Duration::from_secs(3),
        ..ok(&one("1"))
    })
    .await;
    let mut cfg = config(slow.url());
    cfg.timeout = Duration::from_millis(300);
    let err = PrometheusSource::new(&cfg)
        .unwrap()
        .fetch(&counts_metric(), &window())
        .await
        .unwrap_err();
    assert!(matches!(err, MetricsError::Timeout { .. }), "{err:?}");

    let denied = Fake::start(|_| raw(401, "text/plain", "unauthorized")).await;
    let err = source(denied.url())
        .fetch(&counts_metric(), &window())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MetricsError::Query { message, .. } if message.contains("401") && message.contains("token_env")),
        "{err:?}"
    );

    let gateway = Fake::start(|_| raw(502, "text/html", "<html>bad gateway</html>")).await;
    let err = source(gateway.url())
        .fetch(&counts_metric(), &window())
        .await
        .unwrap_err();
    assert!(matches!(err, MetricsError::Unreachable { .. }), "{err:?}");

    let down = Fake::start(|_| api_error(503, "unavailable", "TSDB not ready")).await;
    let err = source(down.url()).preflight().await.unwrap_err();
    assert!(
        matches!(&err, MetricsError::Unreachable { message, .. } if message.contains("TSDB not ready")),
        "{err:?}"
    );
}

fn buckets(arm_scale: f64) -> impl Fn(&Seen) -> Answer + Send + Sync {
    move |s| {
        let k = if s.query().contains("canary") {
            arm_scale
        } else {
            1.0
        };
        let v = |x: f64| format!("{}", x * k);
        let (a, b, c, d) = (v(10.0), v(50.0), v(90.0), v(100.0));
        ok(&vector(&[
            (&[("le", "0.5")], &b),
            (&[("le", "+Inf")], &d),
            (&[("le", "0.1")], &a),
            (&[("le", "1")], &c),
        ]))
    }
}

#[tokio::test]
async fn histograms_from_le_buckets() {
    let fake = Fake::start(buckets(2.0)).await;
    let f = source(fake.url())
        .fetch(&histogram_metric(), &window())
        .await
        .unwrap();
    let Observation::Histogram(b) = &f.segments[0].baseline else {
        panic!("{f:?}")
    };
    let Observation::Histogram(c) = &f.segments[0].canary else {
        panic!("{f:?}")
    };
    assert_eq!(b.bounds(), &[0.1, 0.5, 1.0, f64::INFINITY]);
    assert_eq!(b.counts(), &[10.0, 40.0, 40.0, 10.0]);
    assert_eq!(c.total(), 200.0);
    assert_eq!(
        f.queries[1].query,
        exact(r#"sum by (le) (increase(lat_bucket{track="canary"}[15s]))"#).as_str()
    );
}

fn hist_data(series: &[(Labels<'_>, &str)]) -> Data {
    serde_json::from_str(&vector(series)).unwrap()
}

#[test]
fn histogram_shapes_that_do_not_fit() {
    let q = "h";
    // A counter reset between buckets: cumulative counts decrease.
    let err = histogram(
        hist_data(&[(&[("le", "0.1")], "50"), (&[("le", "+Inf")], "20")]),
        q,
    )
    .unwrap_err();
    assert!(
        matches!(&err, MetricsError::Invalid { message, .. } if message.contains("counter reset") && message.contains("le=inf")),
        "{err}"
    );
    // No +Inf bucket.
    assert!(matches!(
        histogram(hist_data(&[(&[("le", "0.1")], "5")]), q),
        Err(MetricsError::Invalid { .. })
    ));
    // Not aggregated: two series per bucket.
    let err = histogram(
        hist_data(&[
            (&[("le", "+Inf"), ("pod", "a")], "5"),
            (&[("le", "+Inf"), ("pod", "b")], "6"),
        ]),
        q,
    )
    .unwrap_err();
    assert!(
        matches!(&err, MetricsError::Ambiguous { series, .. } if series.len() == 2 && series[1].contains("pod=\"b\"")),
        "{err:?}"
    );
    // No le label, an le that is no number.
    for bad in [
        hist_data(&[(&[("x", "1")], "5")]),
        hist_data(&[(&[("le", "fast")], "5")]),
    ] {
        assert!(matches!(
            histogram(bad, q),
            Err(MetricsError::Invalid { .. })
        ));
    }
    // Empty, NaN: no data.
    assert_eq!(histogram(hist_data(&[]), q).unwrap(), Observation::Missing);
    assert_eq!(
        histogram(
            hist_data(&[(&[("le", "0.1")], "NaN"), (&[("le", "+Inf")], "NaN")]),
            q
        )
        .unwrap(),
        Observation::Missing
    );
    // A scalar is not a histogram.
    let scalar: Data = serde_json::from_str(r#"{"resultType":"scalar","result":[1,"3"]}"#).unwrap();
    assert!(histogram(scalar, q).is_err());
}

#[test]
fn single_values_by_result_type() {
    let scalar: Data =
        serde_json::from_str(r#"{"resultType":"scalar","result":[1,"0.25"]}"#).unwrap();
    assert_eq!(single_value(scalar, "q").unwrap(), Some(0.25));
    let inf: Data = serde_json::from_str(&one("+Inf")).unwrap();
    assert_eq!(single_value(inf, "q").unwrap(), None);
    let m: Data = serde_json::from_str(&matrix(&[(&[], &[(1.0, "1")])])).unwrap();
    assert!(matches!(
        single_value(m, "x[5m]"),
        Err(MetricsError::Invalid { .. })
    ));
    let neg: Data = serde_json::from_str(&one("-3")).unwrap();
    assert!(matches!(
        count(neg, "q", "events"),
        Err(MetricsError::Invalid { .. })
    ));
}

#[tokio::test]
async fn series_are_range_queries_over_the_window() {
    let fake = Fake::start(|s| {
        if s.query().contains("canary") {
            ok(&matrix(&[(
                &[],
                &[(1000.0, "9"), (1005.0, "1"), (1010.0, "NaN"), (1015.0, "2")],
            )]))
        } else {
            ok(&matrix(&[]))
        }
    })
    .await;
    let mut cfg = config(fake.url());
    cfg.series_step = Some(Duration::from_secs(5));
    let m = metric(
        DataSpec::Series(t("rate(x{track=\"{{arm}}\"}[1m])")),
        Shape::Series,
    );
    let f = PrometheusSource::new(&cfg)
        .unwrap()
        .fetch(&m, &window())
        .await
        .unwrap();
    assert_eq!(f.segments[0].baseline, Observation::Missing);
    // The point at the window's start belongs to the previous window; NaN is dropped.
    assert_eq!(f.segments[0].canary, Observation::Series(vec![1.0, 2.0]));
    let seen = fake.seen();
    assert_eq!(seen[0].path, "/api/v1/query_range");
    assert_eq!(seen[0].param("start"), Some("1005"));
    assert_eq!(seen[0].param("end"), Some("1015"));
    assert_eq!(seen[0].param("step"), Some("5"));

    // Default step: the window's length, one point at its end.
    let src = source(fake.url());
    let Eval::Range { start, end, step } = src.range(&window()) else {
        panic!()
    };
    assert_eq!((start, end, step), (1015, 1015, 15));

    let two = Fake::start(|_| {
        ok(&matrix(&[
            (&[("pod", "a")], &[(1015.0, "1")]),
            (&[("pod", "b")], &[(1015.0, "1")]),
        ]))
    })
    .await;
    assert!(matches!(
        source(two.url()).fetch(&m, &window()).await,
        Err(MetricsError::Ambiguous { .. })
    ));
}

#[tokio::test]
async fn scalar_metrics_query_the_canary() {
    let fake = Fake::start(|_| ok(r#"{"resultType":"scalar","result":[1015,"0.02"]}"#)).await;
    let m = metric(
        DataSpec::Scalar(t(
            r#"sum(rate(e{track="{{arm}}"}[{{window}}])) / sum(rate(r[{{window}}]))"#,
        )),
        Shape::Scalar,
    );
    let f = source(fake.url()).fetch(&m, &window()).await.unwrap();
    assert_eq!(f.segments[0].canary, Observation::Scalar(0.02));
    assert_eq!(f.segments[0].baseline, Observation::Missing);
    assert_eq!(f.queries.len(), 1);
    assert_eq!(f.queries[0].arm, Arm::Canary);
    let mut judge = MetricJudge::new(&m.judge);
    assert_eq!(judge.observe("m", &f.segments[0]).outcome, Outcome::Pass);
}

#[tokio::test]
async fn preflight_evaluates_a_trivial_query() {
    let fake = Fake::start(|s| {
        if s.query() == "vector(1)" {
            ok(&one("1"))
        } else {
            ok(&one("0"))
        }
    })
    .await;
    source(fake.url()).preflight().await.unwrap();
    let not_prom = Fake::start(|_| raw(200, "text/html", "<html>grafana</html>")).await;
    let err = source(not_prom.url()).preflight().await.unwrap_err();
    assert!(err.to_string().contains("Prometheus API"), "{err}");
}

#[test]
fn setup_errors_are_clear() {
    let base = config("http://127.0.0.1:9".into());
    let no_env = |_: &str| None;
    let mut c = base.clone();
    c.token = Some(Secret::Env("NOPE".into()));
    let err = PrometheusSource::with_env(&c, &no_env).unwrap_err();
    assert!(matches!(err, MetricsError::Setup { .. }));
    assert!(err.to_string().contains("`NOPE` is not set"), "{err}");
    let err = PrometheusSource::with_env(&c, &|_| Some("  ".into())).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("token");
    std::fs::write(&empty, "\n").unwrap();
    c.token = Some(Secret::File(empty));
    let err = PrometheusSource::with_env(&c, &no_env).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    c.token = Some(Secret::File(dir.path().join("missing")));
    let err = PrometheusSource::with_env(&c, &no_env).unwrap_err();
    assert!(err.to_string().contains("cannot read"), "{err}");

    let mut c = base.clone();
    c.headers = vec![("bad header".into(), "x".into())];
    assert!(PrometheusSource::with_env(&c, &no_env).is_err());
    c.headers = vec![("Authorization".into(), "Basic eA==".into())];
    c.token = Some(Secret::Env("T".into()));
    let err = PrometheusSource::with_env(&c, &|_| Some("t".into())).unwrap_err();
    assert!(err.to_string().contains("keep one"), "{err}");

    let mut c = base;
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not a certificate").unwrap();
    c.ca_file = Some(ca);
    assert!(matches!(
        PrometheusSource::with_env(&c, &no_env),
        Err(MetricsError::Setup { .. })
    ));
}

#[test]
fn window_durations_in_promql() {
    assert_eq!(promql_duration(Duration::from_secs(15)), "15s");
    assert_eq!(promql_duration(Duration::from_millis(15_250)), "15250ms");
    assert_eq!(promql_duration(Duration::from_millis(200)), "1s");
    assert_eq!(promql_duration(Duration::ZERO), "1s");
}

#[test]
fn the_example_policy_validates_and_queries_need_the_arm() {
    let text = include_str!("../../../policies/prometheus-demo.toml");
    let policy = crate::policy::parse(text, "policies/prometheus-demo.toml").unwrap();
    let SourceConfig::Prometheus(p) = &policy.source else {
        panic!("{:?}", policy.source)
    };
    assert_eq!(p.variables["job"], Variable::Same("coalmine-demo".into()));
    let shapes: Vec<Shape> = policy.metrics.iter().map(|m| m.shape).collect();
    assert_eq!(shapes, vec![Shape::Counts, Shape::Histogram, Shape::Scalar]);
    PrometheusSource::new(p).unwrap();

    let no_arm = text.replace(
        r#"histogram = 'sum by (le) (increase(coalmine_demo_request_duration_seconds_bucket{job="{{job}}",track="{{arm}}"}"#,
        r#"histogram = 'sum by (le) (increase(coalmine_demo_request_duration_seconds_bucket{job="{{job}}"}"#,
    );
    assert_ne!(no_arm, text);
    let err = crate::policy::parse(&no_arm, "p.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("query has no `{{arm}}`"), "{err}");
    assert_eq!(err.matches("p.toml:").count(), 1, "{err}");
}

#[tokio::test]
async fn per_arm_variables_render_each_arms_value() {
    let fake = Fake::start(buckets(1.0)).await;
    let m = metric(
        DataSpec::Histogram(t(
            r#"sum by (le) (increase(lat_bucket{job="{{job}}",deployment="{{deployment}}"}[{{window}}]))"#,
        )),
        Shape::Histogram,
    );
    let f = source(fake.url()).fetch(&m, &window()).await.unwrap();
    let q: Vec<&str> = f.queries.iter().map(|q| q.query.as_str()).collect();
    assert_eq!(
        q,
        vec![
            exact(
                r#"sum by (le) (increase(lat_bucket{job="api",deployment="checkout-stable"}[15s]))"#
            )
            .as_str(),
            exact(r#"sum by (le) (increase(lat_bucket{job="api",deployment="checkout-v2"}[15s]))"#)
                .as_str(),
        ]
    );
}

#[test]
fn per_arm_variables_in_policies() {
    let text = include_str!("../../../policies/prometheus-demo.toml");
    // A per-arm variable tells the arms apart on its own, without {{arm}}.
    let per_arm = text
        .replace(
            r#"job = "coalmine-demo" "#,
            r#"job = "coalmine-demo"
deploy = { baseline = "baseline", canary = "canary" } "#,
        )
        .replace(r#"track="{{arm}}""#, r#"track="{{deploy}}""#);
    assert!(per_arm.contains("deploy = {") && !per_arm.contains("{{arm}}"));
    let policy = crate::policy::parse(&per_arm, "p.toml").unwrap();
    let SourceConfig::Prometheus(p) = &policy.source else {
        panic!()
    };
    assert_eq!(p.variables["deploy"].value(Arm::Canary), "canary");
    for bad in [
        r#"deploy = { baseline = "a" }"#,
        r#"deploy = { baseline = "a", canary = 2 }"#,
        "deploy = 3",
    ] {
        let text = text.replace(
            r#"job = "coalmine-demo" "#,
            &format!("job = \"x\"\n{bad}\n"),
        );
        let err = crate::policy::parse(&text, "p.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("variable `deploy` must be a string or a table"),
            "{bad}: {err}"
        );
    }
}

#[tokio::test]
async fn a_url_path_prefix_is_kept() {
    let fake = Fake::start(|_| ok(&one("1"))).await;
    source(format!("{}/prometheus", fake.url()))
        .preflight()
        .await
        .unwrap();
    assert_eq!(fake.seen()[0].path, "/prometheus/api/v1/query");
}

/// `q` as the source sends it: `increase()` over the window as an exact counter difference.
fn exact(q: &str) -> String {
    super::exact::exact_increase(q, "15s").into_owned()
}
