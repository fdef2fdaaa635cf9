//! The `Zfs` storage backend: zvols under the host's parent dataset.
//!
//! ```text
//! <parent>/images/<sha256[..16]>       base image zvol, snapshot @base,
//!                                      virtfleet:sha256 set last (= complete)
//! <parent>/disks/<machine>-<disk>      machine disk: `zfs clone` of a base @base
//!                                      (copy-on-write), or a sparse zvol
//! <parent>/trash/<machine>-<disk>-<t>  a destroyed disk, virtfleet:trashed-at=<t>
//! ```
//!
//! Ownership is ZFS user properties (`virtfleet:managed`, `virtfleet:fleet`,
//! `virtfleet:machine`, `virtfleet:disk`), set in the same command that
//! creates the dataset, so nothing exists half-owned. One `zfs list -Hp`
//! observes everything; its parser is a pure function tested on real output.

use super::convert::{self, Image};
use super::storage::{
    BaseImage, NewDisk, Ownership, StorageBackend, StorageError, copy_checked, copy_verified,
    with_stage,
};
use super::transport::{ExecError, Transport};
use crate::progress::Progress;
use crate::resources::layout;
use crate::resources::observed::{DiskOwner, HostState, Lease, OwnedDisk, TrashEntry};
use std::collections::{BTreeMap, BTreeSet};

/// Set on the disks of a protected machine.
const PROTECT: &str = "virtfleet:protect";

/// Set on a disk grown under a running guest until the guest is told.
const GROW_UNTOLD: &str = "virtfleet:grow-untold";

/// Set on a disk zvol while a move converts a qcow2 file into it: until it
/// is cleared (the last step), the zvol is a half-made object.
const CONVERTING: &str = "virtfleet:converting";

/// The internal snapshot a conversion takes of the file's current state,
/// so it can visit the older ones and come back.
const NOW_SNAPSHOT: &str = "vf-move-now";

/// Properties read by one listing, after name, type, volsize and origin.
pub const PROPS: [&str; 11] = [
    "virtfleet:managed",
    "virtfleet:fleet",
    "virtfleet:machine",
    "virtfleet:disk",
    "virtfleet:sha256",
    "virtfleet:image",
    "virtfleet:trashed-at",
    GROW_UNTOLD,
    PROTECT,
    super::seedstore::ZFS_SEED_PROP,
    CONVERTING,
];

/// One row of `zfs list -Hp -o name,type,volsize,origin,<PROPS>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub name: String,
    pub kind: String,
    pub volsize: Option<u64>,
    pub origin: Option<String>,
    /// Set user properties (unset ones, shown as `-`, are absent).
    pub props: BTreeMap<String, String>,
}

/// The `-o` argument of the listing.
pub fn list_columns() -> String {
    let mut cols = vec!["name", "type", "volsize", "origin"];
    cols.extend(PROPS);
    cols.join(",")
}

/// The host's lease dataset, under the parent.
const LEASE: &str = "lease";
/// The snapshot a move sends (taken and dropped by [`ZfsStorage::receive_disk`]).
const MOVE_SNAPSHOT: &str = "vf-move";
/// The snapshot a move sends while the guest still runs
/// ([`ZfsStorage::pre_copy`]); the final send is incremental from it.
const PRE_SNAPSHOT: &str = "vf-move-pre";
/// Its holder, as JSON.
const LEASE_PROP: &str = "virtfleet:lease";

/// Parses `zfs list -Hp` output with [`list_columns`] (tab-separated, `-` for none).
pub fn parse_list(out: &str) -> Result<Vec<Row>, StorageError> {
    let mut rows = Vec::new();
    for line in out.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 4 + PROPS.len() {
            return Err(StorageError::Parse(format!(
                "zfs list: expected {} columns, got {}: {line:?}",
                4 + PROPS.len(),
                f.len()
            )));
        }
        let opt = |s: &str| (s != "-").then(|| s.to_owned());
        let volsize = match f[2] {
            "-" => None,
            v => Some(v.parse::<u64>().map_err(|_| {
                StorageError::Parse(format!("zfs list: volsize {v:?} is not a number"))
            })?),
        };
        let props = PROPS
            .iter()
            .zip(&f[4..])
            .filter_map(|(k, v)| opt(v).map(|v| (k.to_string(), v)))
            .collect();
        rows.push(Row {
            name: f[0].to_owned(),
            kind: f[1].to_owned(),
            volsize,
            origin: opt(f[3]),
            props,
        });
    }
    Ok(rows)
}

/// Snapshot names from `zfs list -H -t snapshot -o name` (one `ds@snap` a line).
pub fn parse_snapshot_names(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.split_once('@'))
        .map(|(_, s)| s.to_owned())
        .collect()
}

