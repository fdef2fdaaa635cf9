//! One change, carried out: the dispatch on [`Action`] and one function per
//! group of actions. Every operation is idempotent (see the storage and
//! libvirt layers), so a step that is repeated after a crash converges.

use super::bytes::StepBytes;
use super::error::StepError;
use super::{Events, Settings};
use crate::fleet::{Fleet, ImageName};
use crate::host::libvirt::Libvirt;
use crate::host::storage::StorageBackend;
use crate::lock::ImageLock;
use crate::lock::cache::{Cache, Verdict};
use crate::lock::fetch::{Expected, download};
use crate::plan::planner::GIB;
use crate::plan::{Action, Change};
use crate::progress::Progress;
use crate::resources::observed::DiskOwner;

/// Everything a step may use on its host.
pub struct StepEnv<'a> {
    /// The fleet (its name goes into disk ownership).
    pub fleet: &'a Fleet,
    /// The lock (the pins base images are checked against).
    pub lock: &'a ImageLock,
    /// The controller's image cache.
    pub cache: &'a Cache,
    /// The host's libvirt connection.
    pub lv: &'a Libvirt,
    /// The host's storage backend.
    pub storage: &'a dyn StorageBackend,
    /// See [`Settings`].
    pub settings: Settings,
    /// Where byte progress goes.
    pub events: &'a dyn Events,
}

/// Carries out `c`.
pub fn step(c: &Change, env: &StepEnv<'_>) -> Result<(), StepError> {
    match &c.action {
        Action::EnsureImage {
            image,
            sha256,
            size,
            format,
        } => ensure_image(c, env, image, sha256, format.as_str(), *size),
        Action::RemoveIncomplete { path } => Ok(env.storage.remove_incomplete(path)?),
        Action::CreateDisk { .. } | Action::GrowDisk { .. } => disk(c, env),
        Action::DefineDomain { .. }
        | Action::UpdateDomain { .. }
        | Action::SetAutostart { .. }
        | Action::Start
        | Action::Stop
        | Action::Shutdown { .. }
        | Action::Destroy { .. } => domain(c, env),
        Action::TrashDisk { volume } => Ok(env.storage.trash(volume, env.settings.now)?),
        Action::PurgeTrash { entry } => Ok(env.storage.purge(entry)?),
        Action::RestoreDisk { entry, volume } => Ok(env.storage.restore(entry, volume)?),
        Action::Snapshot { .. } | Action::PruneSnapshot { .. } | Action::RollbackDisk { .. } => {
            snapshot(c, env)
        }
    }
}

fn machine(c: &Change) -> Result<&str, StepError> {
    c.machine.as_deref().ok_or_else(|| StepError::NoMachine {
        address: c.address.clone(),
    })
}

/// Verifies the controller's copy (downloading it again when it is missing
/// or corrupt), then puts it on the host, where it is hashed once more.
fn ensure_image(
    c: &Change,
    env: &StepEnv<'_>,
    image: &str,
    sha256: &str,
    format: &str,
    size: u64,
) -> Result<(), StepError> {
    let not_pinned = || StepError::ImageNotPinned {
        image: image.into(),
        sha256: sha256.into(),
    };
    let name = ImageName::new(image).map_err(|_| not_pinned())?;
    let entry = env
        .lock
        .images
        .get(&name)
        .filter(|e| e.sha256.as_str() == sha256)
        .ok_or_else(not_pinned)?;
    let bytes = StepBytes::new(env.events, &c.host, &c.address);
    let cached = env.cache.path(&entry.sha256);
    // The controller's copy is re-hashed before it leaves: a corrupted
    // cache entry is replaced, never shipped.
    let verdict = env
        .cache
        .verify(&entry.sha256, Some(size), &bytes)
        .map_err(|source| StepError::CacheRead {
            path: cached.clone(),
            source,
        })?;
    if verdict != Verdict::Ok {
        let _ = std::fs::remove_file(&cached);
        let expected = Expected {
            sha256: entry.sha256.clone(),
            size: entry.size,
        };
        download(&entry.url, Some(&expected), env.cache, image, &bytes).map_err(|source| {
            StepError::Download {
                image: image.into(),
                source,
            }
        })?;
    }
    // Transports only advance; the label and total are set here.
    bytes.start(&format!("copy {image} to the host"), Some(size));
    env.storage
        .ensure_image(&cached, image, sha256, format, &bytes)?;
    Ok(())
}

