//! Policies: one TOML file says what to measure, how to move traffic and when to promote
//! or roll back.
//!
//! Parsing happens in two stages: [`raw`] holds serde structs (unknown fields denied
//! everywhere), [`validate`] turns them into the checked types below and collects every
//! problem as `path:line:col: message`. This module is pure: no I/O, no network; the caller
//! reads the file and reachability checks live in the providers' `preflight`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::analysis::JudgeSpec;
use crate::analysis::observation::Shape;
use crate::model::{Arm, Weight};

pub mod bounds;
pub mod diag;
pub mod gates;
pub mod hooks;
mod keys;
mod lint;
mod providers;
pub mod raw;
pub mod schema;
pub mod template;
pub mod validate;

pub use diag::{Diagnostic, Diagnostics};
pub use providers::WEIGHT_PLACEHOLDERS;
pub use raw::{Advance, Approval, OnExternalChange, OnNoData, Strategy};
pub use template::Template;
pub use validate::{MAX_POLICY_BYTES, parse, parse_bytes, parse_with_warnings};

/// A validated policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Rollout name, used in records and logs.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// False-rollback budget for the whole rollout, split across the sequential metrics.
    pub alpha: f64,
    /// Where decision records go (JSON lines), if the policy names a file.
    pub decisions: Option<PathBuf>,
    /// Steps and timing.
    pub rollout: Rollout,
    /// How traffic is moved.
    pub traffic: TrafficConfig,
    /// Where metrics come from.
    pub source: SourceConfig,
    /// What is compared.
    pub metrics: Vec<MetricConfig>,
    /// Kayenta-style score over the `mann-whitney` metrics (present when there are any).
    pub scoring: Option<crate::analysis::mw_judge::Scoring>,
    /// Smoke checks before traffic moves, actions after the decision.
    pub hooks: Vec<hooks::Hook>,
    /// A webhook told about transitions.
    pub notify: Option<hooks::Notify>,
}

/// `[rollout] baseline_history` when not set: five minutes of the baseline before the
/// first traffic change (tens of thousands of requests at 100 req/s, enough to place the
/// tail bets; recent enough to share the rollout's load).
pub const DEFAULT_BASELINE_HISTORY: Duration = Duration::from_secs(300);

/// Steps and timing of a rollout.
#[derive(Clone, Debug, PartialEq)]
pub struct Rollout {
    /// Canary weights, strictly increasing; reaching 100 % promotes.
    pub steps: Vec<Weight>,
    /// Minimum time at each step.
    pub step_duration: Duration,
    /// Time between analysis ticks.
    pub analysis_interval: Duration,
    /// Requests per arm in a step before it may end well.
    pub min_requests: u64,
    /// Time limit for the whole rollout; then roll back.
    pub deadline: Duration,
    /// How a step ends well.
    pub advance: Advance,
    /// What happens when data is missing for longer than `no_data_limit`.
    pub on_no_data: OnNoData,
    /// Consecutive time without data before `on_no_data` applies.
    pub no_data_limit: Duration,
    /// Consecutive ticks with metric query errors before rolling back (0: never).
    pub error_limit: u32,
    /// Retries of a failed traffic change before giving up.
    pub apply_retries: u32,
    /// Time limit of one traffic change.
    pub apply_timeout: Duration,
    /// Which step changes wait for an operator's approval.
    pub approval: Approval,
    /// Data from the first this-long after the canary first gets traffic is discarded
    /// (warm-up artefacts: cold caches, JIT); the rollout holds meanwhile.
    pub warmup: Duration,
    /// How far back the baseline's latency is read before the first traffic change, for
    /// the all-buckets latency test's first bets (zero: not read).
    pub baseline_history: Duration,
    /// The baseline counts as unhealthy (no comparison is trusted, nothing promotes) when its
    /// own error rate is shown to exceed this (in 0..=1; 1 turns the check off).
    pub baseline_max_error_rate: f64,
    /// What a weight in force that the controller did not apply does.
    pub on_external_change: OnExternalChange,
    /// A step may end before `step_duration` once every metric passes.
    pub early_pass: bool,
    /// Per-step settings from `[[rollout.step]]`, one per entry of `steps` (shorter, or
    /// empty for `steps = [...]`: the missing ones take the rollout's defaults).
    pub plan: Vec<StepSpec>,
    /// `[[rollout.gate]]`: outside systems asked before traffic moves, told after a rollback.
    pub gates: Vec<gates::Gate>,
    /// `post_promotion`: how long the canary is still judged at 100 % (threshold guards) and
    /// rolled back on a Fail before the rollout counts as promoted (zero: not at all).
    pub post_promotion: Duration,
    /// `strategy`: steps compared with the baseline, or blue-green (one switch 0 → 100).
    pub strategy: Strategy,
    /// `keep_blue` (blue-green): how long blue stays deployed after the post-promotion
    /// window, for a fast rollback; then the `blue-retired` gates are told.
    pub keep_blue: Duration,
}

