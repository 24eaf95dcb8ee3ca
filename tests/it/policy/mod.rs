//! Writing policies: `init`, `validate` on the example and fixture policies, the JSON Schema.

pub(crate) mod authoring;
mod examples;
mod fixtures;
mod schema;
