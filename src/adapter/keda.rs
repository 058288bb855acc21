//! KEDA's external scaler (`externalscaler.ExternalScaler`, gRPC over TLS
//! on `--keda-listen`), answered from the same store and provider as the
//! metrics APIs, so a ScaledObject sees exactly what an HPA on
//! custom.metrics.k8s.io sees: the same freshness (`--max-age`), node
//! isolation and selectors.
//!
//! KEDA gives the external metric an `AverageValue` target, so:
//! - `GetMetricSpec` answers `targetSizeFloat` = `targetValue`;
//! - `GetMetrics` answers the sum of the matching pods' values, and the HPA
//!   computes ceil(sum / target), the replica count of a Pods/AverageValue
//!   HPA over the same pods. Pods the API lists without a fresh value count
//!   as the HPA counts them: at the target when the others are below it (a
//!   missing value never scales down), at 0 when they are above it;
//! - `IsActive` is true when any matching pod is above
//!   `activationTargetValue`; `StreamIsActive` pushes each change of that
//!   answer as soon as a poll round shows it.
//!
//! No matching pods is an answer only when the ScaledObject's scale target
//! is at 0 replicas ([`target`]): inactive, no metric values. A selector
//! that matches none of a running target's pods, or one that cannot be
//! checked against the target, is `FailedPrecondition` naming
//! `podSelector`, never a made-up "inactive" that would scale a busy
//! workload to zero. A workload whose pods have no fresh value, or an
//! adapter not ready yet, is `Unavailable`, never a made-up 0 that would
//! scale it down. Bad metadata is `InvalidArgument` naming the key
//! ([`metadata`]).

pub mod metadata;
pub mod server;
pub mod target;

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::Stream;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status};

use super::provider::Provider;
use super::readiness::Readiness;
use metadata::{DefaultSelector, ScalerSpec};
use target::{Known, ScaleTargets};

/// The code generated from KEDA's `externalscaler.proto`.
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("externalscaler");
}

use proto::external_scaler_server::ExternalScaler;
use proto::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec, MetricValue,
    ScaledObjectRef,
};

/// What a workload looks like to the scaler at one moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WorkloadState {
    /// No pod matches, and the scale target is at 0 replicas.
    NoPods,
    /// The value to report (the sum, missing pods counted as the HPA
    /// counts them) and whether any pod is above the activation value.
    Measured {
        /// The sum.
        total: f64,
        /// Whether any pod is above `activationTargetValue`.
        active: bool,
        /// Pods counted without a value.
        missing: usize,
    },
}

/// Answers KEDA from the provider.
#[derive(Clone)]
pub struct KedaScaler {
    provider: Provider,
    readiness: Readiness,
    /// How often streams re-check when no round arrives (values age out).
    recheck: Duration,
    shutdown: watch::Receiver<bool>,
    /// Where each ScaledObject's scale target is learnt.
    targets: Arc<ScaleTargets>,
}

fn invalid(error: metadata::MetadataError) -> Status {
    if error.precondition {
        Status::failed_precondition(format!("scalerMetadata {error}"))
    } else {
        Status::invalid_argument(format!("scalerMetadata {error}"))
    }
}

/// Why an adapter without a cluster answers no ScaledObject.
const NO_CLUSTER: &str = "podSelector: this adapter runs without a cluster (static --agent URLs), so it knows no pod's \
     labels and cannot evaluate a pod selector; run it with the cluster (agent discovery) to serve KEDA";

impl KedaScaler {
    /// A scaler over `provider`, learning scale targets from `targets`;
    /// streams re-check every `recheck` and end on shutdown.
    pub fn new(
        provider: Provider,
        readiness: Readiness,
        targets: ScaleTargets,
        recheck: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self { provider, readiness, recheck, shutdown, targets: Arc::new(targets) }
    }

    /// Checks a ScaledObject's metadata, with what the API shows of its
    /// scale target (its default pod selector and replicas).
    pub async fn spec(&self, object: &ScaledObjectRef) -> Result<ScalerSpec, Status> {
        if matches!(*self.targets, ScaleTargets::NoCluster) {
            return Err(Status::failed_precondition(NO_CLUSTER));
        }
        let known = if object.namespace.is_empty() {
            Known::Unknown("the ScaledObject's namespace is empty".into())
        } else {
            self.targets.known(&object.namespace, &object.name).await
        };
        let default = match (&*self.targets, &known) {
            (ScaleTargets::Simulated, _) => DefaultSelector::AppName,
            (_, Known::Target(target)) => DefaultSelector::Target(&target.selector),
            (_, Known::Unknown(why)) => DefaultSelector::Unavailable(why),
        };
        let mut spec = ScalerSpec::parse(object, default).map_err(invalid)?;
        spec.scale_target = known;
        Ok(spec)
    }