/// A planned wait at the end of a step (`[[rollout.step]] pause`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlannedPause {
    /// Wait this long once the step is otherwise done.
    For(Duration),
    /// Wait until an operator runs `coalmine promote` (the machine's `Event::Release`).
    UntilPromoted,
}

/// One `[[rollout.step]]`'s own settings (its weight is in [`Rollout::steps`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepSpec {
    /// Least analysed time at the weight (`None`: [`Rollout::step_duration`]).
    pub duration: Option<Duration>,
    /// Requests per arm before the step may end well (`None`: [`Rollout::min_requests`]).
    pub min_requests: Option<u64>,
    /// A wait once the step is otherwise done.
    pub pause: Option<PlannedPause>,
    /// False: the step only moves traffic, nothing is judged at its weight.
    pub unanalysed: bool,
    /// `[[rollout.step.gate]]`: asked before traffic moves to this step.
    pub gates: Vec<gates::Gate>,
}

impl Rollout {
    /// Step `i`'s own settings (the defaults when the plan does not say).
    #[must_use]
    pub fn spec(&self, i: usize) -> StepSpec {
        self.plan.get(i).cloned().unwrap_or_default()
    }

    /// Least analysed time of step `i`.
    #[must_use]
    pub fn duration_of(&self, i: usize) -> Duration {
        self.plan
            .get(i)
            .and_then(|s| s.duration)
            .unwrap_or(self.step_duration)
    }

    /// Requests per arm step `i` needs.
    #[must_use]
    pub fn min_requests_of(&self, i: usize) -> u64 {
        self.plan
            .get(i)
            .and_then(|s| s.min_requests)
            .unwrap_or(self.min_requests)
    }

    /// Whether step `i`'s windows are judged (`analysis = false` only moves traffic).
    #[must_use]
    pub fn analysed(&self, i: usize) -> bool {
        !self.plan.get(i).is_some_and(|s| s.unanalysed)
    }

    /// The gates that must say yes before traffic moves to step `i` (`steps.len()` or a
    /// 100 % step: the promotion): `confirm-rollout` before the first, `confirm-step` before
    /// each later step below 100 %, `confirm-promotion` before 100 %, then the step's own.
    #[must_use]
    pub fn gates_before(&self, i: usize) -> Vec<&gates::Gate> {
        use gates::GateKind;
        let promotes = self.steps.get(i).is_none_or(|w| *w >= Weight::FULL);
        let wanted = |k: GateKind| match k {
            GateKind::ConfirmRollout => i == 0,
            GateKind::ConfirmStep => i > 0 && !promotes,
            GateKind::ConfirmPromotion => promotes,
            GateKind::Rollback | GateKind::BlueRetired => false,
        };
        let own = self
            .plan
            .get(i)
            .map(|s| s.gates.as_slice())
            .unwrap_or_default();
        self.gates
            .iter()
            .filter(|g| wanted(g.kind))
            .chain(own)
            .collect()
    }

    /// Whether the strategy is blue-green.
    #[must_use]
    pub fn blue_green(&self) -> bool {
        self.strategy == Strategy::BlueGreen
    }

    /// Whether nothing is judged before the canary gets all traffic: every step below
    /// 100 % has `analysis = false`, or there is none (`steps = [100]`).
    #[must_use]
    pub fn blind(&self) -> bool {
        !self
            .steps
            .iter()
            .enumerate()
            .any(|(i, w)| *w < Weight::FULL && self.analysed(i))
    }
}

