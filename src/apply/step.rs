//! One change, carried out: the dispatch on [`Action`] and one function per
//! group of actions. Every operation is idempotent (see the storage and
//! libvirt layers), so a step that is repeated after a crash converges.

use super::bytes::StepBytes;
use super::error::StepError;
use super::{Events, Settings};
use crate::fleet::{Fleet, ImageName};
use crate::host::libvirt::Libvirt;
use crate::host::storage::{BaseImage, NewDisk, Ownership, StorageBackend};
use crate::lock::ImageLock;
use crate::lock::cache::{Cache, Verdict};
use crate::lock::fetch::{Expected, download};
use crate::plan::planner::GIB;
use crate::plan::{Action, Change};
use crate::progress::Progress;
use crate::resources::layout;
use crate::resources::observed::DiskOwner;

/// Everything a step may use on its host.
#[derive(Clone, Copy)]
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
    /// The run's host leases (a move takes its source host's).
    pub leases: &'a super::leases::Leases,
}

/// Carries out `c`.
pub fn step(c: &Change, env: &StepEnv<'_>) -> Result<(), StepError> {
    let (lv, storage, s) = (env.lv, env.storage, env.settings);
    match &c.action {
        Action::EnsureImage {
            image,
            sha256,
            size,
            format,
        } => ensure_image(c, env, image, sha256, format.as_str(), *size),
        Action::RemoveIncomplete { path } => {
            owned(env, path)?;
            Ok(storage.remove_incomplete(path)?)
        }
        Action::CreateDisk {
            volume,
            disk,
            size_gib,
            base,
        } => {
            let m = machine(c)?;
            let protect = declared(env, m).is_some_and(|x| x.protect);
            let owner = DiskOwner {
                fleet: env.fleet.name.to_string(),
                machine: m.into(),
                disk: disk.clone(),
                protect,
            };
            let base = base
                .as_ref()
                .map(|b| (b.sha256.as_str(), b.format.as_str()));
            Ok(storage.create_disk(&NewDisk {
                volume,
                owner: &owner,
                size_gib: *size_gib,
                base,
            })?)
        }
        Action::GrowDisk {
            volume,
            target,
            to_gib,
            ..
        } => grow_disk(env, machine(c)?, volume, target, *to_gib),
        Action::CreateSeed { volume, seed, .. } => write_seed(c, env, volume, &seed.sha256),
        Action::ReplaceSeed { volume, seed, .. } => {
            // Check before anything moves: a stale plan trashes nothing.
            build_seed(c, env, &seed.sha256)?;
            owned(env, &layout::disk_rel(volume))?;
            // The old seed goes to the trash (restorable); a running guest
            // keeps its open file until its domain restarts.
            storage.trash(volume, s.now)?;
            write_seed(c, env, volume, &seed.sha256)
        }
        Action::DefineDomain { xml } => Ok(lv.define(xml)?),
        Action::UpdateDomain {
            xml,
            memory_live_mib,
            restart,
        } => update_domain(env, machine(c)?, xml, *memory_live_mib, *restart),
        Action::SetAutostart { on } => Ok(lv.set_autostart(machine(c)?, *on)?),
        Action::Start => Ok(lv.start(machine(c)?)?),
        Action::Stop | Action::Shutdown { force: true } => {
            lv.stop(machine(c)?, s.shutdown_grace)?;
            Ok(())
        }
        Action::Shutdown { force: false } => shutdown(env, machine(c)?),
        Action::Destroy { volumes } => destroy(env, machine(c)?, volumes),
        // They reach a second host: the executor runs them (`moving`).
        Action::MoveIn { .. } | Action::FinishMove { .. } => Err(StepError::MoveUnsupported {
            machine: machine(c)?.into(),
            why: "outside the executor".into(),
        }),
        Action::TrashDisk { volume } => {
            owned(env, &layout::disk_rel(volume))?;
            Ok(storage.trash(volume, s.now)?)
        }
        // Taking the host's lease for this run already broke the stale one
        // (or the run could not start here at all).
        Action::ReleaseLease { .. } => Ok(()),
        Action::ProtectDisk { volume, protect } => {
            owned(env, &layout::disk_rel(volume))?;
            Ok(storage.set_protect(volume, *protect)?)
        }
        Action::PurgeTrash { entry } => {
            owned(env, &layout::trash_entry_rel(entry))?;
            Ok(storage.purge(entry)?)
        }
        Action::RestoreDisk { entry, volume } => {
            owned(env, &layout::trash_entry_rel(entry))?;
            Ok(storage.restore(entry, volume)?)
        }
        Action::Snapshot { volumes, name } => take_snapshot(env, machine(c)?, volumes, name),
        Action::PruneSnapshot { volumes, name } => prune_snapshot(env, machine(c)?, volumes, name),
        Action::RollbackDisk { volume, name } => rollback_disk(env, machine(c)?, volume, name),
    }
}

