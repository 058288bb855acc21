//! Pod and node labels, for `labelSelector`, and where each pod runs.
//!
//! In a cluster they come from the adapter's kube-rs reflectors, which keep
//! only labels and `spec.nodeName`; in `standalone` they are the simulated
//! pods'. Either way they are indexed into plain maps and swapped whole, so
//! a query looks a pod up without allocating.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use kube::core::{Expression, Selector, SelectorExt};

/// Labels by object.
pub type Labels = BTreeMap<String, String>;

/// Every known pod's and node's labels.
#[derive(Clone, Debug, Default)]
pub struct LabelMaps {
    /// Pods: namespace → name → labels.
    pub pods: HashMap<String, HashMap<String, Labels>>,
    /// Nodes: name → labels.
    pub nodes: HashMap<String, Labels>,
    /// Where the API places each scheduled pod (`spec.nodeName`):
    /// namespace → name → node. `None` when no API is known (static agent
    /// URLs without a cluster), and then sources are trusted for their pods.
    pub placements: Option<HashMap<String, HashMap<String, String>>>,
}

/// Where the API places a pod, as far as the label maps know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement<'a> {
    /// No API to ask: the source is trusted.
    Unchecked,
    /// The API does not know the pod, or has not scheduled it.
    Unknown,
    /// The API places it on this node.
    On(&'a str),
}

/// The current label maps.
#[derive(Debug, Default)]
pub struct LabelIndex {
    maps: ArcSwap<IndexedLabels>,
}

/// Label maps with the pods of each namespace also listed by label, so that
/// a selector that requires a value (`app=web`, `tier in (a,b)`, what an HPA
/// sends) looks at the pods that have it instead of every pod.
#[derive(Debug, Default)]
pub struct IndexedLabels {
    /// The maps.
    pub maps: LabelMaps,
    /// namespace → (key, value) → pod names, sorted.
    by_label: HashMap<String, HashMap<(String, String), Vec<String>>>,
}

impl IndexedLabels {
    /// Indexes `maps`.
    pub fn new(maps: LabelMaps) -> Self {
        let mut by_label: HashMap<String, HashMap<(String, String), Vec<String>>> = HashMap::new();
        for (namespace, pods) in &maps.pods {
            let index = by_label.entry(namespace.clone()).or_default();
            for (pod, labels) in pods {
                for (key, value) in labels {
                    index.entry((key.clone(), value.clone())).or_default().push(pod.clone());
                }
            }
            for names in index.values_mut() {
                names.sort_unstable();
            }
        }
        Self { maps, by_label }
    }

    /// The pods of `namespace` that can match `selector`, sorted by name,
    /// from its most selective `key=value` or `key in (…)` requirement;
    /// `None` when it has none and every pod must be checked. Candidates
    /// still need the whole selector checked.
    pub fn candidates(&self, namespace: &str, selector: &Selector) -> Option<Vec<&str>> {
        let index = self.by_label.get(namespace);
        let pods_with = |key: &str, value: &str| -> &[String] {
            index.and_then(|i| i.get(&(key.to_string(), value.to_string()))).map_or(&[], Vec::as_slice)
        };
        let mut best: Option<Vec<&str>> = None;
        for expression in selector.clone() {
            let mut names: Vec<&str> = match &expression {
                Expression::Equal(key, value) => pods_with(key, value).iter().map(String::as_str).collect(),
                Expression::In(key, values) => {
                    values.iter().flat_map(|v| pods_with(key, v)).map(String::as_str).collect()
                }
                _ => continue,
            };
            if matches!(expression, Expression::In(..)) {
                names.sort_unstable();
                names.dedup();
            }
            if best.as_ref().is_none_or(|b| names.len() < b.len()) {
                best = Some(names);
            }
        }
        best
    }
}

impl IndexedLabels {
    /// Where the API places a pod.
    pub fn placement(&self, namespace: &str, pod: &str) -> Placement<'_> {
        match &self.maps.placements {
            None => Placement::Unchecked,
            Some(placements) => match placements.get(namespace).and_then(|pods| pods.get(pod)) {
                Some(node) => Placement::On(node),
                None => Placement::Unknown,
            },
        }
    }

    /// Whether a pod's labels match. An empty selector matches every pod; a
    /// pod with unknown labels matches no other selector.
    pub fn pod_matches(&self, namespace: &str, pod: &str, selector: &Selector) -> bool {
        selector.selects_all()
            || self.maps.pods.get(namespace).and_then(|pods| pods.get(pod)).is_some_and(|l| selector.matches(l))
    }

    /// Whether a node's labels match. An empty selector matches every node;
    /// a node with unknown labels matches no other selector.
    pub fn node_matches(&self, name: &str, selector: &Selector) -> bool {
        selector.selects_all() || self.maps.nodes.get(name).is_some_and(|l| selector.matches(l))
    }
}

impl std::ops::Deref for IndexedLabels {
    type Target = LabelMaps;

    fn deref(&self) -> &LabelMaps {
        &self.maps
    }
}

impl LabelIndex {
    /// An index holding `maps`.
    pub fn new(maps: LabelMaps) -> Self {
        Self { maps: ArcSwap::from_pointee(IndexedLabels::new(maps)) }
    }

    /// Replaces the maps.
    pub fn replace(&self, maps: LabelMaps) {
        self.maps.store(Arc::new(IndexedLabels::new(maps)));
    }

    /// The current maps, for many lookups in one query.
    pub fn snapshot(&self) -> Arc<IndexedLabels> {
        self.maps.load_full()
    }
}

#[cfg(test)]
mod tests;
