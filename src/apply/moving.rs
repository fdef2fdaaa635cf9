//! The two host-crossing steps of a move (see `plan::planner::moves`):
//! `MoveIn` and `FinishMove`. They run on the destination host's thread
//! and reach the source host with their own connection, under the run's
//! lease on the source (so no other run changes the machine there
//! meanwhile; see `leases`).
//!
//! Dir to Dir copies the qcow2 files (`DirStorage::receive_disk`); ZFS to
//! ZFS streams `zfs send | zfs receive`, the bulk while a running guest
//! still runs (`ZfsStorage::pre_copy`), then, stopped, only the increment
//! since (`ZfsStorage::receive_disk`). Between a Dir and a ZFS host the
//! disk is converted, snapshots included (`host::convert`): what crosses is
//! a qcow2 file holding what differs from the base, made on the ZFS side
//! (`ZfsStorage::export_qcow2`) or taken in there
//! (`ZfsStorage::receive_converted`).
//!
//! Safety: the source machine is never touched beyond a stop until the
//! copy here is verified and the machine defined and started here (those
//! are the steps between the two). A failed copy starts the guest again on
//! the source when it was running, and the error says where it is.

use super::bytes::StepBytes;
use super::error::StepError;
use super::step::{StepEnv, destroy, not_owned, owned};
use crate::fleet::{Host, Storage};
use crate::host::dir::DirStorage;
use crate::host::libvirt::Libvirt;
use crate::host::storage::{Ownership, StorageError, with_stage};
use crate::host::transport::Transport;
use crate::host::zfs::ZfsStorage;
use crate::host::{backend, transport_for};
use crate::plan::{BaseRef, Change};
use crate::resources::layout;
use crate::resources::observed::DiskOwner;

/// A connection to the host a machine moves from, with its lease held.
struct Source<'f> {
    host: &'f Host,
    lv: Libvirt,
    t: Box<dyn Transport>,
    leases: &'f super::leases::Leases,
}

impl Drop for Source<'_> {
    fn drop(&mut self) {
        let storage = backend(self.host, self.t.as_ref());
        self.leases
            .release(self.host.name.as_str(), storage.as_ref());
    }
}

fn host<'f>(env: &StepEnv<'f>, name: &str) -> Result<&'f Host, StepError> {
    env.fleet
        .host_named(name)
        .ok_or_else(|| StepError::HostNotInFleet { host: name.into() })
}

/// Opens host `from` under this run's lease there (shared with that
/// host's own thread when the run changes it too: see `leases`).
fn open<'f>(env: &StepEnv<'f>, from: &str) -> Result<Source<'f>, StepError> {
    let host = host(env, from)?;
    let lv = Libvirt::open(&host.uri)?;
    let t = transport_for(host)?;
    let storage = backend(host, t.as_ref());
    env.leases
        .take(env.fleet, env.settings, from, storage.as_ref())?;
    drop(storage);
    Ok(Source {
        host,
        lv,
        t,
        leases: env.leases,
    })
}

/// The owner of disk `volume` on the source, which must be this fleet's.
fn owner_of(env: &StepEnv<'_>, src: &Source<'_>, volume: &str) -> Result<DiskOwner, StepError> {
    let rel = layout::disk_rel(volume);
    let storage = backend(src.host, src.t.as_ref());
    let fleet = env.fleet.name.as_str();
    match storage.ownership(&rel)? {
        Ownership::Fleet(o) if o.fleet == fleet => Ok(o),
        other => Err(not_owned(
            format!("{rel} on {}", src.host.name),
            fleet,
            &other,
        )),
    }
}

