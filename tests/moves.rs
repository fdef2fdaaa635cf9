//! Placement and moves on two real libvirtds: the system one (h1) and a
//! second, independent one (h2, tests/libvirtd-instance), each with its own
//! Dir storage. `virsh`, `qemu-io` and `qemu-img` are the witnesses.
//!
//! `cargo test --test moves -- --nocapture` prints the move's figures.

mod common;

use common::lab::{Instance, Lab, SYSTEM, domains, qemu_io, virsh, virsh_ok};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Dhall for a Dir host with capacity and labels.
fn host(name: &str, uri: &str, root: &Path, cap: &str, labels: &str) -> String {
    format!(
        "V.Host::{{ name = \"{name}\", uri = \"{uri}\", storage = V.Storage.Dir {{ path = \"{}\" }}, domainType = V.DomainType.Qemu, cpuMode = V.CpuMode.Default, network = V.Network.User, capacity = {cap}, labels = [ {labels} ] : List Text }}",
        root.display()
    )
}

fn disk(root: &Path, volume: &str) -> PathBuf {
    root.join("disks").join(volume).join("disk.qcow2")
}

fn uuid(uri: &str, dom: &str) -> String {
    virsh_ok(uri, &["domuuid", dom]).trim().to_owned()
}

fn mac(uri: &str, dom: &str) -> String {
    let out = virsh_ok(uri, &["domiflist", dom]);
    out.split_whitespace()
        .find(|w| w.starts_with("52:54:00:"))
        .unwrap_or_else(|| panic!("no MAC in {out}"))
        .to_owned()
}

fn qcow2_snapshots(file: &Path) -> String {
    let out = Command::new("qemu-img")
        .args(["snapshot", "-l", "-U"])
        .arg(file)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn placement_on_two_libvirtds_respects_capacity_spreads_groups_and_is_stable() {
    let (_second, uri2) = Instance::start("/var/lib/virtfleet-tests/t-place-libvirtd");
    let mut lab = Lab::new("t-place");
    lab.add_uri(&uri2);
    let (r1, r2) = (lab.root.join("h1"), lab.root.join("h2"));
    let hosts = |cap2: u32| {
        [
            host(
                "h1",
                SYSTEM,
                &r1,
                "Some { cpus = 2, memoryMiB = 512 }",
                "\"ssd\"",
            ),
            host(
                "h2",
                &uri2,
                &r2,
                &format!("Some {{ cpus = 2, memoryMiB = {cap2} }}"),
                "",
            ),
        ]
    };
    let mut machines = vec![
        lab.machine("a", "group = Some \"g\""),
        lab.machine("b", "group = Some \"g\""),
        lab.machine("c", ""),
    ];
    lab.write_hosts(&hosts(384), &machines, "");
    let plan = lab.vf(&["plan"]).expect_code(0);
    // a: most free memory (h1: 512); b: its group is on h1 already;
    // c: h1 has 384 left, h2 256.
    for line in [
        format!(
            "{} -> h1: most free memory (512 MiB) among 2 allowed",
            lab.m("a")
        ),
        format!(
            "{} -> h2: fewest machines of group g (0) among 2 allowed",
            lab.m("b")
        ),
        format!(
            "{} -> h1: most free memory (384 MiB) among 2 allowed",
            lab.m("c")
        ),
    ] {
        assert!(plan.stdout.contains(&line), "{line}\n{}", plan.stdout);
    }
    let json = lab.vf(&["plan", "--json"]).expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["placements"][1]["host"], "h2", "{}", json.stdout);
    lab.apply(&[]).expect_code(0);
    assert_eq!(domains(SYSTEM, &lab.m("")), [lab.m("a"), lab.m("c")]);
    assert_eq!(domains(&uri2, &lab.m("")), [lab.m("b")]);
    // Stable: re-planned, nothing moves; nor when h2 gets far more room.
    lab.vf(&["plan", "--detailed-exitcode"]).expect_code(0);
    lab.write_hosts(&hosts(8192), &machines, "");
    lab.vf(&["plan", "--detailed-exitcode"]).expect_code(0);
    // A machine that fits nowhere: a plan error naming it and what is short where.
    machines.push(lab.machine("big", "memoryMiB = 4096"));
    lab.write_hosts(&hosts(384), &machines, "");
    let out = lab.vf(&["plan"]);
    assert_ne!(out.code, Some(0), "{}", out.all());
    let all = out.all();
    assert!(
        all.contains(&format!(
            "machine {} fits on none of its 2 allowed hosts",
            lab.m("big")
        )),
        "{all}"
    );
    assert!(
        all.contains("h1: memory: needs 4096 MiB, 256 MiB free of 512"),
        "{all}"
    );
    assert!(
        all.contains("h2: memory: needs 4096 MiB, 256 MiB free of 384"),
        "{all}"
    );
    // Labels: a machine asking for `ssd` goes to h1 only.
    machines.pop();
    machines.push(lab.machine("fast", "hostLabels = [ \"ssd\" ]"));
    lab.write_hosts(&hosts(8192), &machines, "");
    let plan = lab.vf(&["plan"]).expect_code(0);
    assert!(
        plan.stdout
            .contains(&format!("{} -> h1: the only allowed host", lab.m("fast"))),
        "{}",
        plan.stdout
    );
    drop(lab);
}

