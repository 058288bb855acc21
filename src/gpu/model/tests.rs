use super::*;

#[test]
fn nvml_names_resolve_to_profiles() {
    let p = GpuProfile::for_name("NVIDIA GeForce RTX 3060").unwrap();
    assert_eq!(p.id, GpuModelId::Rtx3060);
    assert_eq!(p.memory_bytes, 12 * GIB);
    assert_eq!(GpuProfile::for_name("NVIDIA L4").unwrap().id, GpuModelId::L4);
    assert_eq!(GpuProfile::for_name("NVIDIA H100 PCIe").unwrap().id, GpuModelId::H100);
    assert!(GpuProfile::for_name("Tesla K80").is_none());
}

#[test]
fn capacity_is_relative_to_the_4090() {
    assert_eq!(GpuModelId::Rtx4090.profile().relative_capacity(), 1.0);
    let c3060 = GpuModelId::Rtx3060.profile().relative_capacity();
    assert!((c3060 - 12.7 / 82.6).abs() < 1e-12);
}
