//! XID errors from NVML's event API, counted per GPU and code.
//!
//! A dedicated thread registers every GPU for critical XID events and waits
//! on the event set with a timeout, so a shutdown or a new event is seen
//! within a second; nothing polls. nvml-wrapper frees the whole set when one
//! GPU's registration fails (a lost GPU, or one that does not support
//! events), so the thread then makes a new set and registers again the GPUs
//! that had worked: one GPU never disables XID counting for the others. A
//! GPU that could not be registered has no XID series at all, rather than a
//! count of 0 that would claim it had none.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{EventSet, Nvml};

use crate::gpu::XidErrors;

/// How long one wait on the event set may block.
const WAIT: Duration = Duration::from_secs(1);

/// XID counts per GPU index; `None` for a GPU that could not be registered.
#[derive(Debug)]
pub struct XidCounts {
    gpus: Vec<Mutex<Option<XidErrors>>>,
    stop: AtomicBool,
}

impl XidCounts {
    /// The counts of one GPU, if it is registered.
    pub fn get(&self, index: u32) -> Option<XidErrors> {
        self.gpus.get(index as usize)?.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, index: u32, errors: Option<XidErrors>) {
        if let Some(slot) = self.gpus.get(index as usize) {
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = errors;
        }
    }

    fn record(&self, index: u32, xid: u64) {
        if let Some(slot) = self.gpus.get(index as usize) {
            let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
            let errors = slot.get_or_insert_with(XidErrors::default);
            *errors.counts.entry(xid).or_insert(0) += 1;
            errors.last = Some(xid);
        }
    }

    /// Asks the thread to stop (it notices within a second).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Starts the XID thread for `count` GPUs.
pub fn spawn(nvml: Arc<Nvml>, count: u32) -> Arc<XidCounts> {
    let counts =
        Arc::new(XidCounts { gpus: (0..count).map(|_| Mutex::new(None)).collect(), stop: AtomicBool::new(false) });
    let shared = counts.clone();
    let started =
        std::thread::Builder::new().name("nvml-xid-events".into()).spawn(move || watch(&nvml, count, &shared));
    if let Err(e) = started {
        tracing::warn!(error = %e, "cannot start the XID event thread; XID errors are not counted");
    }
    counts
}

/// Registers every GPU it can, then counts events until told to stop.
fn watch(nvml: &Nvml, count: u32, counts: &XidCounts) {
    let Some(set) = register(nvml, count, counts) else { return };
    let mut failing = false;
    while !counts.stop.load(Ordering::Acquire) {
        match set.wait(WAIT.as_millis() as u32) {
            Ok(event) => {
                failing = false;
                let Ok(index) = event.device.index() else { continue };
                let xid = match event.event_data {
                    Some(XidError::Value(v)) => v,
                    Some(XidError::Unknown) => 999,
                    None => continue,
                };
                tracing::warn!(gpu = index, xid, "XID error");
                counts.record(index, xid);
            }
            Err(NvmlError::Timeout) => failing = false,
            Err(e) => {
                // A lost GPU or a driver hiccup: keep waiting, without spinning.
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(error = %e, "waiting for XID events failed; retrying");
                }
                std::thread::sleep(WAIT);
            }
        }
    }
}

/// An event set with every GPU that accepts critical XID events. A failed
/// registration frees the set, so the set is made again with the GPUs that
/// had worked.
fn register<'n>(nvml: &'n Nvml, count: u32, counts: &XidCounts) -> Option<EventSet<'n>> {
    let mut registered: Vec<u32> = Vec::new();
    let mut set = new_set(nvml)?;
    for index in 0..count {
        match add(nvml, index, set) {
            Ok(kept) => {
                set = kept;
                registered.push(index);
                counts.set(index, Some(XidErrors::default()));
            }
            Err(e) => {
                tracing::info!(gpu = index, error = %e, "GPU not registered for XID events; it has no XID series");
                set = rebuild(nvml, &mut registered, counts)?;
            }
        }
    }
    Some(set)
}

/// A new set with `registered` in it; a GPU that no longer registers is
/// dropped from the list (each failure shortens it, so this ends).
fn rebuild<'n>(nvml: &'n Nvml, registered: &mut Vec<u32>, counts: &XidCounts) -> Option<EventSet<'n>> {
    'again: loop {
        let mut set = new_set(nvml)?;
        for (position, &index) in registered.iter().enumerate() {
            match add(nvml, index, set) {
                Ok(kept) => set = kept,
                Err(e) => {
                    tracing::info!(gpu = index, error = %e, "GPU no longer registers for XID events");
                    counts.set(index, None);
                    registered.remove(position);
                    continue 'again;
                }
            }
        }
        return Some(set);
    }
}

fn new_set(nvml: &Nvml) -> Option<EventSet<'_>> {
    match nvml.create_event_set() {
        Ok(set) => Some(set),
        Err(e) => {
            tracing::info!(error = %e, "NVML events unavailable; XID errors are not counted");
            None
        }
    }
}

/// Registers one GPU into `set`; on failure NVML has freed the set.
fn add<'n>(nvml: &'n Nvml, index: u32, set: EventSet<'n>) -> Result<EventSet<'n>, NvmlError> {
    let device = nvml.device_by_index(index)?;
    device.register_events(EventTypes::CRITICAL_XID_ERROR, set).map_err(|e| e.error)
}
