//! The `Dir` storage backend: qcow2 files in a virtfleet-owned directory.
//!
//! Layout under the host's storage path:
//!
//! ```text
//! images/<sha256>.<raw|qcow2>       verified base images (hash checked on the host)
//! disks/<machine>-<disk>/disk.qcow2  a machine disk (overlay on a base image, or blank)
//! disks/<machine>-<disk>/owner.json  {"fleet":..,"machine":..,"disk":..}: the ownership marker
//! disks/<machine>.cidata/            a cloud-init seed: seed.img, owner.json, seed.json (see `seedstore`)
//! trash/<machine>-<disk>@<unix>/     a destroyed disk, restorable until it expires
//! ```
//!
//! Each disk lives in its own directory so that every state change is one
//! atomic `rename`: a disk is built in `disks/.new-<vol>/` and renamed into
//! place, trashed by renaming into `trash/`, restored by renaming back. A
//! crash therefore leaves either the old or the new state, plus at worst an
//! owned `.new-*` directory that the next plan removes. Directories without
//! an `owner.json` of this fleet are never touched; a `.new-*` directory is
//! made with a plain `mkdir`, so a run never adopts or deletes one that
//! another run is filling.
//!
//! A base image gets `images/<sha256>.<format>.verified` after its hash was
//! checked on the host: its size, mtime and inode at that moment. An image
//! whose file no longer matches its record is not trusted (observed as
//! changed) and is copied again before anything new is made from it.
//!
//! Guest data is private: disk and trash directories are 0711 (QEMU, run as
//! `libvirt-qemu`, must traverse them; nobody may list them) and disk files
//! 0600 (libvirt hands them to QEMU's user while a guest runs).

use super::qcow2;
use super::seedstore;
use super::storage::{
    BaseImage, NewDisk, Ownership, StorageBackend, StorageError, copy_verified, verify_on_host,
};
use super::transport::{ExecError, Transport};
use crate::progress::Progress;
use crate::resources::layout;
use crate::resources::observed::{DiskOwner, HostState, Lease, OwnedDisk, OwnedSeed, TrashEntry};
use std::collections::{BTreeMap, BTreeSet};

/// The host's lease: a directory holding `holder.json`, renamed into place
/// complete.
const LEASE: &str = "lease";
/// Prefix of a lease being prepared by a run (`.lease-<id>`).
const LEASE_STAGING: &str = ".lease-";

