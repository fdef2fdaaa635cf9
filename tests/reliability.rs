//! Faults and tampering on a real Dir host (the system libvirtd), each
//! found by probing a running fleet: the fix is checked with independent
//! witnesses (`virsh`, `qemu-img`, the file system).

mod common;

use common::lab::{Lab, SYSTEM, virsh, virsh_ok};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn base_image(lab: &Lab) -> std::path::PathBuf {
    let images = lab.entries("images");
    let name = images
        .iter()
        .find(|n| n.ends_with(".raw"))
        .unwrap_or_else(|| panic!("a base image in {images:?}"));
    lab.root.join("images").join(name)
}

#[test]
fn regression_a_corrupted_base_image_on_the_host_is_drift_and_repaired() {
    let lab = Lab::new("t-rel-base");
    lab.write(&[lab.machine("a", "power = V.Power.Stopped")]);
    lab.apply(&[]).expect_code(0);
    let base = base_image(&lab);
    let good = std::fs::read(&base).unwrap();
    // One byte flipped on the host, as a failing disk or a person would.
    let mut bad = good.clone();
    bad[100] ^= 0xff;
    let mut perm = std::fs::metadata(&base).unwrap().permissions();
    perm.set_mode(0o644);
    std::fs::set_permissions(&base, perm).unwrap();
    std::fs::write(&base, &bad).unwrap();

    let out = lab.vf(&["plan", "--detailed-exitcode"]).expect_code(2);
    assert!(
        out.stdout
            .contains("changed on the host since it was verified"),
        "{}",
        out.all()
    );
    lab.apply(&[]).expect_code(0);
    assert_eq!(
        std::fs::read(&base).unwrap(),
        good,
        "the pinned bytes are back"
    );
    assert_eq!(mode(&base), 0o444);
    lab.vf(&["plan", "--detailed-exitcode"]).expect_code(0);
}

#[test]
fn regression_pretty_printed_owner_files_stay_managed() {
    let lab = Lab::new("t-rel-owner");
    let a = lab.m("a");
    lab.write(&[lab.machine("a", "power = V.Power.Stopped")]);
    lab.apply(&[]).expect_code(0);
    let owner = lab.root.join(format!("disks/{a}-root/owner.json"));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&owner).unwrap()).unwrap();
    std::fs::write(&owner, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let out = lab.vf(&["plan", "--detailed-exitcode"]).expect_code(0);
    // (Other tests' domains on the shared libvirtd may be listed.)
    assert!(
        !out.stdout.contains(&format!("disks/{a}-root")),
        "{}",
        out.all()
    );
}

#[test]
fn regression_another_fleets_half_made_disk_is_never_deleted() {
    let lab = Lab::new("t-rel-new");
    let a = lab.m("a");
    // Another fleet is creating a disk with the volume name this fleet
    // wants: its directory must survive this fleet's apply untouched.
    let theirs = lab.root.join(format!("disks/.new-{a}-root"));
    std::fs::create_dir_all(&theirs).unwrap();
    let marker = format!("{{\"fleet\":\"other\",\"machine\":\"{a}\",\"disk\":\"root\"}}\n");
    std::fs::write(theirs.join("owner.json"), &marker).unwrap();
    std::fs::write(theirs.join("disk.qcow2"), b"their bytes").unwrap();
    lab.write(&[lab.machine("a", "power = V.Power.Stopped")]);
    let plan = lab.vf(&["plan"]).expect_code(0);
    assert!(
        plan.stdout.contains(&format!("file disks/.new-{a}-root")),
        "{}",
        plan.all()
    );
    let out = lab.apply(&[]);
    assert_eq!(out.code, Some(1), "the creation must fail: {}", out.all());
    assert!(out.all().contains("already exists"), "{}", out.all());
    assert_eq!(
        std::fs::read(theirs.join("disk.qcow2")).unwrap(),
        b"their bytes"
    );
    assert_eq!(
        std::fs::read_to_string(theirs.join("owner.json")).unwrap(),
        marker
    );
}

