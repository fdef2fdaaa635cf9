//! The storage seam: what every backend (Dir files, ZFS zvols) offers.
//!
//! The planner never sees a backend; it sees the `HostState` they fill in the
//! observation and emits backend-neutral actions. The executor and
//! `restore` call these operations, each idempotent and each leaving either
//! the old or the new state on a crash.

use super::transport::{ExecError, Transport};
use crate::progress::Progress;
use crate::resources::observed::{DiskOwner, HostState, Lease};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A base image to put on a host.
#[derive(Debug, Clone, Copy)]
pub struct BaseImage<'a> {
    /// The verified copy in the controller's cache.
    pub cached: &'a Path,
    /// The image's name in the fleet (for messages).
    pub name: &'a str,
    /// Its pinned sha256, checked again on the host.
    pub sha256: &'a str,
    /// `raw` or `qcow2`.
    pub format: &'a str,
}

/// A disk to create.
#[derive(Debug, Clone, Copy)]
pub struct NewDisk<'a> {
    /// Its volume name (`web-root`).
    pub volume: &'a str,
    /// Its ownership marker.
    pub owner: &'a DiskOwner,
    /// Its size in GiB.
    pub size_gib: u64,
    /// The base image `(sha256, format)` it is a copy-on-write clone of;
    /// `None` for a blank disk.
    pub base: Option<(&'a str, &'a str)>,
}

/// A seed to write.
#[derive(Debug, Clone, Copy)]
pub struct NewSeed<'a> {
    /// Its volume name (`web.cidata`).
    pub volume: &'a str,
    /// Its ownership marker (disk `cidata`).
    pub owner: &'a DiskOwner,
    /// The vfat image.
    pub image: &'a [u8],
    /// What it holds (recorded beside it).
    pub summary: &'a crate::resources::seed::SeedSummary,
}

