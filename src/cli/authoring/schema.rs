//! `coalmine schema`: print the policy's JSON Schema (draft 2020-12), generated from the
//! parser's own types ([`crate::policy::schema`]); `docs/policy.schema.json` is a copy.

use clap::Args;

use crate::cli::EXIT_OK;
use crate::cli::display::output::write_stdout;
use crate::policy::schema::schema_text;

/// Arguments of `coalmine schema`.
#[derive(Debug, Args)]
pub struct SchemaArgs {}

/// Prints the schema on stdout.
#[must_use]
pub fn main(_: &SchemaArgs) -> u8 {
    match write_stdout(schema_text().as_bytes()) {
        Ok(()) => EXIT_OK,
        Err(code) => code,
    }
}
