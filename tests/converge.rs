//! Plan and apply against the real libvirtd (started by the harness), with
//! `virsh` as the independent witness of what is really on the host.

mod common;

use common::lab::{Lab, SYSTEM, domains, virsh, virsh_ok};

const GIB: u64 = 1024 * 1024 * 1024;

fn capacity(dom: &str, target: &str) -> u64 {
    let out = virsh_ok(SYSTEM, &["domblkinfo", dom, target]);
    out.lines()
        .find_map(|l| l.strip_prefix("Capacity:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn state(dom: &str) -> String {
    virsh_ok(SYSTEM, &["domstate", dom]).trim().to_owned()
}

#[test]
fn converges_and_handles_every_action_class() {
    let lab = Lab::new("t-conv");
    let (a, b, c) = (lab.m("a"), lab.m("b"), lab.m("c"));
    let mut machines = vec![
        lab.machine("a", ""),
        lab.machine(
            "b",
            "protect = True, dataDisks = [ V.Disk::{ name = \"data\", sizeGiB = 1 } ]",
        ),
    ];
    lab.write(&machines);

    // Create: both defined and running, with the right disks and marker.
    let out = lab.apply(&[]).expect_code(0);
    assert!(out.stdout.contains("converged"), "{}", out.all());
    assert_eq!(domains(SYSTEM, &lab.m("")), [a.clone(), b.clone()]);
    assert_eq!(state(&a), "running");
    let xml = virsh_ok(SYSTEM, &["dumpxml", "--inactive", &b]);
    assert!(
        xml.contains("fleet=\"t-conv\"")
            && xml.contains(&format!("machine=\"{b}\""))
            && xml.contains("protect=\"true\""),
        "{xml}"
    );
    let blk = virsh_ok(SYSTEM, &["domblklist", &b]);
    let root = lab.root.join(format!("disks/{b}-root/disk.qcow2"));
    assert!(
        blk.contains(root.to_str().unwrap()) && blk.contains(&format!("disks/{b}-data/disk.qcow2")),
        "{blk}"
    );
    // The root disk is a copy-on-write overlay on the verified base image.
    let info = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(&root)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert!(
        info["backing-filename"]
            .as_str()
            .unwrap()
            .contains("/images/a74e6253c6b9"),
        "{info}"
    );
    assert_eq!(capacity(&a, "vda"), GIB);
    lab.vf(&["plan", "--detailed-exitcode"]).expect_code(0);

    // Add a machine.
    machines.push(lab.machine("c", ""));
    lab.write(&machines);
    let out = lab.vf(&["plan", "--detailed-exitcode"]).expect_code(2);
    assert!(
        out.stdout.contains(&format!("+ local/{c}")),
        "{}",
        out.stdout
    );
    lab.apply(&[]).expect_code(0);
    assert_eq!(state(&c), "running");

    // Memory down on a running guest: live, no restart needed.
    machines[0] = lab.machine("a", "memoryMiB = 96");
    lab.write(&machines);
    let out = lab.vf(&["plan"]).expect_code(0);
    assert!(
        out.stdout.contains("[live]") && out.stdout.contains("memory 128 → 96 MiB"),
        "{}",
        out.stdout
    );
    let id = virsh_ok(SYSTEM, &["domid", &a]);
    lab.apply(&[]).expect_code(0);
    let config = virsh_ok(SYSTEM, &["dumpxml", "--inactive", &a]);
    assert!(
        config.contains("<memory unit='KiB'>98304</memory>")
            && config.contains("<currentMemory unit='KiB'>98304</currentMemory>"),
        "{config}"
    );
    assert_eq!(
        virsh_ok(SYSTEM, &["domid", &a]),
        id,
        "same run of the guest: not restarted"
    );

    // vCPUs: restart class, pending without --allow-restart, applied with it.
    machines[0] = lab.machine("a", "memoryMiB = 96, cpus = 2");
    lab.write(&machines);
    let out = lab.apply(&[]).expect_code(4);
    assert!(
        out.stdout.contains("pending") && out.stdout.contains("--allow-restart"),
        "{}",
        out.all()
    );
    assert_eq!(
        virsh_ok(SYSTEM, &["vcpucount", &a, "--config", "--maximum"]).trim(),
        "1"
    );
    lab.apply(&["--allow-restart"]).expect_code(0);
    assert_eq!(
        virsh_ok(SYSTEM, &["vcpucount", &a, "--live", "--current"]).trim(),
        "2"
    );
    assert_eq!(state(&a), "running");

    // Grow the root disk of a running guest (live block resize).
    machines[0] = lab.machine("a", "memoryMiB = 96, cpus = 2, diskGiB = 2");
    lab.write(&machines);
    lab.apply(&[]).expect_code(0);
    assert_eq!(capacity(&a, "vda"), 2 * GIB);
    // A shrink is refused, and nothing else happens.
    machines[0] = lab.machine("a", "memoryMiB = 96, cpus = 2, diskGiB = 1");
    lab.write(&machines);
    let out = lab.apply(&[]).expect_code(1);
    assert!(out.all().contains("only grow"), "{}", out.all());
    assert_eq!(capacity(&a, "vda"), 2 * GIB);
    machines[0] = lab.machine("a", "memoryMiB = 96, cpus = 2, diskGiB = 2");

    // Power: Stopped stops (restart class), Running starts again.
    machines[2] = lab.machine("c", "power = V.Power.Stopped");
    lab.write(&machines);
    lab.apply(&["--allow-restart"]).expect_code(0);
    assert_eq!(state(&c), "shut off");
    machines[2] = lab.machine("c", "");
    lab.write(&machines);
    lab.apply(&[]).expect_code(0);
    assert_eq!(state(&c), "running");

    // Remove c: refused without --allow-destroy, then trashed and restorable.
    std::fs::write(lab.root.join(format!("disks/{c}-root/marker")), "mine").unwrap();
    machines.pop();
    lab.write(&machines);
    let out = lab.apply(&[]).expect_code(4);
    assert!(out.stdout.contains("--allow-destroy"), "{}", out.all());
    assert_eq!(state(&c), "running", "not destroyed without permission");
    lab.apply(&["--allow-destroy"]).expect_code(0);
    assert!(!virsh(SYSTEM, &["dominfo", &c]).0, "domain undefined");
    let trash = lab.entries("trash");
    assert!(
        trash.len() == 1 && trash[0].starts_with(&format!("{c}-root@")),
        "{trash:?}"
    );
    let out = lab.vf(&["restore", &c]).expect_code(1);
    assert!(
        out.stderr.contains("not in"),
        "restore needs the machine in the fleet: {}",
        out.stderr
    );
    machines.push(lab.machine("c", ""));
    lab.write(&machines);
    lab.vf(&["restore", &c]).expect_code(0);
    assert_eq!(
        std::fs::read_to_string(lab.root.join(format!("disks/{c}-root/marker"))).unwrap(),
        "mine"
    );
    lab.apply(&[]).expect_code(0);
    assert_eq!(state(&c), "running");
    assert!(lab.entries("trash").is_empty());

    // The protected machine is never destroyed, even when removed with --allow-destroy.
    machines.remove(1);
    lab.write(&machines);
    let out = lab.apply(&["--allow-destroy"]).expect_code(1);
    assert!(out.all().contains("protected"), "{}", out.all());
    assert_eq!(state(&b), "running");
    assert!(lab.root.join(format!("disks/{b}-root")).is_dir());
}

#[test]
fn drift_is_detected_and_unmanaged_domains_are_left_alone() {
    let lab = Lab::new("t-drift");
    let d = lab.m("d");
    lab.write(&[lab.machine("d", "")]);
    lab.apply(&[]).expect_code(0);

    // Out-of-band change to the definition.
    virsh_ok(SYSTEM, &["setmaxmem", &d, "160M", "--config"]);
    let out = lab.vf(&["plan", "--detailed-exitcode"]).expect_code(2);
    assert!(
        out.stdout.contains("drift: changed outside virtfleet")
            && out.stdout.contains("memory 160 → 128 MiB"),
        "{}",
        out.stdout
    );
    lab.apply(&["--allow-restart"]).expect_code(0);
    lab.vf(&["plan", "--detailed-exitcode"]).expect_code(0);

    // A domain created with virsh is listed and never changed, even with --allow-destroy.
    let x = lab.m("x");
    let xml = format!(
        "<domain type='qemu'><name>{x}</name><memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os></domain>"
    );
    let file = lab.root.join("x.xml");
    std::fs::write(&file, xml).unwrap();
    virsh_ok(SYSTEM, &["define", file.to_str().unwrap()]);
    let before = virsh_ok(SYSTEM, &["dumpxml", "--inactive", &x]);
    let out = lab
        .vf(&["plan", "--detailed-exitcode", "--allow-destroy"])
        .expect_code(0);
    assert!(
        out.stdout.contains(&format!("domain {x}")),
        "listed as unmanaged: {}",
        out.stdout
    );
    lab.apply(&["--allow-destroy", "--allow-restart"])
        .expect_code(0);
    assert_eq!(virsh_ok(SYSTEM, &["dumpxml", "--inactive", &x]), before);
    let status = lab.vf(&["status"]).expect_code(0);
    assert!(
        status.stdout.contains(&format!("domain {x}")) && status.stdout.contains("in sync"),
        "{}",
        status.stdout
    );

    // A machine whose name is taken by an unmanaged domain is refused, not adopted.
    lab.write(&[lab.machine("d", ""), lab.machine("x", "")]);
    let out = lab.vf(&["plan"]).expect_code(1);
    assert!(
        out.stdout.contains("not managed by fleet"),
        "{}",
        out.stdout
    );
    assert_eq!(virsh_ok(SYSTEM, &["dumpxml", "--inactive", &x]), before);
}

#[test]
fn saved_plan_is_applied_exactly_and_a_stale_one_is_refused() {
    let lab = Lab::new("t-saved");
    let plan_file = lab.root.join("p.plan");
    let p = plan_file.to_str().unwrap();
    lab.write(&[lab.machine("s", "")]);
    lab.vf(&["plan", "--out", p]).expect_code(0);
    // Changing the fleet after the plan was saved makes it stale.
    lab.write(&[lab.machine("s", "memoryMiB = 100")]);
    let out = lab.vf(&["apply", p, "--auto-approve"]).expect_code(1);
    assert!(out.stderr.contains("stale plan"), "{}", out.stderr);
    assert!(domains(SYSTEM, &lab.m("")).is_empty(), "nothing applied");

    lab.vf(&["plan", "--out", p]).expect_code(0);
    lab.vf(&["apply", p, "--auto-approve"]).expect_code(0);
    assert_eq!(state(&lab.m("s")), "running");
    lab.vf(&["plan", "--detailed-exitcode"]).expect_code(0);

    // A host that changed after the plan was saved makes it stale too.
    lab.write(&[lab.machine("s", "memoryMiB = 96")]);
    lab.vf(&["plan", "--out", p]).expect_code(0);
    virsh_ok(SYSTEM, &["setmaxmem", &lab.m("s"), "200M", "--config"]);
    let out = lab.vf(&["apply", p, "--auto-approve"]).expect_code(1);
    assert!(
        out.stderr.contains("stale plan") && out.stderr.contains("host local"),
        "{}",
        out.stderr
    );

    // Without a terminal and without --auto-approve, apply refuses.
    let out = lab.vf(&["apply"]).expect_code(1);
    assert!(out.stderr.contains("--auto-approve"), "{}", out.stderr);
}

#[test]
fn crash_during_apply_is_recovered_by_re_running() {
    use std::io::{BufRead, BufReader};
    let lab = Lab::new("t-crash");
    let names = ["c1", "c2", "c3", "c4", "c5", "c6"];
    lab.write(
        &names
            .iter()
            .map(|n| lab.machine(n, "dataDisks = [ V.Disk::{ name = \"d\", sizeGiB = 1 } ]"))
            .collect::<Vec<_>>(),
    );
    let mut child = lab
        .vf_command(&["apply", "--auto-approve"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut done = 0;
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        if line.unwrap().contains("... done") {
            done += 1;
            if done == 9 {
                // SIGKILL mid-way: some disks created, some domains defined.
                child.kill().unwrap();
                break;
            }
        }
    }
    child.wait().unwrap();
    assert_eq!(done, 9, "apply ended before it could be killed");
    let out = lab.apply(&[]).expect_code(0);
    assert!(out.stdout.contains("converged"), "{}", out.all());
    lab.vf(&["plan", "--detailed-exitcode"]).expect_code(0);
    // No orphans: exactly the fleet's domains and disks, no half-made directories.
    let want: Vec<String> = names.iter().map(|n| lab.m(n)).collect();
    assert_eq!(domains(SYSTEM, &lab.m("")), want);
    let mut disks: Vec<String> = want
        .iter()
        .flat_map(|m| [format!("{m}-d"), format!("{m}-root")])
        .collect();
    disks.sort();
    assert_eq!(lab.entries("disks"), disks);
}

#[test]
fn ci_style_plans_from_a_saved_observation_and_destroy_by_name() {
    let lab = Lab::new("t-ci");
    let (k, l) = (lab.m("k"), lab.m("l"));
    lab.write(&[lab.machine("k", ""), lab.machine("l", "")]);
    lab.apply(&[]).expect_code(0);

    // The timer publishes an observation; CI plans against it without any host.
    let obs = lab.root.join("observed.json");
    lab.vf(&["observe", "--out", obs.to_str().unwrap()])
        .expect_code(0);
    lab.write(&[lab.machine("k", "memoryMiB = 100"), lab.machine("l", "")]);
    virsh_ok(SYSTEM, &["setmaxmem", &l, "150M", "--config"]);
    // The saved observation predates that virsh change: the plan shows only k.
    let md = lab
        .vf(&[
            "plan",
            "--observed",
            obs.to_str().unwrap(),
            "--format",
            "markdown",
            "--detailed-exitcode",
        ])
        .expect_code(2);
    assert!(
        md.stdout.starts_with("### virtfleet plan for `t-ci`"),
        "{}",
        md.stdout
    );
    assert!(
        md.stdout.contains("observation from a file, taken"),
        "{}",
        md.stdout
    );
    assert!(
        md.stdout.contains(&format!("`local/{k}`")) && !md.stdout.contains(&format!("`local/{l}`")),
        "{}",
        md.stdout
    );
    let json = lab
        .vf(&["plan", "--observed", obs.to_str().unwrap(), "--json"])
        .expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["formatVersion"], 1);
    assert_eq!(v["inputs"]["fromFile"], true);
    assert_eq!(v["changes"][0]["action"]["type"], "updateDomain");
    assert_eq!(v["changes"][0]["disruption"], "live");
    // A plan made from a saved observation cannot be applied.
    let p = lab.root.join("from-file.plan");
    lab.vf(&[
        "plan",
        "--observed",
        obs.to_str().unwrap(),
        "--out",
        p.to_str().unwrap(),
    ])
    .expect_code(0);
    let out = lab
        .vf(&["apply", p.to_str().unwrap(), "--auto-approve"])
        .expect_code(1);
    assert!(out.stderr.contains("saved observation"), "{}", out.stderr);

    // status --json shows drift (the live plan sees the virsh change on l).
    let st = lab.vf(&["status", "--json"]).expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    let machines = v["hosts"]["local"]["machines"].as_array().unwrap();
    let sync = |n: &str| {
        machines.iter().find(|m| m["name"] == n).unwrap()["sync"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(sync(&l).contains("update domain"), "{machines:?}");
    assert_eq!(
        machines.iter().find(|m| m["name"] == l.as_str()).unwrap()["state"],
        "running"
    );

    // destroy NAME: refused while in the fleet, then --force trashes it.
    let out = lab.vf(&["destroy", &l, "--auto-approve"]).expect_code(1);
    assert!(out.stderr.contains("still in"), "{}", out.stderr);
    lab.vf(&[
        "destroy",
        &l,
        "--force",
        "--auto-approve",
        "--shutdown-timeout",
        "1s",
    ])
    .expect_code(0);
    assert_eq!(domains(SYSTEM, &lab.m("")), [k]);
    assert!(
        lab.entries("trash")
            .iter()
            .any(|e| e.starts_with(&format!("{l}-root@")))
    );
}
