//! Disks between the two backends' forms, for a move between a Dir and a
//! ZFS host: a qcow2 overlay with internal snapshots on one side, a zvol
//! (a clone of the base) with ZFS snapshots on the other.
//!
//! Everything here runs `qemu-img` on one host, on its own files and
//! devices; the bytes that cross between hosts are a qcow2 file holding only
//! what differs from the base (see `ZfsStorage::receive_converted` and
//! `ZfsStorage::export_qcow2`). A snapshot chain is carried state by state:
//! the target is made to read like each snapshot in turn ([`sync`]), and
//! snapshotted under the same name, so the names (which carry the
//! retention: `plan::snapshots`) survive the conversion.

use super::storage::StorageError;
use super::transport::Transport;

/// A disk image on a host, as `qemu-img` opens it.
#[derive(Debug, Clone, Copy)]
pub struct Image<'a> {
    /// Its path (a file or a block device).
    pub path: &'a str,
    /// `qcow2` or `raw`.
    pub format: &'a str,
}

/// Makes `target` read exactly like `src`, writing only the clusters where
/// the two differ, then checks the whole of both with `qemu-img compare`.
///
/// How: an empty overlay at `scratch` over `src` is rebased (the safe,
/// comparing kind) onto `target`, which copies into it every cluster where
/// `src` and `target` differ; committing it writes those into `target`.
/// Reading both sides makes it right whatever `target` held before (the
/// base, or an earlier snapshot's state with clusters that a rollback since
/// left unallocated in `src`), and a target cloned from the same base keeps
/// sharing what did not change.
pub fn sync(
    t: &dyn Transport,
    src: Image<'_>,
    target: Image<'_>,
    scratch: &str,
) -> Result<(), StorageError> {
    let _ = t.run(&["rm", "-f", "--", scratch]);
    t.run_ok(&[
        "qemu-img", "create", "-q", "-f", "qcow2", "-F", src.format, "-b", src.path, scratch,
    ])?;
    t.run_ok(&[
        "qemu-img",
        "rebase",
        "-q",
        "-f",
        "qcow2",
        "-F",
        target.format,
        "-b",
        target.path,
        scratch,
    ])?;
    t.run_ok(&["qemu-img", "commit", "-q", "-f", "qcow2", scratch])?;
    t.run_ok(&["rm", "-f", "--", scratch])?;
    // Exit 1 (with the first differing offset) fails the step: nothing is
    // taken in from a copy that does not read like its source.
    t.run_ok(&[
        "qemu-img",
        "compare",
        "-q",
        "-f",
        src.format,
        "-F",
        target.format,
        src.path,
        target.path,
    ])?;
    Ok(())
}

/// Makes `target` read exactly like qcow2 `file`, when `target` reads like
/// the file's own backing now (`backing`; zeros when it has none): a fresh
/// clone of the base, or a blank zvol. Then no comparison is needed to find
/// what differs, which is exactly the file's allocated clusters: they are
/// committed into `target` (the file re-pointed at it for that, and back
/// after), and the result checked with `qemu-img compare` as in [`sync`].
/// A disk without snapshots costs one write of what changed and one read
/// of both, not the three reads of [`sync`].
pub fn commit_onto(
    t: &dyn Transport,
    file: &str,
    backing: Option<Image<'_>>,
    target: Image<'_>,
) -> Result<(), StorageError> {
    let rebase = |b: Option<Image<'_>>| -> Result<(), StorageError> {
        let mut argv = vec!["qemu-img", "rebase", "-u", "-f", "qcow2"];
        match b {
            Some(b) => argv.extend(["-F", b.format, "-b", b.path]),
            None => argv.extend(["-b", ""]),
        }
        argv.push(file);
        t.run_ok(&argv)?;
        Ok(())
    };
    rebase(Some(target))?;
    t.run_ok(&["qemu-img", "commit", "-q", "-d", "-f", "qcow2", file])?;
    rebase(backing)?;
    t.run_ok(&[
        "qemu-img",
        "compare",
        "-q",
        "-f",
        "qcow2",
        "-F",
        target.format,
        file,
        target.path,
    ])?;
    Ok(())
}

/// What a conversion needs to know of a qcow2 file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Info {
    /// Its virtual size in bytes.
    pub virtual_size: u64,
    /// Its internal snapshot names, oldest first (by id, the order they
    /// were taken in; not by name, as a Dir disk's observation lists them).
    pub snapshots: Vec<String>,
}

