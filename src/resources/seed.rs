//! The cloud-init NoCloud seed of a machine: its files and its vfat image.
//!
//! Pure and deterministic: the same `cloudInit` gives the same bytes, so a
//! seed is identified by its sha256, which goes into the domain's ownership
//! metadata and spec hash. The image is a FAT volume labelled `CIDATA`
//! (what cloud-init's NoCloud datasource looks for) written by `fatfs` with
//! a fixed volume id and the fixed 1980-01-01 timestamps of its default
//! time provider; no wall clock is read.
//!
//! user-data can hold passwords and tokens: nothing here logs it, and
//! [`SeedSummary`] (what plans show) carries only its hash and line count.

use crate::fleet::{CloudInit, Machine};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Cursor, Write as _};

/// The disk name seeds carry in their ownership marker.
pub const SEED_DISK: &str = "cidata";

/// The storage volume of a machine's seed: `<machine>.cidata`. A `.` never
/// occurs in a disk's volume name (`<machine>-<disk>`, names are
/// `[a-z0-9-]`), so a seed can never collide with a disk.
pub fn seed_volume(machine: &str) -> String {
    format!("{machine}.{SEED_DISK}")
}

/// The files of a NoCloud seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedFiles {
    /// `user-data`.
    pub user_data: String,
    /// `meta-data`.
    pub meta_data: String,
    /// `network-config`, when the fleet gives one.
    pub network_config: Option<String>,
    /// The instance-id written into meta-data.
    pub instance_id: String,
}

/// What a plan may show of a seed: no user-data text, unless asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeedSummary {
    /// sha256 of the whole image.
    pub sha256: String,
    /// The instance-id in meta-data.
    pub instance_id: String,
    /// The instance-id is derived from the content (changes with it).
    pub instance_id_derived: bool,
    /// The hostname cloud-init sets.
    pub hostname: String,
    /// The default user.
    pub user: String,
    /// Number of SSH keys.
    pub keys: usize,
    /// sha256 (first 12 hex digits) of the fleet's user-data (virtfleet's
    /// generated one when the fleet gives none).
    pub user_data_sha256: String,
    /// Lines of that user-data.
    pub user_data_lines: usize,
    /// user-data is virtfleet's generated one (no user-supplied text).
    pub user_data_generated: bool,
    /// Lines of network-config, when there is one.
    pub network_config_lines: Option<usize>,
}

/// A machine's seed: its files, image and hash.
#[derive(Debug, Clone)]
pub struct Seed {
    /// The files on the volume.
    pub files: SeedFiles,
    /// The vfat image.
    pub image: Vec<u8>,
    /// What plans show.
    pub summary: SeedSummary,
}

/// A YAML scalar: a JSON string is a valid YAML double-quoted scalar.
fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The hostname cloud-init sets: the fleet's, else the machine's name.
pub fn hostname(m: &Machine, ci: &CloudInit) -> String {
    ci.hostname.clone().unwrap_or_else(|| m.name.to_string())
}

/// The user-data virtfleet writes when the fleet gives none: the default
/// user with exactly the fleet's keys. cloud-init only ever adds keys to
/// an `authorized_keys` file, so the file is also written whole (deferred
/// until the user exists): a key removed from the fleet stops working at
/// the next boot of a new instance-id.
fn generated_user_data(ci: &CloudInit) -> String {
    let u = &ci.user;
    let mut s = String::from(
        "#cloud-config\n# written by virtfleet: the default user with exactly the keys in fleet.dhall\n",
    );
    s.push_str("users:\n");
    s.push_str(&format!("  - name: {}\n", quoted(u)));
    s.push_str("    shell: /bin/bash\n    lock_passwd: true\n");
    s.push_str("    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n");
    s.push_str("    ssh_authorized_keys:\n");
    for k in &ci.ssh_authorized_keys {
        s.push_str(&format!("      - {}\n", quoted(k.trim())));
    }
    let keys: String = ci
        .ssh_authorized_keys
        .iter()
        .map(|k| format!("{}\n", k.trim()))
        .collect();
    s.push_str("write_files:\n");
    s.push_str(&format!(
        "  - path: {}\n",
        quoted(&format!("/home/{u}/.ssh/authorized_keys"))
    ));
    s.push_str(&format!("    owner: {}\n", quoted(&format!("{u}:{u}"))));
    s.push_str("    permissions: \"0600\"\n    defer: true\n");
    s.push_str(&format!("    content: {}\n", quoted(&keys)));
    s
}

/// Boundary of the multipart user-data: fixed, so the seed is reproducible.
const BOUNDARY: &str = "==virtfleet-seed-part==";

