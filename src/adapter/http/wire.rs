//! The wire types of the metrics APIs, as `k8s.io/metrics` defines them:
//! `MetricValueList` (custom.metrics.k8s.io v1beta1 and v1beta2) and
//! `ExternalMetricValueList`. They serialize without copying names
//! (`Cow`) and deserialize too, so every reader (tests, `hpa-preview`) uses
//! the writer's own types.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::routes::{CUSTOM_GROUP, EXTERNAL_GROUP};
use crate::adapter::provider::MetricValue;
use crate::k8s::quantity::format_quantity;

/// Empty list metadata.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ListMeta {}

/// A list document: `kind`, `apiVersion`, `metadata`, `items`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct List<T> {
    /// `MetricValueList` or `ExternalMetricValueList`.
    pub kind: Cow<'static, str>,
    /// `<group>/<version>`.
    pub api_version: Cow<'static, str>,
    /// Empty.
    #[serde(default)]
    pub metadata: ListMeta,
    /// The values.
    #[serde(default = "Vec::new")]
    pub items: Vec<T>,
}

/// The object a value describes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference<'a> {
    /// `Pod`, `Node` or `Namespace`.
    #[serde(borrow)]
    pub kind: Cow<'a, str>,
    /// Namespace; absent for cluster-scoped objects.
    #[serde(default, borrow, skip_serializing_if = "str::is_empty")]
    pub namespace: Cow<'a, str>,
    /// Name.
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    /// `v1`.
    #[serde(default, borrow)]
    pub api_version: Cow<'a, str>,
}

/// v1beta2's metric identifier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricIdentifier<'a> {
    /// The metric's name.
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    /// The metric label selector; our metrics carry no labels.
    #[serde(default)]
    pub selector: Option<serde_json::Value>,
}

/// A custom.metrics.k8s.io/v1beta2 `MetricValue`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricValueV1beta2<'a> {
    /// What it describes.
    #[serde(borrow)]
    pub described_object: ObjectReference<'a>,
    /// Which metric.
    #[serde(borrow)]
    pub metric: MetricIdentifier<'a>,
    /// RFC 3339 sample time.
    pub timestamp: String,
    /// The sample's window, seconds.
    #[serde(default)]
    pub window_seconds: Option<u64>,
    /// A Quantity.
    pub value: String,
}

/// A custom.metrics.k8s.io/v1beta1 `MetricValue` (flat).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricValueV1beta1<'a> {
    /// What it describes.
    #[serde(borrow)]
    pub described_object: ObjectReference<'a>,
    /// Which metric.
    #[serde(borrow)]
    pub metric_name: Cow<'a, str>,
    /// RFC 3339 sample time.
    pub timestamp: String,
    /// The sample's window, seconds.
    #[serde(default)]
    pub window: Option<u64>,
    /// A Quantity.
    pub value: String,
    /// The metric label selector; our metrics carry no labels.
    #[serde(default)]
    pub selector: Option<serde_json::Value>,
}

/// An external.metrics.k8s.io/v1beta1 `ExternalMetricValue`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalMetricValue<'a> {
    /// Which metric.
    #[serde(borrow)]
    pub metric_name: Cow<'a, str>,
    /// Its labels; ours carry none.
    #[serde(default)]
    pub metric_labels: BTreeMap<String, String>,
    /// RFC 3339 sample time.
    pub timestamp: String,
    /// The sample's window, seconds.
    #[serde(default)]
    pub window: Option<u64>,
    /// A Quantity.
    pub value: String,
}

/// The latest time RFC 3339 (four-digit years) can write.
const LAST_FORMATTABLE_SECS: u64 = 253_402_300_799;

/// A sample time as RFC 3339 in seconds. Never panics: admission refuses
/// times far ahead, and anything past year 9999 is written as its last
/// second rather than overflow the format.
pub fn rfc3339(t: SystemTime) -> String {
    let last = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(LAST_FORMATTABLE_SECS);
    humantime::format_rfc3339_seconds(t.clamp(SystemTime::UNIX_EPOCH, last)).to_string()
}

/// Formats sample times, reusing the last answer: the items of one source
/// share a timestamp.
#[derive(Default)]
struct Timestamps(Option<(SystemTime, String)>);

impl Timestamps {
    fn format(&mut self, t: SystemTime) -> String {
        match &self.0 {
            Some((last, text)) if *last == t => text.clone(),
            _ => {
                let text = rfc3339(t);
                self.0 = Some((t, text.clone()));
                text
            }
        }
    }
}

fn reference<'a>(v: &MetricValue<'a>) -> ObjectReference<'a> {
    ObjectReference {
        kind: Cow::Borrowed(v.kind.as_str()),
        namespace: Cow::Borrowed(v.namespace),
        name: Cow::Borrowed(v.name),
        api_version: Cow::Borrowed("v1"),
    }
}

fn window(v: &MetricValue<'_>) -> Option<u64> {
    Some(v.window.as_secs().max(1))
}

/// A list of `kind` in `api_version`, encoded.
fn encode_list<T: Serialize>(kind: &'static str, api_version: String, items: Vec<T>) -> Vec<u8> {
    let list = List { kind: kind.into(), api_version: Cow::Owned(api_version), metadata: ListMeta {}, items };
    serde_json::to_vec(&list).expect("a metric list serializes")
}

/// A v1beta2 `MetricValueList`, encoded.
pub fn v1beta2_list(metric: &str, values: &[MetricValue<'_>]) -> Vec<u8> {
    let mut times = Timestamps::default();
    let items: Vec<MetricValueV1beta2<'_>> = values
        .iter()
        .map(|v| MetricValueV1beta2 {
            described_object: reference(v),
            metric: MetricIdentifier { name: Cow::Borrowed(metric), selector: None },
            timestamp: times.format(v.timestamp),
            window_seconds: window(v),
            value: format_quantity(v.value),
        })
        .collect();
    encode_list("MetricValueList", format!("{CUSTOM_GROUP}/v1beta2"), items)
}

/// A v1beta1 `MetricValueList`, encoded.
pub fn v1beta1_list(metric: &str, values: &[MetricValue<'_>]) -> Vec<u8> {
    let mut times = Timestamps::default();
    let items: Vec<MetricValueV1beta1<'_>> = values
        .iter()
        .map(|v| MetricValueV1beta1 {
            described_object: reference(v),
            metric_name: Cow::Borrowed(metric),
            timestamp: times.format(v.timestamp),
            window: window(v),
            value: format_quantity(v.value),
            selector: None,
        })
        .collect();
    encode_list("MetricValueList", format!("{CUSTOM_GROUP}/v1beta1"), items)
}

/// An `ExternalMetricValueList`, encoded: one item, or none.
pub fn external_list(metric: &str, value: Option<(f64, SystemTime, std::time::Duration)>) -> Vec<u8> {
    let items: Vec<ExternalMetricValue<'_>> = value
        .into_iter()
        .map(|(value, timestamp, window)| ExternalMetricValue {
            metric_name: Cow::Borrowed(metric),
            metric_labels: BTreeMap::new(),
            timestamp: rfc3339(timestamp),
            window: Some(window.as_secs().max(1)),
            value: format_quantity(value),
        })
        .collect();
    encode_list("ExternalMetricValueList", format!("{EXTERNAL_GROUP}/v1beta1"), items)
}
