use super::*;

const UID: &str = "1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9";

#[test]
fn cgroup_v2_systemd_driver() {
    let text = "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1f2e3d4c_5b6a_4978_8695_a4b3c2d1e0f9.slice/cri-containerd-0123abcd.scope\n";
    assert_eq!(pod_uid_from_cgroup(text).as_deref(), Some(UID));
}

#[test]
fn cgroup_v2_cgroupfs_driver_as_k3s_runs_it() {
    let text = format!("0::/kubepods/besteffort/pod{UID}/0123456789abcdef\n");
    assert_eq!(pod_uid_from_cgroup(&text).as_deref(), Some(UID));
}

#[test]
fn guaranteed_pods_have_no_qos_level() {
    let text = format!("0::/kubepods/pod{UID}/0123456789abcdef\n");
    assert_eq!(pod_uid_from_cgroup(&text).as_deref(), Some(UID));
    let systemd = "0::/kubepods.slice/kubepods-pod1f2e3d4c_5b6a_4978_8695_a4b3c2d1e0f9.slice/cri-containerd-ab.scope";
    assert_eq!(pod_uid_from_cgroup(systemd).as_deref(), Some(UID));
}

#[test]
fn cgroup_v1_lines_with_controllers() {
    let text = format!(
        "12:pids:/kubepods/burstable/pod{UID}/abc\n11:cpu,cpuacct:/kubepods/burstable/pod{UID}/abc\n1:name=systemd:/kubepods/burstable/pod{UID}/abc\n"
    );
    assert_eq!(pod_uid_from_cgroup(&text).as_deref(), Some(UID));
}

#[test]
fn processes_outside_pods_have_no_uid() {
    assert_eq!(pod_uid_from_cgroup("0::/system.slice/containerd.service\n"), None);
    assert_eq!(pod_uid_from_cgroup("0::/user.slice/user-1000.slice/session-2.scope\n"), None);
    assert_eq!(pod_uid_from_cgroup("0::/kubepods/burstable/podnot-a-uid/abc\n"), None);
    assert_eq!(pod_uid_from_cgroup(""), None);
}

#[test]
fn resolver_reads_proc_and_forgets_old_pids() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("42")).unwrap();
    std::fs::write(dir.path().join("42/cgroup"), format!("0::/kubepods/pod{UID}/c\n")).unwrap();
    let mut resolver = ProcResolver::new(dir.path().to_path_buf());
    assert_eq!(resolver.pod_uid_of(42).as_deref(), Some(UID));
    assert_eq!(resolver.pod_uid_of(43), None);
    resolver.end_pass();
    assert_eq!(resolver.cache.len(), 2);
    resolver.end_pass();
    assert!(resolver.cache.is_empty());
}
