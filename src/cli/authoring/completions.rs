//! `coalmine completions SHELL` and `coalmine man`: generated from the same clap
//! definitions as `--help`, so they cannot drift from the real command line.

use std::io::Write;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use crate::cli::{Cli, EXIT_FAILURE, EXIT_OK};

/// Arguments of `coalmine completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Prints the completion script for `args.shell` on stdout.
#[must_use]
pub fn completions(args: &CompletionsArgs) -> u8 {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "coalmine", &mut out);
    write_stdout(&out)
}

/// Prints the man page (roff) on stdout, with a section per subcommand.
#[must_use]
pub fn man() -> u8 {
    let cmd = Cli::command();
    let mut out = Vec::new();
    if let Err(e) = render_man(&cmd, &mut out) {
        crate::cli::display::output::error(&format!("cannot render the man page: {e}"));
        return EXIT_FAILURE;
    }
    write_stdout(&out)
}

fn render_man(cmd: &clap::Command, out: &mut Vec<u8>) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    // One section per subcommand, with its own options, instead of a bare list of names.
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let sub = sub.clone().bin_name(format!("coalmine {}", sub.get_name()));
        writeln!(out, ".SH \"COALMINE {}\"", sub.get_name().to_uppercase())?;
        let m = clap_mangen::Man::new(sub);
        m.render_synopsis_section(out)?;
        m.render_description_section(out)?;
        m.render_options_section(out)?;
        m.render_subcommands_section(out)?;
    }
    man.render_extra_section(out)?;
    man.render_version_section(out)?;
    Ok(())
}

fn write_stdout(bytes: &[u8]) -> u8 {
    match crate::cli::display::output::write_stdout(bytes) {
        Ok(()) => EXIT_OK,
        Err(code) => code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_page_has_every_subcommand() {
        let mut out = Vec::new();
        render_man(&Cli::command(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{text:.200}"
        );
        for sub in Cli::command().get_subcommands() {
            if sub.get_name() != "help" {
                let head = format!(".SH \"COALMINE {}\"", sub.get_name().to_uppercase());
                assert!(text.contains(&head), "missing {head}");
            }
        }
        assert!(text.contains("Exit codes"), "exit codes section missing");
    }

    #[test]
    fn bash_completion_names_the_subcommands() {
        let mut out = Vec::new();
        clap_complete::generate(Shell::Bash, &mut Cli::command(), "coalmine", &mut out);
        let text = String::from_utf8(out).unwrap();
        for word in [
            "validate",
            "demo",
            "run",
            "judge",
            "schema",
            "init",
            "--provider",
            "--color",
            "--policy",
        ] {
            assert!(text.contains(word), "no {word} in the bash completion");
        }
    }
}
