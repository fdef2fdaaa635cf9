//! Placement and moves in the pure planner: fleets loaded from Dhall,
//! hand-built observations of two hosts, plans out. No libvirt, no clock.

use std::path::Path;
use virtfleet::fleet::Fleet;
use virtfleet::lock::ImageLock;
use virtfleet::plan::expected::converged_state;
use virtfleet::plan::{Action, Disruption, Options, Plan, plan};
use virtfleet::resources::observed::{HostObservation, HostState, Observation};

const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const NOW: u64 = 1_900_000_000;

/// Fleet "test": hv1 (4 CPUs, 1024 MiB, label `hdd`) and hv2 (4 CPUs,
/// 2048 MiB, label `ssd`), `settings` (Dhall fields), `machines` (bodies of
/// `V.Machine::{ .. }`, image filled in).
fn fleet(settings: &str, machines: &[&str]) -> Fleet {
    let host = |n: &str, mem: u32, label: &str| {
        format!(
            "V.Host::{{ name = \"{n}\", uri = \"qemu:///system\", storage = V.Storage.Dir {{ path = \"/srv/{n}\" }}, \
             capacity = Some {{ cpus = 4, memoryMiB = {mem} }}, labels = [ \"{label}\" ] }}"
        )
    };
    let ms: Vec<String> = machines
        .iter()
        .map(|m| format!("V.Machine::{{ image = \"base\", diskGiB = 1, {m} }}"))
        .collect();
    let text = format!(
        "let V = {pkg}\nin V.Fleet::{{ name = \"test\", settings = V.Settings::{{ trashRetentionDays = 7 {settings} }}\n\
         , hosts = [ {h1}, {h2} ]\n\
         , images = [ V.Image::{{ name = \"base\", url = \"https://example.org/base.qcow2\" }} ]\n\
         , machines = [ {ms} ] : List V.Machine.Type }}\n",
        pkg = concat!(env!("CARGO_MANIFEST_DIR"), "/dhall/package.dhall"),
        h1 = host("hv1", 1024, "hdd"),
        h2 = host("hv2", 2048, "ssd"),
        ms = ms.join(", "),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.dhall");
    std::fs::write(&path, &text).unwrap();
    virtfleet::fleet::load(&path).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn lock() -> ImageLock {
    let text = format!(
        "format 1\n\nimage base\n  url     https://example.org/base.qcow2\n  sha256  {SHA}\n  \
         size    4096\n  format  qcow2\n  locked  2026-01-01T00:00:00Z\n"
    );
    ImageLock::parse(&text, Path::new("images.lock")).unwrap()
}

fn obs(hv1: Option<HostState>, hv2: Option<HostState>) -> Observation {
    let o = |s: Option<HostState>| match s {
        Some(s) => HostObservation::Reachable(s),
        None => HostObservation::Unreachable {
            error: "connection refused".into(),
        },
    };
    Observation {
        format_version: 1,
        fleet: "test".into(),
        taken_at: NOW - 60,
        hosts: [("hv1".into(), o(hv1)), ("hv2".into(), o(hv2))].into(),
    }
}

fn plan_of(f: &Fleet, o: &Observation, allow_restart: bool) -> Plan {
    let opts = Options {
        now: NOW,
        allow_restart,
        ..Options::default()
    };
    plan(f, &lock(), o, opts)
}

fn placed(p: &Plan) -> Vec<(String, String)> {
    p.placements
        .iter()
        .map(|d| (d.machine.clone(), d.host.clone()))
        .collect()
}

fn empty() -> Option<HostState> {
    Some(HostState::default())
}

/// `fleet`'s converged state on `host`, with its machines placed as `placed` says.
fn converged_with(f: &Fleet, host: &str, on: &[&str]) -> HostState {
    let mut g = f.clone();
    g.machines.retain(|n, _| on.contains(&n.as_str()));
    for m in g.machines.values_mut() {
        m.host = virtfleet::fleet::HostName::new(host).unwrap();
    }
    let h = g.hosts.values().find(|h| h.name.as_str() == host).unwrap();
    converged_state(&g, &lock(), h)
}

#[test]
fn spread_places_within_capacity_deterministically_and_says_why() {
    let f = fleet(
        "",
        &[
            "name = \"a\", memoryMiB = 512",
            "name = \"b\", memoryMiB = 512",
            "name = \"c\", memoryMiB = 512",
        ],
    );
    let p = plan_of(&f, &obs(empty(), empty()), false);
    assert!(p.refused.is_empty(), "{:#?}", p.refused);
    // a: hv2 has 2048 free; b: hv2 still 1536 > 1024; c: 1024 each, fewer machines on hv1.
    let want =
        [("a", "hv2"), ("b", "hv2"), ("c", "hv1")].map(|(m, h)| (m.to_owned(), h.to_owned()));
    assert_eq!(placed(&p), want);
    assert_eq!(
        p.placements[0].reason,
        "most free memory (2048 MiB) among 2 allowed"
    );
    assert_eq!(
        p.placements[2].reason,
        "fewest machines (0) among 2 allowed"
    );
    assert!(
        p.changes
            .iter()
            .any(|c| c.address == "hv1/c" && matches!(c.action, Action::DefineDomain { .. }))
    );
    // Same inputs, same plan, byte for byte.
    let again = plan_of(&f, &obs(empty(), empty()), false);
    assert_eq!(
        serde_json::to_string(&p).unwrap(),
        serde_json::to_string(&again).unwrap()
    );
    // plan --json carries the placements.
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["placements"][0]["host"], "hv2");
    assert!(
        json["placements"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("most free memory")
    );
}

#[test]
fn pack_fills_the_fullest_host_and_groups_still_spread() {
    let f = fleet(
        ", placement = V.Strategy.Pack",
        &[
            "name = \"a\", memoryMiB = 256",
            "name = \"b\", memoryMiB = 256",
            "name = \"db1\", memoryMiB = 256, group = Some \"db\"",
            "name = \"db2\", memoryMiB = 256, group = Some \"db\"",
        ],
    );
    let p = plan_of(&f, &obs(empty(), empty()), false);
    let got = placed(&p);
    // Pack: least free memory that fits: hv1 (1024) for a and b.
    assert_eq!(got[0], ("a".into(), "hv1".into()));
    assert_eq!(got[1], ("b".into(), "hv1".into()));
    // db1 packs onto hv1 too; db2 is of the same group: the other host.
    assert_eq!(got[2].1, "hv1");
    assert_eq!(got[3], ("db2".into(), "hv2".into()));
    assert!(
        p.placements[3]
            .reason
            .contains("fewest machines of group db (0)"),
        "{}",
        p.placements[3].reason
    );
}

#[test]
fn a_machine_that_fits_nowhere_is_refused_naming_what_is_short_per_host() {
    let f = fleet(
        "",
        &[
            "name = \"big\", memoryMiB = 4096",
            "name = \"wide\", cpus = 20",
        ],
    );
    let p = plan_of(&f, &obs(empty(), empty()), false);
    let msgs: Vec<&str> = p.refused.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(msgs.len(), 2, "{msgs:#?}");
    assert!(
        msgs[0].contains("machine big fits on none of its 2 allowed hosts"),
        "{}",
        msgs[0]
    );
    assert!(
        msgs[0].contains("hv1: memory: needs 4096 MiB, 1024 MiB free of 1024"),
        "{}",
        msgs[0]
    );
    assert!(
        msgs[0].contains("hv2: memory: needs 4096 MiB, 2048 MiB free of 2048"),
        "{}",
        msgs[0]
    );
    assert!(
        msgs[1].contains("vCPUs: needs 20, 16 free of 16 (4 CPUs × overcommit 4)"),
        "{}",
        msgs[1]
    );
    // Storage as observed counts too.
    let small = HostState {
        storage_free_bytes: Some(1 << 20),
        ..HostState::default()
    };
    let f = fleet("", &["name = \"a\""]);
    let p = plan_of(&f, &obs(Some(small.clone()), Some(small)), false);
    assert!(
        p.refused[0]
            .message
            .contains("storage: needs 1.0 GiB, 1.0 MiB free"),
        "{}",
        p.refused[0].message
    );
}

#[test]
fn labels_and_allowed_hosts_limit_the_candidates() {
    let f = fleet(
        "",
        &[
            "name = \"fast\", hostLabels = [ \"ssd\" ]",
            "name = \"pinned\", hosts = [ \"hv1\" ]",
        ],
    );
    let p = plan_of(&f, &obs(empty(), empty()), false);
    assert_eq!(
        placed(&p),
        [
            ("fast".to_owned(), "hv2".to_owned()),
            ("pinned".to_owned(), "hv1".to_owned())
        ]
    );
    assert_eq!(p.placements[0].reason, "the only allowed host");
}

#[test]
fn placement_is_stable_and_an_unreachable_host_is_no_reason_to_move() {
    let f = fleet("", &["name = \"a\", memoryMiB = 512"]);
    // `a` lives on hv1, although hv2 has more room: it stays.
    let hv1 = converged_with(&f, "hv1", &["a"]);
    let p = plan_of(&f, &obs(Some(hv1), empty()), false);
    assert!(p.is_empty(), "{:#?}", p);
    assert!(p.placements.is_empty());
    // hv1 down: `a` may be there; it is not created on hv2.
    let p = plan_of(&f, &obs(None, empty()), false);
    assert!(p.changes.is_empty(), "{:#?}", p.changes);
    assert!(
        p.notes
            .iter()
            .any(|n| n.message.contains("may be on hv1 (unreachable)")),
        "{:#?}",
        p.notes
    );
}

#[test]
fn changing_a_machines_host_is_a_restart_class_move_never_a_destroy() {
    let before = fleet(
        "",
        &["name = \"web\", host = Some \"hv1\", memoryMiB = 256"],
    );
    let hv1 = converged_with(&before, "hv1", &["web"]);
    let after = fleet(
        "",
        &["name = \"web\", host = Some \"hv2\", memoryMiB = 256"],
    );
    let o = obs(Some(hv1.clone()), empty());
    // Without --allow-restart: only the move's first step, pending.
    let p = plan_of(&after, &o, false);
    assert!(
        p.changes.iter().all(|c| !matches!(
            c.action,
            Action::Destroy { .. } | Action::DefineDomain { .. }
        )),
        "{:#?}",
        p.changes
    );
    assert_eq!(p.pending.len(), 1);
    assert!(matches!(p.pending[0].change.action, Action::MoveIn { .. }));
    // With it: move in, define (same UUID and MAC), start, finish on hv1.
    let p = plan_of(&after, &o, true);
    let kinds: Vec<(&str, &str)> = p
        .changes
        .iter()
        .filter(|c| c.machine.as_deref() == Some("web"))
        .map(|c| {
            let k = match &c.action {
                Action::MoveIn { .. } => "moveIn",
                Action::DefineDomain { .. } => "define",
                Action::SetAutostart { .. } => "autostart",
                Action::Start => "start",
                Action::FinishMove { .. } => "finishMove",
                Action::EnsureImage { .. } => "image",
                other => panic!("unexpected {other:?}"),
            };
            (c.host.as_str(), k)
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("hv2", "moveIn"),
            ("hv2", "define"),
            ("hv2", "autostart"),
            ("hv2", "start"),
            ("hv2", "finishMove")
        ]
    );
    assert!(
        p.changes
            .iter()
            .all(|c| c.disruption != Disruption::Destructive)
    );
    let Action::DefineDomain { xml } = &p
        .changes
        .iter()
        .find(|c| matches!(c.action, Action::DefineDomain { .. }))
        .unwrap()
        .action
    else {
        unreachable!()
    };
    let old = &hv1.domains["web"].config;
    assert!(xml.contains(&old.uuid), "UUID follows the machine");
    assert!(xml.contains("/srv/hv2/"), "disks on the new host");
    // A move stopped after the machine was defined on hv2: finish it, no destroy.
    let mut hv1_stopped = hv1;
    for d in hv1_stopped.domains.values_mut() {
        d.state = virtfleet::resources::observed::PowerState::Stopped;
        d.live = None;
    }
    let hv2 = converged_with(&after, "hv2", &["web"]);
    let p = plan_of(&after, &obs(Some(hv1_stopped), Some(hv2)), true);
    let finish: Vec<_> = p.changes.iter().map(|c| &c.action).collect();
    assert!(
        matches!(finish.as_slice(), [Action::FinishMove { from, .. }] if from == "hv1"),
        "{finish:#?}"
    );
}

#[test]
fn a_move_between_a_dir_and_a_zfs_host_says_it_converts_each_way() {
    let on = |host: &str| {
        let mut f = fleet(
            "",
            &[&format!(
                "name = \"web\", host = Some \"{host}\", memoryMiB = 256"
            )],
        );
        let hv2 = f.hosts.values_mut().find(|h| h.name.as_str() == "hv2");
        hv2.unwrap().storage = virtfleet::fleet::Storage::Zfs {
            parent: "tank/vf".into(),
        };
        f
    };
    let reason = |p: &Plan| {
        p.changes
            .iter()
            .find(|c| matches!(c.action, Action::MoveIn { .. }))
            .map(|c| c.reason.clone())
            .unwrap_or_else(|| panic!("no move: {:#?}", p.changes))
    };
    // Running on Dir hv1, placed on ZFS hv2.
    let hv1 = converged_with(&on("hv1"), "hv1", &["web"]);
    let p = plan_of(&on("hv2"), &obs(Some(hv1), empty()), true);
    let why = reason(&p);
    assert!(
        why.contains("stop it there, convert 1 disk (1.0 GiB) with snapshots from qcow2 files to zvols, verify"),
        "{why}"
    );
    // And back.
    let hv2 = converged_with(&on("hv2"), "hv2", &["web"]);
    let p = plan_of(&on("hv1"), &obs(empty(), Some(hv2)), true);
    let why = reason(&p);
    assert!(why.contains("from zvols to qcow2 files"), "{why}");
}
