//! Table-driven tests of the pure planner: a fleet loaded from Dhall, a
//! parsed images.lock and a hand-built observation go in, a plan comes out.
//! No libvirt, no network, no clock.
//!
//! "Converged" observations are derived from the planner's own
//! `desired_domain` and the machines' volume names, so they look exactly
//! like what observation reports after a successful apply.

use std::collections::BTreeMap;
use std::path::Path;
use virtfleet::fleet::{Fleet, ImageFormat};
use virtfleet::lock::ImageLock;
use virtfleet::plan::expected::converged_state;
use virtfleet::plan::planner::{GIB, desired_domain};
use virtfleet::plan::{Action, BaseRef, Change, Disruption, Options, Plan, plan};
use virtfleet::resources::domain::{DomainSpec, Owner};
use virtfleet::resources::observed::{
    DiskOwner, HostObservation, HostState, Live, Observation, ObservedDomain, PowerState,
    TrashEntry,
};

const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const IMAGE_SIZE: u64 = 4096;
const NOW: u64 = 1_900_000_000;
const DAY: u64 = 86_400;

/// Loads fleet "test": image "base", host hv1 (and hv2 when `two_hosts`),
/// Dir storage at /srv/vf, domainType Qemu. Each machine is the body of a
/// `V.Machine::{ .. }` completion; `image = "base"` is filled in.
fn fleet(two_hosts: bool, machines: &[&str]) -> Fleet {
    fleet_with("V.Storage.Dir { path = \"/srv/vf\" }", two_hosts, machines)
}

/// Like [`fleet`], with hosts on `storage` (a Dhall `V.Storage` value).
fn fleet_with(storage: &str, two_hosts: bool, machines: &[&str]) -> Fleet {
    let host = |n: &str| {
        format!(
            "V.Host::{{ name = \"{n}\", uri = \"qemu:///system\", \
             storage = {storage}, domainType = V.DomainType.Qemu }}"
        )
    };
    let hosts = if two_hosts {
        vec![host("hv1"), host("hv2")]
    } else {
        vec![host("hv1")]
    };
    let machines = if machines.is_empty() {
        "[] : List V.Machine.Type".to_owned()
    } else {
        let ms: Vec<String> = machines
            .iter()
            .map(|m| format!("V.Machine::{{ image = \"base\", {m} }}"))
            .collect();
        format!("[ {} ]", ms.join("\n, "))
    };
    let text = format!(
        "let V = {pkg}\n\
         in  V.Fleet::{{\n\
         , name = \"test\"\n\
         , hosts = [ {hosts} ]\n\
         , images = [ V.Image::{{ name = \"base\", url = \"https://example.org/base.qcow2\" }} ]\n\
         , machines = {machines}\n\
         }}\n",
        pkg = concat!(env!("CARGO_MANIFEST_DIR"), "/dhall/package.dhall"),
        hosts = hosts.join(", "),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fleet.dhall");
    std::fs::write(&path, &text).expect("write fleet.dhall");
    virtfleet::fleet::load(&path).unwrap_or_else(|e| panic!("{e}\n--- fleet.dhall ---\n{text}"))
}

/// images.lock pinning "base" to [`SHA`].
fn lock() -> ImageLock {
    let text = format!(
        "format 1\n\nimage base\n  url     https://example.org/base.qcow2\n  sha256  {SHA}\n  \
         size    {IMAGE_SIZE}\n  format  qcow2\n  locked  2026-01-01T00:00:00Z\n"
    );
    ImageLock::parse(&text, Path::new("images.lock")).expect("lock parses")
}

/// What observation reports for `host` right after `fleet` was applied.
fn converged(fleet: &Fleet, host: &str) -> HostState {
    let h = fleet
        .hosts
        .values()
        .find(|h| h.name.as_str() == host)
        .expect("host in fleet");
    converged_state(fleet, &lock(), h)
}

fn observation(hosts: Vec<(&str, HostObservation)>) -> Observation {
    Observation {
        format_version: 1,
        fleet: "test".into(),
        taken_at: NOW - 60,
        hosts: hosts.into_iter().map(|(h, o)| (h.to_owned(), o)).collect(),
    }
}

fn plan_obs(fleet: &Fleet, obs: &Observation, allow_destroy: bool, allow_restart: bool) -> Plan {
    plan(
        fleet,
        &lock(),
        obs,
        Options {
            now: NOW,
            allow_destroy,
            allow_restart,
            ..Options::default()
        },
    )
}

/// Plans a one-host fleet against `state` on hv1.
fn plan_hv1(fleet: &Fleet, state: HostState, allow_destroy: bool, allow_restart: bool) -> Plan {
    let obs = observation(vec![("hv1", HostObservation::Reachable(state))]);
    plan_obs(fleet, &obs, allow_destroy, allow_restart)
}

/// Makes a converged domain look stopped (or running) as observed.
fn set_power(d: &mut ObservedDomain, running: bool) {
    d.state = if running {
        PowerState::Running
    } else {
        PowerState::Stopped
    };
    d.live = running.then_some(Live {
        vcpus: d.config.vcpus,
        memory_mib: d.config.current_memory_mib,
    });
}

fn kind(a: &Action) -> &'static str {
    match a {
        Action::Snapshot { .. } => "snapshot",
        Action::PruneSnapshot { .. } => "pruneSnapshot",
        Action::EnsureImage { .. } => "ensureImage",
        Action::RemoveIncomplete { .. } => "removeIncomplete",
        Action::CreateDisk { .. } => "createDisk",
        Action::CreateSeed { .. } => "createSeed",
        Action::ReplaceSeed { .. } => "replaceSeed",
        Action::GrowDisk { .. } => "growDisk",
        Action::DefineDomain { .. } => "defineDomain",
        Action::UpdateDomain { .. } => "updateDomain",
        Action::SetAutostart { .. } => "setAutostart",
        Action::Start => "start",
        Action::Stop => "stop",
        Action::Destroy { .. } => "destroy",
        Action::TrashDisk { .. } => "trashDisk",
        Action::ProtectDisk { .. } => "protectDisk",
        Action::ReleaseLease { .. } => "releaseLease",
        Action::PurgeTrash { .. } => "purgeTrash",
        Action::RestoreDisk { .. } => "restoreDisk",
        Action::Shutdown { .. } => "shutdown",
        Action::RollbackDisk { .. } => "rollbackDisk",
        Action::MoveIn { .. } => "moveIn",
        Action::FinishMove { .. } => "finishMove",
    }
}

