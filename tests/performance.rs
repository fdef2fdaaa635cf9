//! Issue 11 on the real system libvirtd: observation reads only what may be
//! this fleet's and keeps every ownership guarantee; a host's steps overlap
//! (guests that ignore ACPI share one shutdown timeout) while each
//! machine's steps keep their order; a base image on this machine is the
//! cache's file, not a second copy; `apply` says when changes stay pending.

mod common;

use common::lab::{Lab, SYSTEM, virsh, virsh_ok};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Defines a stopped domain outside virtfleet from `inner` (the elements
/// after `<name>`).
fn define(lab: &Lab, name: &str, uuid: Option<&str>, inner: &str) {
    let uuid = uuid
        .map(|u| format!("<uuid>{u}</uuid>"))
        .unwrap_or_default();
    let xml = format!(
        "<domain type='qemu'><name>{name}</name>{uuid}<memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os>{inner}</domain>"
    );
    let file = lab.root.join(format!("{name}.xml"));
    std::fs::write(&file, xml).unwrap();
    virsh_ok(SYSTEM, &["define", file.to_str().unwrap()]);
}

/// The saved observation of host `local`: domain name → its JSON.
fn observed_domains(lab: &Lab) -> BTreeMap<String, serde_json::Value> {
    let file = lab.root.join("obs.json");
    lab.vf(&["observe", "--out", file.to_str().unwrap()])
        .expect_code(0);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let domains = v["hosts"]["local"]["domains"]
        .as_object()
        .unwrap_or_else(|| panic!("host local observed: {v}"));
    domains
        .iter()
        .filter(|(n, _)| n.starts_with(&lab.m("")))
        .map(|(n, d)| (n.clone(), d.clone()))
        .collect()
}

#[test]
fn observation_reads_only_what_may_be_this_fleets_and_keeps_ownership() {
    let lab = Lab::new("t-perf-obs");
    let (a, gone) = (lab.m("a"), lab.m("gone"));
    lab.write(&[
        lab.machine("a", "power = V.Power.Stopped"),
        lab.machine("gone", "power = V.Power.Stopped"),
    ]);
    lab.apply(&[]).expect_code(0);
    // `gone` leaves the fleet: its domain is still recognised as this
    // fleet's (by the UUID the fleet gives it, then by its marker).
    lab.write(&[lab.machine("a", "power = V.Power.Stopped")]);

    // A foreign domain with a disk virtfleet must not look at.
    let stranger = lab.m("stranger");
    let disk = lab.root.join("stranger.qcow2");
    define(
        &lab,
        &stranger,
        None,
        &format!(
            "<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/><target dev='vda' bus='virtio'/></disk></devices>",
            disk.display()
        ),
    );
    // A copy of this fleet's marker on a domain virtfleet did not make (a
    // hand-made clone: another name, its own UUID) is not adopted.
    let a_xml = virsh_ok(SYSTEM, &["dumpxml", "--inactive", &a]);
    let marker_start = a_xml.find("<metadata>").unwrap();
    let marker_end = a_xml.find("</metadata>").unwrap() + "</metadata>".len();
    let clone = lab.m("clone");
    define(&lab, &clone, None, &a_xml[marker_start..marker_end]);

    let obs = observed_domains(&lab);
    assert_eq!(
        obs.keys().cloned().collect::<Vec<_>>(),
        {
            let mut v = vec![a.clone(), clone.clone(), gone.clone(), stranger.clone()];
            v.sort();
            v
        },
        "every domain is listed, foreign ones too"
    );
    let owner = |n: &str| {
        obs[n]["config"]["owner"]["fleet"]
            .as_str()
            .map(str::to_owned)
    };
    assert_eq!(owner(&a).as_deref(), Some(lab.name.as_str()));
    assert_eq!(owner(&gone).as_deref(), Some(lab.name.as_str()));
    assert_eq!(owner(&clone), None, "a copied marker is not ownership");
    assert_eq!(owner(&stranger), None);
    // The foreign domain was known by name and state only: its devices and
    // definition were not read.
    assert_eq!(obs[&stranger]["config"]["disks"], serde_json::json!([]));
    assert_eq!(obs[&stranger]["diskSizes"], serde_json::json!({}));
    assert_eq!(obs[&stranger]["state"], "stopped");
    assert_eq!(obs[&stranger]["config"]["uuid"].as_str().unwrap().len(), 36);
    // This fleet's domains are read in full; the disk's size comes from
    // the storage.
    assert_eq!(obs[&a]["config"]["memoryMib"], 128);
    assert_eq!(obs[&a]["config"]["disks"][0]["target"], "vda");

    // The plan: `gone` is to be destroyed (pending without permission),
    // the foreign ones listed and never touched, the clone included.
    let out = lab.vf(&["plan", "--detailed-exitcode"]).expect_code(2);
    assert!(out.stdout.contains(&gone), "{}", out.all());
    for n in [&stranger, &clone] {
        assert!(out.stdout.contains(&format!("domain {n}")), "{}", out.all());
    }
    // apply: applied what was allowed, a destroy is pending -> exit 4.
    let out = lab.apply(&[]).expect_code(4);
    assert!(out.stdout.contains("pending"), "{}", out.all());
    lab.apply(&["--allow-destroy"]).expect_code(0);
    assert!(!virsh(SYSTEM, &["dominfo", &gone]).0, "gone was destroyed");
    for n in [&stranger, &clone] {
        assert!(virsh(SYSTEM, &["dominfo", n]).0, "{n} untouched");
    }
    // A foreign domain named like a machine of the fleet is read and
    // refused, never adopted.
    lab.write(&[
        lab.machine("a", "power = V.Power.Stopped"),
        lab.machine("stranger", "power = V.Power.Stopped"),
    ]);
    let out = lab.vf(&["plan"]).expect_code(1);
    assert!(out.stdout.contains("not managed by fleet"), "{}", out.all());
}

/// `[local] ADDRESS: WHAT (started)` and `... done` lines of the plain
/// progress, as (event, address) in order.
fn step_events(stderr: &str) -> Vec<(&'static str, String)> {
    stderr
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("[local] ")?;
            let (address, tail) = rest.split_once(": ")?;
            if tail.ends_with("(started)") {
                Some(("start", address.to_owned()))
            } else if tail.contains(" ... done") {
                Some(("done", address.to_owned()))
            } else {
                None
            }
        })
        .collect()
}

