//! `coalmine init`: a commented starting policy for one traffic provider and one metrics
//! source, which `coalmine validate` accepts as it is. It carries the recommended shape of
//! `policies/default.toml`: a sequential comparison of errors (and of latency where the source
//! has it) with most of the false-rollback budget on errors, and the absolute error-rate guard
//! that acts whatever the baseline does.

use std::io::Write as _;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::cli::display::output::{self, write_stdout};
use crate::cli::{EXIT_FAILURE, EXIT_INVALID, EXIT_OK};

/// The traffic providers `init` writes a section for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Provider {
    /// coalmine's own weighted reverse proxy (serves while `coalmine run` runs).
    Proxy,
    /// HAProxy's runtime API (server weights of one backend).
    Haproxy,
    /// nginx: a weighted upstream include file, tested and reloaded.
    Nginx,
    /// Your program, given the weight as an argument.
    Exec,
    /// A templated HTTP request to a feature-flag service.
    Http,
    /// Kubernetes Gateway API: HTTPRoute backendRef weights.
    GatewayApi,
}

/// The metrics sources `init` writes a section for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Metrics {
    /// The built-in proxy's own counters and latency histograms (needs --provider proxy).
    Builtin,
    /// PromQL queries per arm against a Prometheus-compatible API.
    Prometheus,
    /// HAProxy's per-server counters (needs --provider haproxy).
    Haproxy,
}

/// Arguments of `coalmine init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// How traffic is moved between the baseline and the canary.
    #[arg(long, value_enum, default_value_t = Provider::Proxy)]
    pub provider: Provider,
    /// Where metrics come from. Default: builtin with the proxy, haproxy with HAProxy,
    /// prometheus otherwise.
    #[arg(long, value_enum)]
    pub metrics: Option<Metrics>,
    /// The rollout's name (in records, logs and notifications). Default: the output file's
    /// name without its extension, else "my-service".
    #[arg(long)]
    pub name: Option<String>,
    /// Write the policy to this file instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Overwrite the output file if it exists.
    #[arg(long)]
    pub force: bool,
}

impl Provider {
    fn word(self) -> &'static str {
        match self {
            Provider::Proxy => "proxy",
            Provider::Haproxy => "haproxy",
            Provider::Nginx => "nginx",
            Provider::Exec => "exec",
            Provider::Http => "http",
            Provider::GatewayApi => "gateway-api",
        }
    }
}

impl Metrics {
    fn word(self) -> &'static str {
        match self {
            Metrics::Builtin => "builtin",
            Metrics::Prometheus => "prometheus",
            Metrics::Haproxy => "haproxy",
        }
    }

    /// The source `init` picks for `p` when `--metrics` is not given.
    #[must_use]
    pub fn default_for(p: Provider) -> Metrics {
        match p {
            Provider::Proxy => Metrics::Builtin,
            Provider::Haproxy => Metrics::Haproxy,
            _ => Metrics::Prometheus,
        }
    }
}

/// Why a provider and a source do not go together, as the sentence `init` prints.
#[must_use]
pub fn refusal(p: Provider, m: Metrics) -> Option<String> {
    match (p, m) {
        (Provider::Proxy, Metrics::Builtin)
        | (Provider::Haproxy, Metrics::Haproxy)
        | (_, Metrics::Prometheus) => None,
        (_, Metrics::Builtin) => Some(format!(
            "--metrics builtin reads the built-in proxy's own counters, so it needs --provider \
             proxy, not {}; use --metrics prometheus{}",
            p.word(),
            if p == Provider::Haproxy {
                " or --metrics haproxy"
            } else {
                ""
            }
        )),
        (_, Metrics::Haproxy) => Some(format!(
            "--metrics haproxy reads HAProxy's per-server counters through the runtime API of \
             [traffic] type = \"haproxy\", so it needs --provider haproxy, not {}; use \
             --metrics prometheus{}",
            p.word(),
            if p == Provider::Proxy {
                " or --metrics builtin"
            } else {
                ""
            }
        )),
    }
}