/// `qemu-img info` of qcow2 `file`, read once.
pub fn qcow2_info(t: &dyn Transport, file: &str) -> Result<Qcow2Info, StorageError> {
    let info = t.run_ok(&["qemu-img", "info", "--output=json", "-f", "qcow2", file])?;
    let v: serde_json::Value =
        serde_json::from_str(&info).map_err(|e| StorageError::Parse(e.to_string()))?;
    Ok(Qcow2Info {
        virtual_size: super::dir::virtual_size_of(&v)?,
        snapshots: snapshots_of(&v),
    })
}

fn snapshots_of(info: &serde_json::Value) -> Vec<String> {
    let mut snaps: Vec<(u64, String)> = info["snapshots"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|s| {
            let id = s["id"].as_str()?.parse().ok()?;
            Some((id, s["name"].as_str()?.to_owned()))
        })
        .collect();
    snaps.sort();
    snaps.into_iter().map(|(_, n)| n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::transport::Local;

    #[test]
    fn snapshots_come_oldest_first_by_id_not_by_name() {
        let info = serde_json::json!({"virtual-size": 1, "snapshots": [
            {"id": "10", "name": "a-late"}, {"id": "2", "name": "z-early"}]});
        assert_eq!(snapshots_of(&info), ["z-early", "a-late"]);
        assert!(snapshots_of(&serde_json::json!({"virtual-size": 1})).is_empty());
    }

    fn qemu(args: &[&str]) {
        let out = std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .expect("qemu-img and qemu-io are installed");
        assert!(out.status.success(), "{args:?}: {out:?}");
    }

    fn reads(path: &str, format: &str, offset: &str, pattern: u8) -> bool {
        let cmd = format!("read -P {pattern} {offset} 64k");
        let out = std::process::Command::new("qemu-io")
            .args(["-f", format, "-c", &cmd, path])
            .output()
            .unwrap();
        out.status.success()
            && !String::from_utf8_lossy(&out.stdout).contains("Pattern verification failed")
    }

    /// Real qemu-img: a snapshot chain carried state by state into a raw
    /// target that starts as the base (what a zvol clone is): the first by
    /// [`commit_onto`], the next by [`sync`], including a
    /// rollback between two snapshots: the state after it no longer holds
    /// a cluster the earlier snapshot wrote, which must read as the base
    /// again (a plain commit of each state would leave the earlier data).
    #[test]
    fn sync_carries_each_state_including_a_rollback_between_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
        let (base, ov, target) = (p("base.raw"), p("ov.qcow2"), p("target.raw"));
        qemu(&["qemu-img", "create", "-q", "-f", "raw", &base, "16M"]);
        qemu(&["qemu-io", "-f", "raw", "-c", "write -P 17 0 16M", &base]);
        qemu(&[
            "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", &base, &ov, "16M",
        ]);
        qemu(&["qemu-img", "snapshot", "-c", "init", &ov]);
        qemu(&["qemu-io", "-f", "qcow2", "-c", "write -P 34 1M 1M", &ov]);
        qemu(&["qemu-img", "snapshot", "-c", "one", &ov]);
        qemu(&["qemu-img", "snapshot", "-a", "init", &ov]);
        qemu(&["qemu-io", "-f", "qcow2", "-c", "write -P 51 4M 64k", &ov]);
        let info = qcow2_info(&Local, &ov).unwrap();
        assert_eq!(info.virtual_size, 16 << 20);
        assert_eq!(info.snapshots, ["init", "one"]);
        std::fs::copy(&base, &target).unwrap();
        let scratch = p("scratch.qcow2");
        let (src, tgt) = (
            Image {
                path: &ov,
                format: "qcow2",
            },
            Image {
                path: &target,
                format: "raw",
            },
        );
        qemu(&["qemu-img", "snapshot", "-c", "now", &ov]);
        qemu(&["qemu-img", "snapshot", "-a", "one", &ov]);
        let backing = Image {
            path: &base,
            format: "raw",
        };
        commit_onto(&Local, &ov, Some(backing), tgt).unwrap();
        assert!(reads(&target, "raw", "1M", 34) && reads(&target, "raw", "4M", 17));
        let info = std::process::Command::new("qemu-img")
            .args(["info", "--output=json", &ov])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&info.stdout)
                .contains(&format!("\"backing-filename\": \"{base}\"")),
            "the file points at its own backing again"
        );
        qemu(&["qemu-img", "snapshot", "-a", "now", &ov]);
        sync(&Local, src, tgt, &scratch).unwrap();
        assert!(reads(&target, "raw", "4M", 51));
        assert!(
            reads(&target, "raw", "1M", 17),
            "rolled back: reads as the base"
        );
        assert!(!std::path::Path::new(&scratch).exists());
    }
}
