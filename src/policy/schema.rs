//! The policy's JSON Schema (draft 2020-12), generated from the serde structs of [`super::raw`]
//! and [`super::hooks`] with `schemars`.
//!
//! One source: a key's description is its field's `///` comment, its default the field's
//! `#[schemars(extend("default" = ..))]`, so the schema (`coalmine schema`,
//! `docs/policy.schema.json`) and the parser cannot drift apart: tests check that the schema
//! holds exactly the keys the parser takes, that writing each default explicitly parses to
//! the same policy as leaving it out, that the committed file is the generated one, that the
//! schema never refuses what the parser accepts, and that the README's policy reference names
//! every key.
//!
//! The parser splits the tagged sections by hand (`[traffic] type`, `[metrics] type`,
//! `[[metric]] judge`) and reads each variant's struct on its own; the schema says the same
//! with a `oneOf` of closed objects, one per variant, each with its tag as a `const`.
//! `[[metric]] judge` may be left out (it defaults to `"sequential"`), so only the
//! sequential branch leaves it optional. TOML has no null, so none of schemars' `null`
//! alternatives for `Option` fields are kept.

use std::marker::PhantomData;
use std::time::Duration;

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::hooks::{RawHook, RawNotify};
use super::keys;
use super::raw::{
    RawBuiltin, RawExec, RawGatewayApi, RawHaproxy, RawHaproxyStats, RawHttp, RawMannWhitney,
    RawMetricCommon, RawNginx, RawPrometheus, RawProxy, RawRollout, RawRoot, RawScoring,
    RawSequential, RawThreshold,
};
use super::validate::{JUDGES, SOURCE_TYPES, TRAFFIC_TYPES};

/// A duration as policies write it (`"30s"`, `"5m"`), for schema defaults.
#[must_use]
pub(crate) fn dur_text(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The schema of a unit-variant enum `T` that is not ours to derive on: a string among the
/// names serde reads (taken from `T`'s own `Deserialize`, so they cannot drift).
pub(crate) struct Variants<T>(PhantomData<T>);

impl<T: DeserializeOwned> JsonSchema for Variants<T> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        std::any::type_name::<T>()
            .rsplit("::")
            .next()
            .unwrap_or("Variants")
            .to_string()
            .into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        schemars::json_schema!({ "type": "string", "enum": keys::fields::<T>() })
    }
}

/// One section of a policy as the schema describes it: an object with closed keys.
#[derive(Debug, Clone)]
pub struct Section {
    /// How the README and messages name it, e.g. `[traffic] type = "proxy"`.
    pub label: &'static str,
    /// Its object schema (`properties`, `required`, `additionalProperties: false`).
    pub schema: Value,
    /// Its keys in the order the README lists them (the structs' declaration order).
    pub keys: Vec<&'static str>,
}

