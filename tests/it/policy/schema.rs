//! The policy's JSON Schema as editors use it: the committed `docs/policy.schema.json` is what
//! `coalmine schema` prints (regenerate it with `COALMINE_BLESS=1`), it is a valid draft
//! 2020-12 schema, every shipped policy and every `coalmine init` output validates against
//! it, it is never stricter than the parser, and the README names every key it has.

use std::fs;
use std::path::{Path, PathBuf};

use coalmine::policy;
use serde_json::Value;

use crate::support::{root, run, text};

const COMMITTED: &str = "docs/policy.schema.json";

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(&policy::schema::schema_text()).unwrap();
    assert!(
        jsonschema::meta::is_valid(&schema),
        "the schema is valid against its own metaschema"
    );
    jsonschema::validator_for(&schema).expect("a usable schema")
}

/// A policy's TOML as the JSON value an editor's schema check sees.
fn as_json(toml_text: &str) -> Value {
    let t: toml::Table = toml_text.parse().expect("TOML");
    serde_json::to_value(t).expect("TOML values are JSON values")
}

fn schema_errors(v: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    v.iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

fn policies_in(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

fn shipped() -> Vec<PathBuf> {
    let mut v = policies_in("policies");
    v.extend(policies_in("tests/fixtures/policies/valid"));
    v.extend(policies_in("tests/fixtures/policies/warnings"));
    assert!(v.len() >= 12, "the examples are there");
    v
}

#[test]
fn committed_schema_is_the_generated_one() {
    let path = root().join(COMMITTED);
    let generated = policy::schema::schema_text();
    if std::env::var_os("COALMINE_BLESS").is_some() {
        fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{COMMITTED} is not what the policy types generate: run \
         `COALMINE_BLESS=1 cargo test --test it schema` and review the diff"
    );
}

#[test]
fn schema_command_prints_the_committed_schema() {
    let out = run(&["schema"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout, policy::schema::schema_text());
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["$schema"], "https://json-schema.org/draft/2020-12/schema");
}

#[test]
fn every_shipped_policy_validates_against_the_schema() {
    let v = validator();
    for p in shipped() {
        let doc = as_json(&fs::read_to_string(&p).unwrap());
        let errors = schema_errors(&v, &doc);
        assert!(errors.is_empty(), "{}: {errors:#?}", p.display());
    }
}

#[test]
fn every_init_output_validates_against_the_schema() {
    let v = validator();
    let mut seen = 0;
    for provider in ["proxy", "haproxy", "nginx", "exec", "http", "gateway-api"] {
        for metrics in ["builtin", "prometheus", "haproxy"] {
            let out = run(&["init", "--provider", provider, "--metrics", metrics]);
            if out.status.code() != Some(0) {
                continue;
            }
            seen += 1;
            let errors = schema_errors(&v, &as_json(&text(&out).0));
            assert!(errors.is_empty(), "{provider} + {metrics}: {errors:#?}");
        }
    }
    assert_eq!(seen, 8);
}

/// Every table of a policy, as a JSON pointer to it.
fn tables(doc: &Value, at: &str, out: &mut Vec<String>) {
    match doc {
        Value::Object(o) => {
            out.push(at.to_string());
            for (k, v) in o {
                // Maps of user-chosen names (headers, variables, weights) take any key.
                if !matches!(k.as_str(), "headers" | "variables" | "weights") {
                    tables(v, &format!("{at}/{k}"), out);
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                tables(v, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn parser_accepts(doc: &Value, file: &Path) -> bool {
    let t: toml::Table = serde_json::from_value(doc.clone()).unwrap();
    policy::parse(&toml::to_string(&t).unwrap(), &file.display().to_string()).is_ok()
}

/// Structural mistakes in every table of every shipped policy: an unknown key, each key
/// left out in turn, each value replaced by one of another type. Whatever the schema
/// refuses, the parser refuses too (an editor never flags a policy `validate` accepts), and
/// an unknown key is refused by both.
#[test]
fn the_schema_is_never_stricter_than_the_parser() {
    let v = validator();
    let mut refused_by_both = 0;
    for file in shipped() {
        let doc = as_json(&fs::read_to_string(&file).unwrap());
        let mut at = Vec::new();
        tables(&doc, "", &mut at);
        for pointer in at {
            let mut unknown = doc.clone();
            unknown
                .pointer_mut(&pointer)
                .unwrap()
                .as_object_mut()
                .unwrap()
                .insert("no_such_key".into(), Value::from(1));
            // `prior` and the like are inline tables of a metric: closed as well.
            assert!(
                !v.is_valid(&unknown),
                "{}: the schema takes an unknown key at {pointer:?}",
                file.display()
            );
            assert!(!parser_accepts(&unknown, &file), "{}", file.display());
            refused_by_both += 1;
            let keys: Vec<String> = doc
                .pointer(&pointer)
                .unwrap()
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            for k in keys {
                let mut without = doc.clone();
                without
                    .pointer_mut(&pointer)
                    .unwrap()
                    .as_object_mut()
                    .unwrap()
                    .remove(&k);
                let mut retyped = doc.clone();
                let slot = retyped.pointer_mut(&format!("{pointer}/{k}")).unwrap();
                *slot = match slot {
                    Value::String(_) => Value::from(7),
                    _ => Value::from("seven"),
                };
                for (what, mutated) in [("without", without), ("retyped", retyped)] {
                    if !v.is_valid(&mutated) {
                        assert!(
                            !parser_accepts(&mutated, &file),
                            "{}: {what} {pointer}/{k}: the schema refuses what validate accepts: \
                             {:#?}",
                            file.display(),
                            schema_errors(&v, &mutated)
                        );
                    }
                }
            }
        }
    }
    assert!(refused_by_both > 40, "{refused_by_both} tables checked");
}

/// The keys of a schema section (a `properties` object), recursively through `oneOf` and
/// `items`.
fn schema_keys(v: &Value, out: &mut std::collections::BTreeSet<String>) {
    if let Some(Value::Object(p)) = v.get("properties") {
        for (k, s) in p {
            out.insert(k.clone());
            schema_keys(s, out);
        }
    }
    if let Some(Value::Array(items)) = v.get("oneOf") {
        for s in items {
            schema_keys(s, out);
        }
    }
    if let Some(items) = v.get("items") {
        schema_keys(items, out);
    }
}

/// The README's policy reference, with the provider and Prometheus pages it sends readers to
/// for those keys, names every key of the schema (as `key`, `key = ...` or a `[section]`).
#[test]
fn the_policy_reference_names_every_key() {
    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme
        .find("## Policy reference")
        .expect("a policy reference");
    let end = readme[start + 3..]
        .find("\n## ")
        .map_or(readme.len(), |e| e + start + 3);
    let mut reference = readme[start..end].to_string();
    for page in ["docs/providers.md", "docs/prometheus.md"] {
        assert!(reference.contains(page), "the reference links {page}");
        reference.push_str(&fs::read_to_string(root().join(page)).unwrap());
    }
    let mut keys = std::collections::BTreeSet::new();
    schema_keys(
        &serde_json::from_str(&policy::schema::schema_text()).unwrap(),
        &mut keys,
    );
    assert!(keys.len() > 100, "{} keys", keys.len());
    let named = |k: &str| {
        [
            format!("`{k}`"),
            format!("\n{k} ="),
            format!("\n# {k} ="),
            format!(" {k} ="),
            format!("[{k}]"),
            format!(".{k}]"),
        ]
        .iter()
        .any(|p| reference.contains(p.as_str()))
    };
    let missing: Vec<&String> = keys.iter().filter(|k| !named(k)).collect();
    assert!(
        missing.is_empty(),
        "the policy reference (README, docs/providers.md, docs/prometheus.md) does not name \
         {missing:?}"
    );
}
