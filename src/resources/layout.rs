//! Where a disk lives on a host: the one definition of the storage layout.
//!
//! The planner needs a disk's path to write it into the domain XML, the
//! storage backends need the same names to create, trash and restore it,
//! and observation needs them to recognise what it finds. All of them ask
//! here, so the layout cannot drift between them. Volume names themselves
//! (`<machine>-<disk>`) are part of the fleet model
//! ([`crate::fleet::Machine::volume_name`]), because validation must detect
//! collisions between them before anything runs.
//!
//! ```text
//! Dir:  <path>/images/<sha256>.<raw|qcow2>   <path>/disks/<vol>/disk.qcow2   <path>/trash/<vol>@<unix>/
//!       <path>/disks/<machine>.cidata/seed.img  (+ owner.json, seed.sha256): a cloud-init seed
//! Zfs:  <parent>/images/<sha256[..16]>       <parent>/disks/<vol>            <parent>/trash/<vol>-<unix>
//!       <parent>/disks/<machine>.cidata: a cloud-init seed zvol
//! ```

use crate::fleet::Storage;

/// A disk's place relative to the storage root: a directory on Dir hosts,
/// a zvol dataset on ZFS hosts.
pub fn disk_rel(volume: &str) -> String {
    format!("disks/{volume}")
}

/// Dir hosts: the trash entry a disk becomes when it is destroyed at `at`
/// (unix seconds).
pub fn dir_trash_rel(volume: &str, at: u64) -> String {
    format!("trash/{volume}@{at}")
}

/// ZFS hosts: the trash dataset a disk becomes when destroyed at `at`
/// (`@` is reserved for snapshots in dataset names, hence `-`).
pub fn zfs_trash_rel(volume: &str, at: u64) -> String {
    format!("trash/{volume}-{at}")
}

/// A trash entry by its name, relative to the storage root.
pub fn trash_entry_rel(entry: &str) -> String {
    format!("trash/{entry}")
}

/// Dir hosts: the qcow2 file of a disk, relative to the storage path.
pub fn dir_disk_file_rel(volume: &str) -> String {
    format!("disks/{volume}/disk.qcow2")
}

/// Dir hosts: a verified base image, relative to the storage path.
pub fn dir_image_rel(sha256: &str, format: &str) -> String {
    format!("images/{sha256}.{format}")
}

/// ZFS hosts: a base image zvol, relative to the parent dataset. Named by
/// the first 16 hex digits of its sha256 (the full pin is a property).
/// A shorter input (never produced by a valid lock) is used whole rather
/// than panicking on a hand-edited plan.
pub fn zfs_image_rel(sha256: &str) -> String {
    format!("images/{}", sha256.get(..16).unwrap_or(sha256))
}

/// The absolute path a domain uses for `volume` on storage `storage`.
pub fn disk_path(storage: &Storage, volume: &str) -> String {
    match storage {
        Storage::Dir { path } => {
            format!(
                "{}/{}",
                path.trim_end_matches('/'),
                dir_disk_file_rel(volume)
            )
        }
        Storage::Zfs { parent } => format!("/dev/zvol/{parent}/{}", disk_rel(volume)),
    }
}

/// Dir hosts: the seed image in a seed's volume directory, relative to the
/// storage path (`disks/<machine>.cidata/seed.img`).
pub fn dir_seed_file_rel(volume: &str) -> String {
    format!("disks/{volume}/seed.img")
}

/// The absolute path a domain uses for the cloud-init seed `volume`: a raw
/// file on Dir hosts, a zvol on ZFS hosts.
pub fn seed_path(storage: &Storage, volume: &str) -> String {
    match storage {
        Storage::Dir { path } => {
            format!(
                "{}/{}",
                path.trim_end_matches('/'),
                dir_seed_file_rel(volume)
            )
        }
        Storage::Zfs { parent } => format!("/dev/zvol/{parent}/{}", disk_rel(volume)),
    }
}

/// The disk format the domain declares: qcow2 files, raw zvols.
pub fn disk_format(storage: &Storage) -> &'static str {
    match storage {
        Storage::Dir { .. } => "qcow2",
        Storage::Zfs { .. } => "raw",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_per_backend() {
        let dir = Storage::Dir {
            path: "/srv/vf/".into(),
        };
        let zfs = Storage::Zfs {
            parent: "tank/vms".into(),
        };
        assert_eq!(
            disk_path(&dir, "web-root"),
            "/srv/vf/disks/web-root/disk.qcow2"
        );
        assert_eq!(
            disk_path(&zfs, "web-root"),
            "/dev/zvol/tank/vms/disks/web-root"
        );
        assert_eq!(disk_format(&dir), "qcow2");
        assert_eq!(disk_format(&zfs), "raw");
        assert_eq!(dir_trash_rel("web-root", 17), "trash/web-root@17");
        assert_eq!(zfs_trash_rel("web-root", 17), "trash/web-root-17");
        assert_eq!(
            zfs_image_rel(&"ab".repeat(32)),
            format!("images/{}", "ab".repeat(8))
        );
        assert_eq!(zfs_image_rel("abc"), "images/abc");
    }
}