/// Writes fleet with machine `mv` on `host`, power `power`; a data disk too.
fn write_mover(lab: &Lab, hosts: &[String], host: &str, power: &str, disk_gib: u32) {
    let m = lab.machine(
        "mv",
        &format!(
            "host = Some \"{host}\", diskGiB = {disk_gib}, power = V.Power.{power}, dataDisks = [ V.Disk::{{ name = \"data\", sizeGiB = 1 }} ]"
        ),
    );
    lab.write_hosts(hosts, &[m], "");
}

/// A lab named `name` with two Dir hosts without capacity: h1 on the system
/// libvirtd, h2 on a second libvirtd of its own. Bound in this order by the
/// callers, the lab is dropped (and cleans up) before the second daemon
/// stops.
fn two_dir_hosts(name: &str) -> (Instance, Lab, String, PathBuf, PathBuf, [String; 2]) {
    let (second, uri2) = Instance::start(&format!("/var/lib/virtfleet-tests/{name}-libvirtd"));
    let mut lab = Lab::new(name);
    lab.add_uri(&uri2);
    let (r1, r2) = (lab.root.join("h1"), lab.root.join("h2"));
    let none = "None { cpus : Natural, memoryMiB : Natural }";
    let hosts = [
        host("h1", SYSTEM, &r1, none, ""),
        host("h2", &uri2, &r2, none, ""),
    ];
    (second, lab, uri2, r1, r2, hosts)
}

