//! The plan as data: what will change, where, how disruptive, and why.
//!
//! A [`Plan`] is serialisable (versioned by `formatVersion`) and carries
//! digests of everything it was computed from, so `apply PLANFILE` can
//! refuse a plan whose inputs have changed. The executor dispatches on
//! [`Action`] only; `reason` is for people.

use crate::fleet::ImageFormat;
pub use crate::resources::seed::SeedSummary;
use crate::text::{human_bytes, plural};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version of the plan format (`plan --json`, `plan --out`).
pub const FORMAT_VERSION: u32 = 1;

/// How disruptive a change is, least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Disruption {
    /// Creates new resources; nothing existing is affected.
    None,
    /// Changes a running machine without restarting it.
    Live,
    /// Needs the guest stopped or restarted.
    Restart,
    /// Loses data (destroy, purge).
    Destructive,
}

impl Disruption {
    /// Lowercase name used in every rendering.
    pub fn as_str(self) -> &'static str {
        match self {
            Disruption::None => "none",
            Disruption::Live => "live",
            Disruption::Restart => "restart",
            Disruption::Destructive => "destructive",
        }
    }
}

/// A base image as a disk is cloned from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BaseRef {
    /// The image's name in the fleet.
    pub image: String,
    /// Its pinned sha256: the base the disk is cloned from on the host.
    pub sha256: String,
    /// Its format, which decides how the host stores the base.
    pub format: ImageFormat,
}

/// What to do. Every action is idempotent in the executor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Action {
    /// Copy a verified base image from the controller's cache to the host.
    EnsureImage {
        /// The image's name in the fleet.
        image: String,
        /// Its pinned sha256 (checked again on the host).
        sha256: String,
        /// Its format.
        format: ImageFormat,
        /// Its pinned size in bytes.
        size: u64,
    },
    /// Remove an owned half-created disk directory left by a crash.
    RemoveIncomplete {
        /// Backend path relative to the storage root (`disks/.new-web-root`).
        path: String,
    },
    /// Create a disk: a copy-on-write overlay on `base`, or blank.
    CreateDisk {
        /// Volume name on the host (`web-root`).
        volume: String,
        /// Disk name in the machine (`root`, `data`).
        disk: String,
        /// Size in GiB.
        size_gib: u64,
        /// The base image of a root disk; None for a blank data disk.
        base: Option<BaseRef>,
    },
    /// Grow a disk (never shrink).
    GrowDisk {
        /// Volume name on the host.
        volume: String,
        /// The guest's device (`vda`), for the live block resize.
        target: String,
        /// Size observed, in bytes.
        from_bytes: u64,
        /// Size wanted, in GiB.
        to_gib: u64,
        /// The guest was running when planned (display only: the executor
        /// asks libvirt again).
        running: bool,
    },
    /// Write a machine's cloud-init seed (rebuilt from the fleet at apply
    /// time and checked against `seed.sha256`).
    CreateSeed {
        /// Volume name on the host (`web.cidata`).
        volume: String,
        /// What the seed holds (no user-data text).
        seed: SeedSummary,
        /// user-data text, only with `--show-user-data` or `showUserData`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_data: Option<String>,
    },
    /// Replace a machine's seed: the old one goes to the trash, the new one
    /// is written. A running guest keeps reading the old one until its
    /// domain is restarted (the domain update says so).
    ReplaceSeed {
        /// Volume name on the host.
        volume: String,
        /// The observed seed.
        from: SeedSummary,
        /// The new seed.
        seed: SeedSummary,
        /// user-data text, only with `--show-user-data` or `showUserData`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_data: Option<String>,
    },
    /// Define a new domain.
    DefineDomain {
        /// The complete domain XML, ownership marker included.
        xml: String,
    },
    /// Redefine a domain; optionally set memory live or restart it.
    UpdateDomain {
        /// The complete new domain XML.
        xml: String,
        /// Set the running guest's memory to this many MiB without a restart.
        memory_live_mib: Option<u64>,
        /// Restart a running guest so the definition takes effect.
        restart: bool,
    },
    /// Set autostart.
    SetAutostart {
        /// Start the domain with the host.
        on: bool,
    },
    /// Start the domain.
    Start,
    /// Stop the domain (ACPI shutdown, then power off after a grace period).
    Stop,
    /// Move a machine here from host `from` with its data: stop it there
    /// (ACPI shutdown, power off after the grace period), copy every disk
    /// with its snapshots, verify each copy, and only then take it in. A
    /// failure starts the guest again on `from` if it was running. Between
    /// ZFS hosts the bulk is sent before the stop, while the guest runs, and
    /// only the increment after it; between a Dir and a ZFS host each disk
    /// is converted, snapshots included.
    MoveIn {
        /// The host it is on now.
        from: String,
        /// Its disks there (volume names), copied under the same names.
        volumes: Vec<String>,
        /// The base image of its root disk (already on this host by then).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base: Option<BaseRef>,
        /// Bytes the disk files hold there (display; progress counts the real ones).
        bytes: u64,
    },
    /// The last step of a move, after the machine runs here: undefine it on
    /// `from` and move its disks and seed there to that host's trash.
    FinishMove {
        /// The host it came from.
        from: String,
        /// Its volumes there.
        volumes: Vec<String>,
    },
    /// Undefine the domain and move its disks to the trash.
    Destroy {
        /// The machine's owned volumes, trashed after the undefine.
        volumes: Vec<String>,
    },
    /// Move an owned disk no machine uses any more to the trash.
    TrashDisk {
        /// Volume name on the host.
        volume: String,
    },
    /// Record a machine's protection on one of its disks (or lift it).
    ProtectDisk {
        /// Volume name on the host.
        volume: String,
        /// Protected from now on.
        protect: bool,
    },
    /// Release a host's lease left by a run that died (the executor breaks
    /// it when it takes the lease itself).
    ReleaseLease {
        /// The dead run's lease id.
        holder: String,
    },
    /// Delete a trash entry whose retention expired.
    PurgeTrash {
        /// Trash entry name (`web-root@1700000000`).
        entry: String,
    },
    /// Take snapshot `name` of `volumes` (one disk on ZFS; every disk of the
    /// machine on Dir hosts, where a running guest's checkpoint covers all).
    Snapshot {
        /// Volumes the snapshot covers.
        volumes: Vec<String>,
        /// Snapshot name (`vf-daily-...`, `vf-manual-...`).
        name: String,
    },
    /// Delete snapshot `name` of `volumes`: the policy no longer keeps it.
    PruneSnapshot {
        /// Volumes the snapshot covers.
        volumes: Vec<String>,
        /// Snapshot name.
        name: String,
    },
    /// Move trash entry `entry` back into place as `volume` (`virtfleet
    /// restore`); never overwrites an existing disk.
    RestoreDisk {
        /// Trash entry name (`web-root@1700000000`).
        entry: String,
        /// Volume it becomes again.
        volume: String,
    },
    /// Shut the guest down by ACPI and wait (the shutdown timeout); power it
    /// off when it does not stop only if `force` (`rollback --force`), else fail.
    Shutdown {
        /// Power the guest off after the timeout.
        force: bool,
    },
    /// Roll one stopped disk back to snapshot `name` (`virtfleet rollback`):
    /// everything written since is lost; on ZFS newer snapshots go too.
    RollbackDisk {
        /// Volume name on the host.
        volume: String,
        /// Snapshot to go back to.
        name: String,
    },
}

