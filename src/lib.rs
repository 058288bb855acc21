//! kube-gpu-metrics: GPU-aware autoscaling metrics for Kubernetes.
//!
//! The crate is laid out by responsibility, and data flows one way:
//!
//! ```text
//! gpu (nvml) | sim ─┐
//! attribution | sim ┴─► agent::sampler ─► agent::snapshot ─► agent::exposition / agent::feed
//! adapter: cluster + source ─► admission ─► store ─► provider ─► http
//! ```
//!
//! - [`gpu`] reads GPUs over NVML; [`sim`] is a whole simulated node.
//! - [`attribution`] works out which pod uses which GPU.
//! - [`agent`] samples both on an interval into an immutable
//!   [`agent::snapshot::Snapshot`] and serves it: Prometheus `/metrics` and
//!   the per-pod [`feed`].
//! - [`adapter`] polls the agents (or Prometheus) and serves the custom and
//!   external metrics APIs over HTTPS.
//! - [`k8s`] holds the Kubernetes conventions both sides share.
//! - [`hpa`] is the HorizontalPodAutoscaler's algorithm, for `hpa-preview`.
//! - [`standalone`] runs the whole pipeline on localhost with simulated GPUs.
// The one exception, with a SAFETY comment per call: `gpu::nvml::raw`.
#![deny(unsafe_code)]

mod label_value;

pub mod adapter;
pub mod agent;
pub mod attribution;
pub mod family_writer;
pub mod feed;
pub mod gpu;
pub mod hpa;
pub mod input;
pub mod k8s;
pub mod listener;
pub mod process;
pub mod retry;
pub mod shutdown;
pub mod sim;
pub mod standalone;
pub mod twin;
