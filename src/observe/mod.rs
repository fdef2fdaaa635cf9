//! Observation: what is really on each host, gathered in parallel.
//!
//! One thread per host opens that host's libvirt connection and storage,
//! lists every domain and every file under the storage root, and records
//! which of them carry this fleet's ownership marker. A host that cannot be
//! reached becomes `Unreachable` with the reason; it never fails the run.
//! An [`Observation`] is plain data: it can be saved (`observe --out`) and
//! planned against later without contacting any host.

use crate::fleet::{Fleet, Host};
use crate::host::dir::DiskOwner;
use crate::host::libvirt::{Libvirt, ObservedDomain};
use crate::host::storage::backend;
use crate::host::transport_for;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// Version of the observation file format.
pub const FORMAT_VERSION: u32 = 1;

/// Everything observed on every host of a fleet, at one time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Observation {
    pub format_version: u32,
    /// The fleet whose ownership markers were looked for.
    pub fleet: String,
    /// When the observation started (unix seconds).
    pub taken_at: u64,
    /// By host name.
    pub hosts: BTreeMap<String, HostObservation>,
}

/// One host: its state, or why it could not be observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "camelCase")]
pub enum HostObservation {
    Reachable(HostState),
    Unreachable { error: String },
}

/// What is on a reachable host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostState {
    /// Every domain, by name (managed or not: see `owner` in its config).
    pub domains: BTreeMap<String, ObservedDomain>,
    /// sha256 of every verified base image present.
    pub images: BTreeSet<String>,
    /// This fleet's disks, by volume name (`web-root`).
    pub disks: BTreeMap<String, OwnedDisk>,
    /// This fleet's trash entries, by entry name (`web-root@1700000000`).
    pub trash: BTreeMap<String, TrashEntry>,
    /// This fleet's half-made objects left by a crash (backend paths:
    /// `disks/.new-*` directories, base-image zvols without their pin).
    pub incomplete: Vec<String>,
    /// Objects under the storage root that are not this fleet's (never touched).
    pub unmanaged_files: Vec<String>,
}

/// A disk of this fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnedDisk {
    pub owner: DiskOwner,
    pub path: String,
    /// Virtual size in bytes.
    pub size_bytes: u64,
    /// Names of the disk's snapshots (virtfleet's and foreign), sorted.
    #[serde(default)]
    pub snapshots: Vec<String>,
}

/// A destroyed disk kept for restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrashEntry {
    pub owner: DiskOwner,
    pub volume: String,
    /// When it was trashed (unix seconds).
    pub trashed_at: u64,
}

impl HostObservation {
    /// Digest of what a plan for `fleet` depends on: its own domains and
    /// storage, and any other domain whose name one of `names` (its machines
    /// on this host) would collide with. Other fleets' and unmanaged domains
    /// coming and going must not make a saved plan stale; guest IP addresses
    /// change on their own and never change a plan.
    pub fn digest(&self, fleet: &str, names: &BTreeSet<String>) -> String {
        let mut copy = self.clone();
        if let HostObservation::Reachable(s) = &mut copy {
            s.domains.retain(|n, d| {
                names.contains(n) || d.config.owner.as_ref().is_some_and(|o| o.fleet == fleet)
            });
            for d in s.domains.values_mut() {
                d.addresses.clear();
            }
        }
        let json = serde_json::to_vec(&copy).expect("observation serialises");
        hex::encode(Sha256::digest(&json))
    }
}

impl HostState {
    /// Domains that carry this fleet's marker.
    pub fn managed<'a>(
        &'a self,
        fleet: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a ObservedDomain)> + 'a {
        self.domains
            .iter()
            .filter(move |(_, d)| d.config.owner.as_ref().is_some_and(|o| o.fleet == fleet))
    }

    /// Domains that do not carry this fleet's marker.
    pub fn unmanaged<'a>(&'a self, fleet: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        self.domains
            .iter()
            .filter(move |(_, d)| d.config.owner.as_ref().is_none_or(|o| o.fleet != fleet))
            .map(|(n, _)| n)
    }
}

/// Observes every host of `fleet` in parallel; `now` is the unix time to stamp.
pub fn observe(fleet: &Fleet, now: u64) -> Observation {
    let hosts = std::thread::scope(|s| {
        let handles: Vec<_> = fleet
            .hosts
            .values()
            .map(|h| (h.name.to_string(), s.spawn(move || observe_host(fleet, h))))
            .collect();
        handles
            .into_iter()
            .map(|(name, handle)| {
                let obs = handle
                    .join()
                    .unwrap_or_else(|_| HostObservation::Unreachable {
                        error: "observation crashed".into(),
                    });
                (name, obs)
            })
            .collect()
    });
    Observation {
        format_version: FORMAT_VERSION,
        fleet: fleet.name.to_string(),
        taken_at: now,
        hosts,
    }
}

/// Observes one host.
pub fn observe_host(fleet: &Fleet, host: &Host) -> HostObservation {
    // Disks whose policy schedules snapshots: their snapshot lists are needed.
    let with_snapshots: BTreeSet<String> = fleet
        .machines_on(&host.name)
        .filter(|m| {
            std::iter::once(&m.snapshots)
                .chain(m.data_disks.iter().map(|d| &d.snapshots))
                .any(|p| p.hourly + p.daily + p.weekly + p.monthly > 0)
        })
        .flat_map(|m| {
            m.disks()
                .into_iter()
                .map(|(d, _)| m.volume_name(&d))
                .collect::<Vec<_>>()
        })
        .collect();
    match try_observe(fleet.name.as_str(), host, &with_snapshots) {
        Ok(state) => HostObservation::Reachable(state),
        Err(error) => HostObservation::Unreachable { error },
    }
}

fn try_observe(
    fleet: &str,
    host: &Host,
    with_snapshots: &BTreeSet<String>,
) -> Result<HostState, String> {
    let lv = Libvirt::open(&host.uri).map_err(|e| e.to_string())?;
    let domains: BTreeMap<String, ObservedDomain> = lv
        .domains()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|d| (d.config.name.clone(), d))
        .collect();
    // Sizes of attached disks come from libvirt (no process per disk).
    let attached: BTreeMap<String, u64> = domains
        .values()
        .flat_map(|d| {
            d.config.disks.iter().map(move |r| {
                (
                    r.path.clone(),
                    d.disk_sizes.get(&r.target).copied().unwrap_or(0),
                )
            })
        })
        .collect();
    let t = transport_for(host)?;
    let storage = backend(host, t.as_ref())
        .observe(fleet, &attached, with_snapshots)
        .map_err(|e| format!("storage: {e}"))?;
    Ok(HostState {
        domains,
        images: storage.images,
        disks: storage.disks,
        trash: storage.trash,
        incomplete: storage.incomplete,
        unmanaged_files: storage.unmanaged,
    })
}
