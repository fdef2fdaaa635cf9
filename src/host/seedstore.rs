//! Cloud-init seeds on a host's storage, for both backends.
//!
//! A seed is stored like a disk, under the same ownership rules, in its own
//! volume `<machine>.cidata` (see [`crate::resources::seed::seed_volume`]):
//!
//! - Dir: `disks/<machine>.cidata/` holding `seed.img` (0600), `owner.json`
//!   and `seed.json` (the seed's summary: hashes and counts, never the
//!   user-data text). Built in `disks/.new-<volume>/` and renamed into
//!   place, like a disk, so trash and restore move it like a disk.
//! - ZFS: a small zvol `disks/<machine>.cidata` with the disk ownership
//!   properties, written through its device, made read-only, and marked
//!   complete by `virtfleet:seed` (the summary) set last.
//!
//! The image goes to the host from a controller temp file (0600, removed
//! when the write returns): user-data may hold secrets.

use super::storage::{NewSeed, StorageError};
use super::transport::Transport;
use crate::progress::NoProgress;
use crate::resources::layout;
use std::io::Write as _;

/// The ZFS property that marks a seed zvol complete and records its summary.
pub const ZFS_SEED_PROP: &str = "virtfleet:seed";

/// Name of the summary file in a Dir seed's directory.
pub const DIR_SUMMARY: &str = "seed.json";

/// The image in a controller temp file, private to this user (tempfile
/// creates it 0600) and deleted on drop.
fn temp_image(image: &[u8]) -> Result<tempfile::NamedTempFile, StorageError> {
    let io = |source| {
        StorageError::Exec(super::transport::ExecError::Io {
            path: "seed temp file".into(),
            source,
        })
    };
    let mut f = tempfile::Builder::new()
        .prefix("virtfleet-seed-")
        .tempfile()
        .map_err(io)?;
    f.write_all(image).map_err(io)?;
    f.flush().map_err(io)?;
    Ok(f)
}

/// Dir hosts: writes the seed atomically under `root`. Idempotent: a seed
/// in place is left alone (a replacement trashes the old one first).
pub fn dir_write(t: &dyn Transport, root: &str, seed: &NewSeed<'_>) -> Result<(), StorageError> {
    let root = root.trim_end_matches('/');
    let path = |rel: &str| format!("{root}/{rel}");
    let final_dir = path(&layout::disk_rel(seed.volume));
    if t.run(&["test", "-d", &final_dir])?.success {
        return Ok(());
    }
    let disks = path("disks");
    t.run_ok(&["mkdir", "-p", &disks])?;
    t.run_ok(&["chmod", "0711", &disks])?;
    let tmp_dir = path(&format!("disks/.new-{}", seed.volume));
    // A plain mkdir, as for disks: an existing one is another run's (or a
    // crashed run's, removed by the next plan), never reused.
    if !t.run(&["mkdir", "-m", "0711", &tmp_dir])?.success {
        return Err(StorageError::Exists(tmp_dir));
    }
    let owner = serde_json::to_string(seed.owner).expect("owner serialises");
    t.write_file(
        &format!("{tmp_dir}/owner.json"),
        format!("{owner}\n").as_bytes(),
    )?;
    let file = format!("{tmp_dir}/seed.img");
    let local = temp_image(seed.image)?;
    // Created 0600 before a byte of it is written.
    t.run_ok(&["install", "-m", "0600", "/dev/null", &file])?;
    t.put_file(local.path(), &file, &NoProgress)?;
    t.run_ok(&["chmod", "0600", &file])?;
    let summary = serde_json::to_string(seed.summary).expect("summary serialises");
    t.write_file(
        &format!("{tmp_dir}/{DIR_SUMMARY}"),
        format!("{summary}\n").as_bytes(),
    )?;
    let got = t.run_ok(&["sha256sum", &file])?;
    if got.split_whitespace().next() != Some(seed.summary.sha256.as_str()) {
        return Err(StorageError::ImageHashMismatch {
            path: file,
            expected: seed.summary.sha256.clone(),
            actual: got.split_whitespace().next().unwrap_or("").into(),
        });
    }
    t.run_ok(&["mv", "-T", &tmp_dir, &final_dir])?;
    Ok(())
}

/// ZFS hosts: creates the seed zvol `ds` (owned, sized to the image),
/// writes the image through `dev`, makes it read-only and marks it
/// complete. Idempotent: a complete seed is left alone; a half-made one
/// is observed as incomplete and removed by the next plan.
pub fn zfs_write(
    t: &dyn Transport,
    ds: &str,
    owner_props: Vec<String>,
    seed: &NewSeed<'_>,
) -> Result<(), StorageError> {
    if t.run(&["zfs", "list", "-H", "-o", "name", ds])?.success {
        return Ok(());
    }
    let size = format!("{}", seed.image.len().div_ceil(1 << 20) * (1 << 20));
    let mut argv: Vec<String> = ["zfs", "create", "-V", &size, "-o", "volmode=dev"]
        .map(String::from)
        .into();
    argv.extend(owner_props);
    argv.push(ds.into());
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    t.run_ok(&argv)?;
    let dev = format!("/dev/zvol/{ds}");
    for _ in 0..100 {
        let _ = t.run(&["udevadm", "settle", "--timeout=5"]);
        if t.run(&["test", "-e", &dev])?.success {
            break;
        }
    }
    let local = temp_image(seed.image)?;
    t.put_file(local.path(), &dev, &NoProgress)?;
    let len = seed.image.len().to_string();
    let got = t.run_ok(&[
        "sh",
        "-c",
        "head -c \"$1\" \"$2\" | sha256sum",
        "sh",
        &len,
        &dev,
    ])?;
    if got.split_whitespace().next() != Some(seed.summary.sha256.as_str()) {
        return Err(StorageError::ImageHashMismatch {
            path: dev,
            expected: seed.summary.sha256.clone(),
            actual: got.split_whitespace().next().unwrap_or("").into(),
        });
    }
    t.run_ok(&["zfs", "set", "readonly=on", ds])?;
    let summary = serde_json::to_string(seed.summary).expect("summary serialises");
    t.run_ok(&["zfs", "set", &format!("{ZFS_SEED_PROP}={summary}"), ds])?;
    Ok(())
}