/// Operations on one host's storage. `Sync`: a host's steps run on
/// several threads at once, each on its own volumes.
pub trait StorageBackend: Sync {
    /// Lists everything under the storage root. `attached` maps disk paths
    /// of defined domains to the virtual size libvirt reports for them.
    /// `with_snapshots`: volumes whose snapshot names are needed (backends
    /// for which listing them costs a command per disk list only these).
    fn observe(
        &self,
        fleet: &str,
        attached: &BTreeMap<String, u64>,
        with_snapshots: &BTreeSet<String>,
    ) -> Result<HostState, StorageError>;
    /// Puts a verified base image on the host (hash checked on the host).
    fn ensure_image(
        &self,
        image: &BaseImage<'_>,
        progress: &dyn Progress,
    ) -> Result<(), StorageError>;
    /// Creates a disk: a copy-on-write clone of its base, or blank.
    fn create_disk(&self, disk: &NewDisk<'_>) -> Result<(), StorageError>;
    /// Writes a cloud-init seed (the layout is in the `seedstore` module); one in place
    /// already is left alone.
    fn write_seed(&self, seed: &NewSeed<'_>) -> Result<(), StorageError>;
    /// Grows a disk. `online`: a running guest uses it (the caller then
    /// tells libvirt); backends that cannot grow under a guest do nothing.
    fn grow(&self, volume: &str, size_gib: u64, online: bool) -> Result<(), StorageError>;
    /// Moves a disk to the trash, stamped `now`. Gone already is fine.
    fn trash(&self, volume: &str, now: u64) -> Result<(), StorageError>;
    /// Moves trash entry `entry` back as `volume`; never overwrites.
    fn restore(&self, entry: &str, volume: &str) -> Result<(), StorageError>;
    /// Deletes an owned trash entry for good.
    fn purge(&self, entry: &str) -> Result<(), StorageError>;
    /// Removes an owned half-made object.
    fn remove_incomplete(&self, path: &str) -> Result<(), StorageError>;
    /// Takes snapshot `name` of a disk no running guest uses (ZFS: any
    /// disk). Exists already is fine.
    fn snapshot(&self, volume: &str, name: &str) -> Result<(), StorageError>;
    /// Deletes snapshot `name` of a disk. Gone already is fine.
    fn destroy_snapshot(&self, volume: &str, name: &str) -> Result<(), StorageError>;
    /// Rolls a disk no guest uses back to snapshot `name`. ZFS destroys newer
    /// snapshots on the way (the caller has checked that this is allowed).
    fn rollback(&self, volume: &str, name: &str) -> Result<(), StorageError>;
    /// Snapshots of a disk that a rollback to `name` would destroy (ZFS:
    /// those taken after it; qcow2 internal snapshots are independent).
    fn snapshots_after(&self, volume: &str, name: &str) -> Result<Vec<String>, StorageError>;
    /// Every snapshot name of a disk.
    fn snapshot_list(&self, volume: &str) -> Result<Vec<String>, StorageError>;
    /// True when a disk used by a defined domain must be snapshotted through
    /// libvirt (qcow2: QEMU owns the file while the guest runs).
    fn snapshots_via_domain(&self) -> bool;
    /// The host's lease, if one is held.
    fn read_lease(&self) -> Result<Option<Lease>, StorageError>;
    /// Creates the lease atomically on the host: [`StorageError::Exists`]
    /// when one is held already (whoever holds it).
    fn create_lease(&self, lease: &Lease) -> Result<(), StorageError>;
    /// Rewrites the held lease (renewal; the caller checked it is its own).
    fn write_lease(&self, lease: &Lease) -> Result<(), StorageError>;
    /// Removes the lease if it is still `id`'s; gone already is fine.
    fn remove_lease(&self, id: &str) -> Result<(), StorageError>;
    /// Who owns the object at `rel` (a disk, trash entry or half-made
    /// object, relative to the storage root) now: read by the executor
    /// right before it moves or deletes anything.
    fn ownership(&self, rel: &str) -> Result<Ownership, StorageError>;
    /// Records (or lifts) its machine's protection on an owned disk.
    fn set_protect(&self, volume: &str, protect: bool) -> Result<(), StorageError>;
    /// Records that a disk's guest now sees its grown size (the marker the
    /// grow left, if any, is cleared).
    fn grow_told(&self, volume: &str) -> Result<(), StorageError>;
}

/// The owner of an object on a host, read just before it is changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Nothing is there.
    Absent,
    /// It carries a fleet's ownership marker.
    Fleet(DiskOwner),
    /// virtfleet's, shared by every fleet on the host (a base image).
    Shared,
    /// An empty directory (what an interrupted purge can leave): removing
    /// it cannot lose anything.
    Empty,
    /// It carries no virtfleet marker.
    Unmarked,
}

impl Ownership {
    /// True when `fleet` may move or delete the object (absent counts: the
    /// operations are idempotent).
    pub fn allows(&self, fleet: &str) -> bool {
        match self {
            Ownership::Absent | Ownership::Shared | Ownership::Empty => true,
            Ownership::Fleet(o) => o.fleet == fleet,
            Ownership::Unmarked => false,
        }
    }
}

/// Copies the controller's `cached` image to `dest` on the host and checks
/// its sha256 there, so a transfer corrupted on the way is caught before
/// anything is made from it; a copy that does not match is deleted.
pub fn copy_verified(
    t: &dyn Transport,
    cached: &Path,
    dest: &str,
    sha256: &str,
    progress: &dyn Progress,
) -> Result<(), StorageError> {
    t.put_file(cached, dest, progress)?;
    verify_on_host(t, dest, sha256)
}

/// Hashes `dest` on the host; deletes it unless it hashes to `sha256`.
pub fn verify_on_host(t: &dyn Transport, dest: &str, sha256: &str) -> Result<(), StorageError> {
    let out = t.run_ok(&["sha256sum", dest])?;
    let got = out.split_whitespace().next().unwrap_or("");
    if got != sha256 {
        let _ = t.run(&["rm", "-f", dest]);
        return Err(StorageError::ImageHashMismatch {
            path: dest.into(),
            expected: sha256.into(),
            actual: got.into(),
        });
    }
    Ok(())
}

/// Runs `f` with a fresh private staging directory on the host, removed
/// afterwards whatever `f` returns. `mktemp -d` makes it 0700 under an
/// unpredictable name: nobody else can swap a file in it between a check
/// and its use, as they could at a fixed /var/tmp path.
pub fn with_stage<R>(
    t: &dyn Transport,
    f: impl FnOnce(&str) -> Result<R, StorageError>,
) -> Result<R, StorageError> {
    let stage = t
        .run_ok(&["mktemp", "-d", "/var/tmp/virtfleet-stage-XXXXXXXX"])?
        .trim()
        .to_owned();
    let done = f(&stage);
    let _ = t.run(&["rm", "-rf", "--", &stage]);
    done
}

/// Copies file `src` on host `from` to `dst` on host `to` (put from here
/// when `from` is this machine, else streamed through this process: the
/// hosts need no way to reach each other), then checks that both hash to
/// the same sha256.
/// Returns the bytes copied.
pub fn copy_checked(
    from: &dyn Transport,
    src: &str,
    to: &dyn Transport,
    dst: &str,
    label: &str,
    progress: &dyn Progress,
) -> Result<u64, StorageError> {
    let size = from
        .run_ok(&["stat", "-c", "%s", "--", src])?
        .trim()
        .parse::<u64>()
        .ok();
    progress.start(label, size);
    if from.is_local() {
        to.put_file(Path::new(src), dst, progress)?;
    } else {
        let of = format!("of={dst}");
        super::transport::pipe(
            from,
            &["cat", "--", src],
            to,
            &["dd", &of, "bs=4M", "status=none"],
            progress,
        )?;
    }
    progress.finish("copied");
    crate::fault::point("move-copied");
    let sum = |t: &dyn Transport, f: &str| -> Result<String, StorageError> {
        let out = t.run_ok(&["sha256sum", "--", f])?;
        Ok(out.split_whitespace().next().unwrap_or_default().to_owned())
    };
    let (want, got) = (sum(from, src)?, sum(to, dst)?);
    if want != got {
        return Err(StorageError::ImageHashMismatch {
            path: dst.into(),
            expected: want,
            actual: got,
        });
    }
    Ok(size.unwrap_or(0))
}

/// A failed storage operation.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A command failed.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// The image copied to the host does not hash to its pin.
    #[error(
        "{path}: the copy on the host hashes to {actual}, not the pinned {expected}; it was deleted and nothing was created from it"
    )]
    ImageHashMismatch {
        path: String,
        expected: String,
        actual: String,
    },
    /// The target already exists.
    #[error("{0} already exists; refusing to overwrite it")]
    Exists(String),
    /// A tool's output could not be read.
    #[error("cannot parse tool output: {0}")]
    Parse(String),
    /// A zvol's block device did not appear after it was created.
    #[error("{path} did not appear")]
    DeviceMissing { path: String },
    /// A copy left on a move's destination by an earlier run no longer
    /// matches its source: virtfleet neither sends onto it nor removes it.
    #[error("{path}: {why}")]
    StaleCopy { path: String, why: String },
    /// A conversion between a Dir and a ZFS host is made against the base
    /// image's zvol on the ZFS side, and it is not there.
    #[error("{host_path}: base image {sha256} is not on this host (a conversion needs it)")]
    BaseMissing { host_path: String, sha256: String },
    /// A removal was asked for something that is not a trash entry or a
    /// half-made object of this fleet: refused, nothing was removed.
    #[error("refusing to remove {path:?}: {why}")]
    NotRemovable { path: String, why: &'static str },
}

impl StorageError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            StorageError::Exec(e) => e.hint(),
            StorageError::ImageHashMismatch { .. } => Some(
                "the transfer to the host was corrupted, or the host's disk is failing; run apply again to retry the copy",
            ),
            StorageError::Exists(_) => Some(
                "move the existing object away yourself (virtfleet never overwrites), then run the command again",
            ),
            StorageError::DeviceMissing { .. } => {
                Some("zvol devices are made by udev on the host: is systemd-udevd running there?")
            }
            StorageError::StaleCopy { .. } => Some(
                "the copy is not in use: destroy it on the destination host (`zfs destroy -r` the dataset named), then apply again for a full copy",
            ),
            StorageError::BaseMissing { .. } => Some(
                "apply puts a base image on every host a machine of that image is placed on: place the machine there for one apply, then move it",
            ),
            StorageError::Parse(_) | StorageError::NotRemovable { .. } => None,
        }
    }
}
