//! Fuzz-like property tests: bad input never panics the policy parser, and every problem
//! points inside the file.

use coalmine::policy;
use proptest::prelude::*;

const BASE: &str = include_str!("../../fixtures/policies/valid/full.toml");

fn check(src: &str) {
    if let Err(d) = policy::parse(src, "p.toml") {
        let lines = src.lines().count().max(1) + 1;
        for item in d.items() {
            let (l, c) = d.line_col(item.span.start);
            assert!(l >= 1 && l <= lines && c >= 1, "{l}:{c} outside the file");
            assert!(!item.message.is_empty());
        }
        assert!(!d.to_string().is_empty());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(src in "\\PC{0,400}") {
        check(&src);
    }

    #[test]
    fn mutated_policies_never_panic(
        cut in 0usize..BASE.len(),
        len in 0usize..40,
        insert in "[\\[\\]=\"',.0-9a-z_ \n{}-]{0,12}",
    ) {
        let mut s: Vec<char> = BASE.chars().collect();
        let cut = cut.min(s.len());
        let end = (cut + len).min(s.len());
        s.splice(cut..end, insert.chars());
        let src: String = s.into_iter().collect();
        check(&src);
    }

    #[test]
    fn replaced_values_never_panic(
        line in 0usize..80,
        value in prop_oneof![
            Just("-1".to_string()), Just("1e400".to_string()), Just("nan".to_string()),
            Just("inf".to_string()), Just("\"\"".to_string()), Just("[]".to_string()),
            Just("{}".to_string()), Just("true".to_string()), Just("0".to_string()),
            Just("18446744073709551615".to_string()), Just("\"0s\"".to_string()),
            Just("\"{{\"".to_string()), Just("[1, \"a\"]".to_string()),
        ],
    ) {
        let src: String = BASE
            .lines()
            .enumerate()
            .map(|(i, l)| match l.split_once(" = ") {
                Some((k, _)) if i == line => format!("{k} = {value}\n"),
                _ => format!("{l}\n"),
            })
            .collect();
        check(&src);
    }
}
