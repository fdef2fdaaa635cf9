//! Table-style tests of the one-machine plans (`src/plan/commands.rs`): a
//! fleet loaded from Dhall, a parsed lock and a hand-built observation go
//! in; a plan or a typed refusal comes out. No libvirt, no clock.

use std::collections::BTreeMap;
use std::path::Path;
use virtfleet::fleet::{Fleet, VmName};
use virtfleet::lock::ImageLock;
use virtfleet::plan::commands::{
    Basis, CommandRefusal, DiskSnapshots, RollbackOptions, destroy_plan, restore_plan,
    rollback_plan, snapshot_plan,
};
use virtfleet::plan::expected::converged_state;
use virtfleet::plan::planner::{fleet_digest, host_digest, lock_digest};
use virtfleet::plan::{Action, Disruption, Plan};
use virtfleet::resources::observed::{
    DiskOwner, HostObservation, HostState, Observation, PowerState, TrashEntry,
};

const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const NOW: u64 = 1_900_000_000;

/// Fleet "test" on host hv1 (Dir storage): `web` with a data disk `d`,
/// `db` protected.
fn fleet() -> Fleet {
    let text = format!(
        "let V = {pkg}\n\
         in  V.Fleet::{{\n\
         , name = \"test\"\n\
         , hosts = [ V.Host::{{ name = \"hv1\", uri = \"qemu:///system\", storage = V.Storage.Dir {{ path = \"/srv/vf\" }} }} ]\n\
         , images = [ V.Image::{{ name = \"base\", url = \"https://example.org/base.qcow2\" }} ]\n\
         , machines = [ V.Machine::{{ name = \"web\", image = \"base\", dataDisks = [ V.Disk::{{ name = \"d\", sizeGiB = 1 }} ] }}\n\
         , V.Machine::{{ name = \"db\", image = \"base\", protect = True }} ]\n\
         }}\n",
        pkg = concat!(env!("CARGO_MANIFEST_DIR"), "/dhall/package.dhall"),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.dhall");
    std::fs::write(&path, &text).unwrap();
    virtfleet::fleet::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn lock() -> ImageLock {
    let text = format!(
        "format 1\n\nimage base\n  url     https://example.org/base.qcow2\n  sha256  {SHA}\n  \
         size    4096\n  format  qcow2\n  locked  2026-01-01T00:00:00Z\n"
    );
    ImageLock::parse(&text, Path::new("images.lock")).unwrap()
}

/// hv1 right after `fleet` was applied, every guest in `state`.
fn converged(fleet: &Fleet, state: PowerState) -> HostState {
    let host = fleet.hosts.values().next().unwrap();
    let mut s = converged_state(fleet, &lock(), host);
    for d in s.domains.values_mut() {
        d.state = state;
    }
    s
}

fn obs(state: HostState) -> Observation {
    Observation {
        format_version: 1,
        fleet: "test".into(),
        taken_at: NOW - 5,
        hosts: BTreeMap::from([("hv1".to_owned(), HostObservation::Reachable(state))]),
    }
}

fn vm(n: &str) -> VmName {
    VmName::new(n).unwrap()
}

/// (address, action) of each change.
fn summary(p: &Plan) -> Vec<(String, Action)> {
    p.changes
        .iter()
        .map(|c| (c.address.clone(), c.action.clone()))
        .collect()
}

/// `fleet` without machine `name` (as after removing it from fleet.dhall).
fn without(mut fleet: Fleet, name: &str) -> Fleet {
    fleet.machines.remove(&vm(name));
    fleet
}

#[test]
fn destroy_plans_one_destroy_with_real_digests() {
    let full = fleet();
    let o = obs(converged(&full, PowerState::Running));
    let f = without(full, "web");
    let l = lock();
    let basis = at_now(&f, &l, &o);
    let p = destroy_plan(basis, &vm("web"), false).unwrap();
    assert_eq!(
        summary(&p),
        [(
            "hv1/web".to_owned(),
            Action::Destroy {
                volumes: vec!["web-d".into(), "web-root".into()]
            }
        )]
    );
    assert_eq!(p.changes[0].disruption, Disruption::Destructive);
    assert!(p.changes[0].reason.contains("stop, undefine, move 2 disks"));
    assert_eq!(p.inputs.fleet, fleet_digest(&f));
    assert_eq!(p.inputs.lock, lock_digest(&l));
    assert_eq!(
        p.inputs.hosts["hv1"],
        host_digest(&f, "hv1", &o.hosts["hv1"])
    );
    assert_eq!((p.inputs.now, p.inputs.observed_at), (NOW, NOW - 5));
}

#[test]
fn destroy_refuses_what_the_planner_refuses() {
    let full = fleet();
    let l = lock();
    let state = converged(&full, PowerState::Stopped);
    let o = obs(state.clone());
    let basis = |f| Basis {
        fleet: f,
        lock: &l,
        obs: &o,
        now: NOW,
    };
    // Still in the fleet: only with force; protected: never.
    let err = destroy_plan(basis(&full), &vm("web"), false).unwrap_err();
    assert!(matches!(err, CommandRefusal::StillInFleet { .. }), "{err}");
    assert!(destroy_plan(basis(&full), &vm("web"), true).is_ok());
    let err = destroy_plan(basis(&full), &vm("db"), true).unwrap_err();
    assert!(matches!(err, CommandRefusal::Protected { .. }), "{err}");
    // Protected as last applied, though no longer in the fleet.
    let f = without(fleet(), "db");
    let err = destroy_plan(basis(&f), &vm("db"), false).unwrap_err();
    assert_eq!(
        err,
        CommandRefusal::ProtectedOnHost {
            host: "hv1".into(),
            machine: "db".into()
        }
    );
    assert!(err.hint().is_some());
    // A domain of that name that is not this fleet's.
    let mut s = state.clone();
    s.domains.get_mut("web").unwrap().config.owner = None;
    let o2 = obs(s);
    let f = without(fleet(), "web");
    let err = destroy_plan(
        Basis {
            fleet: &f,
            lock: &l,
            obs: &o2,
            now: NOW,
        },
        &vm("web"),
        false,
    )
    .unwrap_err();
    assert!(matches!(err, CommandRefusal::ForeignDomain { .. }), "{err}");
    assert!(err.to_string().contains("not managed by fleet \"test\""));
    // Nowhere to be found, with the unobserved host named.
    let mut o3 = obs(HostState::default());
    o3.hosts.insert(
        "hv9".into(),
        HostObservation::Unreachable {
            error: "down".into(),
        },
    );
    let err = destroy_plan(
        Basis {
            fleet: &f,
            lock: &l,
            obs: &o3,
            now: NOW,
        },
        &vm("web"),
        false,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("was found on any host (hosts not observed: hv9)"),
        "{err}"
    );
}

#[test]
fn restore_brings_back_the_newest_entry_and_never_overwrites() {
    let f = fleet();
    let l = lock();
    let mut s = converged(&f, PowerState::Stopped);
    s.disks.retain(|v, _| !v.starts_with("web-"));
    s.domains.remove("web");
    let owner = |disk: &str| DiskOwner {
        fleet: "test".into(),
        machine: "web".into(),
        disk: disk.into(),
        protect: false,
    };
    for (entry, vol, disk, at) in [
        ("web-root@100", "web-root", "root", 100),
        ("web-root@200", "web-root", "root", 200),
        ("web-d@100", "web-d", "d", 100),
    ] {
        s.trash.insert(
            entry.into(),
            TrashEntry {
                owner: owner(disk),
                volume: vol.into(),
                trashed_at: at,
            },
        );
    }
    let o = obs(s.clone());
    let basis = at_now(&f, &l, &o);
    let p = restore_plan(basis, &vm("web")).unwrap();
    assert_eq!(
        summary(&p),
        [
            (
                "hv1/web/d".to_owned(),
                Action::RestoreDisk {
                    entry: "web-d@100".into(),
                    volume: "web-d".into()
                }
            ),
            (
                "hv1/web/root".to_owned(),
                Action::RestoreDisk {
                    entry: "web-root@200".into(),
                    volume: "web-root".into()
                }
            ),
        ]
    );
    // A foreign directory where a disk would go: nothing is restored.
    s.unmanaged_files.push("disks/web-root".into());
    let o = obs(s);
    let err = restore_plan(Basis { obs: &o, ..basis }, &vm("web")).unwrap_err();
    assert_eq!(
        err,
        CommandRefusal::DiskExists {
            host: "hv1".into(),
            volume: "web-root".into()
        }
    );
    // Nothing in the trash; not in the fleet.
    let err = restore_plan(basis, &vm("db")).unwrap_err();
    assert!(matches!(err, CommandRefusal::NoTrash { .. }), "{err}");
    let f2 = without(fleet(), "web");
    let err = restore_plan(
        Basis {
            fleet: &f2,
            ..basis
        },
        &vm("web"),
    )
    .unwrap_err();
    assert!(
        matches!(err, CommandRefusal::NotInFleet { .. }) && err.to_string().contains("is not in"),
        "{err}"
    );
    assert!(err.hint().unwrap().contains("add it back first"));
}

#[test]
fn snapshot_covers_every_owned_disk_and_refuses_foreign_ones() {
    let f = fleet();
    let l = lock();
    let s = converged(&f, PowerState::Running);
    let o = obs(s.clone());
    let basis = at_now(&f, &l, &o);
    let p = snapshot_plan(basis, &vm("web"), "pre").unwrap();
    assert_eq!(
        summary(&p),
        [(
            "hv1/web@vf-manual-pre-20300317T174640Z".to_owned(),
            Action::Snapshot {
                volumes: vec!["web-root".into(), "web-d".into()],
                name: "vf-manual-pre-20300317T174640Z".into()
            }
        )]
    );
    assert_eq!(p.changes[0].disruption, Disruption::None);

    let refused = |state: HostState| {
        let o = obs(state);
        snapshot_plan(Basis { obs: &o, ..basis }, &vm("web"), "pre").unwrap_err()
    };
    let mut foreign_domain = s.clone();
    foreign_domain.domains.get_mut("web").unwrap().config.owner = None;
    assert!(matches!(
        refused(foreign_domain),
        CommandRefusal::ForeignDomain { .. }
    ));
    let mut foreign_disk = s.clone();
    foreign_disk.disks.remove("web-d");
    foreign_disk.unmanaged_files.push("disks/web-d".into());
    assert_eq!(
        refused(foreign_disk),
        CommandRefusal::ForeignDisk {
            host: "hv1".into(),
            machine: "web".into(),
            volume: "web-d".into(),
            fleet: "test".into()
        }
    );
    let mut other_owner = s.clone();
    other_owner.disks.get_mut("web-d").unwrap().owner.machine = "db".into();
    assert!(matches!(
        refused(other_owner),
        CommandRefusal::ForeignDisk { .. }
    ));
    let mut missing = s;
    missing.disks.remove("web-d");
    assert!(matches!(
        refused(missing),
        CommandRefusal::MissingDisk { .. }
    ));
}

fn snaps(root: &[&str], d: &[&str], newer: &[&str]) -> BTreeMap<String, DiskSnapshots> {
    let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    BTreeMap::from([
        (
            "web-root".to_owned(),
            DiskSnapshots {
                all: list(root),
                newer: list(newer),
            },
        ),
        (
            "web-d".to_owned(),
            DiskSnapshots {
                all: list(d),
                newer: Vec::new(),
            },
        ),
    ])
}

/// What a command plans from: `f`, `l` and `o`, at [`NOW`].
fn at_now<'a>(f: &'a Fleet, l: &'a ImageLock, o: &'a Observation) -> Basis<'a> {
    Basis {
        fleet: f,
        lock: l,
        obs: o,
        now: NOW,
    }
}