#[test]
fn guest_disks_are_private() {
    let lab = Lab::new("t-rel-mode");
    let a = lab.m("a");
    lab.write(&[lab.machine("a", "")]);
    lab.apply(&[]).expect_code(0);
    // The guest runs: QEMU (libvirt-qemu) can use its private disk.
    assert_eq!(virsh_ok(SYSTEM, &["domstate", &a]).trim(), "running");
    let dir = lab.root.join(format!("disks/{a}-root"));
    assert_eq!(mode(&dir), 0o711, "{}", dir.display());
    assert_eq!(mode(&dir.join("disk.qcow2")), 0o600);
    assert_eq!(mode(&lab.root.join("disks")), 0o711);
    // Trashed, it stays private.
    lab.write(&[]);
    lab.apply(&["--allow-destroy"]).expect_code(0);
    let trash = lab.entries("trash");
    assert_eq!(trash.len(), 1, "{trash:?}");
    let entry = lab.root.join("trash").join(&trash[0]);
    assert_eq!(mode(&entry.join("disk.qcow2")), 0o600);
    assert_eq!(mode(&lab.root.join("trash")), 0o711);
}

#[test]
fn regression_a_policy_of_zero_still_prunes_old_snapshots_on_dir_hosts() {
    let lab = Lab::new("t-rel-zero");
    let a = lab.m("a");
    let daily = |n: u32| {
        lab.machine(
            "a",
            &format!("power = V.Power.Stopped, snapshots = V.Snapshots::{{ daily = {n} }}"),
        )
    };
    lab.write(&[daily(1)]);
    lab.apply(&[]).expect_code(0);
    let snaps = lab.vf(&["snapshots", &a]).expect_code(0);
    assert!(snaps.stdout.contains("vf-daily-"), "{}", snaps.all());
    lab.write(&[daily(0)]);
    let out = lab.vf(&["plan"]).expect_code(0);
    assert!(
        out.stdout.contains("prune snapshot vf-daily-"),
        "{}",
        out.all()
    );
    lab.apply(&["--allow-destroy"]).expect_code(0);
    let snaps = lab.vf(&["snapshots", &a]).expect_code(0);
    assert!(!snaps.stdout.contains("vf-daily-"), "{}", snaps.all());
    assert!(snaps.stdout.contains("vf-init"), "{}", snaps.all());
}

#[test]
fn regression_an_unreadable_disk_size_is_an_error_not_a_grow_from_zero() {
    let lab = Lab::new("t-rel-size");
    let a = lab.m("a");
    lab.write(&[lab.machine("a", "power = V.Power.Stopped")]);
    lab.apply(&[]).expect_code(0);
    // The qcow2 header is destroyed: qemu-img cannot read the size.
    let disk = lab.root.join(format!("disks/{a}-root/disk.qcow2"));
    std::fs::write(&disk, b"not a qcow2 image").unwrap();
    let out = lab.vf(&["plan", "--detailed-exitcode"]);
    assert!(!out.stdout.contains("grow"), "{}", out.all());
    assert_eq!(
        out.code,
        Some(3),
        "the host's observation failed: {}",
        out.all()
    );
    assert!(out.all().contains(&format!("{a}-root")), "{}", out.all());
}

