//! Snapshots on a Dir host (qcow2 internal snapshots) on the real libvirtd:
//! init after create, scheduled snapshots taken and pruned, foreign ones
//! kept, rollback and reinit proven by data written into the disk, and a
//! guest that refuses to shut down. `qemu-img`/`qemu-io`/`virsh` witness.

mod common;

use common::lab::{Lab, SYSTEM, qemu_io, virsh, virsh_ok};
use std::process::Command;

fn qemu_snapshots(file: &std::path::Path) -> Vec<String> {
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(file)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut names: Vec<String> = v["snapshots"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s["name"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn qcow2_snapshots_policy_rollback_and_reinit() {
    let lab = Lab::new("t-snap");
    let s = lab.m("s");
    let policy = "snapshots = V.Snapshots::{ daily = 2 }";
    lab.write(&[lab.machine("s", policy)]);
    lab.apply(&[]).expect_code(0);
    let root = lab.root.join(format!("disks/{s}-root/disk.qcow2"));
    let snaps = qemu_snapshots(&root);
    assert!(
        snaps.contains(&"vf-init".to_owned()),
        "init snapshot right after creation: {snaps:?}"
    );
    let daily: Vec<&String> = snaps
        .iter()
        .filter(|n| n.starts_with("vf-daily-"))
        .collect();
    assert_eq!(
        daily.len(),
        1,
        "the scheduled daily snapshot was taken: {snaps:?}"
    );
    lab.vf(&["plan", "--detailed-exitcode"]).expect_code(0);

    // Older scheduled snapshots beyond the count are pruned (with permission);
    // a foreign snapshot and the init snapshot never are.
    for name in [
        "vf-daily-20200101T000000Z",
        "vf-daily-20200102T000000Z",
        "mine",
    ] {
        virsh_ok(SYSTEM, &["snapshot-create-as", &s, name]);
    }
    let out = lab.vf(&["plan"]).expect_code(0);
    assert!(
        out.stdout
            .contains("prune snapshot vf-daily-20200101T000000Z")
            && out.stdout.contains("--allow-destroy"),
        "{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains("vf-daily-20200102T000000Z of"),
        "the second newest day is kept: {}",
        out.stdout
    );
    lab.apply(&["--allow-destroy"]).expect_code(0);
    let snaps = qemu_snapshots(&root);
    assert!(
        !snaps.contains(&"vf-daily-20200101T000000Z".to_owned()),
        "{snaps:?}"
    );
    for kept in ["vf-daily-20200102T000000Z", "mine", "vf-init"] {
        assert!(snaps.contains(&kept.to_owned()), "{kept} kept: {snaps:?}");
    }
    let list = lab.vf(&["snapshots", &s]).expect_code(0);
    assert!(
        list.stdout.contains("foreign")
            && list.stdout.contains("init")
            && list.stdout.contains("daily"),
        "{}",
        list.stdout
    );

    // A guest that ignores ACPI: rollback refuses without --force.
    let manual = lab.vf(&["snapshot", &s, "--label", "pre"]).expect_code(0);
    let name = common::lab::taken_snapshot(&manual);
    assert!(name.starts_with("vf-manual-pre-"), "{name}");
    let out = lab
        .vf(&[
            "rollback",
            &s,
            "--to",
            &name,
            "--yes",
            "--shutdown-timeout",
            "1s",
        ])
        .expect_code(1);
    assert!(
        out.stderr.contains("did not shut down") && out.stderr.contains("--force"),
        "{}",
        out.stderr
    );
    assert_eq!(
        virsh_ok(SYSTEM, &["domstate", &s]).trim(),
        "running",
        "nothing was done"
    );
    let out = lab
        .vf(&["rollback", &s, "--to", "nope", "--yes"])
        .expect_code(1);
    assert!(
        out.stderr.contains("has no snapshot \"nope\"") && out.stderr.contains("vf-init"),
        "{}",
        out.stderr
    );
    let out = lab.vf(&["rollback", &s, "--to", &name]).expect_code(1);
    assert!(
        out.stderr.contains("--yes"),
        "no confirmation without a terminal: {}",
        out.stderr
    );

    // Stop it, write a marker into the disk, roll back: the marker is gone.
    lab.write(&[lab.machine("s", &format!("{policy}, power = V.Power.Stopped"))]);
    lab.apply(&["--allow-restart"]).expect_code(0);
    assert!(qemu_io(&root, "write", 0xab));
    assert!(qemu_io(&root, "read", 0xab), "marker written");
    lab.vf(&["rollback", &s, "--to", &name, "--yes"])
        .expect_code(0);
    assert!(qemu_io(&root, "read", 0), "marker gone after rollback");
    // Reinit: back to the init snapshot, same proof.
    assert!(qemu_io(&root, "write", 0xcd));
    lab.vf(&["reinit", &s, "--yes"]).expect_code(0);
    assert!(qemu_io(&root, "read", 0), "marker gone after reinit");
    assert_eq!(
        virsh_ok(SYSTEM, &["domstate", &s]).trim(),
        "shut off",
        "a stopped machine stays stopped"
    );

    // A running guest is powered off with --force and started again.
    lab.write(&[lab.machine("s", policy)]);
    lab.apply(&[]).expect_code(0);
    lab.vf(&["reinit", &s, "--yes", "--force", "--shutdown-timeout", "1s"])
        .expect_code(0);
    assert_eq!(virsh_ok(SYSTEM, &["domstate", &s]).trim(), "running");
    let _ = virsh(SYSTEM, &["snapshot-list", &s]);
}
