//! Crash anywhere: the fault-injection harness.
//!
//! A run through `src/fault.rs` first lists every point an apply passes
//! (`VIRTFLEET_FAULT_TRACE`): each step boundary (`step`) and the named
//! places inside steps. Then, for every step boundary and the first hit of
//! every named point, the same apply is started from the same state and
//! killed there (`VIRTFLEET_FAULT`, an abort as abrupt as SIGKILL). A plain
//! re-run must then converge, and independent witnesses (virsh, qemu-img,
//! the storage directory itself) must find exactly the fleet's domains,
//! disks and trash: no orphan domain, disk, half-made directory, leftover
//! lease, and every disk with its `vf-init`.
//!
//! Three phases of a 6-machine fleet on the real libvirtd (Dir storage):
//! creating it from nothing; changing it (a live grow, a new data disk, a
//! removed machine, a restart-class memory change); purging its trash.
//! Each phase is its own test with its own lab, so they run in parallel;
//! each prints "K injection points, K converged, 0 with orphans" (see it
//! with `--nocapture`).

mod common;

use common::lab::{Lab, SYSTEM, domains};
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// One phase: fleets applied to reach its starting state, then the fleet
/// whose apply is interrupted, and what must exist once it converged.
struct Phase {
    name: &'static str,
    setup: Vec<Fleet>,
    target: Fleet,
    want_domains: Vec<&'static str>,
    want_disks: Vec<&'static str>,
    want_trash: Vec<&'static str>,
}

/// A fleet: its machines (short name, extra Dhall fields) and trash retention.
#[derive(Clone)]
struct Fleet {
    machines: Vec<(&'static str, &'static str)>,
    retention_days: u32,
}

const DATA: &str = "dataDisks = [ V.Disk::{ name = \"d\", sizeGiB = 1 } ]";

fn six() -> Fleet {
    Fleet {
        machines: vec![
            ("c1", DATA),
            ("c2", DATA),
            ("c3", ""),
            ("c4", ""),
            ("c5", ""),
            ("c6", ""),
        ],
        retention_days: 1,
    }
}

fn phases() -> Vec<Phase> {
    let changed = Fleet {
        machines: vec![
            // Grown while running: libvirt resizes it and tells the guest.
            (
                "c1",
                "diskGiB = 2, dataDisks = [ V.Disk::{ name = \"d\", sizeGiB = 1 } ]",
            ),
            // A new data disk of an existing machine, with its own vf-init.
            (
                "c2",
                "dataDisks = [ V.Disk::{ name = \"d\", sizeGiB = 1 }, V.Disk::{ name = \"e\", sizeGiB = 1 } ]",
            ),
            // c3 removed: stopped, undefined, its disk to the trash.
            // Memory: a restart-class change.
            ("c4", "memoryMiB = 160"),
            ("c5", ""),
            ("c6", ""),
        ],
        retention_days: 1,
    };
    let without_c6 = Fleet {
        machines: six().machines[..5].to_vec(),
        retention_days: 1,
    };
    let purge = Fleet {
        retention_days: 0,
        ..without_c6.clone()
    };
    vec![
        Phase {
            name: "create",
            setup: vec![],
            target: six(),
            want_domains: vec!["c1", "c2", "c3", "c4", "c5", "c6"],
            want_disks: vec![
                "c1-d", "c1-root", "c2-d", "c2-root", "c3-root", "c4-root", "c5-root", "c6-root",
            ],
            want_trash: vec![],
        },
        Phase {
            name: "change",
            setup: vec![six()],
            target: changed,
            want_domains: vec!["c1", "c2", "c4", "c5", "c6"],
            want_disks: vec![
                "c1-d", "c1-root", "c2-d", "c2-e", "c2-root", "c4-root", "c5-root", "c6-root",
            ],
            want_trash: vec!["c3-root"],
        },
        Phase {
            name: "purge",
            setup: vec![six(), without_c6],
            target: purge,
            want_domains: vec!["c1", "c2", "c3", "c4", "c5"],
            want_disks: vec![
                "c1-d", "c1-root", "c2-d", "c2-root", "c3-root", "c4-root", "c5-root",
            ],
            want_trash: vec![],
        },
    ]
}

