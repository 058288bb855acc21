//! Kubernetes conventions that both the agent and the adapter (and the
//! simulated node and the HPA model) speak: label maps and their index,
//! label selector strings, `Quantity` strings, and mounted token files.
//!
//! Nothing here knows about GPUs or about either binary's pipeline, so any
//! room may depend on it.

pub mod labels;
pub mod quantity;
pub mod selector;
pub mod token;