impl Rollout {
    /// Defaults for everything but the steps.
    #[must_use]
    pub fn with_steps(steps: Vec<Weight>) -> Self {
        Rollout {
            steps,
            step_duration: Duration::from_secs(300),
            analysis_interval: Duration::from_secs(15),
            min_requests: 100,
            deadline: Duration::from_secs(3600),
            advance: Advance::NoFail,
            on_no_data: OnNoData::Hold,
            no_data_limit: Duration::from_secs(150),
            error_limit: 10,
            apply_retries: 5,
            apply_timeout: Duration::from_secs(10),
            approval: Approval::None,
            warmup: Duration::ZERO,
            baseline_history: DEFAULT_BASELINE_HISTORY,
            baseline_max_error_rate: 0.1,
            on_external_change: OnExternalChange::Pause,
            early_pass: false,
            plan: Vec::new(),
            gates: Vec::new(),
            post_promotion: Duration::ZERO,
            strategy: Strategy::Canary,
            keep_blue: Duration::ZERO,
        }
    }
}

/// The built-in weighted reverse proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Address the proxy listens on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Baseline upstream, `http://host:port`.
    pub baseline: Upstream,
    /// Canary upstream.
    pub canary: Upstream,
    /// Time limit for the upstream's response headers, and for each wait for more of its
    /// body; either timeout counts as an error.
    pub upstream_timeout: Duration,
    /// Time a client has for a whole request head (from its connection's accept, or from
    /// the first byte of its next request on a kept-alive connection).
    pub header_read_timeout: Duration,
    /// Time a kept-alive client connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Request headers a client may send; more is a 431.
    pub max_headers: usize,
    /// How `run` checks that the canary answers before it moves any traffic to it.
    pub readiness: Readiness,
}

impl ProxyConfig {
    /// A proxy on `listen` in front of `baseline` and `canary`, every other key at its
    /// default (as if the policy left it out).
    #[must_use]
    pub fn new(listen: SocketAddr, baseline: Upstream, canary: Upstream) -> Self {
        ProxyConfig {
            listen,
            baseline,
            canary,
            upstream_timeout: Duration::from_secs(30),
            header_read_timeout: crate::net::DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: crate::net::DEFAULT_IDLE_TIMEOUT,
            max_headers: crate::net::DEFAULT_MAX_HEADERS,
            readiness: Readiness::default(),
        }
    }
}

/// The canary's HTTP readiness probe (`[traffic] readiness_*` of the built-in proxy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    /// Path requested from the canary, e.g. `/` or `/healthz`.
    pub path: String,
    /// Statuses that mean ready (empty: any 2xx).
    pub statuses: Vec<u16>,
    /// Time limit of one probe.
    pub timeout: Duration,
    /// Probes before giving up (one second apart).
    pub attempts: u32,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            path: "/".to_string(),
            statuses: Vec::new(),
            timeout: Duration::from_secs(2),
            attempts: 3,
        }
    }
}

/// An HTTP upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// As written, e.g. `http://127.0.0.1:9001`.
    pub url: String,
    /// `host:port`.
    pub authority: String,
}

/// Where HAProxy's runtime API listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HaproxySocket {
    /// A unix socket path (`stats socket /run/haproxy/admin.sock level admin`).
    Unix(PathBuf),
    /// A TCP `host:port` (`stats socket ipv4@127.0.0.1:9999 level admin`).
    Tcp(String),
}

impl std::fmt::Display for HaproxySocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HaproxySocket::Unix(p) => write!(f, "{}", p.display()),
            HaproxySocket::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// `[traffic] type = "haproxy"`: two servers' weights through the runtime API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaproxyConfig {
    /// The admin socket.
    pub socket: HaproxySocket,
    /// The backend holding both servers.
    pub backend: String,
    /// The baseline server's name in the backend.
    pub baseline: String,
    /// The canary server's name in the backend.
    pub canary: String,
    /// Time limit of one runtime-API command.
    pub timeout: Duration,
}

