//! Writing policies: `init`, `validate`, `schema`, and the shell completions and man page.

pub mod completions;
pub mod init;
pub mod schema;
pub mod validate;