/// Runs `a` (a running guest that ignores ACPI), then, in the background,
/// an apply that stops it: that run holds its locks for `seconds`, the
/// whole shutdown timeout. Returns it once it holds them.
fn busy_apply(lab: &Lab, seconds: u32) -> std::process::Child {
    lab.write(&[lab.machine("a", "")]);
    lab.apply(&[]).expect_code(0);
    lab.write(&[lab.machine("a", "power = V.Power.Stopped")]);
    let timeout = format!("{seconds}s");
    let child = lab
        .vf_command(&[
            "apply",
            "--auto-approve",
            "--allow-restart",
            "--shutdown-timeout",
            &timeout,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It takes its locks within a second (load, observe, plan).
    std::thread::sleep(std::time::Duration::from_secs(2));
    child
}

#[test]
fn a_second_apply_of_the_same_fleet_is_refused_at_once() {
    let lab = Lab::new("t-rel-lock");
    let a = lab.m("a");
    let first = busy_apply(&lab, 6);
    let started = std::time::Instant::now();
    let second = lab.apply(&["--allow-restart"]);
    assert_eq!(second.code, Some(1), "{}", second.all());
    assert!(
        second
            .stderr
            .contains(&format!("being changed by another run: pid {}", first.id())),
        "{}",
        second.all()
    );
    assert!(
        second.stderr.contains("nothing was done"),
        "{}",
        second.all()
    );
    assert!(
        started.elapsed().as_secs() < 5,
        "refused at once, not after waiting"
    );
    // `plan` never waits for the lock.
    lab.vf(&["plan"]).expect_code(0);
    finished_and_stopped(first, &a);
}

/// Waits for the busy run: it succeeded, and the guest is off.
fn finished_and_stopped(run: std::process::Child, machine: &str) {
    let out = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(virsh_ok(SYSTEM, &["domstate", machine]).trim(), "shut off");
}

/// A lease as another controller would leave it on a Dir host.
fn foreign_lease(lab: &Lab, expires: u64) {
    let dir = lab.root.join("lease");
    std::fs::create_dir_all(&dir).unwrap();
    let lease = serde_json::json!({
        "id": "elsewhere-4242-1",
        "fleet": lab.name,
        "controller": "elsewhere",
        "pid": 4242,
        "user": "bob",
        "command": "virtfleet apply",
        "since": 1_700_000_000u64,
        "expires": expires,
    });
    std::fs::write(dir.join("holder.json"), lease.to_string()).unwrap();
}

#[test]
fn a_host_leased_by_another_controller_is_left_alone_until_broken() {
    let lab = Lab::new("t-rel-lease");
    let a = lab.m("a");
    lab.write(&[lab.machine("a", "power = V.Power.Stopped")]);
    foreign_lease(&lab, 4_000_000_000);
    // The lease is shown, and is no object of any fleet.
    let status = lab.vf(&["status"]).expect_code(0);
    assert!(
        status
            .stdout
            .contains("leased by bob on elsewhere pid 4242"),
        "{}",
        status.all()
    );
    assert!(!status.stdout.contains("file lease"), "{}", status.all());
    let out = lab.apply(&[]).expect_code(1);
    assert!(
        out.stderr
            .contains("host local is being changed by another run: bob on elsewhere pid 4242"),
        "{}",
        out.all()
    );
    assert!(out.stderr.contains("--break-lock"), "{}", out.all());
    assert!(lab.entries("disks").is_empty(), "nothing was made");
    // Broken explicitly: the apply converges and releases its own lease.
    lab.apply(&["--break-lock"]).expect_code(0);
    assert_eq!(virsh_ok(SYSTEM, &["domstate", &a]).trim(), "shut off");
    assert!(!lab.root.join("lease").exists());
    // A lapsed lease is broken without asking.
    foreign_lease(&lab, 1_700_000_000);
    lab.write(&[]);
    lab.apply(&["--allow-destroy"]).expect_code(0);
}

#[test]
fn two_controllers_never_change_one_host_at_once() {
    let lab = Lab::new("t-rel-two");
    let a = lab.m("a");
    let first = busy_apply(&lab, 6);
    // Another controller: its own state directory, so no shared run lock;
    // only the host's lease stands between them.
    let other = tempfile::tempdir().unwrap();
    let second = lab.vf(&[
        "--state-dir",
        other.path().to_str().unwrap(),
        "apply",
        "--auto-approve",
        "--allow-restart",
        "--shutdown-timeout",
        "1s",
    ]);
    assert_eq!(second.code, Some(1), "{}", second.all());
    assert!(
        second
            .stderr
            .contains("host local is being changed by another run: root on "),
        "{}",
        second.all()
    );
    assert!(
        second.stderr.contains(&format!(" pid {} ", first.id())),
        "{}",
        second.all()
    );
    finished_and_stopped(first, &a);
    assert!(!lab.root.join("lease").exists(), "released");
}

#[test]
fn a_killed_run_leaves_no_lease_that_blocks_this_controller() {
    let lab = Lab::new("t-rel-kill");
    let mut first = busy_apply(&lab, 30);
    assert!(lab.root.join("lease").exists(), "the run holds the lease");
    first.kill().unwrap(); // SIGKILL: no chance to release anything
    first.wait().unwrap();
    assert!(lab.root.join("lease").exists(), "its lease is left behind");
    // Its process is gone from this controller: the lease is stale.
    lab.apply(&["--allow-restart"]).expect_code(0);
    assert!(!lab.root.join("lease").exists());
}

/// (name, VM state size) of each internal snapshot of a qcow2 file.
fn qcow2_snapshots(path: &Path) -> Vec<(String, u64)> {
    let out = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(path)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["snapshots"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["name"].as_str().unwrap().to_owned(),
                        s["vm-state-size"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn regression_a_new_data_disk_gets_its_own_init_snapshot_and_the_root_keeps_its_own() {
    for (lab, power) in [
        (Lab::new("t-rel-ddr"), ""),
        (Lab::new("t-rel-dds"), "power = V.Power.Stopped"),
    ] {
        let a = lab.m("a");
        lab.write(&[lab.machine("a", power)]);
        lab.apply(&[]).expect_code(0);
        let root = lab.root.join(format!("disks/{a}-root/disk.qcow2"));
        let pristine = qcow2_snapshots(&root);
        assert_eq!(pristine, [("vf-init".to_owned(), 0)], "{power}");
        let with_data = format!(
            "{power}{}dataDisks = [ V.Disk::{{ name = \"data\", sizeGiB = 1 }} ]",
            if power.is_empty() { "" } else { ", " }
        );
        lab.write(&[lab.machine("a", &with_data)]);
        lab.apply(&["--allow-restart"]).expect_code(0);
        // The root disk's pristine vf-init is untouched: still one, with
        // no memory state (not a live checkpoint taken now).
        assert_eq!(qcow2_snapshots(&root), pristine, "{power}");
        let data = lab.root.join(format!("disks/{a}-data/disk.qcow2"));
        assert_eq!(
            qcow2_snapshots(&data),
            [("vf-init".to_owned(), 0)],
            "{power}"
        );
        lab.vf(&["plan", "--detailed-exitcode"]).expect_code(0);
    }
}

#[test]
fn regression_an_edited_saved_plan_is_refused() {
    let lab = Lab::new("t-rel-edit");
    let a = lab.m("a");
    lab.write(&[lab.machine("a", "power = V.Power.Stopped")]);
    // Something this fleet does not own, in its storage.
    let foreign = lab.root.join("disks/foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    // Outside the storage root: a new file there is a change of the host.
    let dir = tempfile::tempdir().unwrap();
    let plan_file = dir.path().join("p.plan");
    let p = plan_file.to_str().unwrap();
    lab.vf(&["plan", "--out", p]).expect_code(0);
    // By hand: trash the foreign directory too.
    let mut plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&plan_file).unwrap()).unwrap();
    plan["changes"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "address": "local/foreign", "host": "local", "machine": a,
            "action": { "type": "trashDisk", "volume": "foreign" },
            "disruption": "destructive", "reason": "edited",
        }));
    std::fs::write(&plan_file, plan.to_string()).unwrap();
    let out = lab.apply(&[p]).expect_code(1);
    assert!(out.stderr.contains("--allow-destroy"), "{}", out.all());
    let out = lab.apply(&[p, "--allow-destroy"]).expect_code(1);
    assert!(out.stderr.contains("was it edited?"), "{}", out.all());
    assert!(foreign.exists(), "nothing foreign was touched");
    assert!(lab.entries("trash").is_empty());
    assert!(!virsh(SYSTEM, &["domstate", &a]).0, "nothing was made");
    // The plan as made is applied.
    lab.vf(&["plan", "--out", p]).expect_code(0);
    lab.apply(&[p]).expect_code(0);
}

#[test]
fn apply_names_the_hosts_it_could_not_check() {
    let lab = Lab::new("t-rel-gone");
    let hosts = [
        lab.host("local", SYSTEM, &lab.root),
        lab.host(
            "gone",
            "qemu+unix:///system?socket=/run/virtfleet-tests-none/sock",
            &lab.root.join("gone"),
        ),
    ];
    let machine = lab.machine("a", "power = V.Power.Stopped, host = Some \"local\"");
    lab.write_hosts(&hosts, &[machine], "");
    let out = lab.apply(&[]).expect_code(3);
    assert!(
        out.stdout.contains("not observed, so not checked: gone"),
        "{}",
        out.all()
    );
    assert!(
        !out.stdout.contains("re-observed every host"),
        "{}",
        out.all()
    );
}

#[test]
fn saved_plans_observations_and_host_files_are_private() {
    let lab = Lab::new("t-rel-priv");
    let a = lab.m("a");
    lab.write(&[lab.machine("a", "power = V.Power.Stopped")]);
    lab.apply(&[]).expect_code(0);
    let dir = tempfile::tempdir().unwrap();
    let (plan, obs) = (dir.path().join("p.plan"), dir.path().join("o.json"));
    lab.vf(&["plan", "--out", plan.to_str().unwrap()])
        .expect_code(0);
    lab.vf(&["observe", "--out", obs.to_str().unwrap()])
        .expect_code(0);
    // The test runs under umask 022: without care these would be 0644.
    assert_eq!(mode(&plan), 0o600);
    assert_eq!(mode(&obs), 0o600);
    let owner = lab.root.join(format!("disks/{a}-root/owner.json"));
    assert_eq!(mode(&owner), 0o600);
    // The lockfile is shared: it follows the umask.
    let lock = lab.fleet().with_file_name("images.lock");
    assert_eq!(mode(&lock), 0o644);
}

/// Runs `plan`'s changes through the executor directly (as a hand-edited
/// or aged plan would reach it), with `permits`.
fn execute(
    lab: &Lab,
    plan: &virtfleet::plan::Plan,
    permits: virtfleet::apply::Permits,
) -> virtfleet::apply::Report {
    let fleet = virtfleet::fleet::load(&lab.fleet()).unwrap();
    let lock =
        virtfleet::lock::ImageLock::read(&lab.fleet().with_file_name("images.lock")).unwrap();
    let cache = virtfleet::lock::cache::Cache::new(lab.fleet().with_file_name("cache"));
    let settings = virtfleet::apply::Settings {
        now: plan.inputs.now,
        shutdown_grace: std::time::Duration::from_secs(1),
        on_failure: virtfleet::apply::OnFailure::Stop,
        break_lock: false,
        permits,
        concurrency: 1,
        stop: None,
    };
    virtfleet::apply::apply(
        plan,
        &fleet,
        &lock,
        &cache,
        settings,
        &virtfleet::apply::NoEvents,
    )
}

#[test]
fn the_executor_checks_permission_and_ownership_right_before_it_destroys() {
    let lab = Lab::new("t-rel-recheck");
    let a = lab.m("a");
    lab.write(&[lab.machine("a", "power = V.Power.Stopped")]);
    lab.apply(&[]).expect_code(0);
    // Removed from the fleet: the plan destroys it (with permission).
    lab.write(&[]);
    let fleet = virtfleet::fleet::load(&lab.fleet()).unwrap();
    let lock =
        virtfleet::lock::ImageLock::read(&lab.fleet().with_file_name("images.lock")).unwrap();
    let obs = virtfleet::observe::observe(&fleet, 1_900_000_000);
    let opts = virtfleet::plan::Options {
        now: 1_900_000_000,
        allow_destroy: true,
        ..Default::default()
    };
    let plan = virtfleet::plan::plan(&fleet, &lock, &obs, opts);
    assert!(
        plan.changes
            .iter()
            .any(|c| matches!(c.action, virtfleet::plan::Action::Destroy { .. })),
        "{plan:?}"
    );
    let failure = |r: &virtfleet::apply::Report| {
        r.failures()
            .map(|(_, s)| format!("{:?}", s.outcome))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let untouched = || {
        assert!(
            virsh(SYSTEM, &["domstate", &a]).0,
            "the domain is still defined"
        );
        assert!(lab.root.join(format!("disks/{a}-root/disk.qcow2")).exists());
    };
    // Without the permission the executor refuses, whatever the plan holds.
    let no = virtfleet::apply::Permits {
        destroy: false,
        restart: true,
    };
    let r = execute(&lab, &plan, no);
    assert!(failure(&r).contains("was not permitted"), "{}", failure(&r));
    untouched();
    // The disk changed hands since the plan was made: refused on the host.
    let owner = lab.root.join(format!("disks/{a}-root/owner.json"));
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&owner).unwrap()).unwrap();
    v["fleet"] = "someone-else".into();
    std::fs::write(&owner, v.to_string()).unwrap();
    let r = execute(&lab, &plan, virtfleet::apply::Permits::ALL);
    assert!(
        failure(&r).contains("not owned by fleet") && failure(&r).contains("someone-else"),
        "{}",
        failure(&r)
    );
    untouched();
}

#[test]
fn regression_a_protected_machine_keeps_its_disks_when_its_domain_vanishes() {
    let lab = Lab::new("t-rel-prot");
    let a = lab.m("a");
    lab.write(&[lab.machine("a", "power = V.Power.Stopped, protect = True")]);
    lab.apply(&[]).expect_code(0);
    let owner = lab.root.join(format!("disks/{a}-root/owner.json"));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&owner).unwrap()).unwrap();
    assert_eq!(v["protect"], true, "recorded on the disk: {v}");
    // Someone undefines the domain by hand, and the machine leaves the fleet.
    virsh_ok(SYSTEM, &["undefine", &a]);
    lab.write(&[]);
    let out = lab.apply(&["--allow-destroy"]).expect_code(1);
    assert!(
        out.stdout
            .contains(&format!("belongs to protected machine {a}")),
        "{}",
        out.all()
    );
    assert!(lab.root.join(format!("disks/{a}-root/disk.qcow2")).exists());
    assert!(lab.entries("trash").is_empty());
    // Protection lifted in the fleet is lifted from the disk, in a plan.
    lab.write(&[lab.machine("a", "power = V.Power.Stopped")]);
    let out = lab.apply(&[]).expect_code(0);
    assert!(out.stdout.contains("unmark disk"), "{}", out.stdout);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&owner).unwrap()).unwrap();
    assert!(v.get("protect").is_none(), "{v}");
}
