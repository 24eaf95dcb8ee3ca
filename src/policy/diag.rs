//! Diagnostics with source positions, and the span-preserving deserialization helpers that
//! collect every problem in a policy instead of stopping at the first.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;

use serde::de::{DeserializeOwned, IntoDeserializer};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One problem in a policy, with the byte range it refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Byte range in the source (empty range = a point).
    pub span: Range<usize>,
    /// Lowercase message without a trailing period.
    pub message: String,
}

/// Every problem found in one policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostics {
    origin: String,
    source: String,
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    /// Problems for the file named `origin` whose text is `source`.
    #[must_use]
    pub fn new(origin: &str, source: &str, mut items: Vec<Diagnostic>) -> Self {
        items.sort_by_key(|d| (d.span.start, d.span.end));
        items.dedup();
        Diagnostics {
            origin: origin.to_string(),
            source: source.to_string(),
            items,
        }
    }

    /// The problems, in source order.
    #[must_use]
    pub fn items(&self) -> &[Diagnostic] {
        &self.items
    }

    /// 1-based line and column (in characters) of a byte offset.
    #[must_use]
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        line_col(&self.source, offset)
    }
}

/// 1-based line and column (in characters) of byte `offset` in `source`.
#[must_use]
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before, |i| &before[i + 1..])
        .chars()
        .count()
        + 1;
    (line, col)
}

impl fmt::Display for Diagnostics {
    /// One line per problem: `path:line:col: message`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.items.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            let (l, c) = self.line_col(d.span.start);
            write!(f, "{}:{l}:{c}: {}", self.origin, d.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Collects problems while a policy is validated.
#[derive(Debug, Default)]
pub(crate) struct Ctx {
    pub(crate) diags: Vec<Diagnostic>,
}

impl Ctx {
    pub(crate) fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.diags.push(Diagnostic {
            span,
            message: message.into(),
        });
    }

    fn toml_error(&mut self, e: &toml::de::Error, fallback: Range<usize>) {
        let span = e.span().unwrap_or(fallback);
        // toml's messages may span lines (snippets); keep the first line.
        let msg = e.message().lines().next().unwrap_or("invalid value").trim();
        self.error(span, msg.to_string());
    }

    /// Deserializes `T` from a table value, reporting every bad key: on an error at a key,
    /// the key is reported, removed and deserialization retried, so one bad field does not
    /// hide the next. Returns what parsed without the bad keys (`None` when a required key
    /// is missing or bad); every problem is in `diags`.
    pub(crate) fn de<T: DeserializeOwned>(&mut self, value: &Spanned<DeValue<'_>>) -> Option<T> {
        let whole = value.span();
        let DeValue::Table(table) = value.get_ref() else {
            return match T::deserialize(value.clone().into_deserializer()) {
                Ok(v) => Some(v),
                Err(e) => {
                    self.toml_error(&e, whole);
                    None
                }
            };
        };
        let mut table: DeTable<'_> = table.clone();
        let mut removed: BTreeSet<String> = BTreeSet::new();
        for _ in 0..64 {
            let v = Spanned::new(whole.clone(), DeValue::Table(table.clone()));
            match T::deserialize(v.into_deserializer()) {
                // With bad keys removed the rest still parses: return it so later checks
                // can report their problems too (the caller sees the errors in `diags`).
                Ok(t) => return Some(t),
                Err(e) => {
                    let msg = e.message();
                    if removed
                        .iter()
                        .any(|k| msg.starts_with(&format!("missing field `{k}`")))
                    {
                        return None;
                    }
                    self.toml_error(&e, whole.clone());
                    let span = e.span()?;
                    let culprit = table
                        .iter()
                        .find(|(k, v)| {
                            let (ks, vs) = (k.span(), v.span());
                            (ks.start <= span.start && span.start < ks.end.max(ks.start + 1))
                                || (vs.start <= span.start && span.end <= vs.end.max(vs.start + 1))
                        })
                        .map(|(k, _)| k.get_ref().to_string());
                    let key = culprit?;
                    take(&mut table, &key);
                    removed.insert(key);
                }
            }
        }
        None
    }
}

/// Removes and returns `key` from a table.
pub(crate) fn take<'i>(table: &mut DeTable<'i>, key: &str) -> Option<Spanned<DeValue<'i>>> {
    let found = table
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == key)
        .map(|(k, _)| k.clone())?;
    table.remove(&found)
}

/// Removes `keys` from `table` and returns them as a new table (same span as the value).
pub(crate) fn split<'i>(table: &mut DeTable<'i>, keys: &[&str]) -> DeTable<'i> {
    let mut out = DeTable::new();
    let found: Vec<_> = table
        .iter()
        .filter(|(k, _)| keys.contains(&k.get_ref().as_ref()))
        .map(|(k, _)| k.clone())
        .collect();
    for k in found {
        if let Some(v) = table.remove(&k) {
            out.insert(k, v);
        }
    }
    out
}

/// A table value with the given span.
pub(crate) fn table_value(span: Range<usize>, t: DeTable<'_>) -> Spanned<DeValue<'_>> {
    Spanned::new(span, DeValue::Table(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters() {
        let s = "a = 1\nbé = 2\n";
        assert_eq!(line_col(s, 0), (1, 1));
        assert_eq!(line_col(s, 6), (2, 1));
        assert_eq!(line_col(s, 9), (2, 3));
        assert_eq!(line_col(s, 1000), (3, 1));
    }
}