/// Interprets a listing of `parent` for `fleet` (pure).
pub fn interpret(parent: &str, fleet: &str, rows: &[Row]) -> HostState {
    let mut state = HostState::default();
    let containers = [
        parent.to_owned(),
        format!("{parent}/images"),
        format!("{parent}/disks"),
        format!("{parent}/trash"),
        // The host's lease belongs to no fleet; it is read on its own.
        format!("{parent}/{LEASE}"),
    ];
    let snapshots: Vec<&str> = rows
        .iter()
        .filter(|r| r.kind == "snapshot")
        .map(|r| r.name.as_str())
        .collect();
    for r in rows {
        if r.kind == "snapshot" || containers.contains(&r.name) {
            continue;
        }
        let rel = r
            .name
            .strip_prefix(&format!("{parent}/"))
            .unwrap_or(&r.name);
        let managed = r
            .props
            .get("virtfleet:managed")
            .is_some_and(|v| v == "true");
        let ours = managed && r.props.get("virtfleet:fleet").is_some_and(|f| f == fleet);
        let (top, leaf) = rel.split_once('/').unwrap_or(("", rel));
        match (top, r.kind.as_str()) {
            // Base images are shared by every fleet under this parent: they
            // are only ever created and read, never changed or destroyed.
            ("images", "volume") if managed => match r.props.get("virtfleet:sha256") {
                Some(sha) if snapshots.contains(&format!("{}@base", r.name).as_str()) => {
                    state.images.insert(sha.clone());
                }
                // Managed but not pinned yet: a creation that died half way
                // (it has no @base, so no clone can depend on it).
                _ => state.incomplete.push(rel.to_owned()),
            },
            ("disks", "volume")
                if ours
                    && r.props.get("virtfleet:disk").map(String::as_str)
                        == Some(crate::resources::seed::SEED_DISK) =>
            {
                // Complete only once its summary is set (the last step).
                match r
                    .props
                    .get(super::seedstore::ZFS_SEED_PROP)
                    .and_then(|j| serde_json::from_str(j).ok())
                {
                    Some(summary) => {
                        let seed = crate::resources::observed::OwnedSeed {
                            owner: owner_of(r, fleet),
                            path: format!("/dev/zvol/{}", r.name),
                            summary,
                        };
                        state.seeds.insert(leaf.to_owned(), seed);
                    }
                    None => state.incomplete.push(rel.to_owned()),
                }
            }
            // A conversion that stopped half way: redone from scratch.
            ("disks", "volume") if ours && r.props.contains_key(CONVERTING) => {
                state.incomplete.push(rel.to_owned());
            }
            ("disks", "volume") if ours => {
                state
                    .disks
                    .insert(leaf.to_owned(), owned_disk(r, fleet, &snapshots));
            }
            ("trash", "volume") if ours => match trash_entry(r, fleet, leaf) {
                Some(t) => {
                    state.trash.insert(leaf.to_owned(), t);
                }
                None => state.unmanaged_files.push(rel.to_owned()),
            },
            _ => state.unmanaged_files.push(rel.to_owned()),
        }
    }
    state
}

/// A disk zvol of this fleet, with the names of its snapshots.
fn owned_disk(r: &Row, fleet: &str, all_snapshots: &[&str]) -> OwnedDisk {
    let prefix = format!("{}@", r.name);
    let mut snapshots: Vec<String> = all_snapshots
        .iter()
        .filter_map(|s| s.strip_prefix(&prefix))
        .map(str::to_owned)
        .collect();
    snapshots.sort();
    OwnedDisk {
        grow_untold: r.props.contains_key(GROW_UNTOLD),
        owner: owner_of(r, fleet),
        path: format!("/dev/zvol/{}", r.name),
        size_bytes: r.volsize.unwrap_or(0),
        snapshots,
    }
}

/// A trash zvol of this fleet, named `<volume>-<unix>`; stamped by its
/// `virtfleet:trashed-at` property, else by its name. `None` when neither
/// gives a time (then it is not treated as virtfleet's).
fn trash_entry(r: &Row, fleet: &str, leaf: &str) -> Option<TrashEntry> {
    let stamped = r
        .props
        .get("virtfleet:trashed-at")
        .and_then(|t| t.parse().ok())
        .or_else(|| leaf.rsplit_once('-').and_then(|(_, t)| t.parse().ok()))?;
    let volume = leaf.rsplit_once('-').map(|(v, _)| v).unwrap_or(leaf);
    Some(TrashEntry {
        owner: owner_of(r, fleet),
        volume: volume.to_owned(),
        trashed_at: stamped,
    })
}

fn owner_of(r: &Row, fleet: &str) -> DiskOwner {
    let get = |k: &str| r.props.get(k).cloned().unwrap_or_default();
    DiskOwner {
        fleet: fleet.to_owned(),
        machine: get("virtfleet:machine"),
        disk: get("virtfleet:disk"),
        protect: r.props.get(PROTECT).is_some_and(|v| v == "on"),
    }
}

/// Rounds `bytes` up to a whole MiB (zvol sizes must be block multiples).
fn round_mib(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20) * (1 << 20)
}

/// A parent dataset on a host.
pub struct ZfsStorage<'a> {
    parent: String,
    t: &'a dyn Transport,
}

impl<'a> ZfsStorage<'a> {
    /// The storage under `parent` (validated by the spec).
    pub fn new(parent: &str, t: &'a dyn Transport) -> Self {
        ZfsStorage {
            parent: parent.to_owned(),
            t,
        }
    }

    fn ds(&self, rel: &str) -> String {
        format!("{}/{rel}", self.parent)
    }

    fn exists(&self, ds: &str) -> Result<bool, StorageError> {
        Ok(self
            .t
            .run(&["zfs", "list", "-H", "-o", "name", ds])?
            .success)
    }

    /// Creates the container datasets (not mounted: they only hold zvols).
    fn containers(&self) -> Result<(), StorageError> {
        for c in ["images", "disks", "trash"] {
            self.container(&self.ds(c))?;
        }
        Ok(())
    }

    /// Creates the parent dataset if missing.
    fn parent(&self) -> Result<(), StorageError> {
        self.container(&self.parent)
    }

    /// Creates `ds` (and its parents) if missing, unmounted: it only holds
    /// other datasets.
    fn container(&self, ds: &str) -> Result<(), StorageError> {
        if !self.exists(ds)? {
            let argv = [
                "zfs",
                "create",
                "-p",
                "-o",
                "canmount=off",
                "-o",
                "mountpoint=none",
                ds,
            ];
            self.t.run_ok(&argv)?;
        }
        Ok(())
    }

    /// Waits until udev made `/dev/zvol/<ds>` (zvol devices appear asynchronously).
    fn wait_device(&self, ds: &str) -> Result<(), StorageError> {
        let dev = format!("/dev/zvol/{ds}");
        for _ in 0..100 {
            // Settle first: udev may still be handling the zvol's events and
            // briefly remove the link it just made (seen under load).
            let _ = self.t.run(&["udevadm", "settle", "--timeout=5"]);
            if self.t.run(&["test", "-e", &dev])?.success {
                return Ok(());
            }
        }
        Err(StorageError::DeviceMissing { path: dev })
    }

