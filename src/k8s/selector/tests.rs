use std::collections::BTreeMap;

use kube::core::SelectorExt;

use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn matches(selector: &str, pairs: &[(&str, &str)]) -> bool {
    parse_selector(selector).unwrap().matches(&labels(pairs))
}

#[test]
fn every_operator() {
    let web = [("app", "reasoning-suite"), ("tier", "gpu"), ("app.kubernetes.io/part-of", "ai")];
    assert!(matches("", &web));
    assert!(matches("app=reasoning-suite", &web));
    assert!(matches("app==reasoning-suite", &web));
    assert!(!matches("app!=reasoning-suite", &web));
    assert!(matches("app!=other", &web));
    assert!(matches("app in (reasoning-suite, other)", &web));
    assert!(!matches("app notin (reasoning-suite)", &web));
    assert!(matches("tier", &web));
    assert!(!matches("!tier", &web));
    assert!(matches("!canary", &web));
    assert!(matches("app.kubernetes.io/part-of=ai,tier in (gpu),!canary", &web));
    assert!(!matches("app=reasoning-suite,tier=cpu", &web));
    assert!(matches("  app = reasoning-suite ,  tier  ", &web));
    // notin and != also match pods without the key, as in Kubernetes.
    assert!(matches("canary notin (yes)", &web));
    assert!(matches("canary!=yes", &web));
    // An empty value.
    assert!(matches("empty=", &[("empty", "")]));
    assert!(matches("x in (a,)", &[("x", "")]));
}

#[test]
fn parse_errors_say_what_and_where() {
    let cases = [
        ("app=", None),
        ("app==reasoning,", Some("expected a requirement after ','")),
        ("app in reasoning", Some("expected '(' after in/notin")),
        ("app in ()", Some("must not be empty")),
        ("app in (a b)", Some("expected ',' or ')'")),
        ("app in (a", Some("unclosed '('")),
        ("=web", Some("expected a label key")),
        ("app===web", Some("expected a value")),
        ("app=-web", Some("invalid value")),
        ("-app=web", Some("invalid key")),
        ("Example.COM/app=web", Some("prefix must be a lowercase DNS subdomain")),
        ("gpus>1", Some("'>' and '<' are not supported")),
        ("app web", Some("expected an operator")),
        ("app=web)", Some("expected ',' or the end")),
        (",", Some("expected a label key")),
    ];
    for (input, reason) in cases {
        match (parse_selector(input), reason) {
            (Ok(_), None) => {}
            (Err(e), Some(reason)) => assert!(e.to_string().contains(reason), "{input}: {e}"),
            (result, _) => panic!("{input}: unexpected {result:?}"),
        }
    }
    let e = parse_selector("app=web,tier in (a b)").unwrap_err();
    assert_eq!(e.position, 19);
}

#[test]
fn long_keys_values_and_selectors_are_refused() {
    let long = "a".repeat(64);
    assert!(parse_selector(&format!("{long}=x")).is_err());
    assert!(parse_selector(&format!("x={long}")).is_err());
    assert!(parse_selector(&format!("x={}", "a".repeat(63))).is_ok());
    let huge = "a=b,".repeat(2000);
    let e = parse_selector(&huge).unwrap_err();
    assert!(e.reason.contains("longer than"));
    assert!(e.input.len() < 100);
}

#[test]
fn arbitrary_input_never_panics() {
    let mut rng = fastrand::Rng::with_seed(11);
    let alphabet: Vec<char> = "ab=!,() in notin/.-_xyz\u{e9}<>\t".chars().collect();
    for _ in 0..20_000 {
        let len = rng.usize(0..24);
        let s: String = (0..len).map(|_| alphabet[rng.usize(0..alphabet.len())]).collect();
        let _ = parse_selector(&s);
    }
}

mod properties {
    use std::collections::{BTreeMap, BTreeSet};

    use kube::core::SelectorExt;
    use proptest::prelude::*;

    use super::super::parse_selector;

    #[derive(Clone, Debug)]
    enum Req {
        Eq(String, String),
        NotEq(String, String),
        In(String, BTreeSet<String>),
        NotIn(String, BTreeSet<String>),
        Exists(String),
        Absent(String),
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof!["[a-c]", "[a-c]\\.io/[a-c]"]
    }

    fn value() -> impl Strategy<Value = String> {
        "[xyz]{0,2}"
    }

    fn requirement() -> impl Strategy<Value = Req> {
        prop_oneof![
            (key(), value()).prop_map(|(k, v)| Req::Eq(k, v)),
            (key(), value()).prop_map(|(k, v)| Req::NotEq(k, v)),
            (key(), prop::collection::btree_set("[xyz]{1,2}", 1..3)).prop_map(|(k, v)| Req::In(k, v)),
            (key(), prop::collection::btree_set("[xyz]{1,2}", 1..3)).prop_map(|(k, v)| Req::NotIn(k, v)),
            key().prop_map(Req::Exists),
            key().prop_map(Req::Absent),
        ]
    }

    fn render(r: &Req) -> String {
        let set = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(" , ");
        match r {
            Req::Eq(k, v) => format!("{k} == {v}"),
            Req::NotEq(k, v) => format!("{k}!={v}"),
            Req::In(k, s) => format!("{k} in ( {} )", set(s)),
            Req::NotIn(k, s) => format!("{k} notin ({})", set(s)),
            Req::Exists(k) => k.clone(),
            Req::Absent(k) => format!("!{k}"),
        }
    }

    /// Kubernetes' semantics, written out independently of kube-core.
    fn holds(r: &Req, labels: &BTreeMap<String, String>) -> bool {
        match r {
            Req::Eq(k, v) => labels.get(k) == Some(v),
            Req::NotEq(k, v) => labels.get(k) != Some(v),
            Req::In(k, s) => labels.get(k).is_some_and(|v| s.contains(v)),
            Req::NotIn(k, s) => labels.get(k).is_none_or(|v| !s.contains(v)),
            Req::Exists(k) => labels.contains_key(k),
            Req::Absent(k) => !labels.contains_key(k),
        }
    }

    proptest! {
        #[test]
        fn valid_selectors_parse_and_match_as_kubernetes_does(
            reqs in prop::collection::vec(requirement(), 1..4),
            labels in prop::collection::btree_map(key(), value(), 0..4),
        ) {
            let text = reqs.iter().map(render).collect::<Vec<_>>().join(",");
            let selector = parse_selector(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(selector.matches(&labels), reqs.iter().all(|r| holds(r, &labels)), "{}", text);
        }

        #[test]
        fn any_string_is_refused_or_accepted_without_panic(text in "\\PC{0,40}") {
            let _ = parse_selector(&text);
        }
    }
}
