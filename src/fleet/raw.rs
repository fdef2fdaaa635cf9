//! The fleet exactly as Dhall evaluates it, before validation.
//!
//! These structs mirror `dhall/*.dhall` field for field (camelCase), so
//! serde_dhall can deserialise the evaluated fleet into them. Nothing here is
//! trusted: `validate` turns it into the typed [`crate::fleet::Fleet`].
//! The union types (storage, CPU mode, ...) are shared with the validated
//! model because they carry no names that need checking beyond what
//! validation does on their payloads.

use serde::{Deserialize, Serialize};

/// `dhall/Fleet.dhall`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fleet {
    pub name: String,
    pub settings: Settings,
    pub hosts: Vec<Host>,
    pub images: Vec<Image>,
    pub machines: Vec<Machine>,
}

/// `dhall/Settings.dhall`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Settings {
    pub allow_destroy: bool,
    pub allow_restart: bool,
    pub trash_retention_days: u64,
    /// Absent in fleets written before placement existed (JSON, literals).
    #[serde(default)]
    pub placement: Strategy,
    #[serde(default = "default_overcommit")]
    pub cpu_overcommit: u64,
}

fn default_overcommit() -> u64 {
    4
}

/// `dhall/Strategy.dhall`: where the planner puts a machine that may go to
/// several hosts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum Strategy {
    /// The host with the most room left (memory, then vCPUs).
    #[default]
    Spread,
    /// The fullest host the machine still fits on.
    Pack,
}

/// `dhall/Host.dhall`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Host {
    pub name: String,
    pub uri: String,
    pub storage: Storage,
    pub domain_type: DomainType,
    pub cpu_mode: CpuMode,
    pub network: Network,
    pub capacity: Option<Capacity>,
    pub ssh_target: Option<String>,
    pub concurrency: Option<u64>,
    #[serde(default)]
    pub labels: Vec<String>,
}

/// `dhall/Storage.dhall`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub enum Storage {
    /// zvols under a dataset.
    Zfs { parent: String },
    /// qcow2 files in a directory.
    Dir { path: String },
}

/// `dhall/DomainType.dhall`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum DomainType {
    Kvm,
    Qemu,
}

/// `dhall/CpuMode.dhall`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub enum CpuMode {
    HostPassthrough,
    HostModel,
    Model(String),
    Default,
}

/// `dhall/Network.dhall`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub enum Network {
    Libvirt(String),
    Bridge(String),
    User,
}

/// `dhall/Capacity.dhall`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Capacity {
    pub cpus: u64,
    #[serde(rename = "memoryMiB")]
    pub memory_mib: u64,
}

/// `dhall/Image.dhall`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Image {
    pub name: String,
    pub url: String,
    pub format: ImageFormat,
}

/// `dhall/ImageFormat.dhall`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all(serialize = "lowercase"))]
pub enum ImageFormat {
    // Dhall spells the labels capitalised; JSON (plans, show) lowercase.
    #[serde(alias = "qcow2")]
    Qcow2,
    #[serde(alias = "raw")]
    Raw,
}

impl ImageFormat {
    /// The lowercase spelling used in images.lock and by qemu-img.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Raw => "raw",
        }
    }
}

/// `dhall/Machine.dhall`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Machine {
    pub name: String,
    pub host: Option<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub host_labels: Vec<String>,
    #[serde(default)]
    pub group: Option<String>,
    pub image: String,
    pub cpus: u64,
    #[serde(rename = "memoryMiB")]
    pub memory_mib: u64,
    #[serde(rename = "diskGiB")]
    pub disk_gib: u64,
    pub data_disks: Vec<Disk>,
    pub autostart: bool,
    pub power: Power,
    pub network: Option<Network>,
    pub cloud_init: Option<CloudInit>,
    pub snapshots: Snapshots,
    pub protect: bool,
}

/// `dhall/Disk.dhall`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Disk {
    pub name: String,
    #[serde(rename = "sizeGiB")]
    pub size_gib: u64,
    pub snapshots: Option<Snapshots>,
}

/// `dhall/Power.dhall`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Power {
    Running,
    Stopped,
}

/// `dhall/CloudInit.dhall`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudInit {
    pub user_data: Option<String>,
    pub ssh_authorized_keys: Vec<String>,
    pub hostname: Option<String>,
    pub user: String,
    pub network_config: Option<String>,
    pub meta_data: std::collections::BTreeMap<String, String>,
    pub instance_id: Option<String>,
    pub show_user_data: bool,
}

/// `dhall/Snapshots.dhall`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Snapshots {
    pub init: bool,
    pub hourly: u64,
    pub daily: u64,
    pub weekly: u64,
    pub monthly: u64,
}