/// (address, action kind) of each change, in order.
fn summary(changes: &[Change]) -> Vec<(String, &'static str)> {
    changes
        .iter()
        .map(|c| (c.address.clone(), kind(&c.action)))
        .collect()
}

fn pending_changes(p: &Plan) -> Vec<&Change> {
    p.pending.iter().map(|p| &p.change).collect()
}

/// The one change of the plan (applicable or pending) and whether it is pending.
fn only_change(p: &Plan) -> (&Change, bool) {
    assert!(p.refused.is_empty(), "refused: {:#?}", p.refused);
    match (p.changes.as_slice(), p.pending.as_slice()) {
        ([c], []) => (c, false),
        ([], [pd]) => (&pd.change, true),
        _ => panic!(
            "expected exactly one change, got {:#?}\npending {:#?}",
            p.changes, p.pending
        ),
    }
}

fn hv1_domain(fleet: &Fleet, machine: &str) -> DomainSpec {
    let host = fleet.hosts.values().next().expect("a host");
    let m = fleet
        .machines
        .values()
        .find(|m| m.name.as_str() == machine)
        .expect("machine");
    desired_domain(fleet, host, m, SHA)
}

const WEB_WITH_DATA: &str =
    "name = \"web\", dataDisks = [ V.Disk::{ name = \"data\", sizeGiB = 5 } ]";

// 1. Empty host: everything is created, in prerequisite order.
#[test]
fn empty_host_creates_everything_in_phase_order() {
    let f = fleet(false, &[WEB_WITH_DATA, "name = \"db\""]);
    let p = plan_hv1(&f, HostState::default(), false, false);
    let image = format!("hv1/images/{}", &SHA[..12]);
    let want: Vec<(String, &str)> = [
        (image.as_str(), "ensureImage"),
        // The init snapshot follows each new disk, before the first boot.
        ("hv1/db/root", "createDisk"),
        ("hv1/db/root@vf-init", "snapshot"),
        ("hv1/web/root", "createDisk"),
        ("hv1/web/root@vf-init", "snapshot"),
        ("hv1/web/data", "createDisk"),
        ("hv1/web/data@vf-init", "snapshot"),
        ("hv1/db", "defineDomain"),
        ("hv1/db", "setAutostart"),
        ("hv1/web", "defineDomain"),
        ("hv1/web", "setAutostart"),
        ("hv1/db", "start"),
        ("hv1/web", "start"),
    ]
    .into_iter()
    .map(|(a, k)| (a.to_owned(), k))
    .collect();
    assert_eq!(summary(&p.changes), want);
    assert!(p.pending.is_empty() && p.refused.is_empty() && p.unreachable.is_empty());
    assert!(
        p.changes
            .iter()
            .all(|c| c.disruption == Disruption::None && c.host == "hv1")
    );

    assert_eq!(
        p.changes[0].action,
        Action::EnsureImage {
            image: "base".into(),
            sha256: SHA.into(),
            format: ImageFormat::Qcow2,
            size: IMAGE_SIZE,
        }
    );
    let base = BaseRef {
        image: "base".into(),
        sha256: SHA.into(),
        format: ImageFormat::Qcow2,
    };
    let disks = [
        ("hv1/db/root", "db-root", "root", 10, Some(base.clone())),
        ("hv1/web/root", "web-root", "root", 10, Some(base)),
        ("hv1/web/data", "web-data", "data", 5, None),
    ];
    for (addr, volume, disk, size_gib, base) in disks {
        let c = p.changes.iter().find(|c| c.address == addr).expect(addr);
        let want = Action::CreateDisk {
            volume: volume.into(),
            disk: disk.into(),
            size_gib,
            base,
        };
        assert_eq!(c.action, want, "{addr}");
    }
    for m in ["db", "web"] {
        let addr = format!("hv1/{m}");
        let define = p
            .changes
            .iter()
            .find(|c| c.address == addr)
            .expect("define");
        assert_eq!(
            define.action,
            Action::DefineDomain {
                xml: hv1_domain(&f, m).to_xml()
            }
        );
        assert_eq!(define.machine.as_deref(), Some(m));
    }
    assert_eq!(p.inputs.now, NOW);
    assert!(!p.inputs.from_file);
}