#[test]
fn rollback_stops_rolls_each_disk_back_and_starts_again() {
    let f = fleet();
    let l = lock();
    let o = obs(converged(&f, PowerState::Running));
    let basis = at_now(&f, &l, &o);
    let force = RollbackOptions {
        force: true,
        destroy_newer: false,
    };
    // The data disk has no such snapshot: it is left alone.
    let p = rollback_plan(basis, &vm("web"), "s1", &snaps(&["s1"], &[], &[]), force).unwrap();
    assert_eq!(
        summary(&p),
        [
            ("hv1/web".to_owned(), Action::Shutdown { force: true }),
            (
                "hv1/web/root@s1".to_owned(),
                Action::RollbackDisk {
                    volume: "web-root".into(),
                    name: "s1".into()
                }
            ),
            ("hv1/web".to_owned(), Action::Start),
        ]
    );
    assert_eq!(p.changes[1].disruption, Disruption::Destructive);
    // A stopped guest stays stopped; both disks go back.
    let o = obs(converged(&f, PowerState::Stopped));
    let stopped = Basis { obs: &o, ..basis };
    let p = rollback_plan(
        stopped,
        &vm("web"),
        "s1",
        &snaps(&["s1"], &["s1"], &[]),
        RollbackOptions::default(),
    )
    .unwrap();
    let kinds: Vec<&Action> = p.changes.iter().map(|c| &c.action).collect();
    assert!(
        kinds.len() == 2
            && kinds
                .iter()
                .all(|a| matches!(a, Action::RollbackDisk { .. })),
        "{kinds:?}"
    );
}

