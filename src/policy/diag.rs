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

/// How bad a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The policy is invalid.
    Error,
    /// The policy is valid but will not do what it seems to say.
    Warning,
}

/// One problem with its position, as `coalmine validate --json` reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Error or warning.
    pub severity: Severity,
    /// The message (URLs echoed from the policy without their credentials).
    pub message: String,
}

/// How many problems [`Diagnostics`] prints before "… and N more".
pub const PRINT_LIMIT: usize = 100;

/// Every problem found in one policy file: errors, and warnings about a policy that is
/// valid but cannot do what it seems to say (e.g. never promote).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostics(Box<Inner>);

/// The contents of [`Diagnostics`] (boxed: `Result<Policy, Diagnostics>` stays small).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Inner {
    origin: String,
    items: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    /// `(line, col)` of each item's start, then of each warning's, computed in one pass.
    positions: Vec<(usize, usize)>,
    lines: LineIndex,
}

impl Diagnostics {
    /// Problems for the file named `origin` whose text is `source`.
    #[must_use]
    pub fn new(origin: &str, source: &str, items: Vec<Diagnostic>) -> Self {
        Self::with_warnings(origin, source, items, Vec::new())
    }

    /// Errors and warnings for the file named `origin` whose text is `source`.
    #[must_use]
    pub fn with_warnings(
        origin: &str,
        source: &str,
        mut items: Vec<Diagnostic>,
        mut warnings: Vec<Diagnostic>,
    ) -> Self {
        for v in [&mut items, &mut warnings] {
            v.sort_by_key(|d| (d.span.start, d.span.end));
            v.dedup();
        }
        let offsets: Vec<usize> = items
            .iter()
            .chain(&warnings)
            .map(|d| d.span.start)
            .collect();
        Diagnostics(Box::new(Inner {
            origin: origin.to_string(),
            positions: positions(source, &offsets),
            lines: LineIndex::new(source),
            items,
            warnings,
        }))
    }

    /// The errors, in source order.
    #[must_use]
    pub fn items(&self) -> &[Diagnostic] {
        &self.0.items
    }

    /// The warnings, in source order.
    #[must_use]
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.0.warnings
    }

    /// Whether there is neither an error nor a warning.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.items.is_empty() && self.0.warnings.is_empty()
    }

    /// 1-based line and column (in characters) of a byte offset.
    #[must_use]
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        self.0.lines.line_col(offset)
    }

    /// Every problem, errors and warnings, in source order (all of them: no print limit).
    #[must_use]
    pub fn entries(&self) -> Vec<Entry> {
        self.sorted()
            .into_iter()
            .map(|(line, column, warning, message)| Entry {
                line,
                column,
                severity: if warning {
                    Severity::Warning
                } else {
                    Severity::Error
                },
                message: crate::redact::text(message).into_owned(),
            })
            .collect()
    }

    /// Every problem as `(line, col, is_warning, message)`, in source order.
    fn sorted(&self) -> Vec<(usize, usize, bool, &str)> {
        let mut all: Vec<(usize, usize, bool, &str)> = self
            .0
            .items
            .iter()
            .map(|d| (d, false))
            .chain(self.0.warnings.iter().map(|d| (d, true)))
            .zip(&self.0.positions)
            .map(|((d, w), (l, c))| (*l, *c, w, d.message.as_str()))
            .collect();
        all.sort_by_key(|(l, c, w, _)| (*l, *c, *w));
        all
    }
}

/// Where lines start in a text, for turning byte offsets into `line:col`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineIndex {
    starts: Vec<usize>,
    /// Characters before each line start, so a column is counted within its line only.
    source: std::sync::Arc<str>,
}

impl LineIndex {
    /// Indexes `source` (one pass).
    #[must_use]
    pub fn new(source: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex {
            starts,
            source: source.into(),
        }
    }

    /// 1-based line of byte `offset` (clamped to the text).
    #[must_use]
    pub fn line(&self, offset: usize) -> usize {
        self.starts
            .partition_point(|s| *s <= offset.min(self.source.len()))
    }

    /// 1-based line and column (in characters) of byte `offset`; the column is counted
    /// from the start of its line only.
    #[must_use]
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.source.len());
        while !self.source.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.line(offset);
        let start = self.starts[line - 1];
        (line, self.source[start..offset].chars().count() + 1)
    }
}

