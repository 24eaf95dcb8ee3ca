//! Command-line interface: clap definitions and the glue from commands to the library.
//!
//! Exit codes everywhere: 0 promoted (or success), 1 rolled back, 2 invalid input (policy,
//! files or usage), 3 operational failure.

use clap::{Parser, Subcommand};

/// `println!` that never panics: when stdout is closed (`coalmine run --json | true`) the
/// output is lost, not the rollout's exit code.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

/// `eprintln!` that never panics: after a hangup (a closed SSH session) stderr may be gone,
/// and the rollback must still run to its end.
macro_rules! errln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($t)*);
    }};
}

/// `eprint!` that never panics (see [`errln`]).
macro_rules! err {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr().lock(), $($t)*);
    }};
}

pub mod authoring;
pub mod backtest;
pub mod control;
pub mod demo;
pub mod display;
pub mod judge;
pub mod report;
pub mod run;
pub mod serve;
pub mod signals;
pub mod status;

use authoring::{completions, init, schema, validate};
use display::output;

/// Exit code: the canary was promoted (or the command succeeded).
pub const EXIT_OK: u8 = 0;
/// Exit code: the canary was rolled back.
pub const EXIT_ROLLED_BACK: u8 = 1;
/// Exit code: invalid input (policy, file or usage).
pub const EXIT_INVALID: u8 = 2;
/// Exit code: operational failure (traffic could not be moved, a service was unreachable).
pub const EXIT_FAILURE: u8 = 3;

const EXIT_CODES: &str = "\
Exit codes:
  0  promoted (or the command succeeded)
  1  rolled back
  2  invalid input: policy, files or usage
  3  operational failure: the provider, the metrics source or the canary was not ready
     (no traffic was moved), or traffic could not be moved";

/// coalmine: canary analysis with metrics-driven auto-rollback.
#[derive(Debug, Parser)]
#[command(name = "coalmine", version, about, after_long_help = EXIT_CODES, after_help = EXIT_CODES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// The rollout store and the control API's token.
    #[command(flatten)]
    pub state: control::StateArgs,
    /// Colour and verbosity, taken by every command.
    #[command(flatten)]
    pub global: output::GlobalArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the embedded default: in-process services, the built-in proxy, load, one rollout.
    Demo(demo::DemoArgs),
    /// Serve the demo's baseline and canary (with `/metrics`) and send load to a proxy
    /// address, until Ctrl-C: for trying `coalmine run` with a real Prometheus.
    DemoServices(demo::services::DemoServicesArgs),
    /// Run one rollout of a policy in the foreground. Before any traffic moves it checks
    /// that the provider and the metrics source answer and that the canary is ready.
    Run(run::RunArgs),
    /// Run many rollouts in one daemon, with one control API for all of them (and
    /// `/health/live`, `/health/ready`, `/metrics`); it resumes every unfinished rollout in
    /// its store at start. Submit rollouts with `coalmine apply`.
    Serve(serve::ServeArgs),
    /// Validate a policy (every problem as path:line:col, exit 2, nothing sent) and submit
    /// it to the `coalmine serve` daemon (`--server URL` or `COALMINE_SERVER`), which
    /// starts the rollout; a rollout of that name still running is refused.
    Apply(serve::client::ApplyArgs),
    /// Every rollout with its phase, step, weight and outcome: the daemon's with
    /// `--server`, else the store's.
    List(serve::client::ListArgs),
    /// Show rollouts: every one in the store, or one (the running controller's live view
    /// when one answers; a finished rollout shows its outcome).
    Status(control::StatusArgs),
    /// Release the step a rollout is at (the step `status` shows; one for another step is
    /// refused): it moves on at the next tick without the rest of its time, requests or
    /// approval, unless a metric fails or evidence is missing. `--full`: 100 % now.
    Promote(control::PromoteArgs),
    /// Roll a rollout back (also `coalmine rollback`: during a blue-green rollout's
    /// keep_blue, one switch back to blue).
    #[command(visible_alias = "rollback")]
    Abort(control::LeverArgs),
    /// Pause a rollout: no traffic change until `resume`.
    Pause(control::LeverArgs),
    /// Resume a paused rollout.
    Resume(control::LeverArgs),
    /// Start a rolled-back rollout again from step 1 (a new rollout id), in the foreground.
    Retry(run::RetryArgs),
    /// Check policies; print `path:line:col: message` for every problem (the first 100
    /// per file) and `path:line:col: warning: message` for settings that defeat the policy
    /// (e.g. a deadline too short to ever promote). Only warnings: exit 0. Files over 1 MiB
    /// and files that are not UTF-8 are refused.
    Validate(validate::ValidateArgs),
    /// Offline judging of two sample files, of event counts or of latency histogram windows;
    /// prints JSON.
    #[command(subcommand)]
    Judge(judge::JudgeCommand),
    /// Render a decision log as one self-contained HTML page with plots (no network, no
    /// scripts), or as a Markdown summary with `--format md`.
    Report(report::ReportArgs),
    /// Replay a recorded rollout's windows (a decision log) through a policy on a simulated
    /// clock: what it would have decided, and when, beside what really happened; or run the
    /// policy's PromQL against Prometheus's history (`--prometheus URL --from --to --share`).
    Backtest(backtest::BacktestArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completions(completions::CompletionsArgs),
    /// Print the man page (roff) on stdout: `coalmine man > coalmine.1`.
    Man,
    /// Print the policy's JSON Schema (draft 2020-12) on stdout, for editors that check TOML
    /// as you type (taplo, Even Better TOML); docs/policy.schema.json is the same.
    Schema(schema::SchemaArgs),
    /// Write a commented starting policy for a traffic provider and a metrics source, one
    /// that `coalmine validate` accepts as it is (on stdout, or to -o FILE).
    Init(init::InitArgs),
}