#[test]
fn rollback_refuses_unknown_snapshots_and_unannounced_losses() {
    let f = fleet();
    let l = lock();
    let o = obs(converged(&f, PowerState::Stopped));
    let basis = at_now(&f, &l, &o);
    let err = rollback_plan(
        basis,
        &vm("web"),
        "nope",
        &snaps(&["vf-init"], &[], &[]),
        RollbackOptions::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("has no snapshot \"nope\" (it has: vf-init)"),
        "{err}"
    );
    let s = snaps(&["vf-init", "later"], &[], &["later"]);
    let err =
        rollback_plan(basis, &vm("web"), "vf-init", &s, RollbackOptions::default()).unwrap_err();
    assert_eq!(
        err,
        CommandRefusal::WouldDestroyNewer {
            machine: "web".into(),
            snapshot: "vf-init".into(),
            newer: vec!["root@later".into()]
        }
    );
    assert!(err.to_string().contains("--destroy-newer"));
    let allowed = RollbackOptions {
        force: false,
        destroy_newer: true,
    };
    let p = rollback_plan(basis, &vm("web"), "vf-init", &s, allowed).unwrap();
    assert!(
        p.changes[0].reason.contains("destroys root@later"),
        "the loss is shown: {:?}",
        p.changes[0]
    );
}

#[test]
fn saved_plan_json_keeps_the_old_action_shapes() {
    let json = |a: &Action| serde_json::to_string(a).unwrap();
    assert_eq!(json(&Action::Stop), r#"{"type":"stop"}"#);
    assert_eq!(
        json(&Action::Destroy {
            volumes: vec!["a-root".into()]
        }),
        r#"{"type":"destroy","volumes":["a-root"]}"#
    );
    for a in [
        Action::RestoreDisk {
            entry: "a-root@1".into(),
            volume: "a-root".into(),
        },
        Action::Shutdown { force: false },
        Action::RollbackDisk {
            volume: "a-root".into(),
            name: "vf-init".into(),
        },
    ] {
        let back: Action = serde_json::from_str(&json(&a)).unwrap();
        assert_eq!(back, a);
    }
    assert_eq!(
        json(&Action::Shutdown { force: true }),
        r#"{"type":"shutdown","force":true}"#
    );
}
