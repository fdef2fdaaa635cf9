//! A qcow2 file's virtual size and internal snapshot names, read from its
//! header and snapshot table (QEMU's `docs/interop/qcow2.txt` layout).
//!
//! Observation needs exactly these two facts for every disk of the fleet;
//! `qemu-img info` costs a process per disk (about as long as listing and
//! reading every domain of a host), while these are a few small reads. The
//! reader only reads, never locks and never writes, so it is as safe on a
//! disk a guest is using as `qemu-img info -U`. Anything unexpected is an
//! error and the caller falls back to `qemu-img info`.

use std::io::{Read, Seek, SeekFrom};

/// What observation reads from a qcow2 file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// The disk's size as the guest sees it, in bytes.
    pub virtual_size: u64,
    /// Internal snapshot names, sorted.
    pub snapshots: Vec<String>,
}

/// The qcow2 magic, `QFI\xfb`.
const MAGIC: [u8; 4] = *b"QFI\xfb";
/// qcow2 allows at most this many snapshots.
const MAX_SNAPSHOTS: u32 = 65_536;
/// Fixed part of a snapshot table entry.
const ENTRY_FIXED: usize = 40;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads the header and the snapshot table of a qcow2 image.
pub fn read(f: &mut (impl Read + Seek)) -> Result<Info, String> {
    let mut header = [0u8; 72];
    f.read_exact(&mut header)
        .map_err(|e| format!("qcow2 header: {e}"))?;
    if header[..4] != MAGIC {
        return Err("not a qcow2 file".into());
    }
    let version = be32(&header, 4);
    if !(2..=3).contains(&version) {
        return Err(format!("qcow2 version {version} is not known"));
    }
    let virtual_size = be64(&header, 24);
    let count = be32(&header, 60);
    let offset = be64(&header, 64);
    if count > MAX_SNAPSHOTS {
        return Err(format!("{count} snapshots is more than qcow2 allows"));
    }
    let mut snapshots = Vec::with_capacity(count as usize);
    if count > 0 {
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| format!("qcow2 snapshot table: {e}"))?;
        for _ in 0..count {
            let mut fixed = [0u8; ENTRY_FIXED];
            f.read_exact(&mut fixed)
                .map_err(|e| format!("qcow2 snapshot entry: {e}"))?;
            let id_len = usize::from(u16::from_be_bytes([fixed[12], fixed[13]]));
            let name_len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
            let extra = be32(&fixed, 36) as usize;
            // Extra data, the unique id and the name follow the fixed part;
            // the entry is padded to a multiple of 8 bytes, except that the
            // last entry's padding may be missing at the end of the file:
            // it is skipped by seeking, not read.
            let len = ENTRY_FIXED + extra + id_len + name_len;
            let mut buf = vec![0u8; len - ENTRY_FIXED];
            f.read_exact(&mut buf)
                .map_err(|e| format!("qcow2 snapshot entry: {e}"))?;
            let name = &buf[extra + id_len..];
            snapshots.push(String::from_utf8_lossy(name).into_owned());
            let pad = (len.next_multiple_of(8) - len) as i64;
            f.seek(SeekFrom::Current(pad))
                .map_err(|e| format!("qcow2 snapshot table: {e}"))?;
        }
    }
    snapshots.sort();
    Ok(Info {
        virtual_size,
        snapshots,
    })
}

/// Reads the qcow2 file at `path` on this machine.
pub fn read_file(path: &str) -> Result<Info, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    read(&mut std::io::BufReader::new(f)).map_err(|e| format!("{path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn qemu_img(args: &[&str]) {
        let out = Command::new("qemu-img")
            .args(args)
            .output()
            .expect("qemu-img runs");
        assert!(
            out.status.success(),
            "qemu-img {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The reader agrees with `qemu-img info` on a real image with no, one
    /// and several snapshots (names of odd lengths test the padding).
    #[test]
    fn agrees_with_qemu_img() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("d.qcow2");
        let path = file.to_str().unwrap();
        qemu_img(&["create", "-q", "-f", "qcow2", path, "3G"]);
        assert_eq!(
            read_file(path).unwrap(),
            Info {
                virtual_size: 3 << 30,
                snapshots: vec![]
            }
        );
        let names = [
            "vf-init",
            "a",
            "vf-hourly-20261123T2200",
            "zz-odd-length-name",
        ];
        for n in names {
            qemu_img(&["snapshot", "-c", n, path]);
        }
        qemu_img(&["resize", "-q", path, "5G"]);
        let info = read_file(path).unwrap();
        let out = Command::new("qemu-img")
            .args(["info", "-f", "qcow2", "--output=json", path])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut want: Vec<String> = v["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect();
        want.sort();
        assert_eq!(info.snapshots, want);
        assert_eq!(info.snapshots.len(), names.len());
        assert_eq!(info.virtual_size, v["virtual-size"].as_u64().unwrap());
        assert_eq!(info.virtual_size, 5 << 30);
    }

    #[test]
    fn refuses_what_is_not_qcow2() {
        let mut raw = std::io::Cursor::new(vec![0u8; 4096]);
        assert!(read(&mut raw).unwrap_err().contains("not a qcow2"));
        let mut short = std::io::Cursor::new(b"QFI\xfb".to_vec());
        assert!(read(&mut short).is_err());
    }
}