const HEAD: &str = r#"# A coalmine policy, written by `coalmine init --provider {provider} --metrics {metrics}`.
# Check it with `coalmine validate FILE` (add --preflight to reach the provider and the
# metrics source), run it with `coalmine run FILE`. Every key and its default: the README's
# policy reference, or `coalmine schema` (editors: see "Editor support" in the README).
name = {name}
alpha = 0.05                      # false-rollback budget of the whole rollout, in (0, 0.5]
# decisions = "decisions.jsonl"   # append the decision records here (or --decisions FILE)

[rollout]
steps = [5, 25, 100]              # percent of requests to the canary; reaching 100 promotes
step_duration = "5m"              # minimum time at each step
analysis_interval = "15s"         # one analysis tick, and one decision record, per interval
min_requests = 100                # requests per arm and step before a step may end well
deadline = "30m"                  # not promoted by then: roll back
on_no_data = "hold"               # missing data never promotes; "rollback" gives up at
                                  # no_data_limit (default 10 × analysis_interval)
on_external_change = "pause"      # someone else changed the weight: touch nothing, notify,
                                  # wait for an operator (needs --status-addr to resume)
"#;

const PROXY: &str = r#"
[traffic]
type = "proxy"                    # coalmine's own weighted reverse proxy, serving while
                                  # `coalmine run` runs: send the clients here
listen = "127.0.0.1:8080"
baseline = "http://127.0.0.1:9001"   # the version in production
canary = "http://127.0.0.1:9002"     # the new version
readiness_path = "/"              # GET before any traffic moves; the canary must answer 2xx
upstream_timeout = "30s"          # a slower response (or body) counts as an error
"#;

const HAPROXY: &str = r#"
[traffic]
type = "haproxy"                  # server weights of one backend, through the runtime API;
                                  # docs/providers.md shows the haproxy.cfg this expects
socket = "/run/haproxy/admin.sock"   # `stats socket ... level admin`; or "ipv4@127.0.0.1:9999"
backend = "my-service"
baseline = "stable"               # server names in that backend
canary = "canary"
timeout = "5s"                    # per runtime-API command
"#;

const NGINX: &str = r#"
[traffic]
type = "nginx"                    # the two server lines of an upstream, in an include file;
                                  # docs/providers.md shows the nginx.conf side
file = "/etc/nginx/coalmine/my-service.conf"   # included inside `upstream my-service { ... }`
baseline = "127.0.0.1:9001"
canary = "127.0.0.1:9002"
test_command = ["nginx", "-t"]    # run before each reload; a failure changes nothing
reload_command = ["nginx", "-s", "reload"]
timeout = "30s"
"#;

const EXEC: &str = r#"
[traffic]
type = "exec"                     # your program sets the weight (an argv list, never a shell
                                  # string); exit 0 is success
command = ["/usr/local/bin/set-canary-weight", "--percent", "{{percent}}"]
read_command = ["/usr/local/bin/get-canary-weight"]   # prints the percentage in force
timeout = "30s"
resolution = 1                    # the program takes whole percentages
transient_exit_codes = [75]       # EX_TEMPFAIL: try again; any other non-zero exit rolls back
"#;

const HTTP: &str = r#"
[traffic]
type = "http"                     # a request to a feature-flag service per weight change
method = "PATCH"
url = "https://flags.example.com/api/v1/flags/my-service-v2"
body = '{"rollout": {"percentage": {{percent}}}}'
token_env = "FLAGS_API_TOKEN"     # bearer token from this variable; never write it here
success_statuses = [200, 204]
timeout = "10s"
resolution = 1                    # the service takes whole percentages
read_url = "https://flags.example.com/api/v1/flags/my-service-v2"
read_pointer = "/rollout/percentage"   # where the percentage in force is in its answer
"#;

const GATEWAY_API: &str = r#"
[traffic]
type = "gateway-api"              # the weights of two backendRefs of one HTTPRoute rule
namespace = "default"
route = "my-service"              # the HTTPRoute's name
rule = 0                          # index in spec.rules
baseline = "my-service-stable"    # backendRef names (Services)
canary = "my-service-canary"
# kubeconfig = "/path/to/kubeconfig"   # default: KUBECONFIG, ~/.kube/config, then in-cluster
timeout = "10s"
"#;

const BUILTIN: &str = r#"
[metrics]
type = "builtin"                  # the proxy's own counters and latency histograms per arm

