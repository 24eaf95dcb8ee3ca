//! `{{name}}` templates for queries, commands and request bodies.
//!
//! Only placeholders are substituted; there is no logic. Unknown names are caught when the
//! policy is validated, so rendering at run time cannot fail on a name.

use std::fmt;

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(String),
}

/// A template that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{{` without `}}`.
    #[error("unclosed `{{{{` at byte {0}")]
    Unclosed(usize),
    /// `{{}}` or a name with characters other than letters, digits, `_` and `-`.
    #[error("bad placeholder name `{0}`")]
    BadName(String),
    /// A name with no value at render time.
    #[error("unknown placeholder `{{{{{0}}}}}`")]
    Unknown(String),
}

impl Template {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        let mut offset = 0;
        while let Some(i) = rest.find("{{") {
            if i > 0 {
                parts.push(Part::Text(rest[..i].to_string()));
            }
            let after = &rest[i + 2..];
            let Some(j) = after.find("}}") else {
                return Err(TemplateError::Unclosed(offset + i));
            };
            let name = after[..j].trim();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(TemplateError::BadName(name.to_string()));
            }
            parts.push(Part::Var(name.to_string()));
            offset += i + 2 + j + 2;
            rest = &after[j + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template {
            text: text.to_string(),
            parts,
        })
    }

    /// The names used, in order of first use.
    #[must_use]
    pub fn placeholders(&self) -> Vec<&str> {
        let mut v: Vec<&str> = Vec::new();
        for p in &self.parts {
            if let Part::Var(n) = p
                && !v.contains(&n.as_str())
            {
                v.push(n);
            }
        }
        v
    }

    /// Substitutes every placeholder with `lookup(name)`.
    pub fn render<'a>(
        &self,
        lookup: impl Fn(&str) -> Option<std::borrow::Cow<'a, str>>,
    ) -> Result<String, TemplateError> {
        let mut out = String::with_capacity(self.text.len());
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Var(n) => {
                    out.push_str(&lookup(n).ok_or_else(|| TemplateError::Unknown(n.clone()))?);
                }
            }
        }
        Ok(out)
    }

    /// The template as written.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    #[test]
    fn renders_and_lists() {
        let t =
            Template::parse(r#"sum(rate(x{track="{{arm}}",job="{{ job }}"}[{{window}}])) {{arm}}"#)
                .unwrap();
        assert_eq!(t.placeholders(), vec!["arm", "job", "window"]);
        let s = t
            .render(|n| match n {
                "arm" => Some(Cow::Borrowed("canary")),
                "job" => Some(Cow::Borrowed("api")),
                "window" => Some(Cow::Borrowed("15s")),
                _ => None,
            })
            .unwrap();
        assert_eq!(s, r#"sum(rate(x{track="canary",job="api"}[15s])) canary"#);
        assert_eq!(
            t.render(|_| None),
            Err(TemplateError::Unknown("arm".to_string()))
        );
    }

    #[test]
    fn rejects_bad_templates() {
        assert_eq!(Template::parse("a {{arm"), Err(TemplateError::Unclosed(2)));
        assert!(matches!(
            Template::parse("{{}}"),
            Err(TemplateError::BadName(_))
        ));
        assert!(matches!(
            Template::parse("{{a b}}"),
            Err(TemplateError::BadName(_))
        ));
        assert_eq!(
            Template::parse("plain").unwrap().placeholders(),
            Vec::<&str>::new()
        );
    }
}