/// Checks, on the host and right before it is moved or deleted, that the
/// object at `rel` is this fleet's (or already gone). A saved plan, an
/// observation that aged, or another run may all say otherwise.
pub(super) fn owned(env: &StepEnv<'_>, rel: &str) -> Result<(), StepError> {
    let fleet = env.fleet.name.as_str();
    let now = env.storage.ownership(rel)?;
    if now.allows(fleet) {
        return Ok(());
    }
    Err(not_owned(rel.into(), fleet, &now))
}

/// The refusal to change `what`, owned as `now` says, for `fleet`.
pub(super) fn not_owned(what: String, fleet: &str, now: &Ownership) -> StepError {
    StepError::NotOwned {
        what,
        fleet: fleet.into(),
        owner: match now {
            Ownership::Fleet(o) => format!("it belongs to fleet {:?}", o.fleet),
            _ => "it carries no virtfleet ownership marker".into(),
        },
    }
}

/// Checks that domain `m` is this fleet's (or gone) before it is undefined
/// or has its disks changed.
pub(super) fn owned_domain(env: &StepEnv<'_>, m: &str) -> Result<(), StepError> {
    let fleet = env.fleet.name.as_str();
    match env.lv.owner_fleet(m)? {
        None => Ok(()),
        Some(Some(f)) if f == fleet => Ok(()),
        Some(other) => Err(StepError::NotOwned {
            what: format!("domain {m}"),
            fleet: fleet.into(),
            owner: match other {
                Some(f) => format!("it belongs to fleet {f:?}"),
                None => "it carries no virtfleet ownership marker".into(),
            },
        }),
    }
}

/// The machine's seed rebuilt from the fleet, checked against the plan's
/// hash (the plan holds no user-data, only its hash).
fn build_seed(
    c: &Change,
    env: &StepEnv<'_>,
    sha256: &str,
) -> Result<crate::resources::seed::Seed, StepError> {
    let m = machine(c)?;
    let seed = declared(env, m).and_then(crate::resources::seed::seed);
    match seed {
        Some(s) if s.summary.sha256 == sha256 => Ok(s),
        other => Err(StepError::SeedChanged {
            machine: m.into(),
            planned: sha256.into(),
            actual: other.map_or("none".into(), |s| s.summary.sha256),
        }),
    }
}

fn write_seed(c: &Change, env: &StepEnv<'_>, volume: &str, sha256: &str) -> Result<(), StepError> {
    let seed = build_seed(c, env, sha256)?;
    let owner = DiskOwner {
        fleet: env.fleet.name.to_string(),
        machine: machine(c)?.into(),
        disk: crate::resources::seed::SEED_DISK.into(),
        protect: false,
    };
    env.storage.write_seed(&crate::host::storage::NewSeed {
        volume,
        owner: &owner,
        image: &seed.image,
        summary: &seed.summary,
    })?;
    Ok(())
}

/// Machine `m` as the fleet declares it (None for a name it no longer has).
fn declared<'f>(env: &StepEnv<'f>, m: &str) -> Option<&'f crate::fleet::Machine> {
    let name = crate::fleet::VmName::new(m).ok()?;
    env.fleet.machines.get(&name)
}

pub(super) fn machine(c: &Change) -> Result<&str, StepError> {
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
    let base = BaseImage {
        cached: &cached,
        name: image,
        sha256,
        format,
    };
    env.storage.ensure_image(&base, &bytes)?;
    Ok(())
}

fn grow_disk(
    env: &StepEnv<'_>,
    m: &str,
    volume: &str,
    target: &str,
    to_gib: u64,
) -> Result<(), StepError> {
    let running = env.lv.is_running(m)?;
    env.storage.grow(volume, to_gib, running)?;
    crate::fault::point("grow-untold");
    if running {
        // Tell QEMU (and through it the guest) about the new size.
        env.lv.block_resize(m, target, to_gib * GIB)?;
    }
    // A stopped guest sees the size when it boots.
    env.storage.grow_told(volume)?;
    Ok(())
}

