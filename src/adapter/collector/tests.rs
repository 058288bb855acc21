use proptest::prelude::*;

use super::*;
use crate::feed::{FeedGpu, FeedPod};

fn gpu() -> impl Strategy<Value = FeedGpu> {
    (0u32..8, "GPU-[a-f0-9]{8}", any::<bool>(), prop::option::of(0.0f64..100.0), prop::option::of(any::<u64>()))
        .prop_map(|(index, uuid, up, util, used)| FeedGpu {
            index,
            uuid,
            model: "NVIDIA GeForce RTX 4090".into(),
            up,
            utilization_percent: util,
            memory_utilization_percent: util.map(|u| u / 2.0),
            memory_used_bytes: used,
            memory_total_bytes: Some(24 << 30),
        })
}

fn pod() -> impl Strategy<Value = FeedPod> {
    ("[a-z]{1,10}", "[a-z0-9-]{1,20}", prop::option::of(0.0f64..100.0), prop::option::of("[a-z-]{1,12}")).prop_map(
        |(namespace, pod, util, reason)| FeedPod {
            namespace,
            pod,
            gpus: vec!["GPU-0".into()],
            sharing: "shared".into(),
            utilization_percent: util,
            memory_utilization_percent: None,
            memory_used_bytes: None,
            reason,
        },
    )
}

proptest! {
    #[test]
    fn every_feed_an_agent_writes_decodes_to_itself(
        node in "[a-z0-9-]{1,20}",
        timestamp_ms in any::<u64>(),
        gpus in prop::collection::vec(gpu(), 0..4),
        pods in prop::collection::vec(pod(), 0..6),
    ) {
        let feed = NodeFeed { node, timestamp_ms, interval_ms: 1000, gpus, pods };
        let bytes = serde_json::to_vec(&feed).unwrap();
        prop_assert_eq!(decode_feed("http://agent", &bytes).unwrap(), feed);
    }

    #[test]
    fn arbitrary_bytes_are_refused_or_decoded_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_feed("http://agent", &bytes);
    }
}

#[test]
fn a_refused_feed_names_the_agent() {
    let err = decode_feed("http://10.42.0.7:9402", b"{\"node\": 3}").unwrap_err();
    assert!(err.to_string().contains("http://10.42.0.7:9402"), "{err}");
}