    /// The first half of moving a running machine's disk `volume` from
    /// `from`: snapshots it there as `@vf-move-pre` while the guest still
    /// runs and brings the copy here up to it (see [`catch_up`](Self::catch_up)),
    /// so that [`receive_disk`](Self::receive_disk), once the guest is
    /// stopped, sends only what changed since: the guest's downtime is that
    /// increment, not the disk. Returns the bytes streamed (0 when an earlier
    /// run got this far, or already took the final snapshot).
    pub fn pre_copy(
        &self,
        from: &ZfsStorage<'_>,
        volume: &str,
        progress: &dyn Progress,
    ) -> Result<u64, StorageError> {
        let rel = layout::disk_rel(volume);
        let src = from.ds(&rel);
        if from.exists(&format!("{src}@{MOVE_SNAPSHOT}"))? {
            return Ok(0);
        }
        from.take(&format!("{src}@{PRE_SNAPSHOT}"))?;
        let label = format!("zfs send {volume} (guest running)");
        let bytes = self.catch_up(from, &rel, PRE_SNAPSHOT, &label, progress)?;
        crate::fault::point("move-precopied");
        Ok(bytes)
    }

    /// Snapshot `snap` (`ds@name`), unless it exists.
    fn take(&self, snap: &str) -> Result<(), StorageError> {
        if !self.exists(snap)? {
            self.t.run_ok(&["zfs", "snapshot", snap])?;
        }
        Ok(())
    }

    /// The snapshots of `ds` (names after the `@`) with their guids, oldest
    /// first.
    fn snapshots_with_guids(&self, ds: &str) -> Result<Vec<(String, String)>, StorageError> {
        let out = self.t.run_ok(&[
            "zfs",
            "list",
            "-Hp",
            "-t",
            "snapshot",
            "-o",
            "name,guid",
            "-s",
            "createtxg",
            "-d",
            "1",
            ds,
        ])?;
        out.lines()
            .map(|l| {
                let (name, guid) = l
                    .split_once('\t')
                    .ok_or_else(|| StorageError::Parse(format!("zfs list: {l:?}")))?;
                let (_, snap) = name
                    .split_once('@')
                    .ok_or_else(|| StorageError::Parse(format!("zfs list: {l:?}")))?;
                Ok((snap.to_owned(), guid.trim().to_owned()))
            })
            .collect()
    }

    /// Brings disk `rel` here up to `from`'s snapshot `target`, with every
    /// snapshot before it and the properties (`-p`: the ownership travels).
    /// Absent here: a full stream of the oldest snapshot, then the
    /// increment to `target` (`-I`, every snapshot between). A full `-R`
    /// stream is not used because it carries a clone's origin, which the
    /// other host does not have: the copy is a whole volume of its own.
    /// Present here (an earlier pass or run): only the increment from its
    /// newest snapshot, which must be the source's very one (same guid), or
    /// nothing is sent onto it. A receive is atomic, and the source's move
    /// snapshots stay until the copy is verified, so an interrupted catch-up
    /// is simply resumed. Returns the bytes streamed.
    fn catch_up(
        &self,
        from: &ZfsStorage<'_>,
        rel: &str,
        target: &str,
        label: &str,
        progress: &dyn Progress,
    ) -> Result<u64, StorageError> {
        let (src, dst) = (from.ds(rel), self.ds(rel));
        let theirs = from.snapshots_with_guids(&src)?;
        let upto = theirs
            .iter()
            .position(|(n, _)| n == target)
            .ok_or_else(|| StorageError::Parse(format!("{src}@{target} is not listed")))?;
        let theirs = &theirs[..=upto];
        let mut bytes = 0;
        let since = if self.exists(&dst)? {
            let Some((newest, guid)) = self.snapshots_with_guids(&dst)?.pop() else {
                return Err(StorageError::StaleCopy {
                    path: dst,
                    why: "an earlier copy without snapshots; nothing was sent onto it".into(),
                });
            };
            if !theirs.iter().any(|(n, g)| *n == newest && *g == guid) {
                return Err(StorageError::StaleCopy {
                    path: dst,
                    why: format!(
                        "an earlier run's copy, whose newest snapshot @{newest} is not {src}'s own any more; nothing was sent onto it"
                    ),
                });
            }
            newest
        } else {
            self.containers()?;
            let oldest = &theirs[0].0;
            bytes += self.stream(
                from,
                &["-p", &format!("{src}@{oldest}")],
                &dst,
                label,
                progress,
            )?;
            oldest.clone()
        };
        if since != target {
            bytes += self.stream(
                from,
                &["-p", "-I", &format!("@{since}"), &format!("{src}@{target}")],
                &dst,
                label,
                progress,
            )?;
        }
        Ok(bytes)
    }

    /// Streams `zfs send ARGS` on `from` into `zfs receive -u dst` here,
    /// with the stream's estimated size (a dry run, no data read) for the
    /// progress bar. Returns the bytes streamed.
    fn stream(
        &self,
        from: &ZfsStorage<'_>,
        args: &[&str],
        dst: &str,
        label: &str,
        progress: &dyn Progress,
    ) -> Result<u64, StorageError> {
        let dry: Vec<&str> = ["zfs", "send", "-nP"].iter().chain(args).copied().collect();
        let estimate = from
            .t
            .run_ok(&dry)?
            .lines()
            .filter_map(|l| l.strip_prefix("size\t"))
            .filter_map(|n| n.trim().parse::<u64>().ok())
            .next_back();
        progress.start(label, estimate);
        let send: Vec<&str> = ["zfs", "send"].iter().chain(args).copied().collect();
        let bytes = super::transport::pipe(
            from.t,
            &send,
            self.t,
            &["zfs", "receive", "-u", dst],
            progress,
        )?;
        progress.finish("received");
        Ok(bytes)
    }