fn update_domain(
    env: &StepEnv<'_>,
    m: &str,
    xml: &str,
    memory_live_mib: Option<u64>,
    restart: bool,
) -> Result<(), StepError> {
    let lv = env.lv;
    lv.define(xml)?;
    if let Some(mib) = memory_live_mib
        && lv.is_running(m)?
    {
        lv.set_memory_live(m, mib)?;
    }
    if restart && lv.is_running(m)? {
        lv.stop(m, env.settings.shutdown_grace)?;
        lv.start(m)?;
    }
    Ok(())
}

/// ACPI shutdown without the power-off fallback: a guest that ignores it
/// fails the step, and the steps after it (the disk rollbacks) never run.
fn shutdown(env: &StepEnv<'_>, m: &str) -> Result<(), StepError> {
    let grace = env.settings.shutdown_grace;
    if !env.lv.shutdown_wait(m, grace)? {
        return Err(StepError::ShutdownTimeout {
            machine: m.into(),
            waited: grace,
        });
    }
    Ok(())
}

pub(super) fn destroy(env: &StepEnv<'_>, m: &str, volumes: &[String]) -> Result<(), StepError> {
    owned_domain(env, m)?;
    for v in volumes {
        owned(env, &layout::disk_rel(v))?;
    }
    env.lv.stop(m, env.settings.shutdown_grace)?;
    crate::fault::point("destroy-stopped");
    // Undefined before the disks move: a crash in between leaves owned
    // disks without a domain, which the planner then trashes.
    env.lv.undefine(m)?;
    crate::fault::point("destroy-undefined");
    for v in volumes {
        env.storage.trash(v, env.settings.now)?;
        crate::fault::point("destroy-trashed-one");
    }
    Ok(())
}

/// A running guest's disks are checkpointed through libvirt (on Dir hosts
/// QEMU owns their files); every other disk, including a new one not yet
/// attached to the running guest, gets its own snapshot. So a new data
/// disk's `vf-init` never re-takes, or shadows, the root disk's.
fn take_snapshot(
    env: &StepEnv<'_>,
    m: &str,
    volumes: &[String],
    name: &str,
) -> Result<(), StepError> {
    let mut own: Vec<&String> = volumes.iter().collect();
    if env.storage.snapshots_via_domain() && env.lv.exists(m) && env.lv.is_running(m)? {
        let attached = env.lv.disk_paths(m)?;
        let in_use = |v: &String| {
            let file = format!("/{}", layout::dir_disk_file_rel(v));
            attached.iter().any(|p| p.ends_with(&file))
        };
        if volumes.iter().any(in_use) {
            env.lv.snapshot(m, name)?;
        }
        own.retain(|v| !in_use(v));
    }
    for v in own {
        env.storage.snapshot(v, name)?;
        crate::fault::point("snapshot-one");
    }
    Ok(())
}

fn prune_snapshot(
    env: &StepEnv<'_>,
    m: &str,
    volumes: &[String],
    name: &str,
) -> Result<(), StepError> {
    let (lv, storage) = (env.lv, env.storage);
    let via_domain = storage.snapshots_via_domain() && lv.exists(m);
    if via_domain && lv.delete_snapshot(m, name)? {
        return Ok(());
    }
    if via_domain && lv.is_running(m)? {
        return Err(StepError::SnapshotNotInLibvirt {
            machine: m.into(),
            snapshot: name.into(),
        });
    }
    for v in volumes {
        storage.destroy_snapshot(v, name)?;
    }
    Ok(())
}

fn rollback_disk(env: &StepEnv<'_>, m: &str, volume: &str, name: &str) -> Result<(), StepError> {
    owned_domain(env, m)?;
    owned(env, &layout::disk_rel(volume))?;
    // The plan stops the guest first; one started since must not have a
    // disk changed under it (ZFS would let that happen).
    if env.lv.is_running(m)? {
        return Err(StepError::GuestRunning {
            machine: m.into(),
            volume: volume.into(),
        });
    }
    Ok(env.storage.rollback(volume, name)?)
}
