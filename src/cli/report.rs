//! `coalmine report RECORDS.jsonl`: one rollout's decision records as a self-contained HTML
//! page with plots, or as a Markdown summary.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::display::output::{error, write_stdout};
use super::{EXIT_FAILURE, EXIT_INVALID, EXIT_OK};
use crate::report::log::{read_log, select};
use crate::report::{html, markdown};

/// Output formats of `coalmine report`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One self-contained HTML file: styles inline, plots as inline SVG, no scripts.
    Html,
    /// A Markdown summary for a pull request or a ticket.
    Md,
}

/// Arguments of `coalmine report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The decision log (JSON lines, as `run` and `demo` write with `--decisions`).
    pub records: PathBuf,
    /// Write the report to FILE instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Which rollout, when the log holds several: its rollout id, its name, or `NAME#N`
    /// for the N-th run of that name in a log without ids.
    #[arg(long, value_name = "ID")]
    pub rollout: Option<String>,
    /// Output format: `html` (one self-contained page) or `md` (a Markdown summary).
    #[arg(long, value_enum, default_value_t = Format::Html)]
    pub format: Format,
}

/// Runs `coalmine report`: exit 0 when written, 2 when the log cannot be read or is not a
/// decision log (the message names `file:line`), 3 when the report cannot be written.
#[must_use]
pub fn run(args: &ReportArgs) -> u8 {
    let rollout = match read_log(&args.records).and_then(|r| select(r, args.rollout.as_deref())) {
        Ok(r) => r,
        Err(e) => {
            let cause = std::error::Error::source(&e).map_or(String::new(), |c| format!(": {c}"));
            error(&format!("{e}{cause}"));
            return EXIT_INVALID;
        }
    };
    let text = match args.format {
        Format::Html => html::render(&rollout),
        Format::Md => markdown::render(&rollout),
    };
    match &args.output {
        Some(path) => {
            if let Err(e) = std::fs::write(path, text) {
                error(&format!(
                    "cannot write the report to {}: {e}; check the directory exists and is writable",
                    path.display()
                ));
                return EXIT_FAILURE;
            }
            errln!(
                "coalmine: report of rollout {} written to {}",
                rollout.label(),
                path.display()
            );
            EXIT_OK
        }
        None => match write_stdout(text.as_bytes()) {
            Ok(()) => EXIT_OK,
            Err(code) => code,
        },
    }
}