/// Runs the parsed command and returns the process exit code.
#[must_use]
pub fn run(cli: Cli) -> u8 {
    match &cli.command {
        Command::Judge(cmd) => return judge::run(cmd),
        Command::Completions(a) => return completions::completions(a),
        Command::Man => return completions::man(),
        Command::Schema(a) => return schema::main(a),
        Command::Init(a) => return init::main(a),
        Command::Report(a) => return report::run(a),
        Command::Backtest(a) => return backtest::run(a),
        _ => {}
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            output::error(&format!(
                "cannot start the async runtime: {e}; check the process's thread and memory limits"
            ));
            return EXIT_FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Demo(a) => demo::main(a).await,
            Command::DemoServices(a) => demo::services::main(a).await,
            Command::Run(a) => run::main(a, &cli.state).await,
            Command::Retry(a) => match cli.state.server() {
                Some(s) => serve::client::retry(&cli.state, &s, &a.rollout).await,
                None => Box::pin(run::retry(a, &cli.state)).await,
            },
            Command::Serve(a) => Box::pin(serve::main(a, &cli.state)).await,
            Command::Apply(a) => serve::client::apply(&cli.state, &a).await,
            Command::List(a) => serve::client::list(&cli.state, &a).await,
            Command::Status(a) => control::status(&cli.state, &a).await,
            Command::Promote(a) => control::promote(&cli.state, &a).await,
            Command::Abort(a) => control::lever(&cli.state, &a, "/abort").await,
            Command::Pause(a) => control::lever(&cli.state, &a, "/pause").await,
            Command::Resume(a) => control::lever(&cli.state, &a, "/resume").await,
            Command::Validate(a) => validate::main(a).await,
            Command::Judge(_)
            | Command::Completions(_)
            | Command::Man
            | Command::Schema(_)
            | Command::Init(_)
            | Command::Report(_)
            | Command::Backtest(_) => EXIT_OK,
        }
    })
}