#[test]
fn image_already_on_host_is_not_copied_and_stopped_machines_do_not_start() {
    let f = fleet(
        false,
        &["name = \"web\", power = V.Power.Stopped, autostart = False"],
    );
    let mut s = HostState::default();
    s.images.insert(SHA.to_owned());
    let p = plan_hv1(&f, s, false, false);
    let want = [
        ("hv1/web/root".to_owned(), "createDisk"),
        ("hv1/web/root@vf-init".to_owned(), "snapshot"),
        ("hv1/web".to_owned(), "defineDomain"),
    ];
    assert_eq!(summary(&p.changes), want);
}

// 2. Converged observation: nothing to do; planning is deterministic.
#[test]
fn converged_is_empty_and_planning_is_deterministic() {
    let f = fleet(
        false,
        &[
            WEB_WITH_DATA,
            "name = \"db\", cpus = 2, memoryMiB = 512",
            "name = \"off\", power = V.Power.Stopped",
        ],
    );
    let p = plan_hv1(&f, converged(&f, "hv1"), true, true);
    assert!(p.is_empty(), "{:#?}", p);
    assert!(p.unmanaged.is_empty() && !p.is_incomplete());

    for state in [HostState::default(), converged(&f, "hv1")] {
        let obs = observation(vec![("hv1", HostObservation::Reachable(state))]);
        let a = serde_json::to_string(&plan_obs(&f, &obs, false, false)).unwrap();
        let b = serde_json::to_string(&plan_obs(&f, &obs, false, false)).unwrap();
        assert_eq!(a, b);
    }
}

// 3 + 4. Updates of an existing domain: disruption by field and power state.
#[test]
fn domain_updates_are_classified_by_disruption() {
    struct Case {
        name: &'static str,
        before: &'static str,
        after: &'static str,
        allow_restart: bool,
        disruption: Disruption,
        memory_live_mib: Option<u64>,
        restart: bool,
        pending: bool,
    }
    let cases = [
        Case {
            name: "memory down, running: balloon",
            before: "name = \"web\", memoryMiB = 2048",
            after: "name = \"web\", memoryMiB = 1024",
            allow_restart: false,
            disruption: Disruption::Live,
            memory_live_mib: Some(1024),
            restart: false,
            pending: false,
        },
        Case {
            name: "memory up, running, restart not allowed",
            before: "name = \"web\", memoryMiB = 1024",
            after: "name = \"web\", memoryMiB = 2048",
            allow_restart: false,
            disruption: Disruption::Restart,
            memory_live_mib: None,
            restart: true,
            pending: true,
        },
        Case {
            name: "memory up, running, restart allowed",
            before: "name = \"web\", memoryMiB = 1024",
            after: "name = \"web\", memoryMiB = 2048",
            allow_restart: true,
            disruption: Disruption::Restart,
            memory_live_mib: None,
            restart: true,
            pending: false,
        },
        Case {
            name: "memory up, stopped",
            before: "name = \"web\", memoryMiB = 1024, power = V.Power.Stopped",
            after: "name = \"web\", memoryMiB = 2048, power = V.Power.Stopped",
            allow_restart: false,
            disruption: Disruption::None,
            memory_live_mib: None,
            restart: false,
            pending: false,
        },
        Case {
            name: "vcpus up, stopped",
            before: "name = \"web\", cpus = 1, power = V.Power.Stopped",
            after: "name = \"web\", cpus = 2, power = V.Power.Stopped",
            allow_restart: false,
            disruption: Disruption::None,
            memory_live_mib: None,
            restart: false,
            pending: false,
        },
        Case {
            name: "vcpus up, running",
            before: "name = \"web\", cpus = 1",
            after: "name = \"web\", cpus = 2",
            allow_restart: false,
            disruption: Disruption::Restart,
            memory_live_mib: None,
            restart: true,
            pending: true,
        },
    ];
    for c in cases {
        let before = fleet(false, &[c.before]);
        let after = fleet(false, &[c.after]);
        let p = plan_hv1(&after, converged(&before, "hv1"), false, c.allow_restart);
        let (ch, pending) = only_change(&p);
        let want = Action::UpdateDomain {
            xml: hv1_domain(&after, "web").to_xml(),
            memory_live_mib: c.memory_live_mib,
            restart: c.restart,
        };
        assert_eq!(ch.action, want, "{}", c.name);
        assert_eq!(ch.disruption, c.disruption, "{}", c.name);
        assert_eq!(ch.address, "hv1/web", "{}", c.name);
        assert_eq!(pending, c.pending, "{}", c.name);
        assert!(
            ch.reason.starts_with("fleet.dhall changed"),
            "{}: {}",
            c.name,
            ch.reason
        );
        assert!(ch.diff.is_some(), "{}", c.name);
        if pending {
            assert!(
                p.pending[0].needs.contains("--allow-restart"),
                "{}: {}",
                c.name,
                p.pending[0].needs
            );
        }
    }
}

