//! Quantities: parsing never panics, and a parsed value formats to a
//! canonical string that parses back to it at milli precision.
#![no_main]

use kube_gpu_metrics::adapter::quantity::{format_quantity, parse_quantity};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(value) = parse_quantity(text)
        && value.is_finite()
        && value.abs() < 1e15
    {
        let formatted = format_quantity(value);
        let back = parse_quantity(&formatted).expect("a formatted quantity parses");
        assert!((back - value).abs() <= 0.0005 + value.abs() * 1e-12, "{text:?} -> {value} -> {formatted} -> {back}");
    }
    if data.len() == 8 {
        let value = f64::from_le_bytes(data.try_into().unwrap());
        let formatted = format_quantity(value);
        if value.is_finite() && value.abs() < 1e15 {
            let back = parse_quantity(&formatted).expect("a formatted quantity parses");
            assert!((back - value).abs() <= 0.0005 + value.abs() * 1e-12, "{value} -> {formatted} -> {back}");
        }
    }
});
