//! Discovery documents (`/apis`, the groups, the versions' resource lists)
//! built from k8s-openapi's types, and the small OpenAPI documents
//! kube-apiserver aggregates.

use bytes::Bytes;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    APIGroup, APIGroupList, APIResource, APIResourceList, GroupVersionForDiscovery,
};
use serde_json::json;

use super::routes::{CUSTOM_GROUP, EXTERNAL_GROUP};
use crate::adapter::provider::list_all_metrics;

fn encode(value: &impl serde::Serialize) -> Bytes {
    serde_json::to_vec(value).expect("a discovery document serializes").into()
}

fn api_group(group: &str) -> APIGroup {
    let versions: &[&str] = if group == CUSTOM_GROUP { &["v1beta2", "v1beta1"] } else { &["v1beta1"] };
    let versions: Vec<GroupVersionForDiscovery> = versions
        .iter()
        .map(|v| GroupVersionForDiscovery { group_version: format!("{group}/{v}"), version: v.to_string() })
        .collect();
    APIGroup {
        name: group.to_string(),
        preferred_version: versions.first().cloned(),
        server_address_by_client_cidrs: None,
        versions,
    }
}

/// `/apis`: both groups.
pub fn apis() -> Bytes {
    encode(&APIGroupList { groups: vec![api_group(CUSTOM_GROUP), api_group(EXTERNAL_GROUP)] })
}

/// `/apis/<group>`.
pub fn group(group: &str) -> Bytes {
    encode(&api_group(group))
}

fn resource(name: String, namespaced: bool, kind: &str) -> APIResource {
    APIResource {
        name,
        namespaced,
        kind: kind.to_string(),
        singular_name: String::new(),
        verbs: vec!["get".to_string()],
        ..APIResource::default()
    }
}

/// `/apis/custom.metrics.k8s.io/<version>`: `pods/<metric>`,
/// `nodes/<metric>` and `namespaces/<metric>` for every metric.
pub fn custom_resources(version: &str) -> Bytes {
    let mut resources = Vec::new();
    for metric in list_all_metrics() {
        for (kind, namespaced) in [("pods", true), ("nodes", false), ("namespaces", false)] {
            resources.push(resource(format!("{kind}/{}", metric.name()), namespaced, "MetricValueList"));
        }
    }
    encode(&APIResourceList { group_version: format!("{CUSTOM_GROUP}/{version}"), resources })
}

/// `/apis/external.metrics.k8s.io/v1beta1`.
pub fn external_resources() -> Bytes {
    let resources =
        list_all_metrics().iter().map(|m| resource(m.name().to_string(), true, "ExternalMetricValueList")).collect();
    encode(&APIResourceList { group_version: format!("{EXTERNAL_GROUP}/v1beta1"), resources })
}

/// A small valid OpenAPI v2 document: kube-apiserver aggregates it.
pub fn openapi_v2() -> Bytes {
    encode(&json!({
        "swagger": "2.0",
        "info": {"title": "kube-gpu-metrics", "version": env!("CARGO_PKG_VERSION")},
        "paths": {},
        "definitions": {},
    }))
}

/// The OpenAPI v3 discovery document: no groups of ours.
pub fn openapi_v3() -> Bytes {
    Bytes::from_static(br#"{"paths":{}}"#)
}
