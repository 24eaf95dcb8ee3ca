//! Exact window counts from counters, instead of Prometheus's extrapolated `increase()`.
//!
//! The sequential judges treat a window's counts as numbers of distinct requests, and
//! consecutive windows as disjoint. Prometheus's `increase(c[w])` is neither: it takes the
//! difference between the first and last samples *inside* the range and extrapolates it to
//! the range's edges (by up to w / scrape interval, less for a counter that started near zero,
//! such as a new canary's low buckets). The requests between two windows' samples are never
//! seen and the ones inside are scaled up, so the evidence grows faster than the data: an
//! identical canary and baseline scraped every 1 s with 2 s windows reached an e-value of
//! 17,151 against a bound of 400.
//!
//! `last_over_time(c[w]) - last_over_time(c[w] offset w)` evaluated at the window's end is the
//! difference between the last sample at or before the end and the last at or before the
//! start: an exact count of what the counter saw, and consecutive windows telescope (each
//! starts at the sample the previous one ended on). Each edge's sample must lie within one
//! window of the edge, so after a gap in scraping (Prometheus or the target down) an arm
//! without fresh samples has no data rather than a count that spans the gap while the other
//! arm's does not. A series missing on either edge drops out of that window (as with
//! `increase()`, a series' increments in the window where it first appears are not counted);
//! a counter reset makes the difference smaller than the true increase, and `clamp_min(…, 0)`
//! stops it going negative. So the rewritten count never exceeds what happened in the
//! window: missing data makes evidence smaller, never larger.

use std::borrow::Cow;

/// Rewrites each `increase(SELECTOR[RANGE])` whose range is `range` (the rendered window)
/// into `clamp_min(last_over_time(SELECTOR[RANGE]) - last_over_time(SELECTOR[RANGE] offset
/// RANGE), 0)`. Anything else (another range, a
/// subquery, `rate()`, text inside string literals or comments) is left as it is.
#[must_use]
pub(crate) fn exact_increase<'q>(query: &'q str, range: &str) -> Cow<'q, str> {
    let b = query.as_bytes();
    let mut out = String::new();
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' | b'`' => i = skip_string(b, i),
            b'#' => {
                i = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |n| i + n);
            }
            _ if b[i..].starts_with(b"increase") && (i == 0 || !is_ident(b[i - 1])) => {
                match increase_call(b, i + "increase".len(), range) {
                    Some((selector, end)) => {
                        out.push_str(&query[copied..i]);
                        let selector = &query[selector.0..selector.1];
                        out.push_str("clamp_min(last_over_time(");
                        out.push_str(selector);
                        out.push('[');
                        out.push_str(range);
                        out.push_str("]) - last_over_time(");
                        out.push_str(selector);
                        out.push('[');
                        out.push_str(range);
                        out.push_str("] offset ");
                        out.push_str(range);
                        out.push_str("), 0)");
                        copied = end;
                        i = end;
                    }
                    None => i += "increase".len(),
                }
            }
            _ => i += 1,
        }
    }
    if copied == 0 {
        return Cow::Borrowed(query);
    }
    out.push_str(&query[copied..]);
    Cow::Owned(out)
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// The index just past the string literal opening at `i` (the end of input if unclosed).
fn skip_string(b: &[u8], i: usize) -> usize {
    let quote = b[i];
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' if quote != b'`' => j += 2,
            c if c == quote => return j + 1,
            _ => j += 1,
        }
    }
    b.len()
}

