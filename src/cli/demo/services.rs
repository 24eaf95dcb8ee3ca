//! `coalmine demo-services`: the demo's baseline and canary services on their own, with a
//! load generator, so a real Prometheus can scrape them while `coalmine run` drives a
//! rollout through its built-in proxy (see `policies/prometheus-demo.toml`).

use std::net::SocketAddr;

use clap::Args;

use crate::cli::{EXIT_FAILURE, EXIT_OK};
use crate::demo::{Scenario, behaviours, load::Load, service::Service};

/// Arguments of `coalmine demo-services`.
#[derive(Debug, Args)]
pub struct DemoServicesArgs {
    /// What the canary does wrong.
    #[arg(long, value_enum, default_value_t = Scenario::Healthy)]
    pub scenario: Scenario,
    /// Address of the baseline service (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:18081")]
    pub baseline: SocketAddr,
    /// Address of the canary service (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:18082")]
    pub canary: SocketAddr,
    /// Send load to this address: the built-in proxy of `coalmine run` (its `listen`).
    /// Requests fail, and are counted, while nothing listens there.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:18080")]
    pub load_to: SocketAddr,
    /// Requests per second sent to `--load-to` (0: no load).
    #[arg(long, default_value_t = 400)]
    pub rps: u32,
    /// Bucket bounds (seconds) of the services' latency histograms, e.g.
    /// `0.005,0.01,0.02,0.04,0.08` for a classic histogram doubling at each bound (default:
    /// 18 bounds from 5 ms to 10 s, at most 1.5× apart below 100 ms).
    #[arg(long, value_name = "SECONDS,...", value_delimiter = ',')]
    pub buckets: Option<Vec<f64>>,
    /// Seed for the services' errors and latencies.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Runs `coalmine demo-services` until Ctrl-C or SIGTERM.
pub(crate) async fn main(args: DemoServicesArgs) -> u8 {
    let (b, c) = behaviours(args.scenario, args.seed);
    let bounds = args
        .buckets
        .unwrap_or_else(|| crate::demo::service::METRIC_BUCKETS.to_vec());
    if let Some(problem) = crate::demo::service::check_buckets(&bounds) {
        errln!("error: --buckets: {problem}; write e.g. --buckets 0.005,0.01,0.02,0.04");
        return crate::cli::EXIT_INVALID;
    }
    let (baseline, canary) = match (
        Service::start_with_buckets(args.baseline, b, bounds.clone()).await,
        Service::start_with_buckets(args.canary, c, bounds).await,
    ) {
        (Ok(b), Ok(c)) => (b, c),
        (Err(e), _) | (_, Err(e)) => {
            crate::cli::display::output::error(&format!(
                "cannot start the demo's services on --baseline {} and --canary {}: {e}; choose \
                 free ports",
                args.baseline, args.canary
            ));
            return EXIT_FAILURE;
        }
    };
    // Machine-readable lines on stdout (tests and scripts read them), the rest on stderr.
    outln!("baseline http://{}", baseline.addr());
    outln!("canary http://{}", canary.addr());
    outln!("load http://{} {} req/s", args.load_to, args.rps);
    errln!(
        "coalmine demo-services: scenario {:?}; metrics at http://{}/metrics and http://{}/metrics; Ctrl-C stops",
        args.scenario,
        baseline.addr(),
        canary.addr()
    );
    let load = (args.rps > 0).then(|| Load::start(args.load_to, args.rps, 512));
    let (tx, mut stop) = tokio::sync::watch::channel(None);
    crate::cli::signals::stop_on_signal(tx);
    let _ = stop.changed().await;
    if let Some(load) = load {
        let s = load.stop().await;
        errln!(
            "load: {} sent, {} ok, {} 5xx, {} failed, {} skipped",
            s.sent,
            s.ok,
            s.server_errors,
            s.failed,
            s.skipped
        );
    }
    baseline.stop();
    canary.stop();
    EXIT_OK
}
