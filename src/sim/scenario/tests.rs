use super::*;

const STEP_UP: &str =
    "workloads:\n  reasoning-suite:\n    - {for: 30s, load: 40}\n    - {for: 1m, load: 95}\n    - {load: 20}\n";

#[test]
fn steps_follow_each_other_and_the_last_holds() {
    let s = Scenario::parse(STEP_UP, Path::new("s.yaml")).unwrap();
    let at = |secs| s.load("reasoning-suite", Duration::from_secs(secs));
    assert_eq!(at(0), Some(40.0));
    assert_eq!(at(29), Some(40.0));
    assert_eq!(at(30), Some(95.0));
    assert_eq!(at(89), Some(95.0));
    assert_eq!(at(90), Some(20.0));
    assert_eq!(at(100_000), Some(20.0));
    assert_eq!(s.load("tutoring-suite", Duration::ZERO), None);
}

#[test]
fn a_last_step_with_a_duration_still_holds() {
    let s = Scenario::parse("workloads:\n  a:\n    - {for: 10s, load: 5}\n", Path::new("s")).unwrap();
    assert_eq!(s.load("a", Duration::from_secs(60)), Some(5.0));
}

#[test]
fn mistakes_are_named() {
    for (text, needle) in [
        ("workloads:\n  a:\n    - {for: 10s, load: 1500}\n", "within 0..=1000"),
        ("workloads:\n  a:\n    - {for: soon, load: 5}\n", "for \"soon\""),
        ("workloads:\n  a: []\n", "no steps"),
        ("workloads:\n  a:\n    - {lod: 5}\n", "unknown field"),
        (
            "workloads:\n  a:\n    - {for: 1s, load: 10}\n    - {for: 18446744073709551615s, load: 95}\n",
            "at most 30days",
        ),
        ("workloads:\n  a:\n    - {for: 31days, load: 5}\n", "for \"31days\": at most 30days"),
    ] {
        let err = Scenario::parse(text, Path::new("s.yaml")).unwrap_err().to_string();
        assert!(err.contains(needle) && err.contains("--scenario"), "{text}: {err}");
    }
}

#[test]
fn the_longest_steps_add_up_without_overflow() {
    let steps = "    - {for: 30days, load: 10}\n".repeat(MAX_STEPS - 1) + "    - {load: 20}\n";
    let s = Scenario::parse(&format!("workloads:\n  a:\n{steps}"), Path::new("s")).unwrap();
    assert_eq!(s.load("a", Duration::MAX), Some(20.0));
    let too_many = "    - {for: 1s, load: 10}\n".repeat(MAX_STEPS + 1);
    let err = Scenario::parse(&format!("workloads:\n  a:\n{too_many}"), Path::new("s")).unwrap_err();
    assert!(err.to_string().contains("10001 steps: at most 10000"), "{err}");
}
