//! The one-machine commands (`snapshot`, `rollback`, `reinit`, `destroy`,
//! `restore`) on the real libvirtd: each shows its plan and reports through
//! the executor's events, refuses a domain or disk of the same name that is
//! not this fleet's, and a rollback that fails half-way says exactly which
//! disks were rolled back. Byte progress of the base image reaches the log.
//! `virsh`, `qemu-io` and the storage directory witness.

mod common;

use common::lab::{Lab, SYSTEM, qemu_io, virsh_ok};
use std::path::PathBuf;
use std::process::Command;

/// Makes a file immutable (even root cannot open it for writing) until dropped.
struct Immutable(PathBuf);

impl Immutable {
    fn new(file: PathBuf) -> Self {
        let ok = Command::new("chattr")
            .arg("+i")
            .arg(&file)
            .status()
            .unwrap();
        assert!(ok.success(), "chattr +i {}", file.display());
        Immutable(file)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn routed_commands_show_their_plan_report_progress_and_a_half_rollback() {
    let lab = Lab::new("t-route");
    let r = lab.m("r");
    let data = "dataDisks = [ V.Disk::{ name = \"d\", sizeGiB = 1 } ]";
    lab.write(&[lab.machine("r", &format!("{data}, power = V.Power.Stopped"))]);

    // Byte progress of the base image (verified in the cache) reaches the
    // plain log, at most a line per tenth. The host is this machine, on the
    // cache's file system: the image is linked, not copied, so no copy
    // progress is shown (tests/performance.rs checks the link).
    let out = lab.apply(&[]).expect_code(0);
    assert!(
        out.stderr
            .contains("verify a74e6253c6b9 100% (1.0 MiB of 1.0 MiB)")
            && !out.stderr.contains("copy tiny to the host"),
        "{}",
        out.stderr
    );
    let verify_lines = out.stderr.lines().filter(|l| l.contains("verify ")).count();
    assert!(verify_lines <= 10, "throttled: {}", out.stderr);

    // snapshot: the plan, then the executor's events, then the result.
    let out = lab.vf(&["snapshot", &r, "--label", "pre"]).expect_code(0);
    assert!(
        out.stdout.starts_with("Plan for fleet \"t-route\"")
            && out.stdout.contains(&format!("+ local/{r}@vf-manual-pre-"))
            && out.stdout.contains("snapshot vf-manual-pre-"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("[local] applying 1 change(s)")
            && out.stderr.contains("... done")
            && out
                .stderr
                .contains("[local] finished: 1 done, 0 failed, 0 skipped"),
        "{}",
        out.stderr
    );

    // A rollback whose second disk cannot be written: the root disk is
    // rolled back (its marker is gone), the data disk is not, and the
    // command says exactly that.
    let root = lab.root.join(format!("disks/{r}-root/disk.qcow2"));
    let data_file = lab.root.join(format!("disks/{r}-d/disk.qcow2"));
    assert!(qemu_io(&root, "write", 0xab) && qemu_io(&data_file, "write", 0xcd));
    let guard = Immutable::new(data_file.clone());
    let out = lab.vf(&["reinit", &r, "--yes"]).expect_code(1);
    assert!(
        out.stdout.contains(&format!("local/{r}/root@vf-init"))
            && out.stdout.contains(&format!("roll {r}-d back to vf-init")),
        "the plan lists every disk: {}",
        out.stdout
    );
    assert!(
        out.stderr
            .contains(&format!("Rolled back: {r}-root; not rolled back: {r}-d.")),
        "{}",
        out.stderr
    );
    drop(guard);
    assert!(qemu_io(&root, "read", 0), "root rolled back");
    assert!(qemu_io(&data_file, "read", 0xcd), "data disk untouched");
    // Repeating it finishes the job.
    let out = lab.vf(&["reinit", &r, "--yes"]).expect_code(0);
    assert!(
        out.stdout.contains(&format!("rolled back {r} to vf-init")),
        "{}",
        out.stdout
    );
    assert!(qemu_io(&data_file, "read", 0), "data disk rolled back");

    // destroy and restore: each shows its plan and reports its steps.
    let out = lab
        .vf(&[
            "destroy",
            &r,
            "--force",
            "--auto-approve",
            "--shutdown-timeout",
            "1s",
        ])
        .expect_code(0);
    assert!(
        out.stdout.contains(&format!("- local/{r}"))
            && out.stdout.contains("destroy (2 disks to trash)")
            && out.stderr.contains("... done"),
        "{}",
        out.all()
    );
    let out = lab.vf(&["restore", &r]).expect_code(0);
    assert!(
        out.stdout
            .contains(&format!("restore disk {r}-root from trash/{r}-root@"))
            && out.stdout.contains(&format!("restored {r}-d from trash/"))
            && out
                .stderr
                .contains("[local] finished: 2 done, 0 failed, 0 skipped"),
        "{}",
        out.all()
    );
    lab.apply(&[]).expect_code(0);
    assert_eq!(virsh_ok(SYSTEM, &["domstate", &r]).trim(), "shut off");
}

#[test]
fn routed_commands_refuse_foreign_domains_and_disks() {
    let lab = Lab::new("t-foreign");
    let (f, g, h) = (lab.m("f"), lab.m("g"), lab.m("h"));
    lab.write(&[
        lab.machine("f", ""),
        lab.machine("g", ""),
        lab.machine("h", "power = V.Power.Stopped"),
    ]);
    // f: a domain of that name made with virsh, not this fleet's.
    let xml = format!(
        "<domain type='qemu'><name>{f}</name><memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os></domain>"
    );
    std::fs::create_dir_all(&lab.root).unwrap();
    let file = lab.root.join("f.xml");
    std::fs::write(&file, xml).unwrap();
    virsh_ok(SYSTEM, &["define", file.to_str().unwrap()]);
    let before = virsh_ok(SYSTEM, &["dumpxml", "--inactive", &f]);
    for args in [
        vec!["snapshot", f.as_str()],
        vec!["rollback", f.as_str(), "--to", "vf-init", "--yes"],
        vec!["reinit", f.as_str(), "--yes", "--force"],
        vec!["destroy", f.as_str(), "--force", "--auto-approve"],
    ] {
        let out = lab.vf(&args).expect_code(1);
        assert!(
            out.stderr.contains("is not managed by fleet \"t-foreign\"")
                && out.stderr.contains("hint:")
                && !out.stderr.contains("applying"),
            "{args:?}: {}",
            out.all()
        );
    }
    assert_eq!(virsh_ok(SYSTEM, &["dumpxml", "--inactive", &f]), before);

    // g: a directory where its root disk would be, without an owner.json.
    let foreign = lab.root.join(format!("disks/{g}-root"));
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("disk.qcow2"), "not ours").unwrap();
    for args in [
        vec!["snapshot", g.as_str()],
        vec!["reinit", g.as_str(), "--yes"],
    ] {
        let out = lab.vf(&args).expect_code(1);
        assert!(
            out.stderr.contains(&format!(
                "disk {g}-root on host local is not owned by machine {g}"
            )),
            "{args:?}: {}",
            out.all()
        );
    }
    assert_eq!(
        std::fs::read_to_string(foreign.join("disk.qcow2")).unwrap(),
        "not ours"
    );

    // h: destroyed (its disk in the trash), then a foreign directory takes
    // its place: restore refuses, and the trash entry stays.
    lab.write(&[lab.machine("h", "power = V.Power.Stopped")]);
    lab.apply(&[]).expect_code(0);
    lab.vf(&["destroy", &h, "--force", "--auto-approve"])
        .expect_code(0);
    std::fs::create_dir_all(lab.root.join(format!("disks/{h}-root"))).unwrap();
    let out = lab.vf(&["restore", &h]).expect_code(1);
    assert!(
        out.stderr.contains(&format!(
            "disk {h}-root exists on host local; a restore never overwrites"
        )),
        "{}",
        out.all()
    );
    assert_eq!(lab.entries("trash").len(), 1, "{:?}", lab.entries("trash"));
}