// 5. Drift (same spec hash) vs fleet change (different spec hash).
#[test]
fn drift_and_fleet_changes_are_told_apart() {
    // (name, fleet the observation was applied from, memory the domain has now, prefix)
    let cases = [
        (
            "changed behind our back",
            "name = \"web\", memoryMiB = 1024",
            2048,
            "drift",
        ),
        (
            "fleet edited",
            "name = \"web\", memoryMiB = 2048",
            2048,
            "fleet.dhall changed",
        ),
    ];
    let now = fleet(false, &["name = \"web\", memoryMiB = 1024"]);
    for (name, applied, have_mib, prefix) in cases {
        let mut s = converged(&fleet(false, &[applied]), "hv1");
        let d = s.domains.get_mut("web").unwrap();
        d.config.memory_mib = have_mib;
        d.config.current_memory_mib = have_mib;
        set_power(d, true);
        let same_hash = d.config.owner == hv1_domain(&now, "web").owner;
        assert_eq!(same_hash, prefix == "drift", "{name}: test setup");
        let p = plan_hv1(&now, s, false, false);
        let (ch, pending) = only_change(&p);
        assert!(ch.reason.starts_with(prefix), "{name}: {}", ch.reason);
        assert!(!pending, "{name}");
        assert!(
            matches!(
                ch.action,
                Action::UpdateDomain {
                    memory_live_mib: Some(1024),
                    restart: false,
                    ..
                }
            ),
            "{name}"
        );
        assert_eq!(ch.disruption, Disruption::Live, "{name}");
    }
}

#[test]
fn live_balloon_size_is_not_compared() {
    // The balloon is best effort (a guest without a balloon driver never
    // follows it): only the persistent definition is managed.
    let f = fleet(false, &["name = \"web\", memoryMiB = 1024"]);
    let mut s = converged(&f, "hv1");
    s.domains.get_mut("web").unwrap().live = Some(Live {
        vcpus: 1,
        memory_mib: 512,
    });
    let p = plan_hv1(&f, s, true, true);
    assert!(p.is_empty(), "{:#?}", p);
}

// 6. Disks only grow; a grow is live on a running guest.
#[test]
fn disks_grow_and_never_shrink() {
    // (name, volume, observed GiB, running, expected)
    enum Want {
        Refused,
        Grow {
            target: &'static str,
            to_gib: u64,
            disruption: Disruption,
        },
    }
    let cases = [
        (
            "root bigger than desired",
            "web-root",
            20,
            true,
            Want::Refused,
        ),
        (
            "data bigger than desired",
            "web-data",
            6,
            false,
            Want::Refused,
        ),
        (
            "root smaller, running",
            "web-root",
            4,
            true,
            Want::Grow {
                target: "vda",
                to_gib: 10,
                disruption: Disruption::Live,
            },
        ),
        (
            "root smaller, stopped",
            "web-root",
            4,
            false,
            Want::Grow {
                target: "vda",
                to_gib: 10,
                disruption: Disruption::None,
            },
        ),
        (
            "data smaller, running",
            "web-data",
            1,
            true,
            Want::Grow {
                target: "vdb",
                to_gib: 5,
                disruption: Disruption::Live,
            },
        ),
    ];
    let running_fleet = fleet(false, &[WEB_WITH_DATA]);
    let stopped_fleet = fleet(
        false,
        &[&format!("{WEB_WITH_DATA}, power = V.Power.Stopped")],
    );
    for (name, volume, have_gib, running, want) in cases {
        let f = if running {
            &running_fleet
        } else {
            &stopped_fleet
        };
        let mut s = converged(f, "hv1");
        s.disks.get_mut(volume).unwrap().size_bytes = have_gib * GIB;
        let p = plan_hv1(f, s, false, false);
        let disk = volume.trim_start_matches("web-");
        match want {
            Want::Refused => {
                assert!(
                    p.changes.is_empty() && p.pending.is_empty(),
                    "{name}: {:#?}",
                    p.changes
                );
                assert_eq!(p.refused.len(), 1, "{name}");
                assert_eq!(p.refused[0].address, format!("hv1/web/{disk}"), "{name}");
                assert!(
                    p.refused[0].message.contains("only grow"),
                    "{name}: {}",
                    p.refused[0].message
                );
            }
            Want::Grow {
                target,
                to_gib,
                disruption,
            } => {
                let (ch, pending) = only_change(&p);
                let want = Action::GrowDisk {
                    volume: volume.into(),
                    target: target.into(),
                    from_bytes: have_gib * GIB,
                    to_gib,
                    running,
                };
                assert_eq!(ch.action, want, "{name}");
                assert_eq!(ch.disruption, disruption, "{name}");
                assert_eq!(ch.address, format!("hv1/web/{disk}"), "{name}");
                assert!(!pending, "{name}");
            }
        }
    }
}