    /// Takes disk `volume` in from another ZFS storage `from` (the second
    /// half of a move; its guest is stopped there): snapshots it there as
    /// `@vf-move`, brings the copy here up to it (see
    /// [`catch_up`](Self::catch_up): whole, or only the increment since
    /// [`pre_copy`](Self::pre_copy)), checks that the copy's `@vf-move` has
    /// the guid of the source's, then drops the move's snapshots, on the
    /// source first. So a source still holding one means a move under way
    /// (resumed here), and a disk here while the source holds none was
    /// verified already. Returns the bytes streamed (0 when the disk was
    /// here already).
    pub fn receive_disk(
        &self,
        from: &ZfsStorage<'_>,
        volume: &str,
        progress: &dyn Progress,
    ) -> Result<u64, StorageError> {
        let rel = layout::disk_rel(volume);
        let (src, dst) = (from.ds(&rel), self.ds(&rel));
        let snap = |ds: &str, name: &str| format!("{ds}@{name}");
        let (src_snap, dst_snap) = (snap(&src, MOVE_SNAPSHOT), snap(&dst, MOVE_SNAPSHOT));
        let src_pre = snap(&src, PRE_SNAPSHOT);
        let under_way = from.exists(&src_pre)? || from.exists(&src_snap)?;
        let present = self.exists(&dst)?;
        let mut bytes = 0;
        if under_way || !present {
            from.take(&src_snap)?;
            let label = if present {
                format!("zfs send {volume} (changes since the guest ran)")
            } else {
                format!("zfs send {volume}")
            };
            bytes = self.catch_up(from, &rel, MOVE_SNAPSHOT, &label, progress)?;
            crate::fault::point("move-received");
            let guid = |t: &dyn Transport, snap: &str| -> Result<String, StorageError> {
                Ok(
                    t.run_ok(&["zfs", "get", "-Hp", "-o", "value", "guid", snap])?
                        .trim()
                        .to_owned(),
                )
            };
            let (want, got) = (guid(from.t, &src_snap)?, guid(self.t, &dst_snap)?);
            if want != got {
                return Err(StorageError::StaleCopy {
                    path: dst_snap,
                    why: format!(
                        "received with guid {got}, not the source's {want}; nothing was defined from it"
                    ),
                });
            }
        }
        for storage in [from, self] {
            for name in [PRE_SNAPSHOT, MOVE_SNAPSHOT] {
                storage.destroy_snapshot(volume, name)?;
            }
        }
        self.wait_device(&dst)?;
        Ok(bytes)
    }

    /// Creates disk zvol `ds` of `size` (`zfs` size syntax) in one command,
    /// so it exists owned (by `owner`, plus properties `extra`) and sized,
    /// or not at all: a copy-on-write clone of base image `base`'s `@base`,
    /// or a sparse blank zvol.
    fn make_disk(
        &self,
        ds: &str,
        size: &str,
        base: Option<&str>,
        owner: &DiskOwner,
        extra: &[String],
    ) -> Result<(), StorageError> {
        let mut argv: Vec<String> = match base {
            Some(_) => ["zfs", "clone", "-o", &format!("volsize={size}")]
                .map(String::from)
                .into(),
            None => ["zfs", "create", "-s", "-V", size].map(String::from).into(),
        };
        argv.extend(["-o".into(), "volmode=dev".into()]);
        argv.extend(Self::owner_props(owner));
        argv.extend(extra.iter().flat_map(|p| ["-o".into(), p.clone()]));
        if let Some(sha) = base {
            argv.push(format!("{}@base", self.ds(&layout::zfs_image_rel(sha))));
        }
        argv.push(ds.into());
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.t.run_ok(&argv)?;
        Ok(())
    }

    /// True when zvol `ds` carries the mark of a conversion under way.
    fn converting(&self, ds: &str) -> Result<bool, StorageError> {
        let out = self
            .t
            .run(&["zfs", "get", "-Hp", "-o", "value", CONVERTING, ds])?;
        Ok(out.success && out.stdout.trim() == "on")
    }

    /// The device of the base image `sha256`'s zvol here, if it is here.
    fn base_device(&self, sha256: &str) -> Result<String, StorageError> {
        let ds = self.ds(&layout::zfs_image_rel(sha256));
        if !self.exists(&format!("{ds}@base"))? {
            return Err(StorageError::BaseMissing {
                host_path: ds,
                sha256: sha256.into(),
            });
        }
        Ok(format!("/dev/zvol/{ds}"))
    }

