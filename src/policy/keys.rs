//! Which keys each section of a policy takes, for messages that name the mistake: an unknown
//! key gets a did-you-mean suggestion (by string distance, `strsim`), and a key written in
//! the wrong section is reported with the section it belongs to.
//!
//! The key lists come from the serde structs themselves (a probing deserializer records the
//! field names `#[derive(Deserialize)]` passes to `deserialize_struct`), so a key added to a
//! `Raw*` struct is known here without another edit.

use std::sync::OnceLock;

use serde::de::{self, DeserializeOwned, Visitor};

use super::hooks::{RawHook, RawNotify};
use super::raw::{
    METRIC_COMMON_KEYS, RawBuiltin, RawExec, RawGatewayApi, RawHaproxy, RawHaproxyStats, RawHttp,
    RawMannWhitney, RawNginx, RawPrometheus, RawProxy, RawRollout, RawRoot, RawScoring,
    RawSequential, RawThreshold,
};

/// The sections a policy's top level holds (taken out before [`RawRoot`] is read).
pub(crate) const SECTIONS: &[&str] = &[
    "rollout", "traffic", "metrics", "metric", "scoring", "hook", "notify",
];

/// A deserializer that only records the field names of the struct asked for.
struct Probe;

#[derive(Debug)]
struct Fields(&'static [&'static str]);

impl std::fmt::Display for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("probe")
    }
}

impl std::error::Error for Fields {}

impl de::Error for Fields {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Fields(&[])
    }
}

impl<'de> de::Deserializer<'de> for Probe {
    type Error = Fields;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Fields> {
        Err(Fields(&[]))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Fields> {
        Err(Fields(fields))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Fields> {
        Err(Fields(variants))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map identifier
        ignored_any
    }
}

/// The field names of the struct `T`, or the variant names of the enum `T`, as serde spells
/// them in TOML.
pub(crate) fn fields<T: DeserializeOwned>() -> &'static [&'static str] {
    match T::deserialize(Probe) {
        Err(Fields(f)) => f,
        Ok(_) => &[],
    }
}

/// One section and every key it takes.
#[derive(Debug)]
pub(crate) struct Section {
    /// How messages name it, e.g. `[rollout]`, `[traffic] type = "proxy"`.
    pub(crate) label: &'static str,
    /// The `Raw*` struct read from it (to find the section of a serde error).
    type_name: &'static str,
    /// Every key valid in it.
    pub(crate) keys: Vec<&'static str>,
}

fn section<T: DeserializeOwned>(label: &'static str, extra: &[&'static str]) -> Section {
    let mut keys: Vec<&'static str> = extra.to_vec();
    keys.extend(fields::<T>());
    Section {
        label,
        type_name: std::any::type_name::<T>(),
        keys,
    }
}

/// Every section of a policy.
pub(crate) fn sections() -> &'static [Section] {
    static ALL: OnceLock<Vec<Section>> = OnceLock::new();
    ALL.get_or_init(|| {
        let metric = |judge: &'static [&'static str]| -> Vec<&'static str> {
            let mut k = vec!["judge"];
            k.extend(METRIC_COMMON_KEYS);
            k.extend(judge);
            k
        };
        vec![
            section::<RawRoot>("the top level (above the first [section])", SECTIONS),
            section::<RawRollout>("[rollout]", &[]),
            section::<RawProxy>("[traffic] type = \"proxy\"", &["type"]),
            section::<RawHaproxy>("[traffic] type = \"haproxy\"", &["type"]),
            section::<RawNginx>("[traffic] type = \"nginx\"", &["type"]),
            section::<RawExec>("[traffic] type = \"exec\"", &["type"]),
            section::<RawHttp>("[traffic] type = \"http\"", &["type"]),
            section::<RawGatewayApi>("[traffic] type = \"gateway-api\"", &["type"]),
            section::<RawBuiltin>("[metrics] type = \"builtin\"", &["type"]),
            section::<RawPrometheus>("[metrics] type = \"prometheus\"", &["type"]),
            section::<RawHaproxyStats>("[metrics] type = \"haproxy\"", &["type"]),
            Section {
                keys: metric(fields::<RawSequential>()),
                ..section::<RawSequential>("[[metric]] judge = \"sequential\"", &[])
            },
            Section {
                keys: metric(fields::<RawMannWhitney>()),
                ..section::<RawMannWhitney>("[[metric]] judge = \"mann-whitney\"", &[])
            },
            Section {
                keys: metric(fields::<RawThreshold>()),
                ..section::<RawThreshold>("[[metric]] judge = \"threshold\"", &[])
            },
            section::<RawScoring>("[scoring]", &[]),
            section::<RawHook>("[[hook]]", &[]),
            section::<RawNotify>("[notify]", &[]),
        ]
    })
}

