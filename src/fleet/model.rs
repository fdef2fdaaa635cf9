//! The validated fleet: what every later stage (lock, plan, apply) consumes.
//!
//! Invariants hold by construction (see `validate`): every name is a valid
//! newtype, every reference (machine → host, machine → image) resolves,
//! sizes are in range, and each machine has a host (the one it names, or
//! a provisional one among its candidates that the planner's placement
//! replaces: see `plan::placement`). Collections are
//! BTreeMaps so iteration, output and plans are deterministic.

use super::names::{DiskName, FleetName, HostName, ImageName, VmName};
pub use super::raw::{
    Capacity, CloudInit, CpuMode, DomainType, ImageFormat, Network, Power, Settings, Snapshots,
    Storage, Strategy,
};
use crate::diag::SourceIndex;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// A validated fleet.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Fleet {
    /// The fleet file this was loaded from.
    #[serde(skip)]
    pub source: PathBuf,
    /// Where the fleet's literals are in that file, so problems found after
    /// loading (against images.lock) can name a line too.
    #[serde(skip)]
    pub index: Arc<SourceIndex>,
    /// The fleet's name: the ownership marker on everything it makes.
    pub name: FleetName,
    /// Fleet-wide permissions and retention.
    pub settings: Settings,
    /// Hosts by name.
    pub hosts: BTreeMap<HostName, Host>,
    /// Base image declarations by name (pins are in images.lock).
    pub images: BTreeMap<ImageName, Image>,
    /// Machines by name, each placed on one of `hosts`.
    pub machines: BTreeMap<VmName, Machine>,
}

/// A validated host.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Host {
    /// The host's name in the fleet.
    pub name: HostName,
    /// Its libvirt URI (a supported form: see `fleet::endpoints`).
    pub uri: String,
    /// Where its disks live: a directory or a ZFS parent dataset.
    pub storage: Storage,
    /// `kvm`, or `qemu` (TCG) where KVM cannot boot guests.
    pub domain_type: DomainType,
    /// The guest CPU model its domains get.
    pub cpu_mode: CpuMode,
    /// How its guests are networked.
    pub network: Network,
    /// What the machines placed on it may use, when declared.
    pub capacity: Option<Capacity>,
    /// Where storage commands run over SSH, when not the URI's host.
    pub ssh_target: Option<String>,
    /// At most this many steps in flight at once when changing this host
    /// (1 to 64), when declared: a cap under `--concurrency`, for a host
    /// that a burst of defines and starts would overload.
    pub concurrency: Option<usize>,
    /// Labels machines may require (`hostLabels`), sorted.
    pub labels: Vec<String>,
}

/// A validated base image declaration (its pin lives in images.lock).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// The image's name, as machines refer to it.
    pub name: ImageName,
    /// Where it is downloaded from (http or https).
    pub url: String,
    /// `qcow2` or `raw`.
    pub format: ImageFormat,
}

/// A validated machine, placed on a host. Its fields mirror
/// `raw::Machine` (the Dhall schema) on purpose: this is the same machine
/// after validation, with names as checked newtypes, the host resolved and
/// the data disks' policies inherited.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    /// The machine's (and its domain's) name.
    pub name: VmName,
    /// The host it is placed on: the one the fleet names, or (until the
    /// planner's placement decides) the first of its candidates.
    pub host: HostName,
    /// Where it may run and with whom it should not share a host.
    pub placement: Placement,
    /// The base image its root disk is cloned from.
    pub image: ImageName,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    #[serde(rename = "memoryMiB")]
    pub memory_mib: u64,
    /// Root disk size in GiB (disks only grow).
    #[serde(rename = "diskGiB")]
    pub disk_gib: u64,
    /// Extra disks, attached after the root disk.
    pub data_disks: Vec<DataDisk>,
    /// Started with the host.
    pub autostart: bool,
    /// Running or stopped, as apply keeps it.
    pub power: Power,
    /// The network its NIC joins (the host's unless the machine names one).
    pub network: Network,
    /// Cloud-init data: built into a NoCloud seed attached read-only.
    pub cloud_init: Option<CloudInit>,
    /// The root disk's (and, on Dir hosts, the machine's) snapshot policy.
    pub snapshots: Snapshots,
    /// Never destroyed by virtfleet, even when removed from the fleet.
    pub protect: bool,
}

/// Where a machine may run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// The fleet names its host (`host = Some ..`, or the fleet's only
    /// host): the planner never chooses.
    pub fixed: bool,
    /// Hosts it may run on, in name order, never empty: the named host, or
    /// the allowed hosts (all when none are listed) carrying every label asked.
    pub candidates: Vec<HostName>,
    /// Labels asked for (`hostLabels`), for the plan's reasons.
    pub labels: Vec<String>,
    /// Machines of one group are spread over hosts (anti-affinity).
    pub group: Option<String>,
}

/// A validated extra disk; its snapshot policy is resolved (inherited from
/// the machine when the fleet gave none).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DataDisk {
    /// The disk's name within the machine (`root` is reserved).
    pub name: DiskName,
    /// Size in GiB (disks only grow).
    #[serde(rename = "sizeGiB")]
    pub size_gib: u64,
    /// Its own policy, or the machine's when the fleet gave none.
    pub snapshots: Snapshots,
}

impl Machine {
    /// The storage volume name of one of this machine's disks on its host:
    /// `<machine>-<disk>`, with `root` for the root disk. Validation makes
    /// sure no two disks on one host share a volume name.
    pub fn volume_name(&self, disk: &str) -> String {
        format!("{}-{}", self.name, disk)
    }

    /// Every disk of the machine as (disk name, size in GiB), root first.
    pub fn disks(&self) -> Vec<(String, u64)> {
        std::iter::once(("root".to_owned(), self.disk_gib))
            .chain(
                self.data_disks
                    .iter()
                    .map(|d| (d.name.to_string(), d.size_gib)),
            )
            .collect()
    }
}

impl Fleet {
    /// Host `name`, if the fleet has it.
    pub fn host_named(&self, name: &str) -> Option<&Host> {
        self.hosts.values().find(|h| h.name.as_str() == name)
    }

    /// Machines that may be on `host` (it is one of their candidates, or
    /// their provisional host), in name order: the ones observation looks for there.
    pub fn machines_maybe_on<'a>(
        &'a self,
        host: &'a HostName,
    ) -> impl Iterator<Item = &'a Machine> + 'a {
        self.machines
            .values()
            .filter(move |m| &m.host == host || m.placement.candidates.contains(host))
    }

    /// Machines placed on `host`, in name order.
    pub fn machines_on<'a>(&'a self, host: &'a HostName) -> impl Iterator<Item = &'a Machine> + 'a {
        self.machines.values().filter(move |m| &m.host == host)
    }
}