// 7. Managed domains removed from the fleet are destroyed, unless protected.
#[test]
fn removed_machines_are_destroyed_unless_protected() {
    // (protect when last applied, allow_destroy)
    let cases = [(false, false), (false, true), (true, false), (true, true)];
    let now = fleet(false, &["name = \"web\""]);
    for (protect, allow_destroy) in cases {
        let old = format!(
            "name = \"old\", protect = {}, dataDisks = [ V.Disk::{{ name = \"data\", sizeGiB = 1 }} ]",
            if protect { "True" } else { "False" }
        );
        let applied = fleet(false, &["name = \"web\"", &old]);
        let p = plan_hv1(&now, converged(&applied, "hv1"), allow_destroy, false);
        let case = format!("protect={protect} allow_destroy={allow_destroy}");
        if protect {
            assert!(
                p.changes.is_empty() && p.pending.is_empty(),
                "{case}: {:#?}",
                p
            );
            assert_eq!(p.refused.len(), 1, "{case}");
            assert_eq!(p.refused[0].address, "hv1/old", "{case}");
            assert!(
                p.refused[0].message.contains("protected"),
                "{case}: {}",
                p.refused[0].message
            );
            continue;
        }
        let (ch, pending) = only_change(&p);
        let want = Action::Destroy {
            volumes: vec!["old-data".into(), "old-root".into()],
        };
        assert_eq!(ch.action, want, "{case}");
        assert_eq!(ch.disruption, Disruption::Destructive, "{case}");
        assert_eq!(ch.address, "hv1/old", "{case}");
        assert_eq!(ch.machine.as_deref(), Some("old"), "{case}");
        assert!(
            ch.reason.contains("stop, undefine, move 2 disks"),
            "{case}: {}",
            ch.reason
        );
        assert_eq!(pending, !allow_destroy, "{case}");
        if pending {
            assert!(p.pending[0].needs.contains("--allow-destroy"), "{case}");
        }
    }
}

#[test]
fn orphan_disks_of_removed_machines_are_trashed() {
    let now = fleet(false, &["name = \"web\""]);
    let mut s = converged(&fleet(false, &["name = \"web\"", "name = \"old\""]), "hv1");
    s.domains.remove("old");
    let p = plan_hv1(&now, s, true, false);
    let (ch, _) = only_change(&p);
    assert_eq!(
        ch.action,
        Action::TrashDisk {
            volume: "old-root".into()
        }
    );
    assert_eq!(
        (ch.address.as_str(), ch.disruption),
        ("hv1/old/root", Disruption::Destructive)
    );
}

#[test]
fn removed_data_disk_waits_for_the_domain_update() {
    let before = fleet(false, &[WEB_WITH_DATA]);
    let after = fleet(false, &["name = \"web\""]);
    // (allow_destroy, allow_restart, applicable, pending with what it needs)
    type Case = (
        bool,
        bool,
        &'static [&'static str],
        &'static [(&'static str, &'static str)],
    );
    let cases: [Case; 4] = [
        (
            false,
            false,
            &[],
            &[
                ("updateDomain", "--allow-restart"),
                ("trashDisk", "domain update"),
            ],
        ),
        (
            true,
            false,
            &[],
            &[
                ("updateDomain", "--allow-restart"),
                ("trashDisk", "domain update"),
            ],
        ),
        (
            false,
            true,
            &["updateDomain"],
            &[("trashDisk", "--allow-destroy")],
        ),
        (true, true, &["updateDomain", "trashDisk"], &[]),
    ];
    for (allow_destroy, allow_restart, applicable, pending) in cases {
        let case = format!("allow_destroy={allow_destroy} allow_restart={allow_restart}");
        let p = plan_hv1(
            &after,
            converged(&before, "hv1"),
            allow_destroy,
            allow_restart,
        );
        let kinds: Vec<&str> = p.changes.iter().map(|c| kind(&c.action)).collect();
        assert_eq!(kinds, applicable, "{case}");
        assert_eq!(p.pending.len(), pending.len(), "{case}: {:#?}", p.pending);
        for (pd, (k, needs)) in p.pending.iter().zip(pending) {
            assert_eq!(kind(&pd.change.action), *k, "{case}");
            assert!(pd.needs.contains(needs), "{case}: {}", pd.needs);
        }
        let trash = p
            .changes
            .iter()
            .chain(pending_changes(&p))
            .find(|c| kind(&c.action) == "trashDisk");
        let trash = trash.expect("a trashDisk change");
        assert_eq!(
            trash.action,
            Action::TrashDisk {
                volume: "web-data".into()
            },
            "{case}"
        );
        assert_eq!(
            (trash.address.as_str(), trash.disruption),
            ("hv1/web/data", Disruption::Destructive)
        );
    }
}

