//! A move's ZFS half on a real ZFS host: a disk sent from one parent
//! dataset to another on the same host through `ZfsStorage::receive_disk`,
//! the code `move in` runs between two ZFS hosts (`zfs send -R` streamed
//! through this process into `zfs receive -u`, over SSH on both sides).
//! `zfs` and `sha256sum` inside the guest are the witnesses.
//!
//! Its own guest: `VIRTFLEET_TEST_ZFS_RUN` or
//! /var/lib/virtfleet-tests/zfs-move-run, never the one tests/zfs.rs boots.
//! `cargo test --test zfs_move -- --nocapture` prints the figures.

mod common;

use common::zfshost::ZfsHost;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use virtfleet::host::storage::{NewDisk, StorageBackend};
use virtfleet::host::transport_for;
use virtfleet::host::zfs::ZfsStorage;
use virtfleet::progress::Progress;
use virtfleet::resources::layout;
use virtfleet::resources::observed::DiskOwner;

/// Counts the bytes a copy reports.
#[derive(Default)]
struct Count(AtomicU64);

impl Progress for Count {
    fn start(&self, _: &str, _: Option<u64>) {}
    fn advance(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    fn finish(&self, _: &str) {}
}

const SHA: &str = "a74e6253c6b93509f05f42a27d0051a84a72905e8430e54c92d701402927ad8a";

#[test]
fn zfs_disk_moves_between_parents_with_its_data_snapshots_and_owner() {
    let host = ZfsHost::boot("zfs-move-run");
    // A fleet only to get the host's transport exactly as apply does.
    let dir = tempfile::tempdir().unwrap();
    let fleet_file = dir.path().join("fleet.dhall");
    std::fs::write(
        &fleet_file,
        format!(
            "let V = {}\nin V.Fleet::{{ name = \"zm\", hosts = [ V.Host::{{ name = \"z\", uri = \"{}\", storage = V.Storage.Zfs {{ parent = \"tank/mva\" }} }} ], images = [] : List V.Image.Type, machines = [] : List V.Machine.Type }}\n",
            common::package_path().display(),
            host.uri
        ),
    )
    .unwrap();
    let fleet = virtfleet::fleet::load(&fleet_file).unwrap();
    let t = transport_for(fleet.hosts.values().next().unwrap()).unwrap();
    let (a, b) = (
        ZfsStorage::new("tank/mva", t.as_ref()),
        ZfsStorage::new("tank/mvb", t.as_ref()),
    );
    host.sh("zfs destroy -r tank/mva; zfs destroy -r tank/mvb");

    // A root disk as virtfleet makes it: an owned 1 GiB clone of a base.
    let base = format!("tank/mva/{}", layout::zfs_image_rel(SHA));
    host.sh_ok(&format!(
        "zfs create -p -o canmount=off tank/mva/images && zfs create -V 64M {base} && zfs snapshot {base}@base"
    ));
    let owner = DiskOwner {
        fleet: "zm".into(),
        machine: "mv".into(),
        disk: "root".into(),
        protect: false,
    };
    a.create_disk(&NewDisk {
        volume: "mv-root",
        owner: &owner,
        size_gib: 1,
        base: Some((SHA, "raw")),
    })
    .unwrap();
    let (src, dst) = ("tank/mva/disks/mv-root", "tank/mvb/disks/mv-root");
    // 100 MiB of data, then the init snapshot.
    host.sh_ok(&format!(
        "head -c 100M /dev/urandom > /var/tmp/pattern && dd if=/var/tmp/pattern of=/dev/zvol/{src} bs=1M oflag=direct conv=fsync status=none"
    ));
    let want = host.sh_ok("sha256sum < /var/tmp/pattern");
    a.snapshot("mv-root", "vf-init").unwrap();

    let count = Count::default();
    let started = Instant::now();
    let bytes = b.receive_disk(&a, "mv-root", &count).unwrap();
    let took = started.elapsed();
    assert!(bytes > 100 << 20, "stream size {bytes}");
    assert_eq!(
        count.0.load(Ordering::Relaxed),
        bytes,
        "progress counts the stream"
    );

    // Whole, owned like the original, with its snapshots, nothing left over.
    let got = host.sh_ok(&format!("head -c 100M /dev/zvol/{dst} | sha256sum"));
    assert_eq!(got, want, "the data moved");
    assert_eq!(host.prop(dst, "virtfleet:machine"), "mv");
    assert_eq!(host.prop(dst, "virtfleet:fleet"), "zm");
    assert_eq!(host.prop(dst, "volsize"), (1u64 << 30).to_string());
    let snaps = host.sh_ok("zfs list -H -t snapshot -o name -r tank/mva tank/mvb");
    assert!(snaps.contains(&format!("{dst}@vf-init")), "{snaps}");
    assert!(
        !snaps.contains("@vf-move"),
        "the move's snapshot is dropped: {snaps}"
    );
    assert_eq!(b.snapshot_list("mv-root").unwrap(), ["vf-init"]);
    // Idempotent: the disk is there, nothing is sent again.
    assert_eq!(b.receive_disk(&a, "mv-root", &count).unwrap(), 0);
    // The source is untouched (the move's last step trashes it).
    assert_eq!(host.prop(src, "virtfleet:machine"), "mv");

    // Baseline in the same run: qemu-img convert of the zvol to qcow2 in the
    // host, then the file copied through this machine (as scp would).
    let (has_qemu_img, _) = host.sh("command -v qemu-img");
    let baseline = if has_qemu_img {
        let t0 = Instant::now();
        host.sh_ok(&format!(
            "qemu-img convert -O qcow2 /dev/zvol/{src} /var/tmp/baseline.qcow2"
        ));
        let size: u64 = host
            .sh_ok("stat -c %s /var/tmp/baseline.qcow2")
            .trim()
            .parse()
            .unwrap();
        let out = std::process::Command::new("ssh")
            .args(["-i", host.run.join("id_ed25519").to_str().unwrap()])
            .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                host.run.join("known_hosts").display()
            ))
            .args([
                "-p",
                &host.port,
                "root@127.0.0.1",
                "cat /var/tmp/baseline.qcow2",
            ])
            .output()
            .unwrap();
        assert_eq!(out.stdout.len() as u64, size);
        format!("{:.2} s, {size} bytes", t0.elapsed().as_secs_f64())
    } else {
        "not measured (no qemu-img in the ZFS host)".into()
    };
    println!(
        "zfs move figures: 1 GiB zvol (clone) with 100 MiB written: zfs send -R | zfs receive through this process over SSH: {:.2} s, {bytes} bytes; baseline qemu-img convert + copy out: {baseline}",
        took.as_secs_f64()
    );
    host.sh("zfs destroy -r tank/mva; zfs destroy -r tank/mvb");
}
