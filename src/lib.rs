//! kube-gpu-metrics: GPU-aware autoscaling metrics for Kubernetes.
//!
//! The crate is laid out by responsibility, and data flows one way:
//!
//! ```text
//! gpu (nvml | sim) ─┐
//! attribution ──────┼─► agent::sampler ─► agent::snapshot ─► agent::exposition / feed
//! ```
//!
//! - [`gpu`] reads GPUs, over NVML or from a simulation.
//! - [`attribution`] works out which pod uses which GPU.
//! - [`agent`] samples both on an interval into an immutable [`agent::snapshot::Snapshot`]
//!   and serves it: Prometheus `/metrics` and the per-pod [`feed`].
//! - [`adapter`] polls the agents and serves the custom and external metrics
//!   APIs over HTTPS.
//! - [`hpa`] is the HorizontalPodAutoscaler's algorithm, for `hpa-preview`.
//! - [`standalone`] runs the whole pipeline on localhost with simulated GPUs.
#![forbid(unsafe_code)]

mod label_value;

pub mod adapter;
pub mod agent;
pub mod attribution;
pub mod feed;
pub mod gpu;
pub mod hpa;
pub mod k8s;
pub mod listener;
pub mod retry;
pub mod shutdown;
pub mod sim;
pub mod standalone;