// 8. Objects that are not this fleet's are listed, never touched.
#[test]
fn unmanaged_objects_are_listed_or_refused() {
    let f = fleet(false, &["name = \"web\""]);
    let foreign = |name: &str, owner_fleet: Option<&str>| {
        let mut d = converged(&f, "hv1").domains.remove("web").unwrap();
        d.config.name = name.into();
        d.config.owner = owner_fleet.map(|fl| Owner {
            fleet: fl.into(),
            host: "hv1".into(),
            machine: name.into(),
            spec_hash: "0000000000000000".into(),
            protect: false,
            seed: None,
        });
        d
    };
    // (name, observed state, unmanaged listing, refused address)
    let mut cases: Vec<(&str, HostState, Vec<&str>, Option<&str>)> = Vec::new();

    let mut s = converged(&f, "hv1");
    s.domains.insert("other".into(), foreign("other", None));
    cases.push(("no owner, other name", s, vec!["domain other"], None));

    let mut s = converged(&f, "hv1");
    s.domains
        .insert("other".into(), foreign("other", Some("elsewhere")));
    cases.push(("other fleet, other name", s, vec!["domain other"], None));

    let mut s = converged(&f, "hv1");
    s.domains.insert("web".into(), foreign("web", None));
    cases.push((
        "no owner, fleet machine's name",
        s,
        vec!["domain web"],
        Some("hv1/web"),
    ));

    let mut s = converged(&f, "hv1");
    s.domains
        .insert("web".into(), foreign("web", Some("elsewhere")));
    cases.push((
        "other fleet, fleet machine's name",
        s,
        vec!["domain web"],
        Some("hv1/web"),
    ));

    let mut s = HostState::default();
    s.images.insert(SHA.to_owned());
    s.unmanaged_files.push("disks/web-root".into());
    cases.push((
        "foreign disk directory in the way",
        s,
        vec!["file disks/web-root"],
        Some("hv1/web/root"),
    ));

    for (name, state, listed, refused) in cases {
        let p = plan_hv1(&f, state, true, true);
        let listed: Vec<String> = listed.into_iter().map(String::from).collect();
        assert_eq!(p.unmanaged.get("hv1"), Some(&listed), "{name}");
        assert!(
            p.changes.is_empty() && p.pending.is_empty(),
            "{name}: {:#?}",
            p.changes
        );
        let got: Vec<&str> = p.refused.iter().map(|r| r.address.as_str()).collect();
        assert_eq!(got, refused.into_iter().collect::<Vec<_>>(), "{name}");
        if refused.is_some() {
            assert!(
                p.refused[0].message.contains("not managed")
                    || p.refused[0].message.contains("not owned"),
                "{name}"
            );
        }
    }
}

// 9. Trash expires exactly `trashRetentionDays` after it was trashed.
#[test]
fn trash_expires_at_the_retention_boundary() {
    let f = fleet(false, &["name = \"web\""]);
    let keep = 7 * DAY; // the default trashRetentionDays
    // (trashed_at, allow_destroy, expected: None = nothing, Some(pending))
    let cases = [
        (NOW - keep, true, Some(false)),
        (NOW - keep, false, Some(true)),
        (NOW - keep - 1, true, Some(false)),
        (NOW - keep + 1, true, None),
        (NOW, true, None),
    ];
    for (trashed_at, allow_destroy, want) in cases {
        let mut s = converged(&f, "hv1");
        let entry = format!("gone-root@{trashed_at}");
        let owner = DiskOwner {
            fleet: "test".into(),
            machine: "gone".into(),
            disk: "root".into(),
            protect: false,
        };
        s.trash.insert(
            entry.clone(),
            TrashEntry {
                owner,
                volume: "gone-root".into(),
                trashed_at,
            },
        );
        let p = plan_hv1(&f, s, allow_destroy, false);
        let case = format!(
            "trashed {}s before now, allow_destroy={allow_destroy}",
            NOW - trashed_at
        );
        let Some(want_pending) = want else {
            assert!(p.is_empty(), "{case}: {:#?}", p);
            continue;
        };
        let (ch, pending) = only_change(&p);
        assert_eq!(
            ch.action,
            Action::PurgeTrash {
                entry: entry.clone()
            },
            "{case}"
        );
        assert_eq!(ch.disruption, Disruption::Destructive, "{case}");
        assert_eq!(ch.address, format!("hv1/trash/{entry}"), "{case}");
        assert_eq!(pending, want_pending, "{case}");
    }
}

