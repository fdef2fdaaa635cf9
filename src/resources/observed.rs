//! What observation found on the hosts, as plain data.
//!
//! These types are produced by the effectful layers (`host::libvirt` lists
//! domains, the storage backends list disks, `observe` fans out over hosts)
//! and consumed by the pure planner and the renderers. They live here, below
//! all of those, so that none of them has to import another to share them.
//! An [`Observation`] can be saved to a file and planned against later.

use super::domain::DomainSpec;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// Version of the observation file format.
pub const FORMAT_VERSION: u32 = 1;

/// Everything observed on every host of a fleet, at one time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Observation {
    /// [`FORMAT_VERSION`] of the file it was saved as.
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
// One per host, built once per run: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum HostObservation {
    Reachable(HostState),
    Unreachable { error: String },
}

/// What is on a reachable host. The storage backends fill everything but
/// `domains` (libvirt's part), so the two halves share one type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostState {
    /// Every domain, by name (managed or not: see `owner` in its config).
    pub domains: BTreeMap<String, ObservedDomain>,
    /// sha256 of every verified base image present.
    pub images: BTreeSet<String>,
    /// sha256 of base images present whose bytes changed since they were
    /// verified on the host (size, mtime or inode differ from the record):
    /// not trusted, copied again.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub changed_images: BTreeSet<String>,
    /// This fleet's disks, by volume name (`web-root`).
    pub disks: BTreeMap<String, OwnedDisk>,
    /// This fleet's cloud-init seeds, by volume name (`web.cidata`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub seeds: BTreeMap<String, OwnedSeed>,
    /// This fleet's trash entries, by entry name (`web-root@1700000000`).
    pub trash: BTreeMap<String, TrashEntry>,
    /// This fleet's half-made objects left by a crash (backend paths:
    /// `disks/.new-*` directories, base-image zvols without their pin).
    pub incomplete: Vec<String>,
    /// Objects under the storage root that are not this fleet's (never touched).
    pub unmanaged_files: Vec<String>,
    /// libvirt networks on the host, by name → active; `None` when they
    /// were not listed (an older saved observation), which skips the check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<BTreeMap<String, bool>>,
    /// The run changing this host right now, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Box<Lease>>,
    /// Bytes free where the host's disks live (the Dir path's filesystem,
    /// the ZFS parent's `available`); `None` when not known (an older
    /// saved observation, a storage root not made yet): placement then
    /// does not count storage on that host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_free_bytes: Option<u64>,
}

/// A disk of this fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnedDisk {
    /// Its ownership marker (fleet, machine, disk).
    pub owner: DiskOwner,
    /// The path a domain uses for it (qcow2 file or zvol device).
    pub path: String,
    /// Virtual size in bytes.
    pub size_bytes: u64,
    /// Names of the disk's snapshots (virtfleet's and foreign), sorted.
    #[serde(default)]
    pub snapshots: Vec<String>,
    /// The disk was grown under a running guest that was not told yet (a
    /// run stopped between the two): the grow must be finished.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub grow_untold: bool,
}

/// A cloud-init seed of this fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnedSeed {
    /// Its ownership marker (disk `cidata`).
    pub owner: DiskOwner,
    /// The path a domain uses for it.
    pub path: String,
    /// What it holds, as recorded when it was written (never user-data text).
    pub summary: crate::resources::seed::SeedSummary,
}

/// A destroyed disk kept for restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrashEntry {
    /// The ownership marker the disk had.
    pub owner: DiskOwner,
    /// The volume it was, and becomes again on restore (`web-root`).
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
            // Taking the lease is the first thing an apply does: it must not
            // make the plan it applies look stale.
            s.lease = None;
            // Free space moves with every write on the host: a plan placed
            // with it stays valid (a disk that no longer fits fails its step).
            s.storage_free_bytes = None;
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

    /// Volumes of machine `machine`: its disks, then its seed; trashed
    /// together when it is destroyed.
    pub fn volumes_of(&self, machine: &str) -> Vec<String> {
        let disks = self
            .disks
            .iter()
            .filter(|(_, d)| d.owner.machine == machine)
            .map(|(v, _)| v.clone());
        let seeds = self
            .seeds
            .iter()
            .filter(|(_, s)| s.owner.machine == machine)
            .map(|(v, _)| v.clone());
        disks.chain(seeds).collect()
    }

    /// Domains that do not carry this fleet's marker.
    pub fn unmanaged<'a>(&'a self, fleet: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        self.domains
            .iter()
            .filter(move |(_, d)| d.config.owner.as_ref().is_none_or(|o| o.fleet != fleet))
            .map(|(n, _)| n)
    }
}

/// A domain's run state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PowerState {
    Running,
    Paused,
    Stopped,
    Other,
}

/// What observation learns about one domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedDomain {
    /// Managed fields of the persistent definition (inactive XML).
    pub config: DomainSpec,
    /// Run state.
    pub state: PowerState,
    /// Started with the host.
    pub autostart: bool,
    /// vCPUs and memory the running guest has now (None when stopped).
    pub live: Option<Live>,
    /// Virtual size in bytes of each disk, by guest target (vda, ...).
    pub disk_sizes: BTreeMap<String, u64>,
    /// IP addresses libvirt knows (DHCP leases / ARP), when running.
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// Live resources of a running guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Live {
    /// vCPUs online in the guest.
    pub vcpus: u32,
    /// Memory the guest has now (balloon), in MiB.
    pub memory_mib: u64,
}

/// Ownership marker of a disk directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskOwner {
    /// The fleet that made the disk.
    pub fleet: String,
    /// The machine it belongs to.
    pub machine: String,
    /// Its name within the machine (`root`, or a data disk's name).
    pub disk: String,
    /// Its machine is protected: the disk is kept even when the domain
    /// that carried the protection is gone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub protect: bool,
}

impl Lease {
    /// A lease whose holder cannot be read, held until `expires`.
    pub fn unknown(expires: u64) -> Lease {
        Lease {
            id: String::new(),
            fleet: "?".into(),
            controller: "?".into(),
            pid: 0,
            user: "?".into(),
            command: "? (the holder record is missing or unreadable)".into(),
            since: 0,
            expires,
            stale: false,
        }
    }
}

/// A host's lease: taken (atomically, on the host) by a run before it
/// changes anything there, released after, so two controllers never change
/// one host at once. Any fleet's run takes it: fleets may share a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// Unique per run: only the run that took the lease renews or releases it.
    pub id: String,
    /// The fleet whose run holds it.
    pub fleet: String,
    /// The machine the run runs on (its hostname).
    pub controller: String,
    /// The run's process id there.
    pub pid: u32,
    /// The user running it.
    pub user: String,
    /// The command line.
    pub command: String,
    /// When it was taken (unix seconds).
    pub since: u64,
    /// When it lapses unless renewed (unix seconds): a run that died
    /// without releasing it blocks the host no longer than this.
    pub expires: u64,
    /// Set by observation (never stored on the host): the lease lapsed, or
    /// its run died on this controller, so the next apply releases it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
}