impl Action {
    /// A short description of what an action does, e.g. `grow disk to 20 GiB`.
    pub fn describe(&self) -> String {
        match self {
            Action::EnsureImage { image, size, .. } => {
                format!("ensure base image {image} ({})", human_bytes(*size))
            }
            Action::RemoveIncomplete { path } => format!("remove incomplete {path}"),
            Action::CreateDisk {
                size_gib,
                base: Some(base),
                ..
            } => format!("create disk {size_gib} GiB (overlay on {})", base.image),
            Action::CreateDisk {
                size_gib,
                base: None,
                ..
            } => format!("create disk {size_gib} GiB (blank)"),
            Action::GrowDisk { to_gib, .. } => format!("grow disk to {to_gib} GiB"),
            Action::CreateSeed { seed, .. } => {
                format!("create cloud-init seed (instance-id {})", seed.instance_id)
            }
            Action::ReplaceSeed { from, seed, .. } => {
                if from.instance_id == seed.instance_id {
                    format!(
                        "replace cloud-init seed (same instance-id {})",
                        seed.instance_id
                    )
                } else {
                    format!(
                        "replace cloud-init seed (instance-id {} → {})",
                        from.instance_id, seed.instance_id
                    )
                }
            }
            Action::DefineDomain { .. } => "define domain".into(),
            Action::UpdateDomain {
                memory_live_mib,
                restart,
                ..
            } => {
                let mut s = String::from("update domain");
                if let Some(mib) = memory_live_mib {
                    s.push_str(&format!(", memory live to {mib} MiB"));
                }
                if *restart {
                    s.push_str(", restart");
                }
                s
            }
            Action::SetAutostart { on: true } => "enable autostart".into(),
            Action::SetAutostart { on: false } => "disable autostart".into(),
            Action::Start => "start".into(),
            Action::Stop => "stop".into(),
            Action::Destroy { volumes } => {
                format!("destroy ({} to trash)", plural(volumes.len(), "disk"))
            }
            Action::MoveIn {
                from,
                volumes,
                bytes,
                ..
            } => format!(
                "move in from {from} ({}, {})",
                plural(volumes.len(), "disk"),
                human_bytes(*bytes)
            ),
            Action::FinishMove { from, volumes } => format!(
                "finish the move: undefine on {from}, {} to its trash",
                plural(volumes.len(), "volume")
            ),
            Action::TrashDisk { volume } => format!("move disk {volume} to trash"),
            Action::ReleaseLease { .. } => "release the lease of a run that died".into(),
            Action::ProtectDisk { volume, protect } => {
                let what = if *protect { "mark" } else { "unmark" };
                format!("{what} disk {volume} as protected")
            }
            Action::PurgeTrash { entry } => format!("purge trash entry {entry}"),
            Action::Snapshot { name, volumes } => {
                format!("snapshot {name} of {}", volumes.join(", "))
            }
            Action::PruneSnapshot { name, volumes } => {
                format!("prune snapshot {name} of {}", volumes.join(", "))
            }
            Action::RestoreDisk { entry, volume } => {
                format!("restore disk {volume} from trash/{entry}")
            }
            Action::Shutdown { force: false } => "shut down (no power off)".into(),
            Action::Shutdown { force: true } => "shut down (power off after timeout)".into(),
            Action::RollbackDisk { volume, name } => format!("roll {volume} back to {name}"),
        }
    }
}

