//! Label selector strings: never a panic; an accepted selector matches any
//! label map without one.
#![no_main]

use std::collections::BTreeMap;

use kube::core::SelectorExt;
use kube_gpu_metrics::adapter::selector::parse_selector;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(selector) = parse_selector(text) {
        let labels: BTreeMap<String, String> =
            [("app".to_string(), "reasoning-suite".to_string()), ("tier".to_string(), String::new())].into();
        let _ = selector.matches(&labels);
        let _ = selector.matches(&BTreeMap::new());
    }
});