/// `[traffic] type = "nginx"`: a weighted upstream include file, tested and reloaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NginxConfig {
    /// The include file coalmine owns (the `server` lines of one upstream).
    pub file: PathBuf,
    /// The baseline server's address, as nginx's `server` directive takes it.
    pub baseline: String,
    /// The canary server's address.
    pub canary: String,
    /// Extra parameters for both `server` lines (e.g. `max_fails=3 fail_timeout=10s`).
    pub server_params: Option<String>,
    /// Configuration test command (argv).
    pub test_command: Vec<String>,
    /// Graceful reload command (argv).
    pub reload_command: Vec<String>,
    /// Time limit of each command.
    pub timeout: Duration,
}

/// `[traffic] type = "exec"`: a program run with the weight as an argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecConfig {
    /// Program and arguments; placeholders `{{weight}}`, `{{percent}}`, `{{fraction}}`.
    pub command: Vec<Template>,
    /// Program printing the percentage in force on stdout.
    pub read_command: Option<Vec<String>>,
    /// Time limit of one run.
    pub timeout: Duration,
    /// Finest step the program takes.
    pub resolution: Weight,
    /// Exit codes that mean "try again later" (all other non-zero codes are permanent).
    pub transient_exit_codes: Vec<i32>,
    /// Variables of coalmine's environment passed to the programs, beyond the few every
    /// program gets (see `traffic::exec::INHERITED`); never a token variable.
    pub env: Vec<String>,
}

/// Read-back of the `http` provider: GET a URL, take a number (percent) at a JSON pointer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRead {
    /// The URL to GET.
    pub url: String,
    /// JSON pointer (RFC 6901) to the percentage, e.g. `/rollout/percentage`.
    pub pointer: String,
}

/// `[traffic] type = "http"`: a templated request to a feature-flag service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// HTTP method (upper case).
    pub method: String,
    /// URL template.
    pub url: Template,
    /// Header templates.
    pub headers: Vec<(String, Template)>,
    /// JSON body template.
    pub body: Option<Template>,
    /// Token sent in `token_header`.
    pub token: Option<Secret>,
    /// Header carrying the token (default `Authorization`).
    pub token_header: String,
    /// Text before the token (default `Bearer `).
    pub token_prefix: String,
    /// Statuses that mean success (empty: any 2xx).
    pub success_statuses: Vec<u16>,
    /// Time limit of one request.
    pub timeout: Duration,
    /// Finest step the service takes.
    pub resolution: Weight,
    /// Optional read-back.
    pub read: Option<HttpRead>,
}

/// `[traffic] type = "gateway-api"`: Kubernetes HTTPRoute backendRef weights.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayApiConfig {
    /// The HTTPRoute's namespace.
    pub namespace: String,
    /// The HTTPRoute's name.
    pub route: String,
    /// Index of the rule in `spec.rules`.
    pub rule: usize,
    /// The baseline backendRef's name.
    pub baseline: String,
    /// The canary backendRef's name.
    pub canary: String,
    /// Kubeconfig file (default: `KUBECONFIG`, `~/.kube/config`, then in-cluster).
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: the current one).
    pub context: Option<String>,
    /// Time limit of one API call.
    pub timeout: Duration,
}

/// How traffic is moved (`[traffic] type = ...`).
#[derive(Clone, Debug, PartialEq)]
pub enum TrafficConfig {
    /// The built-in weighted reverse proxy.
    Proxy(ProxyConfig),
    /// HAProxy's runtime API.
    Haproxy(HaproxyConfig),
    /// An nginx upstream include file.
    Nginx(NginxConfig),
    /// A program.
    Exec(ExecConfig),
    /// An HTTP request (feature flags).
    Http(HttpConfig),
    /// Kubernetes Gateway API.
    GatewayApi(GatewayApiConfig),
}

impl TrafficConfig {
    /// The `type` name.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            TrafficConfig::Proxy(_) => "proxy",
            TrafficConfig::Haproxy(_) => "haproxy",
            TrafficConfig::Nginx(_) => "nginx",
            TrafficConfig::Exec(_) => "exec",
            TrafficConfig::Http(_) => "http",
            TrafficConfig::GatewayApi(_) => "gateway-api",
        }
    }
}

/// Where a bearer token comes from (never inline in a policy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Secret {
    /// An environment variable's name.
    Env(String),
    /// A file's path; surrounding whitespace is trimmed.
    File(PathBuf),
}