    /// Takes disk `volume` in from qcow2 file `src` on a Dir host (`from`),
    /// converted to a zvol (the second half of a move; its guest is stopped
    /// there). The file, an overlay on the base with its internal
    /// snapshots, is copied into a staging directory here, checked by
    /// sha256 and re-pointed at this host's base zvol. A zvol is cloned from
    /// that base (made blank for a disk without one), marked
    /// `virtfleet:converting`, and made to read like each of the file's
    /// snapshots in turn, each then a ZFS snapshot of the same name, and
    /// last like the file itself ([`convert::sync`], each checked by
    /// `qemu-img compare`). Only then is the mark cleared: a marked zvol is
    /// a half-made object, observed as incomplete and redone from scratch.
    /// Returns the bytes copied (0 when the disk was here already).
    pub fn receive_converted(
        &self,
        from: &dyn Transport,
        src: &str,
        owner: &DiskOwner,
        volume: &str,
        base: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<u64, StorageError> {
        let ds = self.ds(&layout::disk_rel(volume));
        if self.exists(&ds)? {
            if !self.converting(&ds)? {
                return Ok(0);
            }
            self.t.run_ok(&["zfs", "destroy", "-r", &ds])?;
        }
        let base_dev = base.map(|sha| self.base_device(sha)).transpose()?;
        self.containers()?;
        with_stage(self.t, |stage| {
            let file = format!("{stage}/disk.qcow2");
            let label = format!("copy {volume}");
            let bytes = copy_checked(from, src, self.t, &file, &label, progress)?;
            if let Some(dev) = &base_dev {
                // Same pinned bytes under another name: only the header
                // changes (`-u`).
                self.t.run_ok(&[
                    "qemu-img", "rebase", "-u", "-f", "qcow2", "-F", "raw", "-b", dev, &file,
                ])?;
            }
            let info = convert::qcow2_info(self.t, &file)?;
            let size = round_mib(info.virtual_size);
            let mark = [format!("{CONVERTING}=on")];
            self.make_disk(&ds, &size.to_string(), base, owner, &mark)?;
            self.wait_device(&ds)?;
            crate::fault::point("move-converting");
            let snaps = info.snapshots;
            // Counted in disk views read and made alike, one per state.
            let states = snaps.len() as u64 + 1;
            progress.start(&format!("convert {volume} to a zvol"), Some(size * states));
            let (dev, scratch) = (format!("/dev/zvol/{ds}"), format!("{stage}/scratch.qcow2"));
            let (from_img, to_img) = (
                Image {
                    path: &file,
                    format: "qcow2",
                },
                Image {
                    path: &dev,
                    format: "raw",
                },
            );
            if !snaps.is_empty() {
                self.t
                    .run_ok(&["qemu-img", "snapshot", "-c", NOW_SNAPSHOT, &file])?;
            }
            let backing = base_dev.as_deref().map(|path| Image {
                path,
                format: "raw",
            });
            let states = snaps.iter().map(String::as_str).chain([NOW_SNAPSHOT]);
            for (i, name) in states.enumerate() {
                if !snaps.is_empty() {
                    self.t
                        .run_ok(&["qemu-img", "snapshot", "-a", name, &file])?;
                }
                if i == 0 {
                    // The zvol still reads like the file's backing (the base,
                    // or zeros): only the file's own clusters differ.
                    convert::commit_onto(self.t, &file, backing, to_img)?;
                } else {
                    convert::sync(self.t, from_img, to_img, &scratch)?;
                }
                if name != NOW_SNAPSHOT {
                    self.snapshot(volume, name)?;
                }
                progress.advance(size);
            }
            progress.finish("converted");
            self.t.run_ok(&["zfs", "inherit", CONVERTING, &ds])?;
            Ok(bytes)
        })
    }

    /// Writes disk `volume` here as qcow2 file `file` (in a staging
    /// directory), for a Dir host (the first half of a move there; its
    /// guest is stopped): an overlay on this host's base zvol (`base`)
    /// holding only what differs from it, or a whole image for a disk
    /// without one, with each ZFS snapshot of the disk as an internal
    /// snapshot of the same name, oldest first (the snapshots' devices are
    /// shown, `snapdev=visible`, for as long as it reads them). Every state
    /// is checked by `qemu-img compare` against the zvol it came from.
    pub fn export_qcow2(
        &self,
        volume: &str,
        base: Option<&str>,
        file: &str,
        progress: &dyn Progress,
    ) -> Result<(), StorageError> {
        let ds = self.ds(&layout::disk_rel(volume));
        let size = self
            .t
            .run_ok(&["zfs", "get", "-Hp", "-o", "value", "volsize", &ds])?
            .trim()
            .to_owned();
        let mut argv = vec!["qemu-img", "create", "-q", "-f", "qcow2"];
        let base_dev = base.map(|sha| self.base_device(sha)).transpose()?;
        if let Some(dev) = &base_dev {
            argv.extend(["-F", "raw", "-b", dev]);
        }
        argv.extend([file, &size]);
        self.t.run_ok(&argv)?;
        let snaps: Vec<String> = self
            .snapshots_with_guids(&ds)?
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| !n.starts_with("vf-move"))
            .collect();
        let bytes: u64 = size.parse().unwrap_or(0);
        let states = snaps.len() as u64 + 1;
        progress.start(&format!("convert {volume} to qcow2"), Some(bytes * states));
        let scratch = format!("{file}.scratch");
        let to_img = Image {
            path: file,
            format: "qcow2",
        };
        if !snaps.is_empty() {
            self.t.run_ok(&["zfs", "set", "snapdev=visible", &ds])?;
        }
        let states = snaps
            .iter()
            .map(|s| format!("{ds}@{s}"))
            .chain([ds.clone()]);
        let carried = states
            .zip(snaps.iter().map(Some).chain([None]))
            .try_for_each(|(state, name)| -> Result<(), StorageError> {
                self.wait_device(&state)?;
                let dev = format!("/dev/zvol/{state}");
                let from_img = Image {
                    path: &dev,
                    format: "raw",
                };
                convert::sync(self.t, from_img, to_img, &scratch)?;
                if let Some(name) = name {
                    self.t.run_ok(&["qemu-img", "snapshot", "-c", name, file])?;
                }
                progress.advance(bytes);
                Ok(())
            });
        if !snaps.is_empty() {
            let _ = self.t.run(&["zfs", "inherit", "snapdev", &ds]);
        }
        carried?;
        progress.finish("converted");
        Ok(())
    }

    fn owner_props(owner: &DiskOwner) -> Vec<String> {
        let mut props = vec![
            "-o".into(),
            "virtfleet:managed=true".into(),
            "-o".into(),
            format!("virtfleet:fleet={}", owner.fleet),
            "-o".into(),
            format!("virtfleet:machine={}", owner.machine),
            "-o".into(),
            format!("virtfleet:disk={}", owner.disk),
        ];
        if owner.protect {
            props.extend(["-o".into(), format!("{PROTECT}=on")]);
        }
        props
    }
}