fn disk(c: &Change, env: &StepEnv<'_>) -> Result<(), StepError> {
    match &c.action {
        Action::CreateDisk {
            volume,
            disk,
            size_gib,
            base,
        } => {
            let owner = DiskOwner {
                fleet: env.fleet.name.to_string(),
                machine: machine(c)?.into(),
                disk: disk.clone(),
            };
            let base = base
                .as_ref()
                .map(|b| (b.sha256.as_str(), b.format.as_str()));
            env.storage.create_disk(volume, &owner, *size_gib, base)?;
        }
        Action::GrowDisk {
            volume,
            target,
            to_gib,
            ..
        } => {
            let m = machine(c)?;
            let running = env.lv.is_running(m)?;
            env.storage.grow(volume, *to_gib, running)?;
            if running {
                // Tell QEMU (and through it the guest) about the new size.
                env.lv.block_resize(m, target, to_gib * GIB)?;
            }
        }
        _ => unreachable!("disk() is only called for disk actions"),
    }
    Ok(())
}

fn domain(c: &Change, env: &StepEnv<'_>) -> Result<(), StepError> {
    let (lv, grace) = (env.lv, env.settings.shutdown_grace);
    match &c.action {
        Action::DefineDomain { xml } => lv.define(xml)?,
        Action::UpdateDomain {
            xml,
            memory_live_mib,
            restart,
        } => {
            let m = machine(c)?;
            lv.define(xml)?;
            if let Some(mib) = memory_live_mib
                && lv.is_running(m)?
            {
                lv.set_memory_live(m, *mib)?;
            }
            if *restart && lv.is_running(m)? {
                lv.stop(m, grace)?;
                lv.start(m)?;
            }
        }
        Action::SetAutostart { on } => lv.set_autostart(machine(c)?, *on)?,
        Action::Start => lv.start(machine(c)?)?,
        Action::Stop => {
            lv.stop(machine(c)?, grace)?;
        }
        Action::Shutdown { force: true } => {
            lv.stop(machine(c)?, grace)?;
        }
        Action::Shutdown { force: false } => {
            let m = machine(c)?;
            if !lv.shutdown_wait(m, grace)? {
                return Err(StepError::ShutdownTimeout {
                    machine: m.into(),
                    waited: grace,
                });
            }
        }
        Action::Destroy { volumes } => {
            let m = machine(c)?;
            lv.stop(m, grace)?;
            // Undefined before the disks move: a crash in between leaves
            // owned disks without a domain, which the planner trashes.
            lv.undefine(m)?;
            for v in volumes {
                env.storage.trash(v, env.settings.now)?;
            }
        }
        _ => unreachable!("domain() is only called for domain actions"),
    }
    Ok(())
}

fn snapshot(c: &Change, env: &StepEnv<'_>) -> Result<(), StepError> {
    let (lv, storage) = (env.lv, env.storage);
    let m = machine(c)?;
    match &c.action {
        Action::Snapshot { volumes, name } => {
            if storage.snapshots_via_domain() && lv.exists(m) {
                lv.snapshot(m, name)?;
            } else {
                for v in volumes {
                    storage.snapshot(v, name)?;
                }
            }
        }
        Action::PruneSnapshot { volumes, name } => {
            let via_domain = storage.snapshots_via_domain() && lv.exists(m);
            if !(via_domain && lv.delete_snapshot(m, name)?) {
                if via_domain && lv.is_running(m)? {
                    return Err(StepError::SnapshotNotInLibvirt {
                        machine: m.into(),
                        snapshot: name.clone(),
                    });
                }
                for v in volumes {
                    storage.destroy_snapshot(v, name)?;
                }
            }
        }
        Action::RollbackDisk { volume, name } => {
            // The plan stops the guest first; one started since must not
            // have a disk changed under it (ZFS would let that happen).
            if lv.is_running(m)? {
                return Err(StepError::GuestRunning {
                    machine: m.into(),
                    volume: volume.clone(),
                });
            }
            storage.rollback(volume, name)?;
        }
        _ => unreachable!("snapshot() is only called for snapshot actions"),
    }
    Ok(())
}