/// `id` with anything but `[A-Za-z0-9._-]` replaced: a file name.
fn safe_name(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// On a host that is this machine, makes `tmp` the cached image without a
/// second copy of its bytes: a reflink (a new file sharing the blocks,
/// where the filesystem can) or else a hard link (the same file under a
/// second name). False when neither works (another filesystem): the caller
/// copies.
///
/// A hard link is the cache's own inode, so it must never be written: the
/// image is made read-only (0444, both names, as base images always are);
/// virtfleet only ever replaces files by rename, never writes into an
/// existing one (the cache is written the same way); QEMU opens a backing
/// file read-only; and an in-place change through either name changes the
/// mtime in the image's `.verified` record, so the image is then distrusted
/// and replaced, never used.
fn share_local(t: &dyn Transport, cached: &std::path::Path, tmp: &str) -> bool {
    let Some(src) = cached.to_str() else {
        return false;
    };
    if t.run(&["cp", "--reflink=always", "--", src, tmp])
        .is_ok_and(|o| o.success)
    {
        return true;
    }
    let _ = t.run(&["rm", "-f", "--", tmp]);
    std::fs::hard_link(cached, tmp).is_ok()
}

/// The mtime (whole seconds) in a `<size> <mtime> <inode>` stat line.
fn mtime_of(stat: &str) -> u64 {
    stat.split(' ')
        .nth(1)
        .and_then(|t| t.split('.').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

/// A trash directory `<volume>@<unix>` of this fleet (`owner` is its
/// marker when it is this fleet's).
fn trash_entry(name: &str, owner: Option<&DiskOwner>) -> Option<TrashEntry> {
    let (volume, stamp) = name.rsplit_once('@')?;
    Some(TrashEntry {
        owner: owner?.clone(),
        volume: volume.to_owned(),
        trashed_at: stamp.parse().ok()?,
    })
}

/// Prefix of the temp files of virtfleet's atomic writes (see
/// [`crate::lock::write_private`]): what a run killed mid-write leaves.
const WRITE_TEMP: &str = ".virtfleet-";

/// True when directory `rel` of the listing holds nothing but, at most,
/// temp files of an interrupted atomic write: no marker, no data.
fn holds_nothing(listing: &Listing, rel: &str) -> bool {
    let inside = format!("{rel}/");
    listing
        .entries
        .keys()
        .filter_map(|k| k.strip_prefix(&inside))
        .all(|name| name.starts_with(WRITE_TEMP) && !name.contains('/'))
}

/// Prefix of a trash entry being purged.
const PURGING: &str = ".purge-";

/// Suffix of a base image's verification record.
const VERIFIED: &str = ".verified";

/// One entry under the storage path, from a single listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Relative path → (is directory, size in bytes).
    pub entries: BTreeMap<String, (bool, u64)>,
    /// Relative path of each owner.json → its parsed content.
    pub owners: BTreeMap<String, DiskOwner>,
    /// Relative path of each base image with a verification record → the
    /// file still matches it.
    pub images: BTreeMap<String, bool>,
    /// Relative path of each cloud-init seed directory → its summary.
    pub seeds: BTreeMap<String, crate::resources::seed::SeedSummary>,
}

/// A Dir storage root on a host.
pub struct DirStorage<'a> {
    root: String,
    t: &'a dyn Transport,
}

impl<'a> DirStorage<'a> {
    /// The storage at `root` (an absolute path validated by the spec).
    pub fn new(root: &str, t: &'a dyn Transport) -> Self {
        DirStorage {
            root: root.trim_end_matches('/').to_owned(),
            t,
        }
    }

    /// Takes disk `volume` in from another Dir host's storage `from` (the
    /// second half of a move; its guest is stopped there): its qcow2 file
    /// with its internal snapshots and its ownership record, through
    /// [`receive_file`](Self::receive_file). Returns the bytes copied.
    /// Idempotent: a disk already in place here is left alone (0 bytes).
    pub fn receive_disk(
        &self,
        from: &DirStorage<'_>,
        volume: &str,
        base: Option<(&str, &str)>,
        progress: &dyn crate::progress::Progress,
    ) -> Result<u64, StorageError> {
        if self.has_disk(volume)? {
            return Ok(0);
        }
        let owner = from.owner_record(volume)?;
        let file = from.disk_file(volume);
        self.receive_file(from.t, &file, &owner, volume, base, progress)
    }

    /// Takes qcow2 file `src` on host `from` in as disk `volume` owned by
    /// `owner` (its owner.json): copies it into a `disks/.new-*`
    /// directory, checks the copy's sha256 against the original's, points
    /// an overlay at this host's copy of its base (`base`: sha256 and
    /// format), and only then renames it into place. Returns the bytes
    /// copied. The caller has checked that the disk is not here yet
    /// ([`has_disk`](Self::has_disk)): one in place came through this same
    /// check, and is left alone.
    pub fn receive_file(
        &self,
        from: &dyn Transport,
        src: &str,
        owner: &str,
        volume: &str,
        base: Option<(&str, &str)>,
        progress: &dyn crate::progress::Progress,
    ) -> Result<u64, StorageError> {
        let tmp_dir = self.path(&format!("disks/.new-{volume}"));
        self.private_dir(&self.path("disks"))?;
        if !self.t.run(&["mkdir", "-m", "0711", &tmp_dir])?.success {
            return Err(StorageError::Exists(tmp_dir));
        }
        self.t
            .write_file(&format!("{tmp_dir}/owner.json"), owner.as_bytes())?;
        let file = format!("{tmp_dir}/disk.qcow2");
        let label = format!("copy {volume}");
        let size = super::storage::copy_checked(from, src, self.t, &file, &label, progress)?;
        if let Some((sha, fmt)) = base {
            // The header names the base by its path on the old host; the
            // base's bytes are the same here (its sha256 is pinned), so only
            // the name changes (`-u`: no data is read or written).
            let backing = self.image_path(sha, fmt);
            self.t
                .run_ok(&["qemu-img", "rebase", "-u", "-F", fmt, "-b", &backing, &file])?;
        }
        self.t.run_ok(&["chmod", "0600", &file])?;
        let final_dir = self.path(&layout::disk_rel(volume));
        self.t.run_ok(&["mv", "-T", "--", &tmp_dir, &final_dir])?;
        crate::fault::point("move-disk-in");
        Ok(size)
    }

    /// True when disk `volume` is in place (only complete disks are).
    pub fn has_disk(&self, volume: &str) -> Result<bool, ExecError> {
        let dir = self.path(&layout::disk_rel(volume));
        Ok(self.t.run(&["test", "-d", &dir])?.success)
    }

    /// The ownership record (owner.json) of disk `volume`, as stored.
    pub fn owner_record(&self, volume: &str) -> Result<String, StorageError> {
        let dir = self.path(&layout::disk_rel(volume));
        Ok(self.t.run_ok(&["cat", &format!("{dir}/owner.json")])?)
    }

    /// Absolute path of `rel` under the root.
    pub fn path(&self, rel: &str) -> String {
        format!("{}/{rel}", self.root)
    }

    /// Path of a base image.
    pub fn image_path(&self, sha256: &str, format: &str) -> String {
        self.path(&layout::dir_image_rel(sha256, format))
    }

    /// The qcow2 file of disk `volume`.
    pub fn disk_file(&self, volume: &str) -> String {
        self.path(&layout::dir_disk_file_rel(volume))
    }

    /// Lists everything under the root in one command, then reads every
    /// owner.json in a second one. A missing root is an empty listing.
    pub fn list(&self) -> Result<Listing, ExecError> {
        let out = self.t.run(&[
            "find",
            &self.root,
            "-mindepth",
            "1",
            "-maxdepth",
            "3",
            "-printf",
            "%y\t%s\t%T@\t%i\t%P\n",
        ])?;
        let mut entries = BTreeMap::new();
        let mut stats = BTreeMap::new();
        if !out.success {
            if out.stderr.contains("No such file") {
                return Ok(Listing {
                    entries,
                    owners: BTreeMap::new(),
                    images: BTreeMap::new(),
                    seeds: BTreeMap::new(),
                });
            }
            return Err(ExecError::Failed {
                argv: format!("find {}", self.root),
                status: "non-zero exit".into(),
                stderr: out.stderr.trim().into(),
            });
        }
        for line in out.stdout.lines() {
            let mut it = line.splitn(5, '\t');
            let (Some(kind), Some(size), Some(mtime), Some(inode), Some(rel)) =
                (it.next(), it.next(), it.next(), it.next(), it.next())
            else {
                continue;
            };
            let size = size.parse().unwrap_or(0);
            entries.insert(rel.to_owned(), (kind == "d", size));
            stats.insert(rel.to_owned(), format!("{size} {mtime} {inode}"));
        }
        // Ownership markers and verification records: small files, read in
        // one command.
        let wanted: Vec<String> = entries
            .keys()
            .filter(|p| {
                p.ends_with("/owner.json")
                    || p.ends_with(VERIFIED)
                    || p.ends_with(&format!("/{}", seedstore::DIR_SUMMARY))
            })
            .cloned()
            .collect();
        let texts = self.read_small_files(&wanted)?;
        let owners = texts
            .iter()
            .filter(|(rel, _)| rel.ends_with("/owner.json"))
            // Any valid JSON layout is accepted; a file that is not an
            // owner record leaves its directory unmanaged (never touched).
            .filter_map(|(rel, text)| Some((rel.clone(), serde_json::from_str(text).ok()?)))
            .collect();
        let images = texts
            .iter()
            .filter_map(|(rel, record)| {
                let image = rel.strip_suffix(VERIFIED)?;
                let intact = stats.get(image).is_some_and(|s| s == record.trim());
                Some((image.to_owned(), intact))
            })
            .collect();
        let seeds = texts
            .iter()
            .filter_map(|(rel, text)| {
                let dir = rel.strip_suffix(&format!("/{}", seedstore::DIR_SUMMARY))?;
                Some((dir.to_owned(), serde_json::from_str(text).ok()?))
            })
            .collect();
        Ok(Listing {
            entries,
            owners,
            images,
            seeds,
        })
    }

    /// The contents of `rels` (relative paths of small text files), read
    /// with one `grep -H ""`: each output line is `<path>:<line>`, and the
    /// path is known, so any content (several lines, colons) is rebuilt.
    fn read_small_files(&self, rels: &[String]) -> Result<BTreeMap<String, String>, ExecError> {
        let mut texts: BTreeMap<String, String> = BTreeMap::new();
        if rels.is_empty() {
            return Ok(texts);
        }
        let paths: Vec<(String, &String)> = rels.iter().map(|r| (self.path(r), r)).collect();
        let mut argv = vec!["grep", "-H", ""];
        argv.extend(paths.iter().map(|(p, _)| p.as_str()));
        // grep exits 1 when every file is empty and 2 when one vanished
        // meanwhile: what it printed is still right for the others.
        let out = self.t.run(&argv)?;
        for line in out.stdout.lines() {
            let hit = paths
                .iter()
                .filter(|(p, _)| line.len() > p.len() && line.starts_with(p.as_str()))
                .filter(|(p, _)| line.as_bytes()[p.len()] == b':')
                .max_by_key(|(p, _)| p.len());
            if let Some((p, rel)) = hit {
                let text = texts.entry((*rel).clone()).or_default();
                text.push_str(&line[p.len() + 1..]);
                text.push('\n');
            }
        }
        Ok(texts)
    }

    /// Virtual size in bytes of a disk, read with `qemu-img info`.
    pub fn virtual_size(&self, volume: &str) -> Result<u64, StorageError> {
        virtual_size_of(&self.info(volume)?)
    }

    /// `qemu-img info` of a disk; `-U` makes it safe while a guest uses it.
    fn info(&self, volume: &str) -> Result<serde_json::Value, StorageError> {
        let out = self.t.run_ok(&[
            "qemu-img",
            "info",
            "-U",
            // Never probe: disks are qcow2, and a probed format would read
            // a guest-written raw header as the disk's own.
            "-f",
            "qcow2",
            "--output=json",
            &self.disk_file(volume),
        ])?;
        serde_json::from_str(&out).map_err(|e| StorageError::Parse(e.to_string()))
    }

    /// Makes `dir` (and its parents) and keeps it 0711: QEMU must reach the
    /// disks inside, nobody needs to list them.
    fn private_dir(&self, dir: &str) -> Result<(), ExecError> {
        self.t.run_ok(&["mkdir", "-p", dir])?;
        self.t.run_ok(&["chmod", "0711", dir])?;
        Ok(())
    }

    /// A disk of this fleet found at `disks/<volume>/`; `info` is its
    /// header as [`Self::infos`] read it, when it was needed.
    fn owned_disk(
        &self,
        volume: &str,
        owner: &DiskOwner,
        attached: &BTreeMap<String, u64>,
        with_snapshots: &BTreeSet<String>,
        info: Option<Result<qcow2::Info, StorageError>>,
    ) -> Result<OwnedDisk, StorageError> {
        let path = self.disk_file(volume);
        let mut info = info.transpose()?;
        // An unreadable size is an error, never 0: a zero would plan a
        // bogus "grow 0 → N GiB".
        let size_bytes = match attached.get(&path) {
            Some(s) if *s > 0 => *s,
            _ => match &info {
                Some(i) => i.virtual_size,
                None => info.insert(self.qcow2_info(volume)?).virtual_size,
            },
        };
        let snapshots = match (info, with_snapshots.contains(volume)) {
            (_, false) => Vec::new(),
            (Some(i), true) => i.snapshots,
            (None, true) => self.snapshot_names(volume)?,
        };
        Ok(OwnedDisk {
            // libvirt grows a running guest's qcow2 and tells QEMU in one call.
            grow_untold: false,
            owner: owner.clone(),
            path,
            size_bytes,
            snapshots,
        })
    }

    /// Size and snapshots of one disk: read from its header when the host
    /// is this machine, else (or when that fails) from `qemu-img info`.
    fn qcow2_info(&self, volume: &str) -> Result<qcow2::Info, StorageError> {
        if self.t.is_local()
            && let Ok(i) = qcow2::read_file(&self.disk_file(volume))
        {
            return Ok(i);
        }
        let v = self.info(volume)?;
        Ok(qcow2::Info {
            virtual_size: virtual_size_of(&v)?,
            snapshots: snapshot_names_of(&v),
        })
    }

    /// Size and snapshots of many disks at once: on this machine, read from
    /// each header (no process at all); on a remote host, one command runs
    /// `qemu-img info` for every disk (one round trip, not one per disk).
    /// A disk whose answer is missing gets it from [`Self::qcow2_info`],
    /// which reports the real error.
    fn infos(&self, volumes: &[&str]) -> BTreeMap<String, Result<qcow2::Info, StorageError>> {
        let mut out = BTreeMap::new();
        if volumes.is_empty() {
            return out;
        }
        if !self.t.is_local() {
            let files: Vec<String> = volumes.iter().map(|v| self.disk_file(v)).collect();
            // A fixed script; the paths are its arguments, never part of it.
            let mut argv = vec![
                "sh",
                "-c",
                "for f do qemu-img info -U -f qcow2 --output=json \"$f\" 2>/dev/null || echo null; done",
                "sh",
            ];
            argv.extend(files.iter().map(String::as_str));
            if let Ok(o) = self.t.run(&argv) {
                let values: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&o.stdout)
                    .into_iter()
                    .map_while(Result::ok)
                    .collect();
                if values.len() == volumes.len() {
                    for (v, value) in volumes.iter().zip(values) {
                        if let Ok(size) = virtual_size_of(&value) {
                            let snapshots = snapshot_names_of(&value);
                            out.insert(
                                (*v).to_owned(),
                                Ok(qcow2::Info {
                                    virtual_size: size,
                                    snapshots,
                                }),
                            );
                        }
                    }
                }
            }
        }
        for v in volumes {
            if !out.contains_key(*v) {
                out.insert((*v).to_owned(), self.qcow2_info(v));
            }
        }
        out
    }

    /// Bytes available on the filesystem of the storage root (or of its
    /// parent, before the root is made); `None` when `df` cannot tell.
    fn free_bytes(&self) -> Option<u64> {
        let root = std::path::Path::new(&self.root);
        [Some(root), root.parent()]
            .into_iter()
            .flatten()
            .find_map(|dir| {
                let dir = dir.to_str()?;
                let out = self.t.run(&["df", "-B1", "--output=avail", dir]).ok()?;
                if !out.success {
                    return None;
                }
                out.stdout.lines().nth(1)?.trim().parse().ok()
            })
    }

    /// `<size> <mtime> <inode>` of a file, as the listing prints them; `None`
    /// when it does not exist.
    fn stat(&self, path: &str) -> Result<Option<String>, ExecError> {
        let out = self
            .t
            .run(&["find", path, "-maxdepth", "0", "-printf", "%s %T@ %i"])?;
        Ok((out.success && !out.stdout.is_empty()).then(|| out.stdout.trim().to_owned()))
    }

    /// Deletes an owned directory under `disks/.new-*` or `trash/` for good.
    fn remove_dir(&self, rel: &str) -> Result<(), StorageError> {
        if !(rel.starts_with("trash/") || rel.starts_with("disks/.new-")) || rel.contains("..") {
            return Err(StorageError::NotRemovable {
                path: rel.into(),
                why: "not a trash entry or an incomplete disk",
            });
        }
        let dir = self.path(rel);
        if !self.t.run(&["test", "-e", &dir])?.success {
            return Ok(());
        }
        // Everything but the marker first: until the very end, what is
        // left is still recognisably this fleet's.
        self.t.run_ok(&[
            "find",
            &dir,
            "-mindepth",
            "1",
            "-not",
            "-path",
            &format!("{dir}/owner.json"),
            "-delete",
        ])?;
        crate::fault::point("remove-marker-left");
        self.t.run_ok(&["rm", "-rf", "--", &dir])?;
        Ok(())
    }
}

