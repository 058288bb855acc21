//! Build steps that need no system tools: the gRPC code of the kubelet's
//! PodResources API and of KEDA's external scaler (parsed by protox, a
//! pure-Rust protobuf compiler), and the fake
//! `libnvidia-ml.so` that tests and benches load instead of a real driver.

use std::path::PathBuf;

fn main() {
    compile_protos();
    build_fake_nvml();
}

/// Both gRPC APIs, client and server halves: the agent calls the kubelet and
/// the fake kubelet (tests, `standalone`) serves it; the adapter serves KEDA's
/// scaler and tests and benches call it.
fn compile_protos() {
    let protos = ["proto/podresources/v1/api.proto", "proto/keda/externalscaler.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"]).expect("parse the vendored protos");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)
        .expect("generate the gRPC code");
}

/// Builds `hack/fake-nvml/fake_nvml.c` as a shared library and exposes its path
/// as `FAKE_NVML_LIB` to tests and benches. A missing C compiler only warns:
/// the agent itself never needs the fake.
fn build_fake_nvml() {
    let source = "hack/fake-nvml/fake_nvml.c";
    println!("cargo:rerun-if-changed={source}");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let library = out_dir.join("libnvidia-ml.so");
    let compiler = cc::Build::new().cargo_metadata(false).get_compiler();
    let status = compiler
        .to_command()
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
        .arg(&library)
        .arg(source)
        .arg("-lpthread")
        .status();
    match status {
        Ok(status) if status.success() => {
            println!("cargo:rustc-env=FAKE_NVML_LIB={}", library.display());
        }
        other => println!("cargo:warning=fake libnvidia-ml.so not built ({other:?}); NVML tests will fail"),
    }
}