/// An object schema and its keys in declaration order.
type Object = (Value, Vec<&'static str>);

/// The object schema of the struct `T`, with its keys in declaration order.
fn object<T: JsonSchema + DeserializeOwned>(g: &mut SchemaGenerator) -> Object {
    (T::json_schema(g).to_value(), keys::fields::<T>().to_vec())
}

/// Adds the tag `key` = `value` as the first key of a section (required unless `optional`).
fn tagged(
    (mut schema, keys): Object,
    key: &'static str,
    value: &str,
    description: &str,
    optional: bool,
) -> Object {
    let obj = schema.as_object_mut().expect("an object schema");
    let mut tag = json!({ "description": description, "const": value });
    if optional {
        tag["default"] = json!(value);
    }
    let props = obj
        .entry("properties")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("properties");
    props.insert(key.to_string(), tag);
    if !optional {
        let req = obj
            .entry("required")
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .expect("required");
        req.insert(0, json!(key));
    }
    obj.insert("type".into(), json!("object"));
    obj.insert("additionalProperties".into(), json!(false));
    let mut k = vec![key];
    k.extend(keys);
    (schema, k)
}

/// The keys of `extra` added to `base` (a `[[metric]]` table: the common keys and the
/// judge's options are one table in TOML, read by two structs).
fn merged((mut base, mut keys): Object, (extra, extra_keys): Object) -> Object {
    let b = base.as_object_mut().expect("an object schema");
    for field in ["properties"] {
        if let Some(Value::Object(add)) = extra.get(field) {
            let into = b
                .entry(field)
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("properties");
            into.extend(add.clone());
        }
    }
    if let Some(Value::Array(req)) = extra.get("required") {
        let into = b
            .entry("required")
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .expect("required");
        into.extend(req.iter().cloned());
    }
    if let Some(d) = extra.get("description") {
        b.insert("description".into(), d.clone());
    }
    keys.extend(extra_keys);
    (base, keys)
}

fn section(label: &'static str, (schema, keys): Object) -> Section {
    Section {
        label,
        schema,
        keys,
    }
}

/// Every section of a policy with its schema, and the generator holding the shared
/// definitions (`$defs`) they refer to.
fn all_sections() -> (Vec<Section>, SchemaGenerator) {
    let mut g = SchemaSettings::draft2020_12().into_generator();
    let traffic_tag = |t: &str| {
        format!(
            "The traffic provider: one of {}; this branch is \"{t}\".",
            TRAFFIC_TYPES.join(", ")
        )
    };
    let source_tag = |t: &str| {
        format!(
            "The metrics source: one of {}; this branch is \"{t}\".",
            SOURCE_TYPES.join(", ")
        )
    };
    let judge_tag = |j: &str| {
        format!(
            "How the metric is judged: one of {} (default sequential); this branch is \"{j}\".",
            JUDGES.join(", ")
        )
    };
    let common = object::<RawMetricCommon>(&mut g);
    let mut out = vec![
        section("the top level", object::<RawRoot>(&mut g)),
        section("[rollout]", object::<RawRollout>(&mut g)),
    ];
    let traffic: [(&'static str, &str, Object); 6] = [
        (
            "[traffic] type = \"proxy\"",
            "proxy",
            object::<RawProxy>(&mut g),
        ),
        (
            "[traffic] type = \"haproxy\"",
            "haproxy",
            object::<RawHaproxy>(&mut g),
        ),
        (
            "[traffic] type = \"nginx\"",
            "nginx",
            object::<RawNginx>(&mut g),
        ),
        (
            "[traffic] type = \"exec\"",
            "exec",
            object::<RawExec>(&mut g),
        ),
        (
            "[traffic] type = \"http\"",
            "http",
            object::<RawHttp>(&mut g),
        ),
        (
            "[traffic] type = \"gateway-api\"",
            "gateway-api",
            object::<RawGatewayApi>(&mut g),
        ),
    ];
    for (label, t, o) in traffic {
        out.push(section(label, tagged(o, "type", t, &traffic_tag(t), false)));
    }
    let sources: [(&'static str, &str, Object); 3] = [
        (
            "[metrics] type = \"builtin\"",
            "builtin",
            object::<RawBuiltin>(&mut g),
        ),
        (
            "[metrics] type = \"prometheus\"",
            "prometheus",
            object::<RawPrometheus>(&mut g),
        ),
        (
            "[metrics] type = \"haproxy\"",
            "haproxy",
            object::<RawHaproxyStats>(&mut g),
        ),
    ];
    for (label, t, o) in sources {
        out.push(section(label, tagged(o, "type", t, &source_tag(t), false)));
    }
    let judges: [(&'static str, &str, Object); 3] = [
        (
            "[[metric]] judge = \"sequential\"",
            "sequential",
            object::<RawSequential>(&mut g),
        ),
        (
            "[[metric]] judge = \"mann-whitney\"",
            "mann-whitney",
            object::<RawMannWhitney>(&mut g),
        ),
        (
            "[[metric]] judge = \"threshold\"",
            "threshold",
            object::<RawThreshold>(&mut g),
        ),
    ];
    for (label, j, o) in judges {
        let m = merged(common.clone(), o);
        out.push(section(
            label,
            tagged(m, "judge", j, &judge_tag(j), j == "sequential"),
        ));
    }
    out.push(section("[scoring]", object::<RawScoring>(&mut g)));
    out.push(section("[[hook]]", object::<RawHook>(&mut g)));
    out.push(section("[notify]", object::<RawNotify>(&mut g)));
    (out, g)
}

/// The policy's sections as the schema describes them, in the README's order.
#[must_use]
pub fn sections() -> Vec<Section> {
    let (mut s, _) = all_sections();
    for sec in &mut s {
        strip_null(&mut sec.schema);
    }
    s
}

/// The policy's JSON Schema (draft 2020-12).
#[must_use]
pub fn schema() -> Value {
    let (sections, mut g) = all_sections();
    let find = |label: &str| {
        sections
            .iter()
            .find(|s| s.label == label)
            .map(|s| s.schema.clone())
            .expect("a known section")
    };
    let branches = |prefix: &str| -> Vec<Value> {
        sections
            .iter()
            .filter(|s| s.label.starts_with(prefix))
            .map(|s| s.schema.clone())
            .collect()
    };
    let mut root = find("the top level");
    let props = root["properties"].as_object_mut().expect("properties");
    props.insert("rollout".into(), find("[rollout]"));
    props.insert(
        "traffic".into(),
        json!({
            "description": "[traffic]: how traffic is moved between the arms; `type` picks the provider.",
            "type": "object",
            "oneOf": branches("[traffic]"),
        }),
    );
    props.insert(
        "metrics".into(),
        json!({
            "description": "[metrics]: where metrics come from; `type` picks the source. Default: type = \"builtin\" (needs [traffic] type = \"proxy\").",
            "type": "object",
            "oneOf": branches("[metrics]"),
        }),
    );
    props.insert(
        "metric".into(),
        json!({
            "description": "[[metric]]: what is compared, one table per metric, at least one; `judge` picks how.",
            "type": "array",
            "minItems": 1,
            "items": { "type": "object", "oneOf": branches("[[metric]]") },
        }),
    );
    props.insert("scoring".into(), find("[scoring]"));
    props.insert(
        "hook".into(),
        json!({
            "description": "[[hook]]: smoke checks before traffic moves and actions after the decision, in order.",
            "type": "array",
            "items": find("[[hook]]"),
        }),
    );
    props.insert("notify".into(), find("[notify]"));
    let req = root["required"].as_array_mut().expect("required");
    req.extend([json!("traffic"), json!("metric")]);
    let obj = root.as_object_mut().expect("an object");
    let mut out = Map::new();
    out.insert(
        "$schema".into(),
        json!("https://json-schema.org/draft/2020-12/schema"),
    );
    out.insert("title".into(), json!("coalmine policy"));
    out.insert(
        "description".into(),
        json!(
            "A coalmine policy (TOML): steps, traffic provider, metrics source, metrics, judges, hooks. Generated by `coalmine schema` from the parser's own types; `coalmine validate` also checks what a schema cannot (ranges that depend on other keys, queries, URLs)."
        ),
    );
    obj.remove("description");
    obj.remove("title");
    out.extend(std::mem::take(obj));
    let defs: Map<String, Value> = g
        .take_definitions(true)
        .into_iter()
        .collect::<Map<String, Value>>();
    if !defs.is_empty() {
        out.insert("$defs".into(), Value::Object(defs));
    }
    let mut v = Value::Object(out);
    strip_null(&mut v);
    v
}

/// The schema as `coalmine schema` prints it and `docs/policy.schema.json` holds it.
#[must_use]
pub fn schema_text() -> String {
    let mut s = serde_json::to_string_pretty(&schema()).expect("a JSON value serializes");
    s.push('\n');
    s
}

/// Removes the `null` alternatives schemars adds for `Option` fields: TOML has no null, and
/// a key that may be left out is simply not `required`.
fn strip_null(v: &mut Value) {
    match v {
        Value::Object(obj) => {
            if let Some(Value::Array(types)) = obj.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types.remove(0);
                    obj.insert("type".into(), only);
                }
            }
            if let Some(Value::Array(any)) = obj.get_mut("anyOf") {
                any.retain(|s| s.get("type").and_then(Value::as_str) != Some("null"));
                if any.len() == 1 {
                    let Some(Value::Object(only)) = any.pop() else {
                        unreachable!("a schema is an object")
                    };
                    obj.remove("anyOf");
                    for (k, x) in only {
                        obj.entry(k).or_insert(x);
                    }
                }
            }
            for x in obj.values_mut() {
                strip_null(x);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_null),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Keys the parser reads only to refuse them with a better message than "unknown key"
    /// (a token written inline); the schema leaves them out, so editors flag them too.
    const REFUSED: &[(&str, &str)] = &[
        ("[metrics] type = \"prometheus\"", "token"),
        ("[traffic] type = \"http\"", "token"),
    ];

    fn props(schema: &Value) -> BTreeSet<String> {
        schema["properties"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    }

    #[test]
    fn every_section_has_exactly_the_parsers_keys() {
        let ours = sections();
        let parser = keys::sections();
        assert_eq!(
            ours.len(),
            parser.len(),
            "one schema section per parser section"
        );
        for p in parser {
            let want: BTreeSet<String> = p
                .keys
                .iter()
                .filter(|k| !REFUSED.contains(&(p.label, **k)))
                .map(|k| (*k).to_string())
                .collect();
            let got = if p.label.starts_with("the top level") {
                props(&schema())
            } else {
                let s = ours
                    .iter()
                    .find(|s| s.label == p.label)
                    .unwrap_or_else(|| panic!("no schema section {}", p.label));
                assert_eq!(
                    s.schema["additionalProperties"],
                    json!(false),
                    "{}",
                    p.label
                );
                props(&s.schema)
            };
            assert_eq!(got, want, "keys of {}", p.label);
        }
    }

    #[test]
    fn every_key_has_a_description_and_every_section_a_closed_object() {
        fn walk(v: &Value, at: &str) {
            if let Some(Value::Object(p)) = v.get("properties") {
                assert_eq!(v["additionalProperties"], json!(false), "{at} is closed");
                for (k, s) in p {
                    let text = s.get("description").and_then(Value::as_str).unwrap_or("");
                    assert!(text.len() > 5, "{at}.{k} has no description: {s}");
                    walk(s, &format!("{at}.{k}"));
                }
            }
            for key in ["oneOf", "anyOf"] {
                if let Some(Value::Array(items)) = v.get(key) {
                    for (i, s) in items.iter().enumerate() {
                        walk(s, &format!("{at}/{key}[{i}]"));
                    }
                }
            }
            if let Some(items) = v.get("items") {
                walk(items, &format!("{at}[]"));
            }
        }
        let s = schema();
        walk(&s, "policy");
        assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
        assert!(!schema_text().contains("\"null\""), "TOML has no null");
    }

    /// The tables of the shipped policies, as (file, TOML root).
    fn examples() -> Vec<(String, toml::Table)> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut out = Vec::new();
        for dir in ["policies", "tests/fixtures/policies/valid"] {
            for e in std::fs::read_dir(root.join(dir)).unwrap() {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|e| e == "toml") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    out.push((p.display().to_string(), text.parse().unwrap()));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The `nth` table of `root` that `label` describes, if the policy has one (only arrays
    /// of tables have more than one).
    fn table_of<'a>(
        root: &'a mut toml::Table,
        label: &str,
        nth: usize,
    ) -> Option<&'a mut toml::Table> {
        let tag_is = |t: &toml::Table, key: &str, want: &str, absent: Option<&str>| {
            t.get(key)
                .and_then(toml::Value::as_str)
                .or(absent)
                .is_some_and(|v| v == want)
        };
        let value = |label: &str| label.split('"').nth(1).unwrap_or("").to_string();
        if label == "the top level" {
            return (nth == 0).then_some(root);
        }
        if let Some(name) = label
            .strip_prefix('[')
            .and_then(|l| l.strip_suffix(']'))
            .filter(|n| !n.contains(['[', ']']))
        {
            return root
                .get_mut(name)
                .and_then(toml::Value::as_table_mut)
                .filter(|_| nth == 0);
        }
        if label.starts_with("[traffic]") {
            let t = root.get_mut("traffic")?.as_table_mut()?;
            return (nth == 0 && tag_is(t, "type", &value(label), None)).then_some(t);
        }
        if label.starts_with("[metrics]") {
            let t = root.get_mut("metrics")?.as_table_mut()?;
            return (nth == 0 && tag_is(t, "type", &value(label), None)).then_some(t);
        }
        let (array, key, absent) = if label.starts_with("[[metric]]") {
            ("metric", "judge", Some("sequential"))
        } else {
            ("hook", "when", None)
        };
        let want = value(label);
        root.get_mut(array)?
            .as_array_mut()?
            .iter_mut()
            .filter_map(toml::Value::as_table_mut)
            .filter(|t| want.is_empty() || tag_is(t, key, &want, absent))
            .nth(nth)
    }

    fn to_toml(v: &Value) -> toml::Value {
        toml::Value::try_from(v).expect("a default is TOML")
    }

    /// Writing a key's documented default gives the same policy as leaving the key out, for
    /// every key with a default, in a shipped policy that has its section.
    #[test]
    fn every_documented_default_is_the_parsers_default() {
        let examples = examples();
        let mut checked = 0;
        for sec in sections() {
            let Some(Value::Object(props)) = sec.schema.get("properties") else {
                continue;
            };
            for (key, s) in props {
                let Some(default) = s.get("default") else {
                    continue;
                };
                let mut found = false;
                let tables = examples
                    .iter()
                    .flat_map(|(file, policy)| (0..8).map(move |nth| (file, policy, nth)));
                for (file, policy, nth) in tables {
                    let (mut without, mut with) = (policy.clone(), policy.clone());
                    let Some(t) = table_of(&mut without, sec.label, nth) else {
                        continue;
                    };
                    t.remove(key);
                    table_of(&mut with, sec.label, nth)
                        .unwrap()
                        .insert(key.clone(), to_toml(default));
                    let parse =
                        |t: &toml::Table| crate::policy::parse(&toml::to_string(t).unwrap(), file);
                    // A default may conflict with another key of this example (quantiles
                    // beside thresholds): then another example has to show it.
                    let (Ok(a), Ok(b)) = (parse(&without), parse(&with)) else {
                        continue;
                    };
                    assert_eq!(
                        a, b,
                        "{} {key} = {default} in {file} is not the default",
                        sec.label
                    );
                    found = true;
                    checked += 1;
                    break;
                }
                assert!(
                    found,
                    "no shipped policy has {} where {key} = {default} is valid",
                    sec.label
                );
            }
        }
        assert!(checked > 40, "{checked} defaults checked");
    }
}