/// The machine of an address `local/<machine>[/...]`.
fn machine_of(address: &str) -> &str {
    address.split('/').nth(1).unwrap_or("")
}

/// Each machine's steps never overlap: every start of a machine's step
/// comes after the previous step of that machine is done.
fn assert_one_at_a_time_per_machine(events: &[(&'static str, String)]) {
    let mut open: BTreeMap<&str, &str> = BTreeMap::new();
    for (e, a) in events {
        let m = machine_of(a);
        match *e {
            "start" => {
                assert!(
                    open.insert(m, a).is_none(),
                    "{a} started while {m} had a step in flight: {events:#?}"
                );
            }
            _ => assert_eq!(open.remove(m), Some(a.as_str()), "{events:#?}"),
        }
    }
}

#[test]
fn guests_that_ignore_acpi_share_one_timeout_and_each_machine_keeps_its_order() {
    let lab = Lab::new("t-perf-par");
    let names = ["p1", "p2", "p3", "p4"];
    let machines = |power: &str| -> Vec<String> {
        names
            .iter()
            .map(|n| lab.machine(n, &format!("power = V.Power.{power}")))
            .collect()
    };
    lab.write(&machines("Running"));
    let out = lab.apply(&[]).expect_code(0);
    let events = step_events(&out.stderr);
    assert_one_at_a_time_per_machine(&events);
    // Per machine, the plan's order: root disk, define, start.
    for n in names {
        let m = lab.m(n);
        let done: Vec<&str> = events
            .iter()
            .filter(|(e, a)| *e == "done" && machine_of(a) == m)
            .map(|(_, a)| a.as_str())
            .collect();
        let disk = done.iter().position(|a| a.ends_with("/root"));
        let domain = done.iter().position(|a| *a == format!("local/{m}"));
        assert!(
            disk.is_some() && domain.is_some() && disk < domain,
            "{m}: {done:?}\n{}",
            out.stderr
        );
    }
    for n in names {
        assert_eq!(virsh_ok(SYSTEM, &["domstate", &lab.m(n)]).trim(), "running");
    }
    // A running guest's live resources and disk sizes come from one bulk
    // statistics call.
    let obs = observed_domains(&lab);
    let p1 = &obs[&lab.m("p1")];
    assert_eq!(p1["state"], "running");
    assert_eq!(
        p1["live"],
        serde_json::json!({"vcpus": 1, "memoryMib": 128})
    );
    assert_eq!(p1["diskSizes"]["vda"], 1u64 << 30);

    // The example guest has no OS: it ignores ACPI. Four of them stopped
    // with a 6 s timeout take about one timeout, not four.
    lab.write(&machines("Stopped"));
    let t = Instant::now();
    let out = lab
        .vf(&[
            "apply",
            "--auto-approve",
            "--allow-restart",
            "--shutdown-timeout",
            "6s",
        ])
        .expect_code(0);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(6) && took < Duration::from_secs(12),
        "stopping 4 guests took {took:?}\n{}",
        out.all()
    );
    let events = step_events(&out.stderr);
    assert_one_at_a_time_per_machine(&events);
    let first_done = events.iter().position(|(e, _)| *e == "done").unwrap();
    assert_eq!(
        events[..first_done].len(),
        4,
        "all four stops were in flight at once: {events:#?}"
    );
    for n in names {
        assert_eq!(
            virsh_ok(SYSTEM, &["domstate", &lab.m(n)]).trim(),
            "shut off"
        );
    }

    // --concurrency 1: one at a time again (two guests, two timeouts).
    lab.write(&machines("Running")[..2]);
    lab.apply(&[]).expect_code(4); // p3, p4 left the fleet: destroys pending
    let mut stopped = machines("Running")[..2].to_vec();
    stopped
        .iter_mut()
        .for_each(|m| *m = m.replace("Running", "Stopped"));
    lab.write(&stopped);
    let t = Instant::now();
    let out = lab
        .vf(&[
            "--concurrency",
            "1",
            "apply",
            "--auto-approve",
            "--allow-destroy",
            "--allow-restart",
            "--shutdown-timeout",
            "3s",
        ])
        .expect_code(0);
    assert!(
        t.elapsed() >= Duration::from_secs(6),
        "{:?}\n{}",
        t.elapsed(),
        out.all()
    );
    assert_sequential(&step_events(&out.stderr));

    // The host's own `concurrency = Some 1` caps the default 16: the two
    // guests are started one at a time.
    let host = lab.host("local", SYSTEM, &lab.root);
    let capped = format!("{}, concurrency = Some 1 }}", host.trim_end_matches('}'));
    lab.write_hosts(&[capped], &machines("Running")[..2], "");
    let out = lab.apply(&[]).expect_code(0);
    let events = step_events(&out.stderr);
    assert!(events.len() >= 4, "two starts: {events:#?}\n{}", out.all());
    assert_sequential(&events);
}

/// Every step ends before the next one starts.
fn assert_sequential(events: &[(&str, String)]) {
    for pair in events.chunks(2) {
        assert_eq!(pair[0].0, "start", "{events:#?}");
        assert_eq!(pair.get(1).map(|p| p.0), Some("done"), "{events:#?}");
        assert_eq!(pair[0].1, pair[1].1, "one step at a time: {events:#?}");
    }
}

fn base_image(root: &Path) -> PathBuf {
    let images = root.join("images");
    std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "raw"))
        .unwrap_or_else(|| panic!("a base image in {}", images.display()))
}

