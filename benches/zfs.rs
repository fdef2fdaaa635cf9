//! Benchmark: creating 10 machine disks on a real ZFS host, as ZFS clones of
//! a base snapshot (virtfleet) vs `qemu-img convert` of the image into fresh
//! zvols (the ancestor tool's method). Both run over the same SSH transport,
//! so the ratio compares the storage work, measured in one run.
//!
//! Needs root and boots the test ZFS host (tests/zfs-host/boot; the first
//! build takes ~10 min). Run: `cargo bench --bench zfs`.
//! `VIRTFLEET_BENCH_IMAGE_MIB` sets the image size (default 256).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use virtfleet::host::ssh::{Ssh, SshTarget};
use virtfleet::host::storage::{BaseImage, NewDisk, StorageBackend};
use virtfleet::host::transport::Transport;
use virtfleet::host::zfs::ZfsStorage;
use virtfleet::progress::NoProgress;
use virtfleet::resources::observed::DiskOwner;

const N: usize = 10;

struct Host(PathBuf);

impl Drop for Host {
    fn drop(&mut self) {
        let _ = Command::new(boot_script())
            .arg("stop")
            .arg(&self.0)
            .status();
    }
}

fn boot_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/zfs-host/boot")
}

fn run(t: &dyn Transport, argv: &[&str]) -> String {
    t.run_ok(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"))
}

fn main() {
    let mib: usize = std::env::var("VIRTFLEET_BENCH_IMAGE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let run_dir = PathBuf::from("/var/lib/virtfleet-bench/zfs-run");
    let out = Command::new(boot_script())
        .arg("start")
        .arg(&run_dir)
        .output()
        .expect("run tests/zfs-host/boot");
    assert!(
        out.status.success(),
        "ZFS host did not boot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _host = Host(run_dir.clone());
    let uri = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let ssh = Ssh::new(SshTarget::from_uri(&uri).expect("ssh uri"));
    let parent = "tank/bench";

    // An image of `mib` MiB of incompressible data, so copies cost what they cost.
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("bench.img");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut bytes = vec![0u8; mib << 20];
    for chunk in bytes.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(&img, &bytes).unwrap();
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    drop(bytes);

    let zfs = ZfsStorage::new(parent, &ssh);
    let t0 = Instant::now();
    let base = BaseImage {
        cached: &img,
        name: "bench",
        sha256: &sha,
        format: "raw",
    };
    zfs.ensure_image(&base, &NoProgress).expect("base image");
    let base_s = t0.elapsed().as_secs_f64();

    let t0 = Instant::now();
    for i in 0..N {
        let owner = DiskOwner {
            fleet: "bench".into(),
            machine: format!("vm-{i}"),
            disk: "root".into(),
            protect: false,
        };
        let volume = format!("vm-{i}-root");
        zfs.create_disk(&NewDisk {
            volume: &volume,
            owner: &owner,
            size_gib: 1,
            base: Some((&sha, "raw")),
        })
        .expect("clone");
    }
    let clones_s = t0.elapsed().as_secs_f64();

    // Baseline: a fresh zvol per machine, filled by qemu-img convert (image already on the host).
    let tmp = format!("/var/tmp/bench-{sha}.raw");
    ssh.put_file(&img, &tmp, &NoProgress)
        .expect("copy image for the baseline");
    run(
        &ssh,
        &[
            "zfs",
            "create",
            "-p",
            "-o",
            "canmount=off",
            &format!("{parent}/copies"),
        ],
    );
    let t0 = Instant::now();
    for i in 0..N {
        let ds = format!("{parent}/copies/vm-{i}");
        run(
            &ssh,
            &["zfs", "create", "-s", "-V", "1G", "-o", "volmode=dev", &ds],
        );
        run(&ssh, &["udevadm", "settle"]);
        run(
            &ssh,
            &[
                "qemu-img",
                "convert",
                "-n",
                "-f",
                "raw",
                "-O",
                "raw",
                &tmp,
                &format!("/dev/zvol/{ds}"),
            ],
        );
    }
    run(&ssh, &["sync"]);
    let copies_s = t0.elapsed().as_secs_f64();

    let used = |ds: &str| -> u64 {
        run(&ssh, &["zfs", "get", "-Hp", "-o", "value", "used", ds])
            .trim()
            .parse()
            .unwrap_or(0)
    };
    let (clones_used, copies_used) = (
        used(&format!("{parent}/disks")),
        used(&format!("{parent}/copies")),
    );
    println!("ZFS host (TCG guest, 2 vCPUs), image {mib} MiB, {N} machines");
    println!("{:<44} {:>10} {:>14}", "case", "seconds", "space used");
    println!(
        "{:<44} {:>10.2} {:>14}",
        "base image once (copy, hash on host, convert)", base_s, "-"
    );
    println!(
        "{:<44} {:>10.2} {:>11} MiB",
        "virtfleet: 10 x zfs clone of @base",
        clones_s,
        clones_used >> 20
    );
    println!(
        "{:<44} {:>10.2} {:>11} MiB",
        "baseline: 10 x zfs create + qemu-img convert",
        copies_s,
        copies_used >> 20
    );
    println!(
        "ratio baseline/clones: {:.1}x time, {:.0}x space",
        copies_s / clones_s,
        copies_used as f64 / clones_used.max(1) as f64
    );
}