impl StorageBackend for ZfsStorage<'_> {
    fn observe(
        &self,
        fleet: &str,
        _attached: &BTreeMap<String, u64>,
        _with_snapshots: &BTreeSet<String>,
    ) -> Result<HostState, StorageError> {
        let out = self.t.run(&[
            "zfs",
            "list",
            "-Hp",
            "-r",
            "-t",
            "filesystem,volume,snapshot",
            "-o",
            &list_columns(),
            &self.parent,
        ])?;
        if !out.success {
            if out.stderr.contains("does not exist") {
                return Ok(HostState::default());
            }
            return Err(StorageError::Exec(ExecError::Failed {
                argv: format!("zfs list {}", self.parent),
                status: "non-zero exit".into(),
                stderr: out.stderr.trim().into(),
            }));
        }
        let rows = parse_list(&out.stdout)?;
        let mut state = interpret(&self.parent, fleet, &rows);
        let lease_ds = self.ds(LEASE);
        if rows.iter().any(|r| r.name == lease_ds) {
            state.lease = self.read_lease()?.map(Box::new);
        }
        state.storage_free_bytes = self
            .t
            .run(&[
                "zfs",
                "get",
                "-Hp",
                "-o",
                "value",
                "available",
                &self.parent,
            ])
            .ok()
            .filter(|o| o.success)
            .and_then(|o| o.stdout.trim().parse().ok());
        Ok(state)
    }

    /// Copies the image to the host, checks its sha256 there, and only then
    /// writes it into a fresh zvol, snapshots it `@base` and marks it complete.
    fn ensure_image(
        &self,
        base: &BaseImage<'_>,
        progress: &dyn Progress,
    ) -> Result<(), StorageError> {
        let sha256 = base.sha256;
        let ds = self.ds(&layout::zfs_image_rel(sha256));
        let done = self
            .t
            .run(&["zfs", "get", "-Hp", "-o", "value", "virtfleet:sha256", &ds])?;
        if done.success && done.stdout.trim() == sha256 && self.exists(&format!("{ds}@base"))? {
            return Ok(());
        }
        with_stage(self.t, |stage| self.write_base(base, &ds, stage, progress))
    }

    fn create_disk(&self, disk: &NewDisk<'_>) -> Result<(), StorageError> {
        let ds = self.ds(&layout::disk_rel(disk.volume));
        if self.exists(&ds)? {
            return Ok(());
        }
        self.containers()?;
        let size = format!("{}G", disk.size_gib);
        let base = disk.base.map(|(sha, _)| sha);
        self.make_disk(&ds, &size, base, disk.owner, &[])?;
        crate::fault::point("disk-cloned");
        self.wait_device(&ds)
    }

    fn write_seed(&self, seed: &super::storage::NewSeed<'_>) -> Result<(), StorageError> {
        self.containers()?;
        let ds = self.ds(&layout::disk_rel(seed.volume));
        super::seedstore::zfs_write(self.t, &ds, Self::owner_props(seed.owner), seed)
    }

    /// `volsize` grows the zvol in place; for a running guest the caller
    /// then tells libvirt so the guest sees it, and until then the zvol
    /// carries [`GROW_UNTOLD`], set in the same command as the size: a run
    /// that stops in between leaves a mark the next plan finishes.
    fn grow(&self, volume: &str, size_gib: u64, online: bool) -> Result<(), StorageError> {
        let size = format!("volsize={size_gib}G");
        let mark = format!("{GROW_UNTOLD}=on");
        let ds = self.ds(&layout::disk_rel(volume));
        let mut argv = vec!["zfs", "set"];
        if online {
            argv.push(&mark);
        }
        argv.extend([size.as_str(), ds.as_str()]);
        self.t.run_ok(&argv)?;
        Ok(())
    }

    fn set_protect(&self, volume: &str, protect: bool) -> Result<(), StorageError> {
        let ds = self.ds(&layout::disk_rel(volume));
        let on = format!("{PROTECT}=on");
        let argv = if protect {
            ["zfs", "set", on.as_str(), ds.as_str()]
        } else {
            ["zfs", "inherit", PROTECT, ds.as_str()]
        };
        self.t.run_ok(&argv)?;
        Ok(())
    }

    fn grow_told(&self, volume: &str) -> Result<(), StorageError> {
        let ds = self.ds(&layout::disk_rel(volume));
        self.t.run_ok(&["zfs", "inherit", GROW_UNTOLD, &ds])?;
        Ok(())
    }

    fn ownership(&self, rel: &str) -> Result<Ownership, StorageError> {
        let out = self.t.run(&[
            "zfs",
            "get",
            "-Hp",
            "-o",
            "property,value",
            "virtfleet:managed,virtfleet:fleet,virtfleet:machine,virtfleet:disk",
            &self.ds(rel),
        ])?;
        if !out.success {
            if out.stderr.contains("does not exist") {
                return Ok(Ownership::Absent);
            }
            return Err(ExecError::Failed {
                argv: format!("zfs get {}", self.ds(rel)),
                status: "non-zero exit".into(),
                stderr: out.stderr.trim().into(),
            }
            .into());
        }
        let props: BTreeMap<&str, &str> = out
            .stdout
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .filter(|(_, v)| *v != "-")
            .collect();
        if props.get("virtfleet:managed") != Some(&"true") {
            return Ok(Ownership::Unmarked);
        }
        Ok(match props.get("virtfleet:fleet") {
            Some(f) => Ownership::Fleet(DiskOwner {
                fleet: (*f).to_owned(),
                machine: props.get("virtfleet:machine").unwrap_or(&"").to_string(),
                disk: props.get("virtfleet:disk").unwrap_or(&"").to_string(),
                protect: false,
            }),
            None => Ownership::Shared,
        })
    }

    fn trash(&self, volume: &str, now: u64) -> Result<(), StorageError> {
        let ds = self.ds(&layout::disk_rel(volume));
        if !self.exists(&ds)? {
            return Ok(());
        }
        self.containers()?;
        let dest = self.ds(&layout::zfs_trash_rel(volume, now));
        self.t.run_ok(&["zfs", "rename", &ds, &dest])?;
        crate::fault::point("trash-renamed");
        self.t
            .run_ok(&["zfs", "set", &format!("virtfleet:trashed-at={now}"), &dest])?;
        Ok(())
    }

    fn restore(&self, entry: &str, volume: &str) -> Result<(), StorageError> {
        let dest = self.ds(&layout::disk_rel(volume));
        if self.exists(&dest)? {
            return Err(StorageError::Exists(dest));
        }
        self.t.run_ok(&[
            "zfs",
            "rename",
            &self.ds(&layout::trash_entry_rel(entry)),
            &dest,
        ])?;
        self.t
            .run_ok(&["zfs", "inherit", "virtfleet:trashed-at", &dest])?;
        Ok(())
    }

    fn purge(&self, entry: &str) -> Result<(), StorageError> {
        self.t.run_ok(&[
            "zfs",
            "destroy",
            "-r",
            &self.ds(&layout::trash_entry_rel(entry)),
        ])?;
        Ok(())
    }

    fn snapshot(&self, volume: &str, name: &str) -> Result<(), StorageError> {
        let snap = format!("{}@{name}", self.ds(&layout::disk_rel(volume)));
        if !self.exists(&snap)? {
            self.t
                .run_ok(&["zfs", "snapshot", "-o", "virtfleet:managed=true", &snap])?;
        }
        Ok(())
    }

    fn destroy_snapshot(&self, volume: &str, name: &str) -> Result<(), StorageError> {
        let snap = format!("{}@{name}", self.ds(&layout::disk_rel(volume)));
        if self.exists(&snap)? {
            self.t.run_ok(&["zfs", "destroy", &snap])?;
        }
        Ok(())
    }

    fn rollback(&self, volume: &str, name: &str) -> Result<(), StorageError> {
        self.t.run_ok(&[
            "zfs",
            "rollback",
            "-r",
            &format!("{}@{name}", self.ds(&layout::disk_rel(volume))),
        ])?;
        Ok(())
    }

    fn snapshots_via_domain(&self) -> bool {
        false
    }

    fn snapshots_after(&self, volume: &str, name: &str) -> Result<Vec<String>, StorageError> {
        let all = self.snapshot_list(volume)?;
        Ok(all
            .iter()
            .skip_while(|n| *n != name)
            .skip(1)
            .cloned()
            .collect())
    }

    /// In creation order (`createtxg`), which is what `zfs rollback -r` follows.
    fn snapshot_list(&self, volume: &str) -> Result<Vec<String>, StorageError> {
        let ds = self.ds(&layout::disk_rel(volume));
        let out = self.t.run_ok(&[
            "zfs",
            "list",
            "-H",
            "-t",
            "snapshot",
            "-o",
            "name",
            "-s",
            "createtxg",
            "-d",
            "1",
            &ds,
        ])?;
        Ok(parse_snapshot_names(&out))
    }

    fn read_lease(&self) -> Result<Option<Lease>, StorageError> {
        let out = self.t.run(&[
            "zfs",
            "get",
            "-Hp",
            "-o",
            "value",
            LEASE_PROP,
            &self.ds(LEASE),
        ])?;
        if !out.success {
            return Ok(None);
        }
        // `-` (unset): the dataset exists but its holder was never written.
        Ok(Some(
            serde_json::from_str(out.stdout.trim()).unwrap_or(Lease::unknown(0)),
        ))
    }

    fn create_lease(&self, lease: &Lease) -> Result<(), StorageError> {
        self.parent()?;
        let ds = self.ds(LEASE);
        let json = serde_json::to_string(lease).expect("lease serialises");
        let prop = format!("{LEASE_PROP}={json}");
        // Without -p, `zfs create` fails if the dataset exists: of two runs,
        // exactly one creates it, with its holder in the same command.
        let argv = [
            "zfs",
            "create",
            "-o",
            "canmount=off",
            "-o",
            "mountpoint=none",
            "-o",
            &prop,
            &ds,
        ];
        let out = self.t.run(&argv)?;
        if !out.success {
            if out.stderr.contains("exists") {
                return Err(StorageError::Exists(ds));
            }
            return Err(StorageError::Exec(ExecError::Failed {
                argv: argv.join(" "),
                status: "non-zero exit".into(),
                stderr: out.stderr.trim().into(),
            }));
        }
        Ok(())
    }

    fn write_lease(&self, lease: &Lease) -> Result<(), StorageError> {
        let json = serde_json::to_string(lease).expect("lease serialises");
        self.t.run_ok(&[
            "zfs",
            "set",
            &format!("{LEASE_PROP}={json}"),
            &self.ds(LEASE),
        ])?;
        Ok(())
    }

    fn remove_lease(&self, id: &str) -> Result<(), StorageError> {
        match self.read_lease()? {
            Some(l) if l.id == id => {
                self.t.run_ok(&["zfs", "destroy", &self.ds(LEASE)])?;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn remove_incomplete(&self, path: &str) -> Result<(), StorageError> {
        let seed = path.starts_with("disks/")
            && path.ends_with(&format!(".{}", crate::resources::seed::SEED_DISK));
        let converting = || -> Result<bool, StorageError> {
            Ok(path.starts_with("disks/") && self.converting(&self.ds(path))?)
        };
        if path.contains('@') || !(path.starts_with("images/") || seed || converting()?) {
            return Err(StorageError::NotRemovable {
                path: path.into(),
                why: "not an incomplete base image, seed or conversion",
            });
        }
        self.t.run_ok(&["zfs", "destroy", "-r", &self.ds(path)])?;
        Ok(())
    }
}

impl ZfsStorage<'_> {
    /// Copies, verifies and writes base image `base` into zvol `ds`, with
    /// `stage` (a private directory on the host) for the copy.
    fn write_base(
        &self,
        base: &BaseImage<'_>,
        ds: &str,
        stage: &str,
        progress: &dyn Progress,
    ) -> Result<(), StorageError> {
        let BaseImage {
            cached,
            name: image,
            sha256,
            format,
        } = *base;
        let tmp = format!("{stage}/{sha256}.{format}");
        copy_verified(self.t, cached, &tmp, sha256, progress)?;
        let info = self
            .t
            .run_ok(&["qemu-img", "info", "--output=json", "-f", format, &tmp])?;
        let v: serde_json::Value =
            serde_json::from_str(&info).map_err(|e| StorageError::Parse(e.to_string()))?;
        let size = round_mib(
            v["virtual-size"]
                .as_u64()
                .ok_or_else(|| StorageError::Parse("qemu-img info has no virtual-size".into()))?,
        );
        self.containers()?;
        if self.exists(ds)? {
            // A previous attempt died half way (no sha256 yet): it is ours, redo it.
            self.t.run_ok(&["zfs", "destroy", "-r", ds])?;
        }
        self.t.run_ok(&[
            "zfs",
            "create",
            "-V",
            &size.to_string(),
            "-o",
            "volmode=dev",
            "-o",
            "virtfleet:managed=true",
            "-o",
            &format!("virtfleet:image={image}"),
            ds,
        ])?;
        crate::fault::point("image-zvol-made");
        self.wait_device(ds)?;
        self.t.run_ok(&[
            "qemu-img",
            "convert",
            "-n",
            "-f",
            format,
            "-O",
            "raw",
            &tmp,
            &format!("/dev/zvol/{ds}"),
        ])?;
        crate::fault::point("image-converted");
        self.t.run_ok(&["zfs", "snapshot", &format!("{ds}@base")])?;
        crate::fault::point("image-unpinned");
        self.t
            .run_ok(&["zfs", "set", &format!("virtfleet:sha256={sha256}"), ds])?;
        Ok(())
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    // Captured from the test ZFS host (tests/zfs-host) during tests/zfs.rs,
    // before `virtfleet:converting` was listed: its column (unset, `-`) was
    // added to every line since.
    const AFTER_APPLY: &str = include_str!("../../tests/fixtures/zfs-list-after-apply.txt");
    const TRASH_FOREIGN: &str = include_str!("../../tests/fixtures/zfs-list-trash-foreign.txt");
    const SNAPSHOTS: &str = include_str!("../../tests/fixtures/zfs-snapshots-createtxg.txt");
    const SHA: &str = "a74e6253c6b93509f05f42a27d0051a84a72905e8430e54c92d701402927ad8a";

    #[test]
    fn parses_real_zfs_list_output() {
        let rows = parse_list(AFTER_APPLY).unwrap();
        assert_eq!(rows.len(), AFTER_APPLY.lines().count());
        let clone = rows
            .iter()
            .find(|r| r.name == "tank/vf/disks/t-zfs-a-root")
            .unwrap();
        assert_eq!(
            (clone.kind.as_str(), clone.volsize),
            ("volume", Some(1 << 30))
        );
        assert_eq!(
            clone.origin.as_deref(),
            Some("tank/vf/images/a74e6253c6b93509@base")
        );
        assert_eq!(
            clone.props.get("virtfleet:machine").map(String::as_str),
            Some("t-zfs-a")
        );
        assert!(
            !clone.props.contains_key("virtfleet:sha256"),
            "`-` means unset"
        );
        let fs = rows.iter().find(|r| r.name == "tank/vf").unwrap();
        assert_eq!(
            (fs.volsize, fs.origin.as_deref(), fs.props.len()),
            (None, None, 0)
        );
        assert!(
            parse_list("tank/vf\tfilesystem\t-\n").is_err(),
            "a short row is an error, not a guess"
        );
        assert!(parse_list(&AFTER_APPLY.replace("1073741824", "1G")).is_err());
    }

    #[test]
    fn interprets_disks_images_and_snapshots() {
        let state = interpret("tank/vf", "t-zfs", &parse_list(AFTER_APPLY).unwrap());
        assert_eq!(state.images.iter().collect::<Vec<_>>(), [SHA]);
        assert_eq!(
            state.disks.keys().collect::<Vec<_>>(),
            ["t-zfs-a-root", "t-zfs-b-data", "t-zfs-b-root"]
        );
        let a = &state.disks["t-zfs-a-root"];
        assert_eq!(
            (a.path.as_str(), a.size_bytes),
            ("/dev/zvol/tank/vf/disks/t-zfs-a-root", 1 << 30)
        );
        assert_eq!(
            (a.owner.machine.as_str(), a.owner.disk.as_str()),
            ("t-zfs-a", "root")
        );
        assert_eq!(a.snapshots, ["vf-init"]);
        assert!(
            state.trash.is_empty()
                && state.incomplete.is_empty()
                && state.unmanaged_files.is_empty()
        );
        // Another fleet sees the same disks as not its own.
        let other = interpret("tank/vf", "elsewhere", &parse_list(AFTER_APPLY).unwrap());
        assert!(other.disks.is_empty());
        assert_eq!(
            other.unmanaged_files,
            [
                "disks/t-zfs-a-root",
                "disks/t-zfs-b-data",
                "disks/t-zfs-b-root"
            ]
        );
        assert_eq!(other.images.len(), 1, "base images are shared");
    }

    #[test]
    fn interprets_trash_and_foreign_datasets() {
        let state = interpret("tank/vf", "t-zfs", &parse_list(TRASH_FOREIGN).unwrap());
        assert_eq!(state.unmanaged_files, ["disks/foreign", "other"]);
        let t = &state.trash["t-zfs-b-root-1795388565"];
        assert_eq!(
            (t.volume.as_str(), t.trashed_at, t.owner.machine.as_str()),
            ("t-zfs-b-root", 1_795_388_565, "t-zfs-b")
        );
        assert_eq!(state.trash.len(), 2);
        assert_eq!(state.disks["t-zfs-a-root"].size_bytes, 2 << 30, "grown");
    }

    /// The grow and protection marks, as `zfs list` shows set properties.
    #[test]
    fn reads_the_grow_and_protect_marks() {
        let line = |untold: &str, protect: &str| {
            format!(
                "tank/vf/disks/t-a-root\tvolume\t2147483648\t-\ttrue\tt\tt-a\troot\t-\t-\t-\t{untold}\t{protect}\t-\t-\n"
            )
        };
        for (untold, protect) in [("-", "-"), ("on", "-"), ("-", "on"), ("on", "on")] {
            let rows = parse_list(&line(untold, protect)).unwrap();
            let d = &interpret("tank/vf", "t", &rows).disks["t-a-root"];
            assert_eq!(d.grow_untold, untold == "on");
            assert_eq!(d.owner.protect, protect == "on");
        }
    }

    /// A zvol a move was still converting into: half-made, so neither a
    /// disk of its machine nor someone else's.
    #[test]
    fn a_disk_being_converted_is_incomplete() {
        let line = |mark: &str| {
            format!(
                "tank/vf/disks/t-a-root\tvolume\t1073741824\ttank/vf/images/a74e6253c6b93509@base\ttrue\tt\tt-a\troot\t-\t-\t-\t-\t-\t-\t{mark}\n"
            )
        };
        let state = interpret("tank/vf", "t", &parse_list(&line("on")).unwrap());
        assert!(state.disks.is_empty());
        assert_eq!(state.incomplete, ["disks/t-a-root"]);
        let state = interpret("tank/vf", "t", &parse_list(&line("-")).unwrap());
        assert!(state.disks.contains_key("t-a-root") && state.incomplete.is_empty());
    }

    #[test]
    fn a_base_without_its_pin_is_incomplete() {
        // What a crash between `zfs create` and the final `zfs set` leaves.
        let half: String = AFTER_APPLY
            .lines()
            .filter(|l| !l.contains("@base"))
            .map(|l| l.replace(SHA, "-") + "\n")
            .collect();
        let state = interpret("tank/vf", "t-zfs", &parse_list(&half).unwrap());
        assert!(state.images.is_empty());
        // Shared infrastructure: any fleet may redo it (nothing can depend on it).
        assert_eq!(state.incomplete, ["images/a74e6253c6b93509"]);
        assert!(state.unmanaged_files.is_empty());
    }

    #[test]
    fn snapshot_names_in_creation_order() {
        let names = parse_snapshot_names(SNAPSHOTS);
        assert_eq!(names.first().map(String::as_str), Some("vf-init"));
        assert!(names.iter().all(|n| !n.contains('@') && !n.is_empty()));
    }
}