/// Copies and verifies each of `volumes` from the source into `dst`. The
/// root disk (the first volume) is an overlay on (a clone of) `base`.
fn copy_disks(
    env: &StepEnv<'_>,
    src: &Source<'_>,
    dst: &Host,
    dst_t: &dyn Transport,
    volumes: &[String],
    base: Option<&BaseRef>,
    bytes: &StepBytes<'_>,
) -> Result<(), StepError> {
    let base_of = |i: usize| base.filter(|_| i == 0);
    for (i, v) in volumes.iter().enumerate() {
        match (&src.host.storage, &dst.storage) {
            (Storage::Dir { path: from }, Storage::Dir { path: to }) => {
                let from = DirStorage::new(from, src.t.as_ref());
                let b = base_of(i).map(|b| (b.sha256.as_str(), b.format.as_str()));
                DirStorage::new(to, dst_t).receive_disk(&from, v, b, bytes)?;
            }
            (Storage::Zfs { parent: from }, Storage::Zfs { parent: to }) => {
                let from = ZfsStorage::new(from, src.t.as_ref());
                ZfsStorage::new(to, dst_t).receive_disk(&from, v, bytes)?;
            }
            (Storage::Dir { path: from }, Storage::Zfs { parent: to }) => {
                let from = DirStorage::new(from, src.t.as_ref());
                let owner = owner_of(env, src, v)?;
                let sha = base_of(i).map(|b| b.sha256.as_str());
                let file = from.disk_file(v);
                ZfsStorage::new(to, dst_t).receive_converted(
                    src.t.as_ref(),
                    &file,
                    &owner,
                    v,
                    sha,
                    bytes,
                )?;
            }
            (Storage::Zfs { parent: from }, Storage::Dir { path: to }) => {
                let to = DirStorage::new(to, dst_t);
                if to.has_disk(v)? {
                    continue;
                }
                let owner = owner_of(env, src, v)?;
                let record = serde_json::to_string(&owner).expect("owner serialises") + "\n";
                let from = ZfsStorage::new(from, src.t.as_ref());
                let b = base_of(i).map(|b| (b.sha256.as_str(), b.format.as_str()));
                with_stage(src.t.as_ref(), |stage| {
                    let file = format!("{stage}/disk.qcow2");
                    from.export_qcow2(v, b.map(|(sha, _)| sha), &file, bytes)?;
                    to.receive_file(src.t.as_ref(), &file, &record, v, b, bytes)
                })?;
            }
        }
    }
    Ok(())
}

/// Sends each of `volumes` from the source into `dst` while the guest runs
/// there, where the backends can then send only the increment (ZFS to ZFS).
fn pre_copy(
    src: &Source<'_>,
    dst: &Host,
    dst_t: &dyn Transport,
    volumes: &[String],
    bytes: &StepBytes<'_>,
) -> Result<(), StorageError> {
    if let (Storage::Zfs { parent: from }, Storage::Zfs { parent: to }) =
        (&src.host.storage, &dst.storage)
    {
        let (from, to) = (
            ZfsStorage::new(from, src.t.as_ref()),
            ZfsStorage::new(to, dst_t),
        );
        for v in volumes {
            to.pre_copy(&from, v, bytes)?;
        }
    }
    Ok(())
}

/// `MoveIn`: stop the machine on `from`, copy and verify each of `volumes`
/// here. The root disk (the first volume) is re-pointed at this host's
/// copy of `base`.
pub(super) fn move_in(
    c: &Change,
    env: &StepEnv<'_>,
    m: &str,
    from: &str,
    volumes: &[String],
    base: Option<&BaseRef>,
) -> Result<(), StepError> {
    let src = open(env, from)?;
    let dst_host = host(env, &c.host)?;
    let src_env = StepEnv {
        lv: &src.lv,
        ..*env
    };
    super::step::owned_domain(&src_env, m)?;
    let was_running = src.lv.is_running(m)?;
    let dst_t = transport_for(dst_host)?;
    let bytes = StepBytes::new(env.events, &c.host, &c.address);
    if was_running {
        // ZFS to ZFS: the bulk goes while the guest still runs, so it is
        // down only for the increment. A failure here has stopped nothing.
        pre_copy(&src, dst_host, dst_t.as_ref(), volumes, &bytes).map_err(|e| {
            StepError::MoveFailed {
                machine: m.into(),
                from: from.into(),
                state: "still running there (it was not stopped)",
                source: Box::new(e.into()),
            }
        })?;
        // Graceful first, powered off after the grace period, as any stop.
        src.lv.stop(m, env.settings.shutdown_grace)?;
    }
    crate::fault::point("move-stopped");
    let copied = copy_disks(env, &src, dst_host, dst_t.as_ref(), volumes, base, &bytes);
    if let Err(e) = copied {
        let restarted = was_running && src.lv.start(m).is_ok();
        return Err(StepError::MoveFailed {
            machine: m.into(),
            from: from.into(),
            state: if restarted {
                "running again there"
            } else {
                "stopped there; start it with `virsh start` or apply again"
            },
            source: Box::new(e),
        });
    }
    Ok(())
}

/// `FinishMove`: the machine runs here; undefine it on `from` and move its
/// volumes there to that host's trash.
pub(super) fn finish_move(
    env: &StepEnv<'_>,
    m: &str,
    from: &str,
    volumes: &[String],
) -> Result<(), StepError> {
    let src = open(env, from)?;
    let storage = backend(src.host, src.t.as_ref());
    let src_env = StepEnv {
        lv: &src.lv,
        storage: storage.as_ref(),
        ..*env
    };
    if src.lv.exists(m) {
        return destroy(&src_env, m, volumes);
    }
    // A run stopped between the undefine and the trashing left disks only.
    for v in volumes {
        owned(&src_env, &layout::disk_rel(v))?;
        src_env.storage.trash(v, env.settings.now)?;
    }
    Ok(())
}
