//! Agent feeds as the adapter decodes them: garbage is refused, never a
//! panic, and an accepted feed can be indexed and queried.
#![no_main]

use std::sync::Arc;
use std::time::SystemTime;

use kube_gpu_metrics::adapter::api::{MetricsApi, Query, route};
use kube_gpu_metrics::adapter::collector::decode_feed;
use kube_gpu_metrics::adapter::labels::LabelIndex;
use kube_gpu_metrics::adapter::store::MetricStore;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(feed) = decode_feed("http://fuzz", data) else { return };
    let store = Arc::new(MetricStore::new(None));
    store.publish(&[Arc::new(feed)]);
    let api = MetricsApi::new(store, Arc::new(LabelIndex::default()));
    for path in [
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/ai-system-gpu/pods/%2A/nvidia_gpu_weighted_utilization_percent",
        "/apis/custom.metrics.k8s.io/v1beta1/nodes/%2A/nvidia_gpu_memory_used_bytes",
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/x/nvidia_gpu_weighted_utilization_percent",
    ] {
        let _ = api.respond(&route(path).unwrap(), &Query::default(), SystemTime::now());
    }
});
