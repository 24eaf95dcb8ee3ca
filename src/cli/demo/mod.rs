//! `coalmine demo`: the embedded default. Starts a baseline and a canary service, the
//! built-in proxy and a load generator in-process, and runs one rollout of the demo policy.

pub mod services;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::cli::display::output;
use crate::cli::run::{OutputArgs, Presentation, drive, load, setup};
use crate::cli::{EXIT_FAILURE, EXIT_INVALID};
use crate::demo::{DEMO_POLICY, Scenario, behaviours, load::Load, service::Service, wire};
use crate::policy;

/// Arguments of `coalmine demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// What the canary does wrong.
    #[arg(long, value_enum, default_value_t = Scenario::Healthy)]
    pub scenario: Scenario,
    /// Requests per second sent through the proxy.
    #[arg(long, default_value_t = 400)]
    pub rps: u32,
    /// Seed for the services' errors and latencies and the proxy's routing.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Use this policy instead of the embedded `policies/demo.toml` (its traffic section is
    /// rewired to the demo's own services).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Output options.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Runs `coalmine demo`.
pub(crate) async fn main(args: DemoArgs) -> u8 {
    let origin = args.policy.as_ref().map_or_else(
        || "policies/demo.toml".to_string(),
        |p| crate::policy::diag::escape_controls(&p.display().to_string()).into_owned(),
    );
    let mut policy = match &args.policy {
        Some(p) => match load(p) {
            Ok(p) => p,
            Err(code) => return code,
        },
        None => match policy::parse(DEMO_POLICY, "policies/demo.toml") {
            Ok(p) => p,
            Err(d) => {
                errln!("{d}");
                return EXIT_INVALID;
            }
        },
    };
    let (b, c) = behaviours(args.scenario, args.seed);
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let (baseline, canary) = match (Service::start(any, b).await, Service::start(any, c).await) {
        (Ok(b), Ok(c)) => (b, c),
        (Err(e), _) | (_, Err(e)) => {
            output::error(&format!(
                "cannot start the demo's services on 127.0.0.1: {e}; check that loopback \
                 ports can be bound"
            ));
            return EXIT_FAILURE;
        }
    };
    if let Err(e) = wire(&mut policy, baseline.addr(), canary.addr()) {
        output::error(&format!(
            "{origin}: {e}; give --policy a policy for the built-in proxy (`coalmine init` \
             writes one)"
        ));
        return EXIT_INVALID;
    }
    if !args.output.quiet {
        errln!(
            "coalmine demo: scenario {:?}; baseline http://{}, canary http://{}; {} req/s",
            args.scenario,
            baseline.addr(),
            canary.addr(),
            args.rps
        );
    }
    let (built, source) = match setup(&policy, &origin, Some(args.seed)).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let Some(proxy_addr) = built
        .proxy
        .as_ref()
        .map(crate::traffic::proxy::ProxyHandle::addr)
    else {
        output::error(&format!(
            "{origin}: the demo needs [traffic] type = \"proxy\"; give --policy a policy for \
             the built-in proxy (`coalmine init` writes one)"
        ));
        return EXIT_INVALID;
    };
    let load = Load::start(proxy_addr, args.rps, 512);
    let how = Presentation {
        origin,
        status_addr: args.output.status_addr,
        decisions: args.output.decisions.clone(),
        json: args.output.json,
        quiet: args.output.quiet,
        extra_json: Some(serde_json::json!({"scenario": args.scenario})),
        durable: None,
    };
    let code = drive(&policy, &built, &source, how).await;
    let stats = load.stop().await;
    if let Some(p) = built.proxy {
        p.shutdown().await;
    }
    if !args.output.quiet {
        errln!(
            "load: {} sent, {} ok, {} 5xx, {} failed, {} skipped",
            stats.sent,
            stats.ok,
            stats.server_errors,
            stats.failed,
            stats.skipped
        );
    }
    baseline.stop();
    canary.stop();
    code
}