fn cached_image(cache: &Path) -> PathBuf {
    std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().is_some_and(|n| n.len() == 64))
        .unwrap_or_else(|| panic!("a cached image in {}", cache.display()))
}

#[test]
fn a_base_image_on_this_machine_is_the_caches_file_not_a_copy() {
    // Storage on the cache's file system: one inode, no second copy.
    let lab = Lab::new("t-perf-link");
    lab.write(&[lab.machine("a", "power = V.Power.Stopped")]);
    lab.apply(&[]).expect_code(0);
    let base = base_image(&lab.root);
    let cached = cached_image(&lab.cache_dir());
    let (b, c) = (
        std::fs::metadata(&base).unwrap(),
        std::fs::metadata(&cached).unwrap(),
    );
    assert_eq!((b.dev(), b.ino()), (c.dev(), c.ino()), "a hard link");
    assert_eq!(b.nlink(), 2);
    assert_eq!(b.mode() & 0o777, 0o444, "read-only under both names");
    lab.vf(&["plan", "--detailed-exitcode"]).expect_code(0);

    // The cache on another file system (tmpfs): a copy, verified as before.
    let lab2 = Lab::new("t-perf-link2");
    let shm = PathBuf::from("/dev/shm/t-perf-link2-cache");
    let _ = std::fs::remove_dir_all(&shm);
    std::fs::create_dir_all(&shm).unwrap();
    std::fs::remove_dir(lab2.cache_dir()).unwrap();
    std::os::unix::fs::symlink(&shm, lab2.cache_dir()).unwrap();
    lab2.write(&[lab2.machine("a", "power = V.Power.Stopped")]);
    lab2.apply(&[]).expect_code(0);
    let base = base_image(&lab2.root);
    let cached = cached_image(&shm);
    let (b, c) = (
        std::fs::metadata(&base).unwrap(),
        std::fs::metadata(&cached).unwrap(),
    );
    assert_ne!(b.dev(), c.dev());
    assert_eq!(b.nlink(), 1, "a copy of its own");
    assert_eq!(
        std::fs::read(&base).unwrap(),
        std::fs::read(&cached).unwrap()
    );
    lab2.vf(&["plan", "--detailed-exitcode"]).expect_code(0);
    let _ = std::fs::remove_dir_all(&shm);
}

/// Found by the crash test once steps ran in parallel: a run killed between
/// making `disks/.new-<vol>` and writing its owner record leaves an empty
/// directory, which must not block the next run (it holds nothing, so it
/// is reused); a non-empty one is still never touched (tests/reliability.rs).
#[test]
fn regression_an_empty_half_made_disk_directory_is_reused() {
    let lab = Lab::new("t-perf-empty");
    let a = lab.m("a");
    std::fs::create_dir_all(lab.root.join(format!("disks/.new-{a}-root"))).unwrap();
    lab.write(&[lab.machine("a", "power = V.Power.Stopped")]);
    lab.apply(&[]).expect_code(0);
    assert!(
        lab.root
            .join(format!("disks/{a}-root/disk.qcow2"))
            .is_file()
    );
    assert!(!lab.root.join(format!("disks/.new-{a}-root")).exists());
    lab.vf(&["plan", "--detailed-exitcode"]).expect_code(0);
}