fn write(lab: &Lab, f: &Fleet) {
    let machines: Vec<String> = f
        .machines
        .iter()
        .map(|(m, extra)| lab.machine(m, extra))
        .collect();
    lab.write(&machines);
    let path = lab.fleet();
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "trashRetentionDays = 1",
        &format!("trashRetentionDays = {}", f.retention_days),
    );
    std::fs::write(path, text).unwrap();
}

const PERMIT: [&str; 2] = ["--allow-destroy", "--allow-restart"];

/// The phase's starting state, from nothing.
fn set_up(lab: &Lab, p: &Phase) {
    lab.reset();
    for f in &p.setup {
        write(lab, f);
        let out = lab.apply(&PERMIT);
        assert_eq!(out.code, Some(0), "{}: setup apply\n{}", p.name, out.all());
    }
    write(lab, &p.target);
}

/// How an apply with the fault hooks ended.
struct Run {
    /// Killed by the injected fault (at the named point).
    aborted: bool,
    code: Option<i32>,
    stderr: String,
}

/// `apply` of the current fleet with the fault-hook environment `env`.
fn apply_with(lab: &Lab, env: &[(&str, &str)]) -> Run {
    let mut args = vec!["apply", "--auto-approve", "--shutdown-timeout", "1s"];
    args.extend(PERMIT);
    let mut cmd = lab.vf_command(&args);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).unwrap();
        s
    });
    let deadline = Instant::now() + lab.timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("apply with {env:?} hung past {:?}", lab.timeout);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = reader.join().unwrap();
    Run {
        aborted: status.signal() == Some(libc_sigabrt()) && stderr.contains("fault injected at"),
        code: status.code(),
        stderr,
    }
}

/// SIGABRT's number on Linux (std has no constant for it).
fn libc_sigabrt() -> i32 {
    6
}

