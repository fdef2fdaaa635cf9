//! The validated fleet: what every later stage (lock, plan, apply) consumes.
//!
//! Invariants hold by construction (see `validate`): every name is a valid
//! newtype, every reference (machine → host, machine → image) resolves,
//! sizes are in range, and each machine has a host. Collections are
//! BTreeMaps so iteration, output and plans are deterministic.

use super::names::{DiskName, FleetName, HostName, ImageName, VmName};
pub use super::raw::{
    Capacity, CloudInit, CpuMode, DomainType, ImageFormat, Network, Power, Settings, Snapshots,
    Storage,
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
    pub name: FleetName,
    pub settings: Settings,
    pub hosts: BTreeMap<HostName, Host>,
    pub images: BTreeMap<ImageName, Image>,
    pub machines: BTreeMap<VmName, Machine>,
}

/// A validated host.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Host {
    pub name: HostName,
    pub uri: String,
    pub storage: Storage,
    pub domain_type: DomainType,
    pub cpu_mode: CpuMode,
    pub network: Network,
    pub capacity: Option<Capacity>,
    pub ssh_target: Option<String>,
}

/// A validated base image declaration (its pin lives in images.lock).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    pub name: ImageName,
    pub url: String,
    pub format: ImageFormat,
}

/// A validated machine, placed on a host.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    pub name: VmName,
    pub host: HostName,
    pub image: ImageName,
    pub cpus: u32,
    #[serde(rename = "memoryMiB")]
    pub memory_mib: u64,
    #[serde(rename = "diskGiB")]
    pub disk_gib: u64,
    pub data_disks: Vec<DataDisk>,
    pub autostart: bool,
    pub power: Power,
    pub cloud_init: Option<CloudInit>,
    pub snapshots: Snapshots,
    pub protect: bool,
}

/// A validated extra disk; its snapshot policy is resolved (inherited from
/// the machine when the fleet gave none).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DataDisk {
    pub name: DiskName,
    #[serde(rename = "sizeGiB")]
    pub size_gib: u64,
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
    /// Machines placed on `host`, in name order.
    pub fn machines_on<'a>(&'a self, host: &'a HostName) -> impl Iterator<Item = &'a Machine> + 'a {
        self.machines.values().filter(move |m| &m.host == host)
    }
}
