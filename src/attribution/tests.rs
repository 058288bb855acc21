use super::*;
use crate::gpu::{GpuProcess, ProcessSample};

const NOT_LISTED: RunningProcesses = RunningProcesses::NotRead;

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
        GpuView { identity: Some(&g0), up: true, reading: &r0, processes: &none, running: &NOT_LISTED },
        GpuView { identity: Some(&g1), up: true, reading: &r1, processes: &none, running: &NOT_LISTED },
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
    let views = [GpuView { identity: Some(&g), up: false, reading: &r, processes: &none, running: &NOT_LISTED }];
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
    let views = [GpuView { identity: Some(&g), up: true, reading: &r, processes: &samples, running: &NOT_LISTED }];
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
    // Without the running-process lists, no pod's memory is known.
    assert!(usages.iter().all(|u| u.sharing == Sharing::Shared && u.memory_used_bytes.is_none()));
}

#[test]
fn a_shared_gpu_without_process_data_says_why() {
    let g = gpu(0, "GPU-a");
    let r = reading(70.0);
    let unsupported = ProcessUsage::Unsupported;
    let views = [GpuView { identity: Some(&g), up: true, reading: &r, processes: &unsupported, running: &NOT_LISTED }];
    let allocations = [alloc("a", "m", Some("ua"), &["GPU-a::0"]), alloc("b", "m", Some("ub"), &["GPU-a::1"])];
    let usages = attribute(&views, &allocations, |_| None);
    assert_eq!(usages.len(), 2);
    assert!(usages.iter().all(|u| u.utilization_percent == Err(Unresolved::ProcessUtilizationUnsupported)));

    let samples = ProcessUsage::Samples(vec![sample(1, 10)]);
    let views = [GpuView { identity: Some(&g), up: true, reading: &r, processes: &samples, running: &NOT_LISTED }];
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
    let views = [GpuView { identity: Some(&g), up: true, reading: &r, processes: &samples, running: &NOT_LISTED }];
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

fn process(pid: u32, mib: Option<u64>, kind: ProcessKind) -> GpuProcess {
    GpuProcess { pid, used_memory_bytes: mib.map(|m| m << 20), kind }
}

fn uid_of(pid: u32) -> Option<String> {
    match pid {
        10 | 11 => Some("uid-a".to_string()),
        20 => Some("uid-b".to_string()),
        _ => None,
    }
}

#[test]
fn pods_on_a_shared_gpu_get_their_own_processes_memory() {
    let g = gpu(0, "GPU-a");
    let r = GpuReading { memory_used_bytes: Some(16 << 30), ..reading(70.0) };
    let samples = ProcessUsage::Samples(vec![sample(10, 30), sample(20, 20)]);
    // Pod a: two processes, one in both the compute and graphics lists
    // (counted once); pod b: one; pid 99 is outside any pod and pid 98 is
    // the host's (Xorg): their memory stays on the device series only.
    let running = RunningProcesses::Listed(vec![
        process(10, Some(2048), ProcessKind::Compute),
        process(11, Some(512), ProcessKind::Compute),
        process(11, Some(512), ProcessKind::Graphics),
        process(20, Some(1024), ProcessKind::Compute),
        process(99, Some(4096), ProcessKind::Compute),
        process(98, Some(300), ProcessKind::Graphics),
    ]);
    let views = [GpuView { identity: Some(&g), up: true, reading: &r, processes: &samples, running: &running }];
    let allocations = [
        alloc("a", "main", Some("uid-a"), &["GPU-a::0"]),
        alloc("b", "main", Some("uid-b"), &["GPU-a::1"]),
        alloc("c", "main", Some("uid-c"), &["GPU-a::2"]),
        alloc("d", "main", None, &["GPU-a::3"]),
    ];
    let usages = attribute(&views, &allocations, uid_of);
    let by_pod: HashMap<&str, &PodGpuUsage> = usages.iter().map(|u| (u.pod.as_str(), u)).collect();
    assert_eq!(by_pod["a"].memory_used_bytes, Some(2560 << 20));
    assert_eq!(by_pod["b"].memory_used_bytes, Some(1024 << 20));
    assert_eq!(by_pod["c"].memory_used_bytes, Some(0), "a pod with no process holds nothing");
    assert_eq!(by_pod["d"].memory_used_bytes, None, "no UID, no processes to sum");
    let attributed: u64 = usages.iter().filter_map(|u| u.memory_used_bytes).sum();
    assert!(attributed < r.memory_used_bytes.unwrap(), "memory outside pods is not spread over them");
}

#[test]
fn a_process_whose_memory_nvml_cannot_tell_makes_its_pods_memory_unknown() {
    let g = gpu(0, "GPU-a");
    let r = reading(10.0);
    let samples = ProcessUsage::Samples(vec![]);
    let running = RunningProcesses::Listed(vec![
        process(10, Some(100), ProcessKind::Compute),
        process(11, None, ProcessKind::Compute),
        process(20, Some(100), ProcessKind::Compute),
    ]);
    let views = [GpuView { identity: Some(&g), up: true, reading: &r, processes: &samples, running: &running }];
    let allocations = [alloc("a", "m", Some("uid-a"), &["GPU-a::0"]), alloc("b", "m", Some("uid-b"), &["GPU-a::1"])];
    let usages = attribute(&views, &allocations, uid_of);
    assert_eq!(usages[0].memory_used_bytes, None);
    assert_eq!(usages[1].memory_used_bytes, Some(100 << 20));

    let unavailable = RunningProcesses::Unavailable;
    let views = [GpuView { identity: Some(&g), up: true, reading: &r, processes: &samples, running: &unavailable }];
    let usages = attribute(&views, &allocations, uid_of);
    assert!(usages.iter().all(|u| u.memory_used_bytes.is_none()), "lists unreadable: no pod's memory");
}

#[test]
fn an_exclusive_gpu_gives_its_pod_its_processes_memory_where_they_can_be_listed() {
    let g = gpu(0, "GPU-a");
    let r = reading(50.0);
    let none = ProcessUsage::NotRead;
    // The host's display server holds 300 MiB of the pod's GPU.
    let running = RunningProcesses::Listed(vec![
        process(10, Some(6144), ProcessKind::Compute),
        process(98, Some(300), ProcessKind::Graphics),
    ]);
    let views = [GpuView { identity: Some(&g), up: true, reading: &r, processes: &none, running: &running }];
    let usages = attribute(&views, &[alloc("a", "m", Some("uid-a"), &["GPU-a"])], uid_of);
    assert_eq!(usages[0].memory_used_bytes, Some(6144 << 20));
    // No UID (no checkpoint) or no lists: the pod holds the whole GPU, so
    // it gets the device's value, as before.
    let usages = attribute(&views, &[alloc("a", "m", None, &["GPU-a"])], uid_of);
    assert_eq!(usages[0].memory_used_bytes, Some(1 << 30));
}

#[test]
fn mps_clients_get_their_memory_and_a_reason_when_no_sample_names_them() {
    let g = gpu(0, "GPU-a");
    let r = reading(60.0);
    // The MPS server (pid 5, in no pod) runs the clients' kernels: the
    // samples name only it.
    let samples = ProcessUsage::Samples(vec![sample(5, 60)]);
    let running = RunningProcesses::Listed(vec![
        process(5, Some(64), ProcessKind::Compute),
        process(10, Some(1000), ProcessKind::Mps),
        process(20, Some(2000), ProcessKind::Mps),
    ]);
    let views = [GpuView { identity: Some(&g), up: true, reading: &r, processes: &samples, running: &running }];
    let allocations = [alloc("a", "m", Some("uid-a"), &["GPU-a::0"]), alloc("b", "m", Some("uid-b"), &["GPU-a::1"])];
    let usages = attribute(&views, &allocations, uid_of);
    assert_eq!(usages[0].memory_used_bytes, Some(1000 << 20));
    assert_eq!(usages[1].memory_used_bytes, Some(2000 << 20));
    assert!(usages.iter().all(|u| u.utilization_percent == Err(Unresolved::MpsClientUnsampled)));

    // Where the driver does sample a client, it gets its share.
    let samples = ProcessUsage::Samples(vec![sample(10, 25)]);
    let views = [GpuView { identity: Some(&g), up: true, reading: &r, processes: &samples, running: &running }];
    let usages = attribute(&views, &allocations, uid_of);
    assert_eq!(usages[0].utilization_percent, Ok(25.0));
    assert_eq!(usages[1].utilization_percent, Err(Unresolved::MpsClientUnsampled));
}

#[test]
fn resource_names_match_exactly_or_by_prefix() {
    let names: Vec<String> =
        ["nvidia.com/gpu", "nvidia.com/gpu.shared", "nvidia.com/mig-*"].iter().map(|s| s.to_string()).collect();
    assert!(resource_matches(&names, "nvidia.com/gpu"));
    assert!(resource_matches(&names, "nvidia.com/gpu.shared"));
    assert!(resource_matches(&names, "nvidia.com/mig-1g.10gb"));
    assert!(resource_matches(&names, "nvidia.com/mig-3g.40gb.shared"));
    assert!(!resource_matches(&names, "nvidia.com/gpus"));
    assert!(!resource_matches(&names, "amd.com/gpu"));
}

#[test]
fn dra_devices_of_gpu_drivers_become_gpu_indexes_and_the_rest_are_reported() {
    use podresources::proto::{
        ClaimResource, ContainerResources, DynamicResource, ListPodResourcesResponse, PodResources,
    };
    let claim = |driver: &str, device: &str| ClaimResource {
        cdi_devices: vec![],
        driver_name: driver.into(),
        pool_name: "node".into(),
        device_name: device.into(),
    };
    let response = ListPodResourcesResponse {
        pod_resources: vec![PodResources {
            name: "p".into(),
            namespace: "ns".into(),
            containers: vec![ContainerResources {
                name: "c".into(),
                devices: vec![],
                cpu_ids: vec![],
                memory: vec![],
                dynamic_resources: vec![DynamicResource {
                    claim_name: "gpus".into(),
                    claim_namespace: "ns".into(),
                    claim_resources: vec![
                        claim("gpu.nvidia.com", "gpu-0"),
                        claim("gpu.nvidia.com", "gpu-3"),
                        claim("gpu.nvidia.com", "gpu-x"),
                        claim("gpu.nvidia.com", ""),
                        claim("other.example.com", "gpu-1"),
                    ],
                }],
            }],
        }],
    };
    let listed = podresources::allocations(response, &[], &["gpu.nvidia.com".to_string()]);
    assert_eq!(listed.allocations.len(), 1);
    assert_eq!(listed.allocations[0].device_ids, ["0", "3"]);
    assert!(listed.allocations[0].holds(&gpu(3, "GPU-d")));
    let unplaced: Vec<&str> = listed.unplaced.iter().map(|u| u.device.as_str()).collect();
    assert_eq!(unplaced, ["gpu-x", ""]);
    assert!(listed.unplaced.iter().all(|u| u.claim == "gpus" && u.pod == "p"));
}