impl StorageBackend for DirStorage<'_> {
    fn observe(
        &self,
        fleet: &str,
        attached: &BTreeMap<String, u64>,
        with_snapshots: &BTreeSet<String>,
    ) -> Result<HostState, StorageError> {
        let listing = self.list()?;
        let mut state = HostState::default();
        // The disks whose header is needed (size unknown to libvirt, or
        // snapshots wanted), read together.
        let needed: Vec<&str> = listing
            .owners
            .iter()
            .filter(|(_, o)| o.fleet == fleet)
            .filter_map(|(rel, _)| rel.strip_prefix("disks/")?.strip_suffix("/owner.json"))
            .filter(|n| !n.starts_with('.') && !n.contains('/'))
            .filter(|n| {
                with_snapshots.contains(*n)
                    || attached.get(&self.disk_file(n)).is_none_or(|s| *s == 0)
            })
            .collect();
        let mut infos = self.infos(&needed);
        for (rel, (is_dir, _)) in &listing.entries {
            let mut parts = rel.splitn(3, '/');
            let (top, name, rest) = (parts.next().unwrap_or(""), parts.next(), parts.next());
            let owner = name
                .and_then(|n| listing.owners.get(&format!("{top}/{n}/owner.json")))
                .filter(|o| o.fleet == fleet);
            match (top, name, rest) {
                ("images" | "disks" | "trash", None, None) if *is_dir => {}
                // The lease is read below; it belongs to no fleet, nor do
                // leases being prepared.
                (LEASE, _, _) => {}
                (t, None, None) if t.starts_with(LEASE_STAGING) => {}
                (t, Some(_), _) if t.starts_with(LEASE_STAGING) => {}
                ("images", Some(f), None) => {
                    // `.tmp-*` files are transfers in progress, `.verified`
                    // files records: neither is an image. An image without
                    // an intact record is not trusted.
                    if f.starts_with('.') || f.ends_with(VERIFIED) {
                        continue;
                    }
                    if let Some((sha, _)) = f.split_once('.') {
                        match listing.images.get(rel.as_str()) {
                            Some(true) => state.images.insert(sha.to_owned()),
                            _ => state.changed_images.insert(sha.to_owned()),
                        };
                    }
                }
                ("disks", Some(n), None) if *is_dir => match owner {
                    Some(_) if n.starts_with(".new-") => {
                        state.incomplete.push(format!("disks/{n}"))
                    }
                    // A run died between its mkdir and writing owner.json:
                    // empty, so removing it cannot lose anything (and no
                    // live run is filling it: this host's lease is needed
                    // to make disks).
                    None if n.starts_with(".new-") && holds_nothing(&listing, rel) => {
                        state.incomplete.push(format!("disks/{n}"))
                    }
                    Some(o) if o.disk == crate::resources::seed::SEED_DISK => {
                        match listing.seeds.get(rel.as_str()) {
                            Some(summary) => {
                                let seed = OwnedSeed {
                                    owner: o.clone(),
                                    path: self.path(&layout::dir_seed_file_rel(n)),
                                    summary: summary.clone(),
                                };
                                state.seeds.insert(n.to_owned(), seed);
                            }
                            // Renamed into place only when complete: a seed
                            // without its record is not virtfleet's doing.
                            None => state.unmanaged_files.push(rel.clone()),
                        }
                    }
                    Some(o) => {
                        let info = infos.remove(n);
                        let disk = self.owned_disk(n, o, attached, with_snapshots, info)?;
                        state.disks.insert(n.to_owned(), disk);
                    }
                    None => state.unmanaged_files.push(rel.clone()),
                },
                // A purge that was interrupted: finish it while it is
                // still marked as this fleet's. Once its owner.json is gone
                // only an empty directory can be left (rm removes the files
                // before the directory), which `rmdir` removes safely.
                ("trash", Some(n), None) if *is_dir && n.starts_with(PURGING) => {
                    if owner.is_some() || holds_nothing(&listing, rel) {
                        state.incomplete.push(rel.clone());
                    } else {
                        state.unmanaged_files.push(rel.clone());
                    }
                }
                ("trash", Some(n), None) if *is_dir => match trash_entry(n, owner) {
                    Some(t) => {
                        state.trash.insert(n.to_owned(), t);
                    }
                    None => state.unmanaged_files.push(rel.clone()),
                },
                // Files inside disk and trash directories belong to their directory.
                ("disks" | "trash", Some(_), Some(_)) => {}
                _ => state.unmanaged_files.push(rel.clone()),
            }
        }
        if listing.entries.contains_key(LEASE) {
            state.lease = self.read_lease()?.map(Box::new);
        }
        state.storage_free_bytes = self.free_bytes();
        Ok(state)
    }

    /// Copies a verified image from the controller's cache to the host,
    /// re-hashes it there, and only then renames it into `images/`.
    /// Idempotent: an image already in place is left alone.
    fn ensure_image(
        &self,
        image: &BaseImage<'_>,
        progress: &dyn Progress,
    ) -> Result<(), StorageError> {
        let BaseImage {
            cached,
            sha256,
            format,
            ..
        } = *image;
        let dest = self.image_path(sha256, format);
        let record = format!("{dest}{VERIFIED}");
        if let Some(stat) = self.stat(&dest)?
            && self.t.run(&["cat", &record])?.stdout.trim() == stat
        {
            return Ok(());
        }
        self.t.run_ok(&["mkdir", "-p", &self.path("images")])?;
        let tmp = self.path(&format!("images/.tmp-{sha256}.{format}"));
        // A name left by a crash is removed, never written through (it may
        // be a hard link to the cache).
        self.t.run_ok(&["rm", "-f", "--", &tmp])?;
        if self.t.is_local() && share_local(self.t, cached, &tmp) {
            // Shared, not copied: still hashed here before it is trusted.
            verify_on_host(self.t, &tmp, sha256)?;
        } else {
            copy_verified(self.t, cached, &tmp, sha256, progress)?;
        }
        crate::fault::point("image-copied");
        // Base images are shared read-only by many overlays.
        self.t.run_ok(&["chmod", "0444", &tmp])?;
        // Replacing a changed image is a repair: overlays name it by path,
        // and the bytes that arrive are the pinned ones.
        // Already the same file (both links to the cache: a run died after
        // this rename, before the record), `mv` refuses; the bytes were just
        // verified, so only the second name goes.
        let inode = |s: Option<String>| s.and_then(|s| s.rsplit(' ').next().map(str::to_owned));
        if inode(self.stat(&dest)?)
            .is_some_and(|i| Some(i) == inode(self.stat(&tmp).ok().flatten()))
        {
            self.t.run_ok(&["rm", "-f", "--", &tmp])?;
        } else {
            self.t.run_ok(&["mv", "-f", &tmp, &dest])?;
        }
        crate::fault::point("image-unrecorded");
        // The record comes last: a crash before it leaves an image that is
        // not trusted, so it is copied again.
        let stat = self
            .stat(&dest)?
            .ok_or_else(|| StorageError::DeviceMissing { path: dest.clone() })?;
        self.t.write_file(&record, format!("{stat}\n").as_bytes())?;
        Ok(())
    }

    /// Creates disk `volume` (overlay on `base` when given, else blank) of
    /// `size_gib`, atomically. Idempotent: an existing disk is left alone.
    fn create_disk(&self, disk: &NewDisk<'_>) -> Result<(), StorageError> {
        let volume = disk.volume;
        let final_dir = self.path(&layout::disk_rel(volume));
        if self.t.run(&["test", "-d", &final_dir])?.success {
            return Ok(());
        }
        let tmp_dir = self.path(&format!("disks/.new-{volume}"));
        self.private_dir(&self.path("disks"))?;
        // A plain mkdir: if the directory exists, another run is filling it
        // (or a crashed one left it, which the next plan removes when it is
        // this fleet's). Never delete or reuse what this call did not make.
        let mut made = self.t.run(&["mkdir", "-m", "0711", &tmp_dir])?;
        // An *empty* one is what a run killed between this mkdir and the
        // owner record leaves (likely when several disks are made at once):
        // it holds nothing, so `rmdir` (which removes only an empty
        // directory) loses nothing, and this run holds the host's lease, so
        // no other run is about to fill it.
        if !made.success && self.t.run(&["rmdir", "--", &tmp_dir])?.success {
            made = self.t.run(&["mkdir", "-m", "0711", &tmp_dir])?;
        }
        if !made.success {
            return Err(StorageError::Exists(tmp_dir));
        }
        crate::fault::point("disk-dir-made");
        let owner_json = serde_json::to_string(disk.owner).expect("owner serialises");
        let owner_path = format!("{tmp_dir}/owner.json");
        self.t
            .write_file(&owner_path, format!("{owner_json}\n").as_bytes())?;
        let file = format!("{tmp_dir}/disk.qcow2");
        let size = format!("{}G", disk.size_gib);
        let mut argv = vec!["qemu-img", "create", "-q", "-f", "qcow2"];
        let backing;
        if let Some((sha, fmt)) = disk.base {
            backing = self.image_path(sha, fmt);
            argv.extend(["-F", fmt, "-b", &backing]);
        }
        argv.extend([file.as_str(), size.as_str()]);
        self.t.run_ok(&argv)?;
        crate::fault::point("disk-file-made");
        // Guest data: readable by nobody but its owner (libvirt gives the
        // file to QEMU's user while the guest runs).
        self.t.run_ok(&["chmod", "0600", &file])?;
        // Only a complete directory becomes a disk.
        if !self.t.run(&["test", "-f", &owner_path])?.success
            || !self.t.run(&["test", "-f", &file])?.success
        {
            return Err(StorageError::DeviceMissing { path: file });
        }
        self.t.run_ok(&["mv", "-T", &tmp_dir, &final_dir])?;
        Ok(())
    }

    fn write_seed(&self, seed: &super::storage::NewSeed<'_>) -> Result<(), StorageError> {
        seedstore::dir_write(self.t, &self.root, seed)
    }

    /// A running guest's qcow2 is grown by libvirt (QEMU owns the file), so
    /// only a stopped machine's disk is resized here.
    fn grow(&self, volume: &str, size_gib: u64, online: bool) -> Result<(), StorageError> {
        if !online {
            self.t.run_ok(&[
                "qemu-img",
                "resize",
                "-q",
                &self.disk_file(volume),
                &format!("{size_gib}G"),
            ])?;
        }
        Ok(())
    }

    /// Idempotent: a disk no longer in place was already trashed.
    fn trash(&self, volume: &str, now: u64) -> Result<(), StorageError> {
        if !self
            .t
            .run(&["test", "-d", &self.path(&layout::disk_rel(volume))])?
            .success
        {
            return Ok(());
        }
        self.private_dir(&self.path("trash"))?;
        self.t.run_ok(&[
            "mv",
            "-T",
            &self.path(&layout::disk_rel(volume)),
            &self.path(&layout::dir_trash_rel(volume, now)),
        ])?;
        Ok(())
    }

    fn restore(&self, entry: &str, volume: &str) -> Result<(), StorageError> {
        let dest = self.path(&layout::disk_rel(volume));
        if self.t.run(&["test", "-e", &dest])?.success {
            return Err(StorageError::Exists(dest));
        }
        self.t.run_ok(&[
            "mv",
            "-T",
            &self.path(&layout::trash_entry_rel(entry)),
            &dest,
        ])?;
        Ok(())
    }

    /// Renamed out of the trash first (one atomic step), then deleted: a
    /// crash mid-delete leaves `trash/.purge-<entry>`, still recognisably
    /// this fleet's while its `owner.json` exists, which the next plan
    /// removes; never a half-deleted entry that looks unmanaged.
    fn purge(&self, entry: &str) -> Result<(), StorageError> {
        let rel = layout::trash_entry_rel(entry);
        let doomed = format!("trash/{PURGING}{entry}");
        if self.t.run(&["test", "-d", &self.path(&rel)])?.success {
            self.t
                .run_ok(&["mv", "-T", &self.path(&rel), &self.path(&doomed)])?;
            crate::fault::point("purge-renamed");
        } else if !self.t.run(&["test", "-d", &self.path(&doomed)])?.success {
            // Already gone: purged by an earlier attempt.
            return Ok(());
        }
        self.remove_dir(&doomed)
    }

    fn remove_incomplete(&self, path: &str) -> Result<(), StorageError> {
        self.remove_dir(path)
    }

    fn snapshot(&self, volume: &str, name: &str) -> Result<(), StorageError> {
        let file = self.disk_file(volume);
        if self.snapshot_names(volume)?.iter().any(|n| n == name) {
            return Ok(());
        }
        self.t
            .run_ok(&["qemu-img", "snapshot", "-c", name, &file])?;
        Ok(())
    }

    fn destroy_snapshot(&self, volume: &str, name: &str) -> Result<(), StorageError> {
        if self.snapshot_names(volume)?.iter().any(|n| n == name) {
            self.t
                .run_ok(&["qemu-img", "snapshot", "-d", name, &self.disk_file(volume)])?;
        }
        Ok(())
    }

    fn rollback(&self, volume: &str, name: &str) -> Result<(), StorageError> {
        self.t
            .run_ok(&["qemu-img", "snapshot", "-a", name, &self.disk_file(volume)])?;
        Ok(())
    }

    fn snapshots_via_domain(&self) -> bool {
        true
    }

    fn read_lease(&self) -> Result<Option<Lease>, StorageError> {
        let dir = self.path(LEASE);
        let holder = self.t.run(&["cat", &format!("{dir}/holder.json")])?;
        if holder.success {
            return Ok(serde_json::from_str(&holder.stdout)
                .ok()
                .or(Some(Lease::unknown(0))));
        }
        // A lease directory whose holder is not written yet (or was lost in a
        // crash): held, by someone unknown, for a minute from its creation.
        Ok(self
            .stat(&dir)?
            .map(|s| Lease::unknown(mtime_of(&s).saturating_add(60))))
    }

    /// The lease directory appears complete, holder included: it is
    /// filled under a name of this run's own, then renamed into place.
    /// rename(2) onto an existing, non-empty `lease/` fails, so of two runs
    /// exactly one gets it, and a crash at any point leaves no lease
    /// without its holder (only, at worst, this run's own staging
    /// directory, which the next run to take the lease removes).
    fn create_lease(&self, lease: &Lease) -> Result<(), StorageError> {
        self.t.run_ok(&["mkdir", "-p", &self.root])?;
        let dir = self.path(LEASE);
        let staging = self.path(&format!("{LEASE_STAGING}{}", safe_name(&lease.id)));
        self.t.run_ok(&["mkdir", "-p", "-m", "0700", &staging])?;
        let json = serde_json::to_string(lease).expect("lease serialises");
        self.t.write_file(
            &format!("{staging}/holder.json"),
            format!("{json}\n").as_bytes(),
        )?;
        crate::fault::point("lease-made");
        if !self.t.run(&["mv", "-T", &staging, &dir])?.success {
            let _ = self.t.run(&["rm", "-rf", "--", &staging]);
            return Err(StorageError::Exists(dir));
        }
        // This run holds the host: any other staging directory is a dead
        // run's (a live one's rename will fail and it reports the lease).
        self.t.run_ok(&[
            "find",
            &self.root,
            "-mindepth",
            "1",
            "-maxdepth",
            "1",
            "-name",
            &format!("{LEASE_STAGING}*"),
            "-exec",
            "rm",
            "-rf",
            "--",
            "{}",
            "+",
        ])?;
        Ok(())
    }

    fn write_lease(&self, lease: &Lease) -> Result<(), StorageError> {
        let json = serde_json::to_string(lease).expect("lease serialises");
        let path = format!("{}/holder.json", self.path(LEASE));
        self.t.write_file(&path, format!("{json}\n").as_bytes())?;
        Ok(())
    }

    fn remove_lease(&self, id: &str) -> Result<(), StorageError> {
        match self.read_lease()? {
            Some(l) if l.id == id => {
                self.t.run_ok(&["rm", "-rf", "--", &self.path(LEASE)])?;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The marker is rewritten whole (atomically, 0600).
    fn set_protect(&self, volume: &str, protect: bool) -> Result<(), StorageError> {
        let path = self.path(&format!("{}/owner.json", layout::disk_rel(volume)));
        let text = self.t.run_ok(&["cat", &path])?;
        let mut owner: DiskOwner =
            serde_json::from_str(&text).map_err(|e| StorageError::Parse(e.to_string()))?;
        owner.protect = protect;
        let json = serde_json::to_string(&owner).expect("owner serialises");
        self.t.write_file(&path, format!("{json}\n").as_bytes())?;
        Ok(())
    }

    fn grow_told(&self, _volume: &str) -> Result<(), StorageError> {
        Ok(())
    }

    fn ownership(&self, rel: &str) -> Result<Ownership, StorageError> {
        let dir = self.path(rel);
        if !self.t.run(&["test", "-e", &dir])?.success {
            return Ok(Ownership::Absent);
        }
        let marker = self.t.run(&["cat", &format!("{dir}/owner.json")])?;
        if marker.success {
            return Ok(serde_json::from_str(&marker.stdout)
                .map(Ownership::Fleet)
                .unwrap_or(Ownership::Unmarked));
        }
        // Anything but the temp file of an interrupted write counts.
        let inside = self.t.run_ok(&[
            "find",
            &dir,
            "-mindepth",
            "1",
            "-not",
            "-name",
            &format!("{WRITE_TEMP}*"),
            "-print",
            "-quit",
        ])?;
        Ok(if inside.trim().is_empty() {
            Ownership::Empty
        } else {
            Ownership::Unmarked
        })
    }

    fn snapshots_after(&self, _volume: &str, _name: &str) -> Result<Vec<String>, StorageError> {
        Ok(Vec::new())
    }

    fn snapshot_list(&self, volume: &str) -> Result<Vec<String>, StorageError> {
        self.snapshot_names(volume)
    }
}

impl DirStorage<'_> {
    /// Internal snapshot names of a disk (read with `-U`: safe while in use).
    pub fn snapshot_names(&self, volume: &str) -> Result<Vec<String>, StorageError> {
        Ok(snapshot_names_of(&self.info(volume)?))
    }
}

/// The virtual size in `qemu-img info` JSON.
pub(super) fn virtual_size_of(info: &serde_json::Value) -> Result<u64, StorageError> {
    info["virtual-size"]
        .as_u64()
        .ok_or_else(|| StorageError::Parse("qemu-img info has no virtual-size".into()))
}

/// The internal snapshot names in `qemu-img info` JSON, sorted.
fn snapshot_names_of(info: &serde_json::Value) -> Vec<String> {
    let mut names: Vec<String> = info["snapshots"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::transport::{ExecResult, Local, Output};

    /// This machine's commands, but reported as a remote host: the storage
    /// then takes the path it takes over SSH (one batched command).
    struct AsRemote(Local);

    impl Transport for AsRemote {
        fn run(&self, argv: &[&str]) -> Result<Output, ExecError> {
            self.0.run(argv)
        }
        fn write_file(&self, path: &str, bytes: &[u8]) -> Result<(), ExecError> {
            self.0.write_file(path, bytes)
        }
        fn put_file(
            &self,
            local: &std::path::Path,
            remote: &str,
            progress: &dyn Progress,
        ) -> ExecResult<()> {
            self.0.put_file(local, remote, progress)
        }
    }

    fn qemu_img(args: &[&str]) {
        let out = std::process::Command::new("qemu-img")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Headers read in process (this machine) and one batched `qemu-img
    /// info` (a remote host) observe the same sizes and snapshots; a disk
    /// whose image is unreadable is an error either way, never size 0.
    #[test]
    fn local_and_remote_reads_of_disks_agree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        for (vol, size, snaps) in [
            ("m-root", "1G", &["vf-init", "x"][..]),
            ("m-data", "3G", &[]),
        ] {
            let d = dir.path().join("disks").join(vol);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("owner.json"),
                format!(r#"{{"fleet":"f","machine":"m","disk":"{vol}"}}"#),
            )
            .unwrap();
            let file = d.join("disk.qcow2");
            let file = file.to_str().unwrap();
            qemu_img(&["create", "-q", "-f", "qcow2", file, size]);
            for s in snaps {
                qemu_img(&["snapshot", "-c", s, file]);
            }
        }
        let wanted: BTreeSet<String> = ["m-root".to_owned(), "m-data".to_owned()].into();
        let local = Local;
        let remote = AsRemote(Local);
        let mut a = DirStorage::new(root, &local)
            .observe("f", &BTreeMap::new(), &wanted)
            .unwrap();
        let mut b = DirStorage::new(root, &remote)
            .observe("f", &BTreeMap::new(), &wanted)
            .unwrap();
        // Free space is read by both, but other processes write to the same
        // file system between the two reads.
        assert!(a.storage_free_bytes.is_some() && b.storage_free_bytes.is_some());
        (a.storage_free_bytes, b.storage_free_bytes) = (None, None);
        assert_eq!(a, b);
        assert_eq!(a.disks["m-root"].size_bytes, 1 << 30);
        assert_eq!(a.disks["m-root"].snapshots, ["vf-init", "x"]);
        assert_eq!(a.disks["m-data"].size_bytes, 3 << 30);
        assert!(a.disks["m-data"].snapshots.is_empty());

        std::fs::write(dir.path().join("disks/m-data/disk.qcow2"), b"garbage").unwrap();
        assert!(
            DirStorage::new(root, &local)
                .observe("f", &BTreeMap::new(), &wanted)
                .is_err()
        );
        assert!(
            DirStorage::new(root, &remote)
                .observe("f", &BTreeMap::new(), &wanted)
                .is_err()
        );
    }
}
