use super::*;

fn allocation(container: &str, ids: &[&str]) -> ContainerAllocation {
    ContainerAllocation {
        namespace: "ai-system-gpu".to_string(),
        pod: format!("{container}-pod"),
        container: container.to_string(),
        pod_uid: None,
        device_ids: ids.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn joins_numa_grouped_entries_on_container_and_devices() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubelet_internal_checkpoint");
    std::fs::write(
        &path,
        r#"{"Data":{"PodDeviceEntries":[
            {"PodUID":"uid-a","ContainerName":"main","ResourceName":"nvidia.com/gpu","DeviceIDs":{"-1":["GPU-x::0"]},"AllocResp":"Cg=="},
            {"PodUID":"uid-b","ContainerName":"main","ResourceName":"nvidia.com/gpu","DeviceIDs":{"0":["GPU-x::1"]},"AllocResp":"Cg=="}
        ],"RegisteredDevices":{"nvidia.com/gpu":["GPU-x::0","GPU-x::1"]}},"Checksum":12345}"#,
    )
    .unwrap();
    let mut checkpoint = Checkpoint::new(path);
    let mut allocations =
        [allocation("main", &["GPU-x::1"]), allocation("main", &["GPU-x::0"]), allocation("other", &["GPU-x::0"])];
    checkpoint.fill_pod_uids(&mut allocations).unwrap();
    assert_eq!(allocations[0].pod_uid.as_deref(), Some("uid-b"));
    assert_eq!(allocations[1].pod_uid.as_deref(), Some("uid-a"));
    assert_eq!(allocations[2].pod_uid, None);
}

#[test]
fn reads_the_flat_format_of_older_kubelets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cp");
    std::fs::write(
        &path,
        r#"{"Data":{"PodDeviceEntries":[{"PodUID":"uid-a","ContainerName":"c","ResourceName":"nvidia.com/gpu","DeviceIDs":["GPU-1","GPU-2"]}]}}"#,
    )
    .unwrap();
    let mut allocations = [allocation("c", &["GPU-2", "GPU-1"])];
    Checkpoint::new(path).fill_pod_uids(&mut allocations).unwrap();
    assert_eq!(allocations[0].pod_uid.as_deref(), Some("uid-a"));
}

#[test]
fn missing_or_garbled_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = Checkpoint::new(dir.path().join("nope")).fill_pod_uids(&mut []).unwrap_err();
    assert!(err.to_string().contains("--kubelet-checkpoint"), "{err}");
    let path = dir.path().join("bad");
    std::fs::write(&path, "not json").unwrap();
    let err = Checkpoint::new(path).fill_pod_uids(&mut []).unwrap_err();
    assert!(matches!(err, CheckpointError::Parse { .. }));
}
