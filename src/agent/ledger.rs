//! What the agent carries from one sample to the next for each pod on a
//! GPU: when the pod last used it, and the share of the GPU's energy it is
//! charged.
//!
//! - *Last active*: the time of the last sample in which the pod's
//!   utilization share was above zero; for a pod not seen active since the
//!   agent first saw it hold the GPU, that first time. An idle pod holding
//!   a GPU therefore ages from the moment it is known, so an alert on it can
//!   fire.
//! - *Energy*: each interval, the growth of the GPU's energy counter is split
//!   between the pods holding the GPU at the end of it, by their utilization
//!   shares (evenly when all are zero: idle power is still the holders').
//!   An exclusive pod gets all of it. On a GPU in MIG mode the holders are
//!   MIG devices of different sizes, so each share is weighed by its
//!   device's compute slices (a busy `3g.40gb` draws more than a busy
//!   `1g.10gb`). When any holder's share cannot be
//!   measured, that interval's energy is charged to no one rather than
//!   guessed. The pods' counters of a GPU thus sum to the GPU's energy
//!   counted while pods held it with known shares.

use std::collections::HashMap;
use std::time::SystemTime;

use super::sample::{GpuState, PodAccount};
use crate::attribution::PodGpuUsage;

/// A pod on a GPU: namespace, pod, GPU UUID.
type PodKey = (String, String, String);

/// The accounts of the pods on this node's GPUs.
#[derive(Debug, Default)]
pub struct PodLedger {
    /// Each GPU's energy counter at the last sample, by UUID.
    energy: HashMap<String, f64>,
    accounts: HashMap<PodKey, PodAccount>,
}

impl PodLedger {
    /// Books one sample and returns each usage's account, in the order of
    /// `usages`. Pods no longer on a GPU are forgotten.
    pub fn record(&mut self, taken_at: SystemTime, gpus: &[GpuState], usages: &[PodGpuUsage]) -> Vec<PodAccount> {
        let deltas: Vec<Option<f64>> = gpus.iter().map(|gpu| self.energy_delta(gpu)).collect();
        let shares = holder_shares(gpus, usages);
        let mut accounts = Vec::with_capacity(usages.len());
        let mut kept = HashMap::with_capacity(usages.len());
        for usage in usages {
            let Some(gpu) = gpus.get(usage.gpu) else { continue };
            let key = (usage.namespace.clone(), usage.pod.clone(), gpu.identity.uuid.clone());
            let mut account =
                self.accounts.remove(&key).unwrap_or(PodAccount { last_active: taken_at, energy_joules: 0.0 });
            if usage.utilization_percent.is_ok_and(|share| share > 0.0) {
                account.last_active = taken_at;
            }
            let fraction = energy_fraction(usage, slices(gpus, usage), shares[usage.gpu]);
            if let (Some(delta), Some(fraction)) = (deltas[usage.gpu], fraction) {
                account.energy_joules += delta * fraction;
            }
            accounts.push(account);
            kept.insert(key, account);
        }
        self.accounts = kept;
        accounts
    }

    /// How much a GPU's energy counter grew since the last sample; `None`
    /// on the first sample, while the GPU is down, and when the counter
    /// went back (the driver reloaded).
    fn energy_delta(&mut self, gpu: &GpuState) -> Option<f64> {
        let now = gpu.reading.energy_joules.filter(|_| gpu.up)?;
        let before = self.energy.insert(gpu.identity.uuid.clone(), now)?;
        (now >= before).then_some(now - before)
    }
}

/// How much of its GPU a usage holds: its MIG device's compute slices, or 1
/// for a whole GPU (or a time-slice of one).
fn slices(gpus: &[GpuState], usage: &PodGpuUsage) -> f64 {
    usage
        .mig
        .and_then(|m| gpus.get(usage.gpu)?.reading.mig_devices.get(m))
        .map_or(1.0, |mig| f64::from(mig.compute_slices()))
}