[[metric]]
name = "error-rate"
builtin = "errors"                # 5xx, upstream failures, bodies broken after the headers
judge = "sequential"              # anytime-valid test: rolls back as soon as the evidence is clear
allowed_ratio = 1.0               # any increase of the error rate fails
alpha = 0.04                      # errors, the primary guardrail, get most of the budget

[[metric]]
name = "latency"
builtin = "latency"               # to the last byte, successes only
judge = "sequential"              # slow-request events above the baseline's p50, p90, p99
allowed_ratio = 1.1               # the canary may be up to 10% slower
alpha = 0.01

{guard}[[metric]]
name = "error-ceiling"
builtin = "errors"
judge = "threshold"
max = 0.1
min_trials = 50
"#;

const PROMETHEUS: &str = r#"
[metrics]
type = "prometheus"               # PromQL per arm: {{arm}} is "baseline" or "canary" and
                                  # {{window}} the analysis window; a label must tell the
                                  # arms' series apart (here `track`)
url = "http://127.0.0.1:9090"
timeout = "10s"
# token_env = "PROM_TOKEN"        # bearer token from this variable (or token_file)

[metrics.variables]
job = "my-service"                # {{job}} in the queries below

[[metric]]
name = "error-rate"
judge = "sequential"              # anytime-valid test: rolls back as soon as the evidence is clear
events = 'sum(increase(http_requests_total{job="{{job}}",track="{{arm}}",code=~"5.."}[{{window}}])) or vector(0)'
trials = 'sum(increase(http_requests_total{job="{{job}}",track="{{arm}}"}[{{window}}]))'
allowed_ratio = 1.0               # any increase of the error rate fails
alpha = 0.04                      # errors, the primary guardrail, get most of the budget

[[metric]]
name = "latency"
judge = "sequential"              # slow-request events above the baseline's p50, p90, p99
histogram = 'sum by (le) (increase(http_request_duration_seconds_bucket{job="{{job}}",track="{{arm}}"}[{{window}}]))'
allowed_ratio = 1.1               # the canary may be up to 10% slower
alpha = 0.01

{guard}[[metric]]
name = "error-ceiling"
judge = "threshold"
events = 'sum(increase(http_requests_total{job="{{job}}",track="{{arm}}",code=~"5.."}[{{window}}])) or vector(0)'
trials = 'sum(increase(http_requests_total{job="{{job}}",track="{{arm}}"}[{{window}}]))'
max = 0.1                         # judged on the canary's counts alone
min_trials = 50
"#;

const HAPROXY_STATS: &str = r#"
[metrics]
type = "haproxy"                  # `show stat` counters of the two servers above

[[metric]]
name = "error-rate"
builtin = "errors"                # 5xx and failed responses per request, per server
judge = "sequential"              # anytime-valid test: rolls back as soon as the evidence is clear
allowed_ratio = 1.0               # any increase of the error rate fails

{guard}[[metric]]
name = "error-ceiling"
builtin = "errors"
judge = "threshold"
max = 0.1
min_trials = 50
"#;

/// The comment above the absolute error-rate guard of every source.
const GUARD: &str = r#"# The absolute guard: the comparison with the baseline says "no worse than the baseline";
# this says "not bad, whatever the baseline does" (it still acts while the baseline is
# unhealthy, when no comparison is trusted). More than 10% errors in one interval of at least
# 50 canary requests rolls back at once. It spends none of alpha.
"#;

/// The policy text `init` writes for `p` and `m` (which must go together: see [`refusal`]).
#[must_use]
pub fn policy_text(p: Provider, m: Metrics, name: &str) -> String {
    let quoted = toml::Value::String(name.to_string()).to_string();
    let mut out = HEAD
        .replace("{provider}", p.word())
        .replace("{metrics}", m.word())
        .replace("{name}", &quoted);
    out.push_str(match p {
        Provider::Proxy => PROXY,
        Provider::Haproxy => HAPROXY,
        Provider::Nginx => NGINX,
        Provider::Exec => EXEC,
        Provider::Http => HTTP,
        Provider::GatewayApi => GATEWAY_API,
    });
    let metrics = match m {
        Metrics::Builtin => BUILTIN,
        Metrics::Prometheus => PROMETHEUS,
        Metrics::Haproxy => HAPROXY_STATS,
    };
    out.push_str(&metrics.replace("{guard}", GUARD));
    out
}

