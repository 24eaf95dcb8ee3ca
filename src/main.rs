//! The `coalmine` binary: parse the command line, run, map the result to an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = coalmine::cli::Cli::parse();
    // Diagnostics go to stderr; progress and summaries are printed by the commands.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COALMINE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    ExitCode::from(coalmine::cli::run(cli))
}
