//! The `coalmine` binary: parse the command line, run, map the result to an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = coalmine::cli::Cli::parse();
    ExitCode::from(coalmine::cli::run(cli))
}