/// Per GPU, its holders' summed weighted shares and summed weights
/// ([`slices`]); `None` when any holder's share is unknown.
fn holder_shares(gpus: &[GpuState], usages: &[PodGpuUsage]) -> Vec<Option<(f64, f64)>> {
    let mut shares = vec![Some((0.0, 0.0)); gpus.len()];
    for usage in usages {
        let weight = slices(gpus, usage);
        if let Some(slot) = shares.get_mut(usage.gpu) {
            *slot = slot
                .zip(usage.utilization_percent.ok())
                .map(|((total, weights), share)| (total + share * weight, weights + weight));
        }
    }
    shares
}

/// The part of its GPU's energy a usage of `weight` is charged: its weighted
/// share over its GPU's holders' `shares` (total, weights), a part by
/// weight when all are zero, and `None` when any holder's share is unknown.
fn energy_fraction(usage: &PodGpuUsage, weight: f64, shares: Option<(f64, f64)>) -> Option<f64> {
    let (total, weights) = shares?;
    let own = usage.utilization_percent.ok()?;
    Some(if total > 0.0 { own * weight / total } else { weight / weights })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::attribution::{Sharing, Unresolved};
    use crate::gpu::{GpuIdentity, GpuReading};

    fn gpu(uuid: &str, energy: f64) -> GpuState {
        GpuState {
            identity: GpuIdentity { uuid: uuid.into(), ..GpuIdentity::default() },
            up: true,
            reading: GpuReading { energy_joules: Some(energy), ..GpuReading::default() },
        }
    }

    fn usage(pod: &str, gpu: usize, sharing: Sharing, share: Result<f64, Unresolved>) -> PodGpuUsage {
        PodGpuUsage {
            namespace: "ns".into(),
            pod: pod.into(),
            container: "main".into(),
            gpu,
            mig: None,
            sharing,
            utilization_percent: share,
            memory_utilization_percent: None,
            memory_used_bytes: None,
        }
    }

    fn at(second: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + second)
    }

    #[test]
    fn the_pods_energy_sums_to_the_gpus_energy_while_they_held_it() {
        let mut ledger = PodLedger::default();
        let mut gpu_energy_held = 0.0;
        let mut energy = 1000.0;
        let mut last = Vec::new();
        // Two pods time-slice GPU 0 with changing shares (idle at times);
        // one holds GPU 1 alone. Shares and power vary every second.
        for second in 0..200u64 {
            let shares = [(second % 7) as f64 * 10.0, (second % 3) as f64 * 5.0];
            let power = 100.0 + (second % 11) as f64 * 17.3;
            if second > 0 {
                gpu_energy_held += power;
            }
            energy += power;
            let gpus = [gpu("GPU-a", energy), gpu("GPU-b", energy * 2.0)];
            let usages = [
                usage("a", 0, Sharing::Shared, Ok(shares[0])),
                usage("b", 0, Sharing::Shared, Ok(shares[1])),
                usage("c", 1, Sharing::Exclusive, Ok(50.0)),
            ];
            last = ledger.record(at(second), &gpus, &usages);
        }
        let shared: f64 = last[0].energy_joules + last[1].energy_joules;
        assert!((shared - gpu_energy_held).abs() < 1e-6, "{shared} vs {gpu_energy_held}");
        assert!(last[0].energy_joules > last[1].energy_joules, "the busier pod is charged more");
        // The exclusive pod gets all of GPU 1's growth.
        assert!((last[2].energy_joules - 2.0 * gpu_energy_held).abs() < 1e-6);
    }

    #[test]
    fn mig_pods_are_charged_by_busy_time_weighed_by_their_devices_size() {
        use crate::gpu::MigDevice;
        let mig = |gi: u32, profile: &str| MigDevice {
            uuid: format!("MIG-{gi}"),
            gpu_instance_id: gi,
            profile: profile.into(),
            ..MigDevice::default()
        };
        let h100 = |energy: f64| {
            let mut gpu = gpu("GPU-h100", energy);
            gpu.reading.mig_devices = vec![mig(1, "3g.40gb"), mig(2, "1g.10gb"), mig(3, "1c.3g.40gb")];
            gpu
        };
        let on = |pod: &str, m: usize, share: f64| PodGpuUsage {
            mig: Some(m),
            ..usage(pod, 0, Sharing::Exclusive, Ok(share))
        };
        let mut ledger = PodLedger::default();
        let usages = [on("big", 0, 50.0), on("small", 1, 50.0), on("ci", 2, 0.0)];
        ledger.record(at(0), &[h100(0.0)], &usages);
        let accounts = ledger.record(at(1), &[h100(400.0)], &usages);
        // 50 % of 3 slices against 50 % of 1: three parts to one.
        assert_eq!(accounts.iter().map(|a| a.energy_joules).collect::<Vec<_>>(), [300.0, 100.0, 0.0]);
        // All idle: split by size (3 : 1 : 1).
        let idle = usages.clone().map(|mut u| {
            u.utilization_percent = Ok(0.0);
            u
        });
        let accounts = ledger.record(at(2), &[h100(900.0)], &idle);
        assert_eq!(accounts.iter().map(|a| a.energy_joules).collect::<Vec<_>>(), [600.0, 200.0, 100.0]);
        let total: f64 = accounts.iter().map(|a| a.energy_joules).sum();
        assert_eq!(total, 900.0, "the pods' counters sum to the GPU's energy while they held it");
    }

    #[test]
    fn an_interval_with_an_unknown_share_is_charged_to_no_one() {
        let mut ledger = PodLedger::default();
        let usages =
            |b: Result<f64, Unresolved>| [usage("a", 0, Sharing::Shared, Ok(30.0)), usage("b", 0, Sharing::Shared, b)];
        ledger.record(at(0), &[gpu("GPU-a", 0.0)], &usages(Ok(10.0)));
        let accounts = ledger.record(at(1), &[gpu("GPU-a", 100.0)], &usages(Err(Unresolved::PodUidUnknown)));
        assert_eq!(accounts[0].energy_joules, 0.0);
        assert_eq!(accounts[1].energy_joules, 0.0);
        let accounts = ledger.record(at(2), &[gpu("GPU-a", 200.0)], &usages(Ok(10.0)));
        assert_eq!(accounts[0].energy_joules, 75.0);
        assert_eq!(accounts[1].energy_joules, 25.0);
        // Idle holders split the idle power evenly.
        let accounts = ledger.record(
            at(3),
            &[gpu("GPU-a", 260.0)],
            &usages(Ok(0.0)).map(|mut u| {
                u.utilization_percent = Ok(0.0);
                u
            }),
        );
        assert_eq!(accounts[0].energy_joules, 105.0);
        assert_eq!(accounts[1].energy_joules, 55.0);
    }

    #[test]
    fn a_counter_that_goes_back_or_a_down_gpu_charges_nothing() {
        let mut ledger = PodLedger::default();
        let usages = [usage("a", 0, Sharing::Exclusive, Ok(50.0))];
        ledger.record(at(0), &[gpu("GPU-a", 500.0)], &usages);
        let accounts = ledger.record(at(1), &[gpu("GPU-a", 100.0)], &usages);
        assert_eq!(accounts[0].energy_joules, 0.0, "driver reloaded: no negative energy");
        let mut down = gpu("GPU-a", 0.0);
        down.up = false;
        ledger.record(at(2), &[down], &[usage("a", 0, Sharing::Exclusive, Err(Unresolved::GpuDown))]);
        let accounts = ledger.record(at(3), &[gpu("GPU-a", 160.0)], &usages);
        assert_eq!(accounts[0].energy_joules, 60.0, "the time down is charged when the counter is read again");
    }

    #[test]
    fn last_active_moves_only_while_the_pod_works_and_starts_when_first_seen() {
        let mut ledger = PodLedger::default();
        let gpus = [gpu("GPU-a", 0.0)];
        let idle = [usage("a", 0, Sharing::Exclusive, Ok(0.0))];
        let busy = [usage("a", 0, Sharing::Exclusive, Ok(12.0))];
        assert_eq!(ledger.record(at(0), &gpus, &idle)[0].last_active, at(0), "first seen");
        assert_eq!(ledger.record(at(5), &gpus, &idle)[0].last_active, at(0));
        assert_eq!(ledger.record(at(6), &gpus, &busy)[0].last_active, at(6));
        assert_eq!(ledger.record(at(90), &gpus, &idle)[0].last_active, at(6));
        // A pod that left and came back starts afresh.
        ledger.record(at(91), &gpus, &[]);
        assert_eq!(ledger.record(at(92), &gpus, &idle)[0].last_active, at(92));
    }
}
