use super::*;

/// A recorded `kubectl get cm -n kube-system extension-apiserver-authentication -o json`
/// data section, from a k3s server.
const RECORDED: &str = r#"{
  "client-ca-file": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
  "requestheader-allowed-names": "[\"system:auth-proxy\"]",
  "requestheader-client-ca-file": "-----BEGIN CERTIFICATE-----\nMIIBdz\n-----END CERTIFICATE-----\n",
  "requestheader-extra-headers-prefix": "[\"X-Remote-Extra-\"]",
  "requestheader-group-headers": "[\"X-Remote-Group\"]",
  "requestheader-username-headers": "[\"X-Remote-User\"]"
}"#;

#[test]
fn the_configmap_gives_the_front_proxy_settings() {
    let data: std::collections::BTreeMap<String, String> = serde_json::from_str(RECORDED).unwrap();
    let config = request_header_config(&data).unwrap();
    assert!(config.client_ca.contains("MIIBdz"));
    assert_eq!(config.allowed_names, ["system:auth-proxy"]);
    assert_eq!(config.username_headers, ["X-Remote-User"]);
    assert_eq!(config.group_headers, ["X-Remote-Group"]);

    let mut without_ca = data.clone();
    without_ca.remove("requestheader-client-ca-file");
    assert!(matches!(request_header_config(&without_ca), Err(DiscoveryError::NoCa)));
}

#[test]
fn only_running_agents_with_an_ip_are_polled() {
    let pod = |ip: Option<&str>, phase: &str| -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "agent", "namespace": "kube-gpu-metrics"},
                "status": {"phase": phase, "podIP": ip},
            }))
            .unwrap(),
        )
    };
    let pods = [
        pod(Some("10.42.0.7"), "Running"),
        pod(None, "Pending"),
        pod(Some("fd00::7"), "Running"),
        pod(Some("10.42.1.9"), "Failed"),
    ];
    assert_eq!(agent_urls(&pods, 9402), ["http://10.42.0.7:9402", "http://[fd00::7]:9402"]);
}