/// Runs `coalmine init`.
#[must_use]
pub fn main(args: &InitArgs) -> u8 {
    let metrics = args
        .metrics
        .unwrap_or_else(|| Metrics::default_for(args.provider));
    if let Some(why) = refusal(args.provider, metrics) {
        output::error(&why);
        return EXIT_INVALID;
    }
    let name = args.name.clone().unwrap_or_else(|| {
        args.output
            .as_ref()
            .and_then(|o| o.file_stem())
            .map_or_else(
                || "my-service".to_string(),
                |s| s.to_string_lossy().into_owned(),
            )
    });
    if name.trim().is_empty() {
        output::error("--name must not be empty: give the rollout a name, e.g. --name checkout");
        return EXIT_INVALID;
    }
    let text = policy_text(args.provider, metrics, &name);
    // What is written is checked first: `init` never hands out a policy `validate` refuses.
    if let Err(d) = crate::policy::parse(&text, "init") {
        output::error(&format!(
            "the policy init wrote does not validate (a bug in coalmine, please report it): {d}"
        ));
        return EXIT_FAILURE;
    }
    let Some(path) = &args.output else {
        return match write_stdout(text.as_bytes()) {
            Ok(()) => EXIT_OK,
            Err(code) => code,
        };
    };
    let shown = crate::policy::diag::escape_controls(&path.display().to_string()).into_owned();
    let mut open = std::fs::OpenOptions::new();
    open.write(true);
    if args.force {
        open.create(true).truncate(true);
    } else {
        open.create_new(true);
    }
    let written = open
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()));
    match written {
        Ok(()) => {
            errln!(
                "coalmine: wrote {shown} ({} traffic, {} metrics); check it with `coalmine validate {shown}`",
                args.provider.word(),
                metrics.word()
            );
            EXIT_OK
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            output::error(&format!(
                "{shown} already exists; pass --force to overwrite it, or choose another -o FILE"
            ));
            EXIT_INVALID
        }
        Err(e) => {
            output::error(&format!(
                "cannot write {shown}: {e}; check that its directory exists and is writable"
            ));
            EXIT_INVALID
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_accepted_combination_validates_without_warnings() {
        let mut accepted = 0;
        for p in Provider::value_variants() {
            for m in Metrics::value_variants() {
                if refusal(*p, *m).is_some() {
                    continue;
                }
                accepted += 1;
                let text = policy_text(*p, *m, "svc");
                match crate::policy::parse_with_warnings(&text, "init.toml") {
                    Ok((policy, warnings)) => {
                        assert!(
                            warnings.is_empty() && policy.warnings().is_empty(),
                            "{p:?} + {m:?} warns: {warnings} {:?}",
                            policy.warnings()
                        );
                        assert_eq!(policy.traffic.kind(), p.word());
                        assert_eq!(policy.source.kind(), m.word());
                        assert!(
                            policy.metrics.iter().any(|x| x.name == "error-ceiling"),
                            "{p:?} + {m:?}: the absolute error-rate guard"
                        );
                    }
                    Err(d) => panic!("{p:?} + {m:?} does not validate:\n{d}\n{text}"),
                }
            }
        }
        // Six providers with prometheus, the proxy with builtin, HAProxy with its counters.
        assert_eq!(accepted, 8);
    }

    #[test]
    fn refusals_name_the_flag_and_the_way_out() {
        let r = refusal(Provider::Nginx, Metrics::Builtin).unwrap();
        assert!(
            r.contains("--provider proxy") && r.contains("--metrics prometheus"),
            "{r}"
        );
        let r = refusal(Provider::Proxy, Metrics::Haproxy).unwrap();
        assert!(
            r.contains("--provider haproxy") && r.contains("--metrics builtin"),
            "{r}"
        );
        assert!(refusal(Provider::Haproxy, Metrics::Haproxy).is_none());
    }

    #[test]
    fn names_are_quoted_as_toml() {
        let text = policy_text(Provider::Proxy, Metrics::Builtin, "a \"b\" \\ c");
        let p = crate::policy::parse(&text, "init.toml").unwrap();
        assert_eq!(p.name, "a \"b\" \\ c");
    }
}
