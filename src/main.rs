//! The `coalmine` binary: parse the command line, set up output and logging, run, map the
//! result to an exit code.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use coalmine::cli::display::output::{self, ColorChoice};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // clap prints help and usage errors while parsing, before `--color` is known: look for
    // it first so those obey it too (NO_COLOR they obey already).
    let color = match color_arg(std::env::args_os().skip(1)) {
        Some(ColorChoice::Always) => clap::ColorChoice::Always,
        Some(ColorChoice::Never) => clap::ColorChoice::Never,
        _ => clap::ColorChoice::Auto,
    };
    let matches = coalmine::cli::Cli::command().color(color).get_matches();
    let cli = coalmine::cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    output::init(&cli.global);
    // Diagnostics go to stderr; progress and summaries are printed by the commands.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(output::color())
        .with_env_filter(log_filter(cli.global.verbose))
        .init();
    ExitCode::from(coalmine::cli::run(cli))
}

/// The log filter: `-v` (info), `-vv` (debug), `-vvv` (trace) when given; else
/// `COALMINE_LOG`, else `RUST_LOG` (tracing's filter syntax, e.g. `coalmine=debug`); else
/// warnings only.
fn log_filter(verbose: u8) -> EnvFilter {
    let level = match verbose {
        0 => None,
        1 => Some("info"),
        2 => Some("debug"),
        _ => Some("trace"),
    };
    if let Some(l) = level {
        return EnvFilter::new(l);
    }
    for var in ["COALMINE_LOG", "RUST_LOG"] {
        if let Ok(f) = EnvFilter::try_from_env(var) {
            return f;
        }
    }
    EnvFilter::new("warn")
}

/// The last `--color WHEN` / `--color=WHEN` among the arguments, if any is valid.
fn color_arg(args: impl Iterator<Item = std::ffi::OsString>) -> Option<ColorChoice> {
    use clap::ValueEnum;
    let mut found = None;
    let mut next_is_value = false;
    for a in args {
        let a = a.to_string_lossy().into_owned();
        let value = if next_is_value {
            next_is_value = false;
            Some(a.as_str())
        } else if a == "--color" {
            next_is_value = true;
            None
        } else {
            a.strip_prefix("--color=")
        };
        if let Some(v) = value.and_then(|v| ColorChoice::from_str(v, false).ok()) {
            found = Some(v);
        }
    }
    found
}