/// A query template variable (`[metrics.variables]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Variable {
    /// The same value for both arms, e.g. a job or namespace.
    Same(String),
    /// One value per arm, e.g. each arm's deployment label when it is not literally
    /// `baseline`/`canary`.
    PerArm {
        /// The baseline's value.
        baseline: String,
        /// The canary's value.
        canary: String,
    },
}

impl Variable {
    /// The value for `arm`.
    #[must_use]
    pub fn value(&self, arm: Arm) -> &str {
        match (self, arm) {
            (Variable::Same(v), _) => v,
            (Variable::PerArm { baseline, .. }, Arm::Baseline) => baseline,
            (Variable::PerArm { canary, .. }, Arm::Canary) => canary,
        }
    }

    /// Whether the value differs by arm.
    #[must_use]
    pub fn is_per_arm(&self) -> bool {
        matches!(self, Variable::PerArm { .. })
    }
}

/// `[metrics] type = "prometheus"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrometheusConfig {
    /// Base URL of the Prometheus HTTP API, e.g. `http://127.0.0.1:9090`.
    pub url: String,
    /// Time limit of one query.
    pub timeout: Duration,
    /// Bearer token.
    pub token: Option<Secret>,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Variables for query templates.
    pub variables: BTreeMap<String, Variable>,
    /// Extra CA certificate (PEM) for TLS.
    pub ca_file: Option<PathBuf>,
    /// Resolution of range queries for `series` metrics (default: the window's length,
    /// about the analysis interval).
    pub series_step: Option<Duration>,
}

/// Where metrics come from (`[metrics] type = ...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceConfig {
    /// The built-in proxy's own counters and latency histograms.
    Builtin,
    /// A Prometheus-compatible HTTP API.
    Prometheus(PrometheusConfig),
    /// HAProxy's per-server counters (`show stat`), read from the `[traffic]` HAProxy.
    Haproxy(HaproxyConfig),
}

impl SourceConfig {
    /// The `type` name.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Builtin => "builtin",
            SourceConfig::Prometheus(_) => "prometheus",
            SourceConfig::Haproxy(_) => "haproxy",
        }
    }
}

/// A signal of the built-in source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BuiltinSignal {
    /// 5xx responses and upstream failures of requests.
    Errors,
    /// Response latency.
    Latency,
}

/// What to fetch for a metric.
#[derive(Clone, Debug, PartialEq)]
pub enum DataSpec {
    /// A built-in signal, in the shape the judge takes.
    Builtin(BuiltinSignal),
    /// An events query and a trials query per arm.
    Counts {
        /// Events, e.g. `sum(increase(http_requests_total{code=~"5.."}[{{window}}]))`.
        events: Template,
        /// Trials, e.g. `sum(increase(http_requests_total[{{window}}]))`.
        trials: Template,
    },
    /// `sum by (le)` of bucket increases per arm.
    Histogram(Template),
    /// A range query per arm.
    Series(Template),
    /// One value for the canary (threshold checks).
    Scalar(Template),
}

/// One metric: what to fetch and how to judge it.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricConfig {
    /// Unique name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// What to fetch.
    pub data: DataSpec,
    /// The shape the source must deliver.
    pub shape: Shape,
    /// How to judge it.
    pub judge: JudgeSpec,
    /// Recorded and reported, never acted on.
    pub dry_run: bool,
}

impl Policy {
    /// Whether any metric reports request counts (counts or histograms), so that
    /// `[rollout] min_requests` applies.
    #[must_use]
    pub fn counts_requests(&self) -> bool {
        self.metrics
            .iter()
            .any(|m| matches!(m.shape, Shape::Counts | Shape::Histogram))
    }

    /// Settings that are valid but cannot do what they seem to say (printed by `validate`
    /// and `run`; never fatal).
    #[must_use]
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.rollout.min_requests > 0 && !self.counts_requests() {
            out.push(format!(
                "min_requests = {} does not apply: no metric counts requests (none gives counts \
                 or a histogram), so steps end on step_duration{}",
                self.rollout.min_requests,
                if self.scoring.is_some() {
                    " and the score's [scoring] min_points"
                } else {
                    ""
                }
            ));
        }
        out
    }
}