/// The section read into `T`, if it is one of [`sections`].
pub(crate) fn section_of<T>() -> Option<&'static Section> {
    let name = std::any::type_name::<T>();
    sections().iter().find(|s| s.type_name == name)
}

/// The candidate closest to `word`, if it is close enough to be what was meant.
pub(crate) fn suggest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::normalized_damerau_levenshtein(word, c), c))
        .filter(|(score, c)| *score >= 0.7 || (c.len() >= 4 && word.contains(*c)))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// The message for an unknown `key` in the section read into `T`; `expected` is the key
/// list serde gave (used when `T` is not a known section).
pub(crate) fn unknown_key<T>(key: &str, expected: &[&str]) -> String {
    let here = section_of::<T>();
    let label = here.map_or("this table", |s| s.label);
    let keys: Vec<&str> = here.map_or_else(|| expected.to_vec(), |s| s.keys.clone());
    if let Some(s) = suggest(key, keys.iter().copied()) {
        return format!("unknown key `{key}` in {label}; did you mean `{s}`?");
    }
    let others: Vec<&str> = sections()
        .iter()
        .filter(|s| Some(s.label) != here.map(|h| h.label) && s.keys.contains(&key))
        .map(|s| s.label)
        .collect();
    if !others.is_empty() {
        let mut list = others
            .iter()
            .take(3)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        if others.len() > 3 {
            list.push_str(", …");
        }
        let hint = if others.len() == 1 {
            format!(": move it under {}", others[0])
        } else {
            String::new()
        };
        return format!("`{key}` belongs in {list}, not in {label}{hint}");
    }
    let elsewhere = sections()
        .iter()
        .flat_map(|s| s.keys.iter().map(move |k| (s.label, *k)))
        .filter(|(l, _)| Some(*l) != here.map(|h| h.label))
        .map(|(l, k)| (strsim::normalized_damerau_levenshtein(key, k), l, k))
        .filter(|(score, _, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((_, l, k)) = elsewhere {
        return format!("unknown key `{key}` in {label}; did you mean `{k}` in {l}?");
    }
    if keys.is_empty() {
        return format!("unknown key `{key}` in {label}, which takes no keys");
    }
    format!(
        "unknown key `{key}` in {label}; expected one of {}",
        keys.join(", ")
    )
}

/// The key and serde's expected keys of an "unknown field" error message.
pub(crate) fn parse_unknown_field(message: &str) -> Option<(&str, Vec<&str>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (key, tail) = rest.split_once('`')?;
    let expected = tail.split('`').skip(1).step_by(2).collect();
    Some((key, expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_know_their_keys() {
        let rollout = section_of::<RawRollout>().unwrap();
        assert!(rollout.keys.contains(&"min_requests"));
        assert!(rollout.keys.contains(&"analysis_interval"));
        let threshold = section_of::<RawThreshold>().unwrap();
        assert!(threshold.keys.contains(&"max") && threshold.keys.contains(&"histogram"));
        assert!(section_of::<RawRoot>().unwrap().keys.contains(&"rollout"));
        assert!(section_of::<String>().is_none());
    }

    #[test]
    fn messages_name_the_mistake() {
        assert_eq!(
            unknown_key::<RawRollout>("analysis_intervall", &[]),
            "unknown key `analysis_intervall` in [rollout]; did you mean `analysis_interval`?"
        );
        assert_eq!(
            unknown_key::<RawProxy>("min_requests", &[]),
            "`min_requests` belongs in [rollout], not in [traffic] type = \"proxy\": move it under [rollout]"
        );
        assert_eq!(
            unknown_key::<RawProxy>("min_request", &[]),
            "unknown key `min_request` in [traffic] type = \"proxy\"; did you mean `min_requests` in [rollout]?"
        );
        assert_eq!(
            unknown_key::<RawThreshold>("confidence", &[]),
            "`confidence` belongs in [[metric]] judge = \"mann-whitney\", not in [[metric]] judge = \"threshold\": move it under [[metric]] judge = \"mann-whitney\""
        );
        assert_eq!(
            unknown_key::<RawBuiltin>("zzz", &[]),
            "unknown key `zzz` in [metrics] type = \"builtin\"; expected one of type"
        );
        assert_eq!(
            parse_unknown_field("unknown field `x`, expected one of `a`, `b`"),
            Some(("x", vec!["a", "b"]))
        );
        assert_eq!(
            parse_unknown_field("unknown field `x`, there are no fields"),
            Some(("x", vec![]))
        );
    }
}
