use super::*;

#[test]
fn same_seed_same_node_same_load() {
    let a = SimNode::new("mainpc", &[GpuModelId::Rtx4090], 7);
    let b = SimNode::new("mainpc", &[GpuModelId::Rtx4090], 7);
    let request = ReadRequest { processes: true, processes_since_us: 0, health: true, running: true };
    let (ra, rb) = (a.read_at(0, request, 1_000.5), b.read_at(0, request, 1_000.5));
    assert_eq!(ra.identity, rb.identity);
    assert_eq!(ra.reading, rb.reading);
    assert_eq!(ra.processes, rb.processes);
    let other = SimNode::new("mainpc", &[GpuModelId::Rtx4090], 8);
    assert_ne!(other.gpus[0].identity.uuid, a.gpus[0].identity.uuid);
}

#[test]
fn readings_are_plausible_for_the_model() {
    let node = SimNode::new("pc2", &[GpuModelId::Rtx3060], 1);
    for t in 0..300 {
        let read = node.read_at(0, ReadRequest::default(), f64::from(t) * 7.3);
        let r = &read.reading;
        let util = r.utilization_percent.unwrap();
        assert!((0.0..=100.0).contains(&util));
        assert!(r.power_watts.unwrap() <= 170.0 && r.power_watts.unwrap() >= 13.0);
        assert_eq!(r.memory_total_bytes, Some(12 << 30));
        assert!(r.memory_used_bytes.unwrap() <= 12 << 30);
        assert_eq!(read.identity.as_ref().unwrap().model, "NVIDIA GeForce RTX 3060");
    }
}

#[test]
fn load_moves_over_time() {
    let node = SimNode::new("mainpc", &[GpuModelId::Rtx4090], 3);
    let values: std::collections::BTreeSet<u64> = (0..120)
        .map(|t| node.read_at(0, ReadRequest::default(), f64::from(t)).reading.utilization_percent.unwrap() as u64)
        .collect();
    assert!(values.len() > 10, "load barely moved: {values:?}");
}

#[test]
fn process_shares_add_up_to_the_device() {
    let node = SimNode::new("mainpc", &[GpuModelId::Rtx4090], 5);
    for t in 1..100 {
        let read = node.read_at(
            0,
            ReadRequest { processes: true, processes_since_us: 0, health: true, running: true },
            f64::from(t) * 11.0,
        );
        let ProcessUsage::Samples(samples) = &read.processes else { panic!("no samples") };
        let sum: u32 = samples.iter().map(|s| s.sm_percent).sum();
        let util = read.reading.utilization_percent.unwrap();
        assert!((f64::from(sum) - util).abs() <= 2.0, "shares {sum} vs device {util}");
        for s in samples {
            assert!(node.pod_uid_of(s.pid).is_some());
        }
    }
}

#[test]
fn allocations_are_time_slice_replicas_of_the_gpu() {
    let node = SimNode::new("mainpc", &[GpuModelId::Rtx4090], 5);
    let allocations = node.allocations();
    assert_eq!(allocations.len(), 2);
    let uuid = &node.gpus[0].identity.uuid;
    assert_eq!(allocations[0].device_ids, vec![format!("{uuid}::0")]);
    assert_eq!(allocations[1].device_ids, vec![format!("{uuid}::1")]);
    assert!(allocations.iter().all(|a| a.namespace == GPU_NAMESPACE));
    assert!(allocations[0].pod.starts_with("reasoning-suite-"));
}

#[test]
fn a_scenario_scripts_its_workloads_and_leaves_the_others_moving() {
    let scenario = Scenario::parse(
        "workloads:\n  reasoning-suite:\n    - {for: 30s, load: 40}\n    - {load: 95}\n",
        std::path::Path::new("s.yaml"),
    )
    .unwrap();
    let node = SimNode::new("mainpc", &[GpuModelId::Rtx4090], 5).with_scenario(scenario, 1000.0);
    let reasoning = node.workloads()[0].iter().find(|w| w.app == "reasoning-suite").unwrap().pid;
    let share = |t: f64| {
        let read =
            node.read_at(0, ReadRequest { processes: true, processes_since_us: 0, health: true, running: true }, t);
        let ProcessUsage::Samples(samples) = read.processes else { panic!("no samples") };
        samples.iter().find(|s| s.pid == reasoning).unwrap().sm_percent
    };
    assert_eq!(share(1010.0), 40);
    // 95 % plus the coordination suite's load exceeds the GPU: time-slicing scales both down.
    let at_95 = share(1040.0);
    assert!((75..=95).contains(&at_95), "{at_95}");
}

#[test]
fn a_mig_gpu_gives_each_workload_a_mig_device_that_attribution_follows() {
    let node = SimNode::new("dgx", &[GpuModelId::A100Mig], 3);
    let request = ReadRequest { processes: true, processes_since_us: 0, health: false, running: true };
    let read = node.read_at(0, request, 2_000.0);
    // As NVML in MIG mode: no device-wide or per-process utilization.
    assert_eq!(read.reading.utilization_percent, None);
    assert_eq!(read.processes, ProcessUsage::Unsupported);
    let migs = &read.reading.mig_devices;
    assert_eq!(migs.len(), 2);
    assert_eq!((migs[0].gpu_instance_id, migs[1].gpu_instance_id), (1, 2));
    assert!(migs.iter().all(|m| m.uuid.starts_with("MIG-") && m.profile == "3g.40gb"));
    assert_eq!(read.reading.memory_used_bytes, Some(migs.iter().filter_map(|m| m.memory_used_bytes).sum()));

    let allocations = node.allocations();
    assert_eq!(allocations[0].device_ids, vec![migs[0].uuid.clone()]);
    let view = crate::attribution::GpuView {
        identity: read.identity.as_ref(),
        up: read.up,
        reading: &read.reading,
        processes: &read.processes,
        running: &read.running,
    };
    let usages = crate::attribution::attribute(&[view], &allocations, |pid| node.pod_uid_of(pid));
    assert_eq!(usages.len(), 2);
    for (m, usage) in usages.iter().enumerate() {
        assert_eq!(usage.mig, Some(m));
        assert_eq!(usage.memory_used_bytes, migs[m].memory_used_bytes);
        assert_eq!(usage.utilization_percent, Err(crate::attribution::Unresolved::MigUtilizationUnmeasured));
    }
}