#[test]
fn a_machine_moves_between_dir_hosts_with_its_data_snapshots_and_identity() {
    let (_second, lab, uri2, r1, r2, hosts) = two_dir_hosts("t-move");
    let dom = lab.m("mv");
    let (root_vol, data_vol) = (format!("{dom}-root"), format!("{dom}-data"));
    // Created stopped, so qemu-io can write into its disks; 100 MiB of pattern.
    write_mover(&lab, &hosts, "h1", "Stopped", 1);
    lab.apply(&[]).expect_code(0);
    let write = |file: &Path, pattern: u8| {
        let out = Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", &format!("write -P {pattern} 0 100M")])
            .arg(file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    write(&disk(&r1, &root_vol), 0xab);
    assert!(qemu_io(&disk(&r1, &data_vol), "write", 0x5c));
    write_mover(&lab, &hosts, "h1", "Running", 1);
    lab.apply(&[]).expect_code(0);
    let (id, mac1) = (uuid(SYSTEM, &dom), mac(SYSTEM, &dom));

    // The host changes: a move, class restart, never a destroy.
    write_mover(&lab, &hosts, "h2", "Running", 1);
    let plan = lab.vf(&["plan"]).expect_code(0);
    assert!(
        plan.stdout.contains("move in from h1 (2 disks, 2.0 GiB)")
            && !plan.stdout.contains("destroy ("),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("needs: --allow-restart"),
        "{}",
        plan.stdout
    );
    // Without permission the machine stays (exit 4: changes pending).
    lab.apply(&[]).expect_code(4);
    assert_eq!(domains(SYSTEM, &lab.m("")), std::slice::from_ref(&dom));
    assert!(domains(&uri2, &lab.m("")).is_empty());

    let started = Instant::now();
    let out = lab.apply(&["--allow-restart"]).expect_code(0);
    let took = started.elapsed();
    // The move-in step's own time, as the run reports it.
    let step_secs = out
        .stderr
        .lines()
        .find(|l| l.contains("move in from h1") && l.contains("done ("))
        .and_then(|l| {
            l.rsplit_once("done (")?
                .1
                .strip_suffix("s)")?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no move-in timing in {}", out.stderr));
    assert!(
        out.stderr.contains("copy ") && out.stderr.contains("MiB"),
        "byte progress of the copy: {}",
        out.stderr
    );
    assert!(domains(SYSTEM, &lab.m("")).is_empty(), "{}", out.all());
    assert_eq!(domains(&uri2, &lab.m("")), std::slice::from_ref(&dom));
    assert_eq!(virsh_ok(&uri2, &["domstate", &dom]).trim(), "running");
    assert_eq!(uuid(&uri2, &dom), id, "UUID follows the machine");
    assert_eq!(mac(&uri2, &dom), mac1, "MAC follows the machine");
    lab.vf(&["plan", "--detailed-exitcode"]).expect_code(0);

    // The data and the snapshots came along.
    let (new_root, new_data) = (disk(&r2, &root_vol), disk(&r2, &data_vol));
    assert!(qcow2_snapshots(&new_root).contains("vf-init"));
    assert!(qcow2_snapshots(&new_data).contains("vf-init"));
    virsh_ok(&uri2, &["destroy", &dom]);
    let read = |file: &Path, pattern: u8, len: &str| {
        let out = Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", &format!("read -P {pattern} 0 {len}")])
            .arg(file)
            .output()
            .unwrap();
        out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("fail")
    };
    assert!(read(&new_root, 0xab, "100M"), "root disk data moved");
    assert!(qemu_io(&new_data, "read", 0x5c), "data disk data moved");
    // The overlay now rests on h2's copy of the base.
    let info = Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(&new_root)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let backing = info["backing-filename"].as_str().unwrap();
    assert!(backing.starts_with(r2.to_str().unwrap()), "{backing}");

    // The old disks are in h1's trash, whole: restorable there.
    let trash = common::dir_names(&r1.join("trash"));
    let entry = trash
        .iter()
        .find(|e| e.starts_with(&format!("{root_vol}@")))
        .unwrap_or_else(|| panic!("no trash entry for {root_vol}: {trash:?}"));
    let trashed = r1.join("trash").join(entry).join("disk.qcow2");
    assert!(read(&trashed, 0xab, "100M"));
    assert!(qcow2_snapshots(&trashed).contains("vf-init"));
    // Start it again (apply), and converged.
    lab.apply(&[]).expect_code(0);
    lab.vf(&["plan", "--detailed-exitcode"]).expect_code(0);

    // Figures: 1 GiB root disk with 100 MiB written (plus the 1 GiB data
    // disk with 4 KiB): the move, against qemu-img convert + copy.
    let bytes: u64 = [&new_root, &new_data]
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    let tmp = r1.join("baseline.qcow2");
    let t0 = Instant::now();
    let ok = Command::new("qemu-img")
        .args(["convert", "-U", "-O", "qcow2"])
        .arg(&trashed)
        .arg(&tmp)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let copy = r2.join("baseline.qcow2");
    assert!(
        Command::new("cp")
            .arg(&tmp)
            .arg(&copy)
            .status()
            .unwrap()
            .success()
    );
    let base_took = t0.elapsed();
    let base_bytes = std::fs::metadata(&copy).unwrap().len();
    println!(
        "move figures: whole apply (observe, stop with 1 s ACPI grace, copy 2 disks, verify, define, start, old disks to trash, re-observe): {:.2} s; move-in step (stop + copy + sha256 on both sides + rebase): {step_secs:.2} s, {} bytes of qcow2 copied; baseline qemu-img convert + cp of the root disk: {:.2} s, {} bytes",
        took.as_secs_f64(),
        bytes,
        base_took.as_secs_f64(),
        base_bytes
    );

    // `restore` on the old host: destroyed on h2 and declared on h1 again,
    // the machine comes back from h1's trash with its data and identity.
    lab.vf(&[
        "destroy",
        &dom,
        "--force",
        "--auto-approve",
        "--shutdown-timeout",
        "1s",
    ])
    .expect_code(0);
    write_mover(&lab, &hosts, "h1", "Stopped", 1);
    let out = lab.vf(&["restore", &dom]).expect_code(0);
    assert!(
        out.stdout.contains(&format!("restored {root_vol}")),
        "{}",
        out.all()
    );
    lab.apply(&[]).expect_code(0);
    assert_eq!(domains(SYSTEM, &lab.m("")), std::slice::from_ref(&dom));
    assert!(
        read(&disk(&r1, &root_vol), 0xab, "100M"),
        "restored data on h1"
    );
    assert_eq!(uuid(SYSTEM, &dom), id);
    lab.vf(&["plan", "--detailed-exitcode"]).expect_code(0);
    drop(lab);
}

/// Runs `apply --allow-restart` killed at `point` (VIRTFLEET_FAULT).
fn apply_killed(lab: &Lab, point: &str) -> std::process::ExitStatus {
    let mut cmd = lab.vf_command(&[
        "apply",
        "--auto-approve",
        "--shutdown-timeout",
        "1s",
        "--allow-restart",
    ]);
    cmd.env("VIRTFLEET_FAULT", point)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.status().unwrap()
}

#[test]
fn a_move_killed_at_any_point_never_loses_the_machine_and_a_rerun_finishes_it() {
    let (_second, lab, uri2, r1, r2, hosts) = two_dir_hosts("t-movek");
    let dom = lab.m("mv");
    let root_vol = format!("{dom}-root");
    // Inside the move: after the stop, after the first disk's bytes, after
    // the first disk is in place; between h2's steps (image, move-in,
    // define, autostart); inside its last step, on h1.
    let points = [
        "move-stopped",
        "move-copied",
        "move-disk-in",
        "step#2",
        "step#3",
        "step#4",
        "destroy-undefined",
        "destroy-trashed-one",
    ];
    for point in points {
        lab.reset();
        write_mover(&lab, &hosts, "h1", "Stopped", 1);
        lab.apply(&[]).expect_code(0);
        assert!(qemu_io(&disk(&r1, &root_vol), "write", 0x3d));
        write_mover(&lab, &hosts, "h2", "Stopped", 1);
        let status = apply_killed(&lab, point);
        assert!(!status.success(), "{point}: the run was not killed");
        // Never lost: defined on one of the hosts with its disk there whole.
        let on1 = virsh(SYSTEM, &["dominfo", &dom]).0;
        let on2 = virsh(&uri2, &["dominfo", &dom]).0;
        assert!(on1 || on2, "{point}: the machine is defined nowhere");
        let whole = |r: &Path| {
            let f = disk(r, &root_vol);
            f.exists() && qemu_io(&f, "read", 0x3d)
        };
        assert!(
            (on1 && whole(&r1)) || (on2 && whole(&r2)),
            "{point}: no defined copy has its data"
        );
        // The re-run finishes the move.
        lab.apply(&["--allow-restart"]).expect_code(0);
        assert!(
            domains(SYSTEM, &lab.m("")).is_empty(),
            "{point}: still on h1"
        );
        assert_eq!(
            domains(&uri2, &lab.m("")),
            std::slice::from_ref(&dom),
            "{point}"
        );
        assert!(whole(&r2), "{point}: data on h2");
        assert!(
            common::dir_names(&r2.join("disks"))
                .iter()
                .all(|d| !d.starts_with(".new-")),
            "{point}: half-copied leftovers on h2"
        );
        lab.vf(&["plan", "--detailed-exitcode"]).expect_code(0);
    }
    drop(lab);
}

#[test]
fn a_move_that_fails_leaves_the_machine_running_on_its_old_host_and_says_so() {
    let (_second, lab, uri2, _r1, r2, hosts) = two_dir_hosts("t-movef");
    let dom = lab.m("mv");
    write_mover(&lab, &hosts, "h1", "Running", 1);
    lab.apply(&[]).expect_code(0);
    assert_eq!(virsh_ok(SYSTEM, &["domstate", &dom]).trim(), "running");
    // Something that is not virtfleet's sits where the copy would go: the
    // copy cannot start (virtfleet never overwrites or removes it).
    let blocker = r2.join("disks").join(format!(".new-{dom}-root"));
    std::fs::create_dir_all(&blocker).unwrap();
    std::fs::write(blocker.join("mine.txt"), "not virtfleet's").unwrap();
    write_mover(&lab, &hosts, "h2", "Running", 1);
    let out = lab.apply(&["--allow-restart"]).expect_code(1);
    assert!(
        out.stderr.contains(&format!(
            "machine {dom}: the move from h1 failed, the machine is still on h1, running again there"
        )),
        "{}",
        out.stderr
    );
    assert_eq!(virsh_ok(SYSTEM, &["domstate", &dom]).trim(), "running");
    assert!(domains(&uri2, &lab.m("")).is_empty());
    assert_eq!(
        std::fs::read_to_string(blocker.join("mine.txt")).unwrap(),
        "not virtfleet's"
    );
    // Cleared, the same plan goes through.
    std::fs::remove_dir_all(&blocker).unwrap();
    lab.apply(&["--allow-restart"]).expect_code(0);
    assert!(domains(SYSTEM, &lab.m("")).is_empty());
    assert_eq!(virsh_ok(&uri2, &["domstate", &dom]).trim(), "running");
    drop(lab);
}