/// One change to one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// `host/machine[/disk]`, or `host/images/<sha12>`, `host/trash/<entry>`.
    pub address: String,
    /// The host it runs on.
    pub host: String,
    /// The machine it concerns (None for base images and crash cleanup).
    pub machine: Option<String>,
    /// What to do: the only thing the executor looks at.
    pub action: Action,
    /// How disruptive it is; decides which permission it needs.
    pub disruption: Disruption,
    /// Why, for people only.
    pub reason: String,
    /// Unified diff of the domain XML (updates only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

/// A change withheld for lack of permission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pending {
    /// The withheld change.
    pub change: Change,
    /// What would allow it, e.g. `--allow-restart`.
    pub needs: String,
}

/// Something the planner refuses to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Refusal {
    /// The object refused (`host/machine[/disk]`).
    pub address: String,
    /// What was refused and why, for people.
    pub message: String,
}

/// What a plan was computed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Inputs {
    /// sha256 of the validated fleet.
    pub fleet: String,
    /// sha256 of the lockfile text.
    pub lock: String,
    /// sha256 of each host's observation.
    pub hosts: BTreeMap<String, String>,
    /// When the observation was taken (unix seconds).
    pub observed_at: u64,
    /// The observation came from a file (`plan --observed`), not live hosts.
    pub from_file: bool,
    /// The `now` the plan was computed for (unix seconds).
    pub now: u64,
}

/// A complete plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// [`FORMAT_VERSION`] when it was made; `apply PLANFILE` refuses others.
    pub format_version: u32,
    /// The fleet's name.
    pub fleet: String,
    /// Digests of what it was computed from, for stale-plan refusal.
    pub inputs: Inputs,
    /// Changes to apply, in execution order per host.
    pub changes: Vec<Change>,
    /// Changes withheld until permitted.
    pub pending: Vec<Pending>,
    /// Changes refused (e.g. shrinking a disk); a plan with refusals cannot be applied.
    pub refused: Vec<Refusal>,
    /// Hosts that could not be observed, with the reason: the plan is incomplete.
    pub unreachable: BTreeMap<String, String>,
    /// Objects on each host that are not this fleet's (listed, never touched).
    pub unmanaged: BTreeMap<String, Vec<String>>,
    /// Things the user should know that are neither a change nor a
    /// refusal (e.g. a disk without its `vf-init` that cannot get one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<Refusal>,
    /// Where machines without a fixed host were placed, and moves, with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placements: Vec<crate::plan::placement::Decision>,
}

impl Plan {
    /// No changes, nothing pending, nothing refused.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.pending.is_empty() && self.refused.is_empty()
    }

    /// Some host could not be observed.
    pub fn is_incomplete(&self) -> bool {
        !self.unreachable.is_empty()
    }
}
