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