/// Every point an uninterrupted apply of the phase passes, in order.
fn trace(lab: &Lab, p: &Phase) -> Vec<String> {
    set_up(lab, p);
    let file = tempfile::NamedTempFile::new().unwrap();
    let path = file.path().to_str().unwrap().to_owned();
    let run = apply_with(lab, &[("VIRTFLEET_FAULT_TRACE", &path)]);
    assert_eq!(
        run.code,
        Some(0),
        "{}: traced apply\n{}",
        p.name,
        run.stderr
    );
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Where to stop: every step boundary, and the first hit of every point
/// inside a step.
fn injection_points(points: &[String]) -> Vec<String> {
    let mut hits: BTreeMap<&str, u32> = BTreeMap::new();
    let mut out = Vec::new();
    for p in points {
        let n = hits.entry(p).or_insert(0);
        *n += 1;
        if p == "step" || *n == 1 {
            out.push(format!("{p}#{n}"));
        }
    }
    out
}

/// Snapshot names inside a qcow2 file (read with -U: guests may run).
fn qcow2_snapshots(file: &Path) -> Vec<String> {
    let out = std::process::Command::new("qemu-img")
        .args(["info", "-U", "-f", "qcow2", "--output=json"])
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "qemu-img info {}", file.display());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["snapshots"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// What the witnesses find wrong after convergence (empty: nothing).
fn orphans(lab: &Lab, p: &Phase) -> Vec<String> {
    let mut wrong = Vec::new();
    let want: Vec<String> = p.want_domains.iter().map(|m| lab.m(m)).collect();
    let got = domains(SYSTEM, &lab.m(""));
    if got != want {
        wrong.push(format!("domains {got:?}, want {want:?}"));
    }
    let want: Vec<String> = p.want_disks.iter().map(|d| lab.m(d)).collect();
    let got = lab.entries("disks");
    if got != want {
        wrong.push(format!("disks/ holds {got:?}, want {want:?}"));
    }
    for d in &want {
        let file = lab.root.join("disks").join(d).join("disk.qcow2");
        if file.exists() && !qcow2_snapshots(&file).iter().any(|s| s == "vf-init") {
            wrong.push(format!("{d} has no vf-init"));
        }
    }
    let mut trash: Vec<String> = lab
        .entries("trash")
        .iter()
        .map(|e| e.rsplit_once('@').map_or(e.clone(), |(v, _)| v.to_owned()))
        .collect();
    trash.sort();
    let want: Vec<String> = p.want_trash.iter().map(|d| lab.m(d)).collect();
    if trash != want {
        wrong.push(format!("trash/ holds {trash:?}, want {want:?}"));
    }
    let images = lab.entries("images");
    if images.len() != 2 || images.iter().any(|i| i.starts_with('.')) {
        wrong.push(format!(
            "images/ holds {images:?}, want one image and its record"
        ));
    }
    if lab.root.join("lease").exists() {
        wrong.push("the host's lease was left behind".into());
    }
    let top = common::dir_names(&lab.root);
    if top
        .iter()
        .any(|e| !["disks", "images", "trash"].contains(&e.as_str()))
    {
        wrong.push(format!("the storage root holds {top:?}"));
    }
    wrong
}

/// Runs phase `name` of [`phases`] in its own lab: traces it, then kills it
/// at every `share`-th injection point (starting at `first`), re-runs it and
/// checks with the witnesses. Prints the counts; fails on any failure.
fn injected(lab_name: &str, name: &str, first: usize, share: usize) {
    let lab = Lab::new(lab_name);
    let p = phases()
        .into_iter()
        .find(|p| p.name == name)
        .expect("a phase of that name");
    let traced = trace(&lab, &p);
    let all = injection_points(&traced);
    // The trace must reach inside steps, not only their boundaries.
    assert!(
        all.iter().any(|a| !a.starts_with("step#")),
        "{name}: no point inside a step was reached: {traced:?}"
    );
    let at: Vec<&String> = all.iter().skip(first).step_by(share).collect();
    let (mut converged, mut with_orphans) = (0, 0);
    let mut failures = Vec::new();
    for point in &at {
        set_up(&lab, &p);
        let run = apply_with(&lab, &[("VIRTFLEET_FAULT", point)]);
        assert!(
            run.aborted,
            "{name}: the apply was not stopped at {point} (exit {:?})\n{}",
            run.code, run.stderr
        );
        let again = lab.apply(&PERMIT);
        let plan = lab.vf(&["plan", "--detailed-exitcode"]);
        if again.code != Some(0) || plan.code != Some(0) {
            failures.push(format!(
                "{name} at {point}: re-run exit {:?}, then plan exit {:?}\n{}\n{}",
                again.code,
                plan.code,
                again.all(),
                plan.stdout
            ));
            continue;
        }
        converged += 1;
        let wrong = orphans(&lab, &p);
        if !wrong.is_empty() {
            with_orphans += 1;
            failures.push(format!("{name} at {point}: {}", wrong.join("; ")));
        }
    }
    println!(
        "fault injection, {name} (points {first}, {}, ... of {}): {} injection points, {converged} converged, {with_orphans} with orphans",
        first + share,
        all.len(),
        at.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// The phases run as separate tests (in parallel, each in its own lab);
// creation, the longest, is split in two halves.

#[test]
fn an_apply_creating_six_machines_killed_anywhere_converges_without_orphans_1() {
    injected("t-fa1", "create", 0, 2);
}

#[test]
fn an_apply_creating_six_machines_killed_anywhere_converges_without_orphans_2() {
    injected("t-fa2", "create", 1, 2);
}

#[test]
fn an_apply_changing_a_fleet_killed_anywhere_converges_without_orphans() {
    injected("t-fb", "change", 0, 1);
}

#[test]
fn an_apply_purging_trash_killed_anywhere_converges_without_orphans() {
    injected("t-fc", "purge", 0, 1);
}