// 10. An unreachable host does not stop the others from being planned.
#[test]
fn unreachable_hosts_make_the_plan_incomplete() {
    let f = fleet(
        true,
        &[
            "name = \"web\", host = Some \"hv1\"",
            "name = \"db\", host = Some \"hv2\"",
        ],
    );
    let down = HostObservation::Unreachable {
        error: "connection refused".into(),
    };
    let cases = [
        ("unreachable", Some(down), "connection refused"),
        (
            "missing from the observation",
            None,
            "not in the observation",
        ),
    ];
    for (name, hv2, error) in cases {
        let mut hosts = vec![("hv1", HostObservation::Reachable(HostState::default()))];
        hosts.extend(hv2.map(|o| ("hv2", o)));
        let p = plan_obs(&f, &observation(hosts), false, false);
        assert!(p.is_incomplete(), "{name}");
        let want: BTreeMap<String, String> = [("hv2".to_owned(), error.to_owned())].into();
        assert_eq!(p.unreachable, want, "{name}");
        assert!(!p.changes.is_empty(), "{name}");
        assert!(
            p.changes.iter().all(|c| c.host == "hv1"),
            "{name}: {:#?}",
            summary(&p.changes)
        );
        assert!(
            p.changes
                .iter()
                .any(|c| c.action == Action::Start && c.address == "hv1/web"),
            "{name}"
        );
    }
    // Both reachable and converged: complete and empty.
    let both = observation(vec![
        ("hv1", HostObservation::Reachable(converged(&f, "hv1"))),
        ("hv2", HostObservation::Reachable(converged(&f, "hv2"))),
    ]);
    let p = plan_obs(&f, &both, false, false);
    assert!(p.is_empty() && !p.is_incomplete(), "{:#?}", p);
}

// 11. Half-created disks from an interrupted apply are cleaned up first.
#[test]
fn incomplete_disk_directories_are_removed() {
    let f = fleet(false, &[WEB_WITH_DATA]);
    let mut s = converged(&f, "hv1");
    s.incomplete.push("disks/.new-web-data".into());
    let p = plan_hv1(&f, s, false, false);
    let (ch, pending) = only_change(&p);
    assert_eq!(
        ch.action,
        Action::RemoveIncomplete {
            path: "disks/.new-web-data".into()
        }
    );
    assert_eq!(ch.disruption, Disruption::None);
    assert_eq!(ch.address, "hv1/disks/.new-web-data");
    assert!(!pending);

    // On an empty host the cleanup runs after the image copy, before any disk.
    let s = HostState {
        incomplete: vec!["disks/.new-web-root".into()],
        ..HostState::default()
    };
    let p = plan_hv1(&f, s, false, false);
    let kinds: Vec<&str> = p.changes.iter().map(|c| kind(&c.action)).collect();
    assert_eq!(
        &kinds[..3],
        ["ensureImage", "removeIncomplete", "createDisk"]
    );
}

// 12. Power state follows the fleet; stopping is restart-class.
#[test]
fn power_follows_the_fleet() {
    // (fleet power, observed running, allow_restart, action, disruption, pending)
    let cases = [
        (
            "V.Power.Stopped",
            true,
            false,
            Action::Stop,
            Disruption::Restart,
            true,
        ),
        (
            "V.Power.Stopped",
            true,
            true,
            Action::Stop,
            Disruption::Restart,
            false,
        ),
        (
            "V.Power.Running",
            false,
            false,
            Action::Start,
            Disruption::None,
            false,
        ),
    ];
    for (power, running, allow_restart, action, disruption, want_pending) in cases {
        let f = fleet(false, &[&format!("name = \"web\", power = {power}")]);
        let mut s = converged(&f, "hv1");
        set_power(s.domains.get_mut("web").unwrap(), running);
        let p = plan_hv1(&f, s, false, allow_restart);
        let case = format!("{power}, running={running}, allow_restart={allow_restart}");
        let (ch, pending) = only_change(&p);
        assert_eq!((&ch.action, ch.disruption), (&action, disruption), "{case}");
        assert_eq!(ch.address, "hv1/web", "{case}");
        assert_eq!(pending, want_pending, "{case}");
        if pending {
            assert!(pending_changes(&p)[0].action == Action::Stop);
            assert!(p.pending[0].needs.contains("--allow-restart"), "{case}");
        }
    }
}

#[test]
fn regression_far_future_trash_stamp_neither_panics_nor_purges() {
    // An owned trash directory named `vol@18446744073709551615` once
    // overflowed `trashed_at + retention` (panic in debug, purge in release).
    let f = fleet(false, &["name = \"web\""]);
    let mut s = converged(&f, "hv1");
    let owner = DiskOwner {
        fleet: "test".into(),
        machine: "gone".into(),
        disk: "root".into(),
        protect: false,
    };
    s.trash.insert(
        format!("gone-root@{}", u64::MAX),
        TrashEntry {
            owner,
            volume: "gone-root".into(),
            trashed_at: u64::MAX,
        },
    );
    assert!(plan_hv1(&f, s, true, true).is_empty());
}

