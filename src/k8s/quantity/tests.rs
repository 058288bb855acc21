use super::*;

#[test]
fn formats_like_resource_quantity() {
    for (value, expected) in [
        (42.5, "42500m"),
        (70.0, "70"),
        (0.0, "0"),
        (0.5, "500m"),
        (0.0004, "0"),
        (0.0005, "1m"),
        (100.0, "100"),
        (1000.0, "1k"),
        (2000.0, "2k"),
        (1500.0, "1500"),
        (33.333333, "33333m"),
        (8_589_934_592.0, "8589934592"),
        (25_769_803_776_000.0, "25769803776k"),
        (3e9, "3G"),
        (-2.5, "-2500m"),
        (f64::NAN, "0"),
    ] {
        assert_eq!(format_quantity(value), expected, "{value}");
    }
}

#[test]
fn parses_hpa_targets() {
    for (input, expected) in [
        ("70", 70.0),
        ("500m", 0.5),
        ("42500m", 42.5),
        ("1.5", 1.5),
        ("2k", 2000.0),
        ("1Gi", 1073741824.0),
        ("1e3", 1000.0),
        ("1E3", 1000.0),
        ("1E", 1e18),
        ("2P", 2e15),
        ("+3", 3.0),
        ("-1", -1.0),
        (" 7 ", 7.0),
    ] {
        assert_eq!(parse_quantity(input).unwrap(), expected, "{input}");
    }
}

#[test]
fn refuses_what_kubernetes_refuses() {
    for input in ["", "m", "1x", "1.2.3", "--1", "1e", "1e99", "abc", "1 k", "."] {
        assert!(parse_quantity(input).is_err(), "{input} parsed");
    }
}

#[test]
fn formatting_round_trips_at_milli_precision() {
    for i in -2000..2000 {
        let v = f64::from(i) * 0.37;
        let parsed = parse_quantity(&format_quantity(v)).unwrap();
        assert!((parsed - v).abs() <= 0.0005 + 1e-9, "{v} -> {} -> {parsed}", format_quantity(v));
    }
}

mod properties {
    use proptest::prelude::*;

    use super::super::{format_quantity, parse_quantity};

    proptest! {
        #[test]
        fn formatted_values_parse_back_at_milli_precision(value in -1e12f64..1e12) {
            let text = format_quantity(value);
            let back = parse_quantity(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!((back - value).abs() <= 0.0005 + value.abs() * 1e-12, "{} -> {} -> {}", value, text, back);
        }

        #[test]
        fn any_string_parses_or_is_refused_without_panic(text in "\\PC{0,30}") {
            let _ = parse_quantity(&text);
        }
    }
}
