use std::sync::Mutex;
use std::sync::atomic::AtomicU32;

use super::*;
use crate::agent::self_metrics::AgentMetrics;
use crate::gpu::{GpuReading, GpuSourceError};
use crate::retry::Backoff;
use arc_swap::ArcSwap;

/// GPU 0 answers at once; GPU 1 sleeps `hang` per read.
struct ScriptedSource {
    hang: Duration,
    reads: AtomicU32,
}

impl GpuSource for ScriptedSource {
    fn gpu_count(&self) -> u32 {
        2
    }

    fn known_identity(&self, _: u32) -> Option<GpuIdentity> {
        None
    }

    fn read(&self, index: u32, _: ReadRequest) -> GpuRead {
        self.reads.fetch_add(1, Ordering::SeqCst);
        if index == 1 {
            std::thread::sleep(self.hang);
        }
        GpuRead {
            identity: Some(GpuIdentity {
                index,
                uuid: format!("GPU-{index}"),
                model: "NVIDIA L4".into(),
                ..GpuIdentity::default()
            }),
            up: true,
            reading: GpuReading { utilization_percent: Some(10.0 + f64::from(index)), ..GpuReading::default() },
            ..GpuRead::default()
        }
    }
}

/// Fails `failures` times, then opens `source`.
struct FlakyOpener {
    failures: Mutex<u32>,
    source: Arc<ScriptedSource>,
}

impl GpuSourceOpener for FlakyOpener {
    fn open(&self) -> Result<Arc<dyn GpuSource>, GpuSourceError> {
        let mut left = self.failures.lock().unwrap();
        if *left > 0 {
            *left -= 1;
            return Err(GpuSourceError::NvmlCount(nvml_wrapper::error::NvmlError::DriverNotLoaded));
        }
        Ok(self.source.clone())
    }
}

fn settings(read_timeout: Duration) -> SamplerSettings {
    SamplerSettings {
        node: "n".into(),
        interval: Duration::from_secs(1),
        read_timeout,
        naming: Default::default(),
        health_interval: Duration::from_secs(30),
    }
}

fn sampler(failures: u32, hang: Duration, read_timeout: Duration) -> (Sampler, AgentState, Arc<ScriptedSource>) {
    let metrics = Arc::new(AgentMetrics::default());
    let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::empty("n", Duration::from_secs(1), &metrics)));
    let state = AgentState { snapshot, metrics, feed_token: None };
    let source = Arc::new(ScriptedSource { hang, reads: AtomicU32::new(0) });
    let opener = Arc::new(FlakyOpener { failures: Mutex::new(failures), source: source.clone() });
    let s = Sampler::new(settings(read_timeout), opener, Box::new(crate::attribution::Unattributed), state.clone());
    (s, state, source)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_gpu_is_marked_down_without_holding_up_the_others() {
    let (mut sampler, state, source) = sampler(0, Duration::from_millis(1500), Duration::from_millis(100));
    sampler.sample_once().await;
    sampler.sample_once().await;
    // Had a pass waited for the 1.5 s read, GPU 1 would be up with a value.
    let snapshot = state.snapshot.load();
    let gpus = &snapshot.data.gpus;
    assert!(gpus[0].up);
    assert_eq!(gpus[0].reading.utilization_percent, Some(10.0));
    assert!(!gpus[1].up);
    assert_eq!(gpus[1].reading, GpuReading::default());
    assert_eq!(state.metrics.counters().gpu_read_timeouts, 2);
    // The hung GPU was read once: the second pass did not start another read.
    assert_eq!(source.reads.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_failure_is_not_ready_with_a_reason_then_recovers() {
    let (mut sampler, state, _) = sampler(1, Duration::ZERO, Duration::from_millis(500));
    sampler.sample_once().await;
    let snapshot = state.snapshot.load();
    match &snapshot.data.readiness {
        Readiness::NotReady(reason) => assert!(reason.contains("NVML"), "{reason}"),
        Readiness::Ready => panic!("ready without a GPU source"),
    }
    assert!(snapshot.data.gpus.is_empty());
    assert_eq!(state.metrics.counters().gpu_errors[0], 1);
    // The backoff holds the next attempt for a second.
    sampler.sample_once().await;
    assert!(!state.snapshot.load().data.gpu_source_up);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sampler.sample_once().await;
    let snapshot = state.snapshot.load();
    assert_eq!(snapshot.data.readiness, Readiness::Ready);
    assert_eq!(snapshot.data.gpus.len(), 2);
}

#[test]
fn backoff_doubles_to_its_cap_and_resets() {
    let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
    let now = Instant::now();
    assert!(b.due(now));
    assert_eq!(b.failed(now), Duration::from_secs(1));
    assert!(!b.due(now));
    assert!(b.due(now + Duration::from_secs(1)));
    assert_eq!(b.failed(now), Duration::from_secs(2));
    assert_eq!(b.failed(now), Duration::from_secs(4));
    assert_eq!(b.failed(now), Duration::from_secs(5));
    assert_eq!(b.failed(now), Duration::from_secs(5));
    b.succeeded();
    assert!(b.due(now) && !b.failing());
    assert_eq!(b.failed(now), Duration::from_secs(1));
}