/// The fleet's own user-data followed by virtfleet's part (the default user
/// and exactly its keys), as MIME multipart user-data. virtfleet's part is
/// merged into the fleet's with `list(append)+dict(no_replace,recurse_array)`:
/// the fleet's settings win, lists (users, write_files) gain virtfleet's
/// entries. Only `#cloud-config` and `#!` scripts are combined; any other
/// user-data (already multipart, an include, a boothook) is passed as it
/// is, and the keys then reach the default user through meta-data only.
fn combined_user_data(own: &str, ours: &str) -> String {
    let kind = if own.starts_with("#cloud-config") {
        "text/cloud-config"
    } else if own.starts_with("#!") {
        "text/x-shellscript"
    } else {
        return own.to_owned();
    };
    let mut s =
        format!("Content-Type: multipart/mixed; boundary=\"{BOUNDARY}\"\nMIME-Version: 1.0\n\n");
    s.push_str(&format!(
        "--{BOUNDARY}\nContent-Type: {kind}; charset=\"utf-8\"\nMIME-Version: 1.0\nContent-Disposition: attachment; filename=\"fleet\"\n\n{own}"
    ));
    if !own.ends_with('\n') {
        s.push('\n');
    }
    s.push_str(&format!(
        "--{BOUNDARY}\nContent-Type: text/cloud-config; charset=\"utf-8\"\nMIME-Version: 1.0\nMerge-Type: list(append)+dict(no_replace,recurse_array)+str()\nContent-Disposition: attachment; filename=\"virtfleet\"\n\n{ours}"
    ));
    s.push_str(&format!("--{BOUNDARY}--\n"));
    s
}

/// The seed files of `m` (which must have a `cloudInit`).
pub fn seed_files(m: &Machine, ci: &CloudInit) -> SeedFiles {
    let user_data = match &ci.user_data {
        None => generated_user_data(ci),
        Some(own) => combined_user_data(own, &generated_user_data(ci)),
    };
    let host = hostname(m, ci);
    // meta-data without the instance-id: what a derived id is made from.
    let mut rest = format!("local-hostname: {}\n", quoted(&host));
    if !ci.ssh_authorized_keys.is_empty() {
        rest.push_str("public-keys:\n");
        for k in &ci.ssh_authorized_keys {
            rest.push_str(&format!("  - {}\n", quoted(k.trim())));
        }
    }
    for (k, v) in &ci.meta_data {
        rest.push_str(&format!("{k}: {}\n", quoted(v)));
    }
    let instance_id = ci.instance_id.clone().unwrap_or_else(|| {
        let content = serde_json::json!({
            "userData": user_data,
            "metaData": rest,
            "networkConfig": ci.network_config,
        });
        let digest = sha_hex(content.to_string().as_bytes());
        format!("iid-{}-{}", m.name, &digest[..12])
    });
    SeedFiles {
        user_data,
        meta_data: format!("instance-id: {}\n{rest}", quoted(&instance_id)),
        network_config: ci.network_config.clone(),
        instance_id,
    }
}

/// The FAT volume holding `files`, labelled `CIDATA`. Its size is a whole
/// number of MiB with room for the files; the volume id is derived from
/// the content, so equal files give equal bytes.
pub fn seed_image(files: &SeedFiles) -> Vec<u8> {
    let mut entries: Vec<(&str, &[u8])> = vec![
        ("meta-data", files.meta_data.as_bytes()),
        ("user-data", files.user_data.as_bytes()),
    ];
    if let Some(n) = &files.network_config {
        entries.push(("network-config", n.as_bytes()));
    }
    let content: usize = entries.iter().map(|(_, b)| b.len()).sum();
    const MIB: usize = 1024 * 1024;
    let size = (content + content / 4 + 256 * 1024).div_ceil(MIB) * MIB;
    let mut digest = Sha256::new();
    for (name, bytes) in &entries {
        digest.update(name.as_bytes());
        digest.update((bytes.len() as u64).to_le_bytes());
        digest.update(bytes);
    }
    let d = digest.finalize();
    let volume_id = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
    let mut disk = Cursor::new(vec![0u8; size]);
    let opts = fatfs::FormatVolumeOptions::new()
        .volume_label(*b"CIDATA     ")
        .volume_id(volume_id);
    // Writing to a Vec cannot fail short of memory: these are invariants.
    fatfs::format_volume(&mut disk, opts).expect("formatting an in-memory volume");
    {
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new())
            .expect("mounting the volume just formatted");
        let root = fs.root_dir();
        for (name, bytes) in &entries {
            let mut f = root
                .create_file(name)
                .expect("creating a file on a new volume");
            f.write_all(bytes)
                .expect("the volume has room for its files");
        }
        drop(root);
        fs.unmount().expect("unmounting an in-memory volume");
    }
    disk.into_inner()
}