/// `(line, col)` of every offset, in one pass over `source` (offsets in any order):
/// linear in the text plus the number of offsets, however many problems share a line.
fn positions(source: &str, offsets: &[usize]) -> Vec<(usize, usize)> {
    let mut order: Vec<usize> = (0..offsets.len()).collect();
    order.sort_by_key(|i| offsets[*i]);
    let mut out = vec![(1, 1); offsets.len()];
    let (mut line, mut col) = (1, 1);
    let mut chars = source.char_indices().peekable();
    for i in order {
        let target = offsets[i].min(source.len());
        while let Some(&(pos, c)) = chars.peek() {
            // A character counts once it ends at or before the offset (an offset inside a
            // character points at that character).
            if pos + c.len_utf8() > target {
                break;
            }
            chars.next();
            if c == '\n' {
                line += 1;
                col = 1;
            } else {
                col += 1;
            }
        }
        out[i] = (line, col);
    }
    out
}

/// 1-based line and column (in characters) of byte `offset` in `source`.
#[must_use]
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    positions(source, &[offset])[0]
}

/// `text` with control characters (terminal escapes, carriage returns, bidi overrides)
/// shown as `\u{..}` escapes, so a policy's strings cannot rewrite the terminal or the log
/// they are printed to. Every diagnostic goes through this.
#[must_use]
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    let bad =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(bad) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if bad(c) {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

impl fmt::Display for Diagnostics {
    /// One line per problem, `path:line:col: message` (warnings as `path:line:col:
    /// warning: message`), the first [`PRINT_LIMIT`], then how many more there are.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let origin = escape_controls(&self.0.origin);
        let all = self.sorted();
        for (i, (l, c, warning, message)) in all.iter().take(PRINT_LIMIT).enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            let kind = if *warning { "warning: " } else { "" };
            // A URL echoed from the policy loses its credentials here too.
            let message = crate::redact::text(message);
            write!(f, "{origin}:{l}:{c}: {kind}{}", escape_controls(&message))?;
        }
        if all.len() > PRINT_LIMIT {
            let errors = self
                .0
                .items
                .len()
                .saturating_sub(all.iter().take(PRINT_LIMIT).filter(|x| !x.2).count());
            let warnings = all.len() - PRINT_LIMIT - errors;
            write!(
                f,
                "\n{origin}: … and {} more ({errors} error(s), {warnings} warning(s)) not shown",
                all.len() - PRINT_LIMIT
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Collects problems while a policy is validated.
#[derive(Debug, Default)]
pub(crate) struct Ctx {
    /// Errors: a policy with any is invalid.
    pub(crate) diags: Vec<Diagnostic>,
    /// Warnings: printed, never fatal (`validate` exits 0 with only warnings).
    pub(crate) warnings: Vec<Diagnostic>,
}

impl Ctx {
    pub(crate) fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.diags.push(Diagnostic {
            span,
            message: message.into(),
        });
    }

    /// Records a warning: the policy is valid but will not do what it seems to say.
    pub(crate) fn warn(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.warnings.push(Diagnostic {
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
                    match super::keys::parse_unknown_field(msg) {
                        Some((key, expected)) => {
                            let text = super::keys::unknown_key::<T>(key, &expected);
                            self.error(e.span().unwrap_or(whole.clone()), text);
                        }
                        None => self.toml_error(&e, whole.clone()),
                    }
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
        let idx = LineIndex::new(s);
        for (offset, want) in [
            (0, (1, 1)),
            (6, (2, 1)),
            (9, (2, 3)),
            (8, (2, 2)),
            (1000, (3, 1)),
        ] {
            assert_eq!(line_col(s, offset), want, "{offset}");
            // Inside `é` (offset 8) counts as the character it belongs to.
            assert_eq!(idx.line_col(offset), want, "{offset}");
        }
        assert_eq!(
            positions(s, &[9, 0, 1000, 6]),
            vec![(2, 3), (1, 1), (3, 1), (2, 1)]
        );
    }

    #[test]
    fn controls_are_escaped_and_output_is_capped() {
        assert_eq!(escape_controls("plain"), "plain");
        assert_eq!(
            escape_controls("a\u{1b}[31mb\r\u{202e}"),
            "a\\u{1b}[31mb\\u{d}\\u{202e}"
        );
        let src = "x\n".repeat(300);
        let items: Vec<Diagnostic> = (0..250)
            .map(|i| Diagnostic {
                span: 2 * i..2 * i,
                message: format!("bad \u{1b}{i}"),
            })
            .collect();
        let d = Diagnostics::with_warnings(
            "p\u{7}.toml",
            &src,
            items,
            vec![Diagnostic {
                span: 0..0,
                message: "careful".to_string(),
            }],
        );
        let text = d.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), PRINT_LIMIT + 1);
        assert_eq!(lines[0], "p\\u{7}.toml:1:1: bad \\u{1b}0");
        assert_eq!(lines[1], "p\\u{7}.toml:1:1: warning: careful");
        assert_eq!(
            lines[PRINT_LIMIT],
            "p\\u{7}.toml: … and 151 more (151 error(s), 0 warning(s)) not shown"
        );
        assert!(!text.contains('\u{1b}'));
    }
}