#[test]
fn regression_power_or_autostart_edits_do_not_redefine_the_domain() {
    // The spec hash once covered the whole machine, so editing power or
    // autostart also planned a metadata-only "update domain".
    let before = fleet(false, &["name = \"web\""]);
    for after in [
        "name = \"web\", power = V.Power.Stopped",
        "name = \"web\", autostart = False",
    ] {
        let f = fleet(false, &[after]);
        let p = plan_hv1(&f, converged(&before, "hv1"), true, true);
        assert!(
            p.changes
                .iter()
                .all(|c| !matches!(c.action, Action::UpdateDomain { .. })),
            "{after}: {:?}",
            summary(&p.changes)
        );
        assert_eq!(p.changes.len(), 1, "{after}: {:?}", summary(&p.changes));
    }
}

#[test]
fn regression_no_restart_right_before_a_stop() {
    // Growing memory (restart class) and stopping in one edit once rebooted
    // the guest only to shut it down right after.
    let before = fleet(false, &["name = \"web\", memoryMiB = 1024"]);
    let f = fleet(
        false,
        &["name = \"web\", memoryMiB = 2048, power = V.Power.Stopped"],
    );
    let p = plan_hv1(&f, converged(&before, "hv1"), false, true);
    let update = p
        .changes
        .iter()
        .find(|c| matches!(c.action, Action::UpdateDomain { .. }))
        .expect("definition updated");
    assert!(
        matches!(
            update.action,
            Action::UpdateDomain {
                restart: false,
                memory_live_mib: None,
                ..
            }
        ),
        "{:?}",
        update.action
    );
    assert_eq!(update.disruption, Disruption::None);
    assert_eq!(p.changes.last().map(|c| &c.action), Some(&Action::Stop));
}

#[test]
fn snapshots_are_planned_per_disk_on_zfs_and_per_machine_on_dir() {
    let body = "name = \"web\", snapshots = V.Snapshots::{ daily = 1 }, dataDisks = [ V.Disk::{ name = \"data\", sizeGiB = 1 } ]";
    // New machine on Dir: init per disk right after each create, then one
    // scheduled snapshot of the whole machine after it starts.
    let f = fleet(false, &[body]);
    let p = plan_hv1(&f, HostState::default(), false, false);
    let s = summary(&p.changes);
    let pos = |a: &str, k: &str| {
        s.iter()
            .position(|(x, y)| x == a && *y == k)
            .unwrap_or_else(|| panic!("{a} {k}: {s:?}"))
    };
    assert_eq!(
        pos("hv1/web/root@vf-init", "snapshot"),
        pos("hv1/web/root", "createDisk") + 1
    );
    assert!(pos("hv1/web/data@vf-init", "snapshot") < pos("hv1/web", "defineDomain"));
    let daily: Vec<&Change> = p
        .changes
        .iter()
        .filter(|c| c.address.starts_with("hv1/web@vf-daily-"))
        .collect();
    assert_eq!(daily.len(), 1, "{s:?}");
    assert!(
        matches!(&daily[0].action, Action::Snapshot { volumes, .. } if volumes == &["web-root".to_owned(), "web-data".to_owned()])
    );
    assert!(
        pos("hv1/web", "start")
            < s.iter()
                .position(|(a, _)| a.starts_with("hv1/web@vf-daily-"))
                .unwrap()
    );

    // ZFS: per disk.
    let z = fleet_with("V.Storage.Zfs { parent = \"tank/vf\" }", false, &[body]);
    let p = plan_hv1(&z, HostState::default(), false, false);
    let per_disk: Vec<&str> = p
        .changes
        .iter()
        .filter(|c| c.address.contains("@vf-daily-"))
        .map(|c| c.address.split('@').next().unwrap())
        .collect();
    assert_eq!(per_disk, ["hv1/web/root", "hv1/web/data"]);

    // Existing disk: today's daily exists, an old one is pruned only with permission.
    let mut st = converged(&z, "hv1");
    for d in st.disks.values_mut() {
        d.snapshots = vec![
            "vf-init".into(),
            format!("vf-daily-{}", virtfleet::plan::snapshots::stamp(NOW)),
            "vf-daily-20200101T000000Z".into(),
            "hand-made".into(),
        ];
    }
    let p = plan_hv1(&z, st.clone(), false, false);
    assert!(p.changes.is_empty(), "{:?}", summary(&p.changes));
    let pruned: Vec<(&str, Disruption)> = p
        .pending
        .iter()
        .map(|x| (x.change.address.as_str(), x.change.disruption))
        .collect();
    assert_eq!(
        pruned,
        [
            (
                "hv1/web/root@vf-daily-20200101T000000Z",
                Disruption::Destructive
            ),
            (
                "hv1/web/data@vf-daily-20200101T000000Z",
                Disruption::Destructive
            )
        ]
    );
    assert!(
        p.pending
            .iter()
            .all(|x| x.needs.contains("--allow-destroy"))
    );
    let p = plan_hv1(&z, st, true, false);
    assert_eq!(
        p.changes.len(),
        2,
        "prunes in changes with permission: {:?}",
        summary(&p.changes)
    );
    assert!(p.changes.iter().all(|c| matches!(&c.action, Action::PruneSnapshot { name, .. } if name == "vf-daily-20200101T000000Z")));
}