/// The seed of `m`, if it has a `cloudInit`.
pub fn seed(m: &Machine) -> Option<Seed> {
    let ci = m.cloud_init.as_ref()?;
    let files = seed_files(m, ci);
    let image = seed_image(&files);
    // The fleet's own user-data is what a reader of the plan changed.
    let own = ci.user_data.as_deref().unwrap_or(&files.user_data);
    let summary = SeedSummary {
        sha256: sha_hex(&image),
        instance_id: files.instance_id.clone(),
        instance_id_derived: ci.instance_id.is_none(),
        hostname: hostname(m, ci),
        user: ci.user.clone(),
        keys: ci.ssh_authorized_keys.len(),
        user_data_sha256: sha_hex(own.as_bytes())[..12].to_owned(),
        user_data_lines: own.lines().count(),
        user_data_generated: ci.user_data.is_none(),
        network_config_lines: files.network_config.as_ref().map(|n| n.lines().count()),
    };
    Some(Seed {
        files,
        image,
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    fn machine(ci: CloudInit) -> Machine {
        let src = format!(
            "let V = {}/dhall/package.dhall in V.Fleet::{{ name = \"t\", hosts = [ V.Host::{{ name = \"h\", uri = \"qemu:///system\", storage = V.Storage.Dir {{ path = \"/srv/vf\" }} }} ], images = [ V.Image::{{ name = \"i\", url = \"http://x/i\" }} ], machines = [ V.Machine::{{ name = \"web\", image = \"i\" }} ] }}",
            env!("CARGO_MANIFEST_DIR")
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fleet.dhall");
        std::fs::write(&p, src).unwrap();
        let f = crate::fleet::load(&p).unwrap();
        let mut m = f.machines.values().next().unwrap().clone();
        m.cloud_init = Some(ci);
        m
    }

    fn ci() -> CloudInit {
        CloudInit {
            user_data: None,
            ssh_authorized_keys: vec!["ssh-ed25519 AAAAkey one@x".into()],
            hostname: None,
            user: "debian".into(),
            network_config: None,
            meta_data: Default::default(),
            instance_id: None,
            show_user_data: false,
        }
    }

    fn read(image: &[u8], name: &str) -> String {
        let fs =
            fatfs::FileSystem::new(Cursor::new(image.to_vec()), fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label_as_bytes(), b"CIDATA");
        let mut s = String::new();
        fs.root_dir()
            .open_file(name)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        s
    }

    #[test]
    fn the_image_is_reproducible_and_readable() {
        let a = seed(&machine(ci())).unwrap();
        let b = seed(&machine(ci())).unwrap();
        assert_eq!(a.image, b.image, "same cloudInit, same bytes");
        assert_eq!(a.image.len() % (1024 * 1024), 0);
        let meta = read(&a.image, "meta-data");
        assert!(meta.starts_with("instance-id: \"iid-web-"), "{meta}");
        assert!(meta.contains("local-hostname: \"web\""), "{meta}");
        let ud = read(&a.image, "user-data");
        assert!(ud.starts_with("#cloud-config\n"), "{ud}");
        assert!(ud.contains("ssh-ed25519 AAAAkey one@x"), "{ud}");
        assert!(ud.contains("/home/debian/.ssh/authorized_keys"), "{ud}");
    }

    #[test]
    fn a_changed_key_changes_the_hash_and_the_derived_instance_id() {
        let a = seed(&machine(ci())).unwrap();
        let mut c = ci();
        c.ssh_authorized_keys = vec!["ssh-ed25519 AAAAkey two@x".into()];
        let b = seed(&machine(c.clone())).unwrap();
        assert_ne!(a.summary.sha256, b.summary.sha256);
        assert_ne!(a.summary.instance_id, b.summary.instance_id);
        // A fixed instance-id stays, whatever changes.
        c.instance_id = Some("fixed-1".into());
        let f = seed(&machine(c)).unwrap();
        assert_eq!(f.summary.instance_id, "fixed-1");
        assert!(!f.summary.instance_id_derived);
    }

    #[test]
    fn user_data_is_verbatim_and_network_config_optional() {
        let mut c = ci();
        c.user_data = Some("#cloud-config\nruncmd: [echo SECRET-MARKER]\n".into());
        c.network_config = Some("version: 2\nethernets: {}\n".into());
        c.meta_data.insert("role".into(), "web".into());
        let s = seed(&machine(c)).unwrap();
        let ud = read(&s.image, "user-data");
        assert!(ud.starts_with("Content-Type: multipart/mixed"), "{ud}");
        assert!(
            ud.contains("#cloud-config\nruncmd: [echo SECRET-MARKER]\n--==virtfleet-seed-part==\n"),
            "the fleet's part is verbatim: {ud}"
        );
        assert!(
            ud.contains("Merge-Type: list(append)") && ud.contains("ssh-ed25519 AAAAkey one@x"),
            "{ud}"
        );
        assert_eq!(
            read(&s.image, "network-config"),
            "version: 2\nethernets: {}\n"
        );
        assert!(read(&s.image, "meta-data").contains("role: \"web\""));
        let shown = serde_json::to_string(&s.summary).unwrap();
        assert!(!shown.contains("SECRET-MARKER"), "{shown}");
        assert_eq!(s.summary.user_data_lines, 2);
        assert_eq!(s.summary.network_config_lines, Some(2));
    }
}
