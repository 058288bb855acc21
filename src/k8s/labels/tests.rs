use super::*;

fn maps() -> LabelMaps {
    let mut maps = LabelMaps::default();
    let pods = maps.pods.entry("ns".into()).or_default();
    for (name, app, tier) in [("p3", "web", "a"), ("p1", "web", "b"), ("p2", "db", "a"), ("p4", "cache", "b")] {
        pods.insert(name.into(), [("app".into(), app.into()), ("tier".into(), tier.into())].into_iter().collect());
    }
    maps
}

fn candidates(selector: &str) -> Option<Vec<String>> {
    let index = IndexedLabels::new(maps());
    let selector = crate::k8s::selector::parse_selector(selector).unwrap();
    index.candidates("ns", &selector).map(|names| names.into_iter().map(str::to_string).collect())
}

#[test]
fn a_required_value_narrows_the_pods_to_look_at() {
    assert_eq!(candidates("app=web").unwrap(), ["p1", "p3"]);
    assert_eq!(candidates("app in (db,web)").unwrap(), ["p1", "p2", "p3"]);
    // The most selective requirement wins.
    assert_eq!(candidates("tier=a,app=db").unwrap(), ["p2"]);
    assert_eq!(candidates("app=none").unwrap(), Vec::<String>::new());
}

#[test]
fn selectors_without_a_required_value_scan_every_pod() {
    for selector in ["", "tier", "!canary", "app!=web", "app notin (web)"] {
        assert_eq!(candidates(selector), None, "{selector}");
    }
    let index = IndexedLabels::new(maps());
    let selector = crate::k8s::selector::parse_selector("app=web").unwrap();
    assert_eq!(index.candidates("other-namespace", &selector), Some(vec![]));
}
