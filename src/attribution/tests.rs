use super::*;
use crate::gpu::ProcessSample;

fn gpu(index: u32, uuid: &str) -> GpuIdentity {
    GpuIdentity {
        index,
        uuid: uuid.to_string(),
        model: "NVIDIA GeForce RTX 4090".to_string(),
        ..GpuIdentity::default()
    }
}

fn alloc(pod: &str, container: &str, uid: Option<&str>, ids: &[&str]) -> ContainerAllocation {
    ContainerAllocation {
        namespace: "ai-system-gpu".to_string(),
        pod: pod.to_string(),
        container: container.to_string(),
        pod_uid: uid.map(str::to_string),
        device_ids: ids.iter().map(|s| s.to_string()).collect(),
    }
}

fn reading(util: f64) -> GpuReading {
    GpuReading {
        utilization_percent: Some(util),
        memory_utilization_percent: Some(util / 2.0),
        memory_used_bytes: Some(1 << 30),
        ..GpuReading::default()
    }
}

fn sample(pid: u32, sm: u32) -> ProcessSample {
    ProcessSample { pid, timestamp_us: 1, sm_percent: sm, memory_percent: sm / 2 }
}

#[test]
fn device_ids_match_by_uuid_replica_or_index() {
    let g = gpu(1, "GPU-abc");
    assert!(device_matches("GPU-abc", &g));
    assert!(device_matches("GPU-abc::3", &g));
    assert!(device_matches("1", &g));
    assert!(!device_matches("0", &g));
    assert!(!device_matches("GPU-abcd", &g));
    assert!(!device_matches("GPU-ab", &g));
}

#[test]
fn an_exclusive_gpu_gives_its_container_the_device_values() {
    let (g0, g1) = (gpu(0, "GPU-a"), gpu(1, "GPU-b"));
    let (r0, r1) = (reading(42.0), reading(7.0));
    let none = ProcessUsage::NotRead;
    let views = [
        GpuView { identity: Some(&g0), up: true, reading: &r0, processes: &none },
        GpuView { identity: Some(&g1), up: true, reading: &r1, processes: &none },
    ];
    let usages = attribute(&views, &[alloc("p", "c", None, &["GPU-b"])], |_| None);
    assert_eq!(usages.len(), 1);
    assert_eq!(usages[0].gpu, 1);
    assert_eq!(usages[0].sharing, Sharing::Exclusive);
    assert_eq!(usages[0].utilization_percent, Ok(7.0));
    assert_eq!(usages[0].memory_used_bytes, Some(1 << 30));
}

#[test]
fn a_down_gpu_gives_a_reason_not_a_number() {
    let g = gpu(0, "GPU-a");
    let r = GpuReading::default();
    let none = ProcessUsage::NotRead;
    let views = [GpuView { identity: Some(&g), up: false, reading: &r, processes: &none }];
    let usages = attribute(&views, &[alloc("p", "c", None, &["GPU-a"])], |_| None);
    assert_eq!(usages[0].utilization_percent, Err(Unresolved::GpuDown));
    assert_eq!(usages[0].memory_used_bytes, None);
}

#[test]
fn a_shared_gpu_is_split_by_process_samples() {
    let g = gpu(0, "GPU-a");
    let r = reading(70.0);
    // pid 10 (pod A) averages 40 over two samples; pid 11 and 12 (pod B) add to 30.
    let samples =
        ProcessUsage::Samples(vec![sample(10, 50), sample(10, 30), sample(11, 20), sample(12, 10), sample(99, 5)]);
    let views = [GpuView { identity: Some(&g), up: true, reading: &r, processes: &samples }];
    let allocations = [
        alloc("a", "main", Some("uid-a"), &["GPU-a::0"]),
        alloc("b", "main", Some("uid-b"), &["GPU-a::1"]),
        alloc("c", "main", Some("uid-c"), &["GPU-a::2"]),
    ];
    let uid = |pid| match pid {
        10 => Some("uid-a".to_string()),
        11 | 12 => Some("uid-b".to_string()),
        _ => None,
    };
    let usages = attribute(&views, &allocations, uid);
    let by_pod: HashMap<&str, &PodGpuUsage> = usages.iter().map(|u| (u.pod.as_str(), u)).collect();
    assert_eq!(by_pod["a"].utilization_percent, Ok(40.0));
    assert_eq!(by_pod["b"].utilization_percent, Ok(30.0));
    // Pod c ran nothing in the window.
    assert_eq!(by_pod["c"].utilization_percent, Ok(0.0));
    assert!(usages.iter().all(|u| u.sharing == Sharing::Shared && u.memory_used_bytes.is_none()));
}

#[test]
fn a_shared_gpu_without_process_data_says_why() {
    let g = gpu(0, "GPU-a");
    let r = reading(70.0);
    let unsupported = ProcessUsage::Unsupported;
    let views = [GpuView { identity: Some(&g), up: true, reading: &r, processes: &unsupported }];
    let allocations = [alloc("a", "m", Some("ua"), &["GPU-a::0"]), alloc("b", "m", Some("ub"), &["GPU-a::1"])];
    let usages = attribute(&views, &allocations, |_| None);
    assert_eq!(usages.len(), 2);
    assert!(usages.iter().all(|u| u.utilization_percent == Err(Unresolved::ProcessUtilizationUnsupported)));

    let samples = ProcessUsage::Samples(vec![sample(1, 10)]);
    let views = [GpuView { identity: Some(&g), up: true, reading: &r, processes: &samples }];
    let allocations = [alloc("a", "m", None, &["GPU-a::0"]), alloc("b", "m", Some("ub"), &["GPU-a::1"])];
    let usages = attribute(&views, &allocations, |_| Some("ub".to_string()));
    assert_eq!(usages[0].utilization_percent, Err(Unresolved::PodUidUnknown));
    assert_eq!(usages[1].utilization_percent, Ok(10.0));
}

#[test]
fn containers_of_one_pod_on_a_shared_gpu_are_reported_once() {
    let g = gpu(0, "GPU-a");
    let r = reading(50.0);
    let samples = ProcessUsage::Samples(vec![sample(1, 30)]);
    let views = [GpuView { identity: Some(&g), up: true, reading: &r, processes: &samples }];
    let allocations = [
        alloc("a", "model", Some("ua"), &["GPU-a::0"]),
        alloc("a", "sidecar", Some("ua"), &["GPU-a::1"]),
        alloc("b", "main", Some("ub"), &["GPU-a::2"]),
    ];
    let usages = attribute(&views, &allocations, |_| Some("ua".to_string()));
    assert_eq!(usages.len(), 2);
    assert_eq!(usages[0].container, "model,sidecar");
    assert_eq!(usages[0].utilization_percent, Ok(30.0));
}

#[test]
fn time_slice_replicas_of_one_gpu_count_as_shared() {
    let a = |ids: &[&str]| ContainerAllocation {
        namespace: "ns".into(),
        pod: "p".into(),
        container: "c".into(),
        pod_uid: None,
        device_ids: ids.iter().map(|s| s.to_string()).collect(),
    };
    assert!(kubelet::any_gpu_shared(&[a(&["GPU-1::0"]), a(&["GPU-1::1"])]));
    assert!(!kubelet::any_gpu_shared(&[a(&["GPU-1"]), a(&["GPU-2"])]));
    assert!(!kubelet::any_gpu_shared(&[]));
}
