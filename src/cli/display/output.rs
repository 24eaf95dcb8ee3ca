//! Output conventions shared by every command: colour (only on a terminal, `NO_COLOR`
//! respected, `--color` to decide), verbosity (`-v`), and writing to stdout without
//! panicking on a closed pipe.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use clap::{Args, ValueEnum};

use crate::cli::EXIT_FAILURE;

/// When to colour the output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// On a terminal, unless `NO_COLOR` is set (to anything but the empty string).
    #[default]
    Auto,
    /// Always, even into a pipe or with `NO_COLOR` set.
    Always,
    /// Never.
    Never,
}

/// Options every command takes.
#[derive(Debug, Default, Args)]
pub struct GlobalArgs {
    /// Colour: "auto" (only on a terminal, and not when NO_COLOR is set), "always" or
    /// "never".
    #[arg(long, value_enum, value_name = "WHEN", default_value_t, global = true)]
    pub color: ColorChoice,
    /// More detail: -v shows every number on the progress lines and info logs, -vv debug
    /// logs, -vvv trace logs (RUST_LOG or COALMINE_LOG set a log filter when -v is not
    /// given).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

/// Whether to colour a stream: `--color always|never` decides; `auto` colours a terminal
/// unless `NO_COLOR` is set and not empty (<https://no-color.org>).
#[must_use]
pub fn use_color(choice: ColorChoice, no_color: Option<&std::ffi::OsStr>, terminal: bool) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => terminal && no_color.is_none_or(std::ffi::OsStr::is_empty),
    }
}

static COLOR: AtomicBool = AtomicBool::new(false);
static VERBOSE: AtomicU8 = AtomicU8::new(0);

/// Records the global options for this process: colour of stderr (where progress, summaries
/// and errors go) and verbosity.
pub fn init(args: &GlobalArgs) {
    let no_color = std::env::var_os("NO_COLOR");
    COLOR.store(
        use_color(
            args.color,
            no_color.as_deref(),
            std::io::stderr().is_terminal(),
        ),
        Ordering::Relaxed,
    );
    VERBOSE.store(args.verbose, Ordering::Relaxed);
}

/// Whether stderr is coloured.
#[must_use]
pub fn color() -> bool {
    COLOR.load(Ordering::Relaxed)
}

/// The `-v` count.
#[must_use]
pub fn verbosity() -> u8 {
    VERBOSE.load(Ordering::Relaxed)
}

/// A style of emphasised words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Success: promoted, pass.
    Good,
    /// Failure: rolled back, FAIL, errors.
    Bad,
    /// Attention: paused, warnings, advance.
    Note,
}

/// `text` in `style` when `on`, else as it is.
#[must_use]
pub fn paint(text: &str, style: Style, on: bool) -> String {
    if !on {
        return text.to_string();
    }
    let code = match style {
        Style::Good => "1;32",
        Style::Bad => "1;31",
        Style::Note => "1;33",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// `text` without the colour escapes [`paint`] adds (for measuring and for tests).
#[must_use]
pub fn unpainted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("\x1b[") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find('m') {
            Some(j) if after[..j].bytes().all(|b| b.is_ascii_digit() || b == b';') => {
                rest = &after[j + 1..];
            }
            _ => {
                out.push_str("\x1b[");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Prints `error: {message}` on stderr, "error" coloured when stderr is.
pub fn error(message: &str) {
    errln!("{}: {message}", paint("error", Style::Bad, color()));
}

/// Prints `warning: {message}` on stderr, "warning" coloured when stderr is.
pub fn warning(message: &str) {
    errln!("{}: {message}", paint("warning", Style::Note, color()));
}

/// Writes to stdout; a closed pipe (`coalmine man | head`) is not an error worth a panic.
/// Returns the exit code on any other failure (after saying so).
pub fn write_stdout(bytes: &[u8]) -> Result<(), u8> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => {
            error(&format!(
                "cannot write to stdout: {e}; check where it is redirected"
            ));
            Err(EXIT_FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use ColorChoice::{Always, Auto, Never};
        assert!(use_color(Auto, None, true));
        assert!(!use_color(Auto, None, false), "a pipe gets no colour");
        assert!(!use_color(Auto, Some(OsStr::new("1")), true), "NO_COLOR=1");
        assert!(
            use_color(Auto, Some(OsStr::new("")), true),
            "an empty NO_COLOR is unset (no-color.org)"
        );
        assert!(use_color(Always, Some(OsStr::new("1")), false));
        assert!(!use_color(Never, None, true));
    }

    #[test]
    fn paint_and_unpaint() {
        let p = paint("FAIL", Style::Bad, true);
        assert_ne!(p, "FAIL");
        assert_eq!(unpainted(&format!("a {p} b")), "a FAIL b");
        assert_eq!(paint("FAIL", Style::Bad, false), "FAIL");
        // Escapes that are not ours are kept (policy text is escaped before printing).
        assert_eq!(unpainted("x\x1b[2Jy"), "x\x1b[2Jy");
    }
}