/// Parses `( SELECTOR [ RANGE ] )` from `i` (just after the word `increase`): the selector's
/// byte span and the index past the `)`, when the range is `range`.
fn increase_call(b: &[u8], i: usize, range: &str) -> Option<((usize, usize), usize)> {
    let mut i = skip_ws(b, i);
    if b.get(i) != Some(&b'(') {
        return None;
    }
    i = skip_ws(b, i + 1);
    let start = i;
    while i < b.len() && is_ident(b[i]) {
        i += 1;
    }
    let named = i > start;
    let after_name = i;
    i = skip_ws(b, i);
    if b.get(i) == Some(&b'{') {
        i += 1;
        loop {
            match b.get(i)? {
                b'"' | b'\'' | b'`' => i = skip_string(b, i),
                b'}' => break,
                // A nested brace or bracket means this is not a plain selector.
                b'{' | b'[' | b'(' | b')' => return None,
                _ => i += 1,
            }
        }
        i += 1;
    } else if !named {
        return None;
    } else {
        i = after_name;
    }
    let end_selector = i;
    i = skip_ws(b, i);
    if b.get(i) != Some(&b'[') {
        return None;
    }
    let close = i + b[i..].iter().position(|&c| c == b']')?;
    if std::str::from_utf8(&b[i + 1..close]).ok()?.trim() != range {
        return None;
    }
    i = skip_ws(b, close + 1);
    if b.get(i) != Some(&b')') {
        return None;
    }
    Some(((start, end_selector), i + 1))
}

#[cfg(test)]
mod tests {
    use super::exact_increase;
    use proptest::prelude::*;

    #[test]
    fn rewrites_increase_over_the_window() {
        assert_eq!(
            exact_increase(
                r#"sum(increase(http_requests_total{track="canary",code=~"5.."}[15s])) or vector(0)"#,
                "15s"
            ),
            r#"sum(clamp_min(last_over_time(http_requests_total{track="canary",code=~"5.."}[15s]) - last_over_time(http_requests_total{track="canary",code=~"5.."}[15s] offset 15s), 0)) or vector(0)"#
        );
        assert_eq!(
            exact_increase(
                "sum by (le) (increase( x_bucket {a=\"}[15s])\"} [ 15s ] ))",
                "15s"
            ),
            "sum by (le) (clamp_min(last_over_time(x_bucket {a=\"}[15s])\"}[15s]) - last_over_time(x_bucket {a=\"}[15s])\"}[15s] offset 15s), 0))"
        );
        assert_eq!(
            exact_increase(r#"increase({__name__="x"}[2s])"#, "2s"),
            r#"clamp_min(last_over_time({__name__="x"}[2s]) - last_over_time({__name__="x"}[2s] offset 2s), 0)"#
        );
    }

    #[test]
    fn leaves_everything_else_alone() {
        for q in [
            "sum(rate(x[15s]))",
            "sum(increase(x[1m]))",
            "sum(increase(x[15s:1s]))",
            "sum(increase(rate(x[1s])[15s:]))",
            "sum(xincrease(x[15s]))",
            r#"sum(x{l="increase(x[15s])"})"#,
            "# increase(x[15s])\nsum(x)",
            "increase",
            "increase(",
            "increase(x{",
            "increase(x[15s",
        ] {
            assert_eq!(exact_increase(q, "15s"), q, "{q}");
        }
    }

    proptest! {
        #[test]
        fn never_panics_and_only_removes_increase(q in "\\PC{0,80}", r in "[0-9]{1,3}(ms|s)") {
            let out = exact_increase(&q, &r);
            if !q.contains("increase") {
                prop_assert_eq!(out.as_ref(), q.as_str());
            }
        }

        #[test]
        fn rewrites_generated_selectors(name in "[a-z_:][a-z0-9_:]{0,12}", v in "[^\"\\\\]{0,10}") {
            let q = format!("sum(increase({name}{{l=\"{v}\"}}[3s]))");
            let out = exact_increase(&q, "3s");
            let sel = format!("{name}{{l=\"{v}\"}}");
            let expected = format!(
                "sum(clamp_min(last_over_time({sel}[3s]) - last_over_time({sel}[3s] offset 3s), 0))"
            );
            prop_assert_eq!(out.as_ref(), expected.as_str());
        }
    }
}