    /// The workload's state at `now`, or why there is none.
    pub fn state(&self, spec: &ScalerSpec, now: SystemTime) -> Result<WorkloadState, Status> {
        if !self.readiness.is_ready() {
            let (_, report) = self.readiness.report();
            return Err(Status::unavailable(format!("the adapter is not ready: {}", Readiness::failures(&report))));
        }
        let snapshot = self.provider.view_at(now);
        let workload = snapshot.workload(spec.metric, &spec.namespace, &spec.selector);
        if workload.values.is_empty() && workload.missing.is_empty() {
            return match &spec.scale_target {
                Known::Target(target) if target.replicas == 0 => Ok(WorkloadState::NoPods),
                Known::Target(target) => Err(Status::failed_precondition(format!(
                    "podSelector {:?} matches no pod in {}, while {} has {} replica(s): not answering rather than \
                     call it inactive; fix podSelector, or leave it out for the target's own selector {:?}",
                    spec.selector_text, spec.namespace, target.description, target.replicas, target.selector
                ))),
                Known::Unknown(why) => Err(Status::failed_precondition(format!(
                    "podSelector {:?} matches no pod in {}, and a workload at zero replicas cannot be told from a \
                     selector that matches nothing ({why}): not answering rather than call it inactive",
                    spec.selector_text, spec.namespace
                ))),
            };
        }
        if workload.values.is_empty() {
            let shown: Vec<&str> = workload.missing.iter().take(5).copied().collect();
            return Err(Status::unavailable(format!(
                "no fresh {} for the {} pods matching {} in {} ({}{}); not answering rather than report 0",
                spec.metric.name(),
                workload.missing.len(),
                spec.selector_text,
                spec.namespace,
                shown.join(", "),
                if workload.missing.len() > shown.len() { ", …" } else { "" },
            )));
        }
        let present: f64 = workload.values.iter().map(|v| v.value).sum();
        let missing = workload.missing.len();
        // The HPA's rule for pods without a metric: on a scale-down they use
        // exactly the target, on a scale-up nothing.
        let below_target = present / (workload.values.len() as f64) < spec.target;
        let total = if below_target { present + spec.target * missing as f64 } else { present };
        let active = workload.values.iter().any(|v| v.value > spec.activation);
        Ok(WorkloadState::Measured { total, active, missing })
    }

    /// Whether the workload is active; a workload whose busy pods might be
    /// the ones without a value is not called idle.
    fn is_active(&self, spec: &ScalerSpec, now: SystemTime) -> Result<bool, Status> {
        match self.state(spec, now)? {
            WorkloadState::NoPods => Ok(false),
            WorkloadState::Measured { active: true, .. } => Ok(true),
            WorkloadState::Measured { active: false, missing: 0, .. } => Ok(false),
            WorkloadState::Measured { missing, .. } => Err(Status::unavailable(format!(
                "{missing} pods matching {} in {} have no fresh {}; the workload cannot be called idle",
                spec.selector_text,
                spec.namespace,
                spec.metric.name()
            ))),
        }
    }
}

/// Says why a ScaledObject is answered inactive: its target at zero
/// replicas, or its pods below the activation value.
fn log_inactive(object: &ScaledObjectRef, spec: &ScalerSpec) {
    match &spec.scale_target {
        Known::Target(target) if target.replicas == 0 => tracing::info!(
            scaled_object = %object.name,
            namespace = %object.namespace,
            "inactive: {} is at zero replicas",
            target.description
        ),
        _ => tracing::debug!(
            scaled_object = %object.name,
            namespace = %object.namespace,
            activation = spec.activation,
            "inactive: no pod matching {} is above the activation value",
            spec.selector_text
        ),
    }
}

