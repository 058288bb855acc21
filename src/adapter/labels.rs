//! Pod and node labels, for `labelSelector`.
//!
//! In a cluster they come from kube-rs reflectors (see
//! [`super::discovery`]), which keep only metadata with managed fields and
//! annotations stripped; in `standalone` they are the simulated pods'. Either
//! way they are indexed into plain maps and swapped whole, so a query looks a
//! pod up without allocating.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use kube::core::{Selector, SelectorExt};

/// Labels by object.
pub type Labels = BTreeMap<String, String>;

/// Every known pod's and node's labels.
#[derive(Clone, Debug, Default)]
pub struct LabelMaps {
    /// Pods: namespace → name → labels.
    pub pods: HashMap<String, HashMap<String, Labels>>,
    /// Nodes: name → labels.
    pub nodes: HashMap<String, Labels>,
}

/// The current label maps.
#[derive(Debug, Default)]
pub struct LabelIndex {
    maps: ArcSwap<LabelMaps>,
}

impl LabelIndex {
    /// An index holding `maps`.
    pub fn new(maps: LabelMaps) -> Self {
        Self { maps: ArcSwap::from_pointee(maps) }
    }

    /// Replaces the maps.
    pub fn replace(&self, maps: LabelMaps) {
        self.maps.store(Arc::new(maps));
    }

    /// The current maps, for many lookups in one query.
    pub fn snapshot(&self) -> Arc<LabelMaps> {
        self.maps.load_full()
    }

    /// Whether a node's labels match. An empty selector matches every node;
    /// a node with unknown labels matches no other selector.
    pub fn node_matches(&self, name: &str, selector: &Selector) -> bool {
        selector.selects_all() || self.maps.load().nodes.get(name).is_some_and(|l| selector.matches(l))
    }
}