type ActivationStream = Pin<Box<dyn Stream<Item = Result<IsActiveResponse, Status>> + Send>>;
type SpecStream = Pin<Box<dyn Stream<Item = Result<GetMetricSpecResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalScaler for KedaScaler {
    async fn is_active(&self, request: Request<ScaledObjectRef>) -> Result<Response<IsActiveResponse>, Status> {
        let spec = self.spec(request.get_ref()).await?;
        let result = KedaScaler::is_active(self, &spec, SystemTime::now())?;
        if !result {
            log_inactive(request.get_ref(), &spec);
        }
        Ok(Response::new(IsActiveResponse { result }))
    }

    type StreamIsActiveStream = ActivationStream;

    /// Sends the current answer at once, then each change, checked after
    /// every poll round (and every `recheck`, as values age out). While no
    /// answer can be given nothing is sent: the last answer stands.
    async fn stream_is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        let object = request.into_inner();
        let mut spec = self.spec(&object).await?;
        let (tx, mut rx) = mpsc::channel(4);
        let scaler = self.clone();
        let mut rounds = self.provider.changes();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            // (An interval of zero would panic; a poll interval is never that short.)
            let mut recheck = tokio::time::interval(scaler.recheck.max(Duration::from_millis(100)));
            recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut sent = None;
            loop {
                let mut answer = KedaScaler::is_active(&scaler, &spec, SystemTime::now());
                if answer.as_ref().is_err_and(|e| e.code() == tonic::Code::FailedPrecondition) {
                    // No pod matched: the target may have been scaled since the stream began.
                    spec.scale_target = scaler.targets.known(&object.namespace, &object.name).await;
                    answer = KedaScaler::is_active(&scaler, &spec, SystemTime::now());
                }
                if let Ok(active) = answer
                    && sent != Some(active)
                {
                    if !active {
                        log_inactive(&object, &spec);
                    }
                    if tx.send(Ok(IsActiveResponse { result: active })).await.is_err() {
                        return;
                    }
                    sent = Some(active);
                }
                tokio::select! {
                    changed = rounds.changed() => if changed.is_err() { return },
                    _ = recheck.tick() => {}
                    () = tx.closed() => return,
                    () = crate::shutdown::stopped(&mut shutdown) => return,
                }
            }
        });
        let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        let spec = self.spec(request.get_ref()).await?;
        Ok(Response::new(GetMetricSpecResponse {
            metric_specs: vec![MetricSpec {
                metric_name: spec.metric.name().to_string(),
                target_size: spec.target.round() as i64,
                target_size_float: spec.target,
            }],
        }))
    }

    async fn get_metrics(&self, request: Request<GetMetricsRequest>) -> Result<Response<GetMetricsResponse>, Status> {
        let request = request.into_inner();
        let object = request.scaled_object_ref.ok_or_else(|| {
            Status::invalid_argument("scaledObjectRef: required (the ScaledObject's name, namespace and metadata)")
        })?;
        let spec = self.spec(&object).await?;
        // KEDA asks for the name GetMetricSpec gave (without its `sN-` prefix).
        if !request.metric_name.is_empty() && request.metric_name != spec.metric.name() {
            return Err(Status::invalid_argument(format!(
                "metricName: {} is not this ScaledObject's metric; GetMetricSpec gave {} (set another with the \
                 trigger's metricName)",
                metadata::echo(&request.metric_name),
                spec.metric.name()
            )));
        }
        let metric_name = spec.metric.name().to_string();
        let metric_values = match self.state(&spec, SystemTime::now())? {
            WorkloadState::NoPods => Vec::new(),
            WorkloadState::Measured { total, .. } => {
                vec![MetricValue { metric_name, metric_value: total.round() as i64, metric_value_float: total }]
            }
        };
        Ok(Response::new(GetMetricsResponse { metric_values }))
    }

    type StreamMetricSpecStream = SpecStream;

    /// The spec is the ScaledObject's own `targetValue` and never changes
    /// while its metadata stays the same (KEDA opens a new stream when it
    /// does), so there is nothing to push: KEDA keeps calling
    /// `GetMetricSpec`.
    async fn stream_metric_spec(
        &self,
        _request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamMetricSpecStream>, Status> {
        Err(Status::unimplemented(
            "StreamMetricSpec: the metric spec is the ScaledObject's targetValue and never changes; use GetMetricSpec",
        ))
    }
}

#[cfg(test)]
mod tests;
