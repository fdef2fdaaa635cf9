//! Every shipped fleet loads and validates: the root fleet.dhall (with its
//! images.lock) and each file in examples/. What the README shows must run.

use std::path::{Path, PathBuf};
use virtfleet::fleet::{Power, Storage, load};
use virtfleet::lock::ImageLock;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

#[test]
fn every_example_loads() {
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(repo("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "dhall") {
            let fleet = load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!fleet.machines.is_empty(), "{}", path.display());
            seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "cloud-init.dhall",
            "generated.dhall",
            "homelab.dhall",
            "single-host.dhall"
        ]
    );
}

#[test]
fn cloud_init_example_builds_its_seeds() {
    let fleet = load(&repo("examples/cloud-init.dhall")).unwrap();
    for m in fleet.machines.values() {
        let seed = virtfleet::resources::seed::seed(m).expect("every machine has a seed");
        assert_eq!(
            seed.files.meta_data.lines().count(),
            4,
            "{}",
            seed.files.meta_data
        );
        assert!(seed.files.user_data.contains("ExampleKeyOnlyForDocs"));
    }
    let db = &fleet
        .machines
        .values()
        .find(|m| m.name.as_str() == "db")
        .unwrap();
    let seed = virtfleet::resources::seed::seed(db).unwrap();
    assert_eq!(seed.summary.instance_id, "db-1");
    assert!(
        seed.files
            .network_config
            .unwrap()
            .contains("192.168.122.20/24")
    );
}

#[test]
fn homelab_is_multi_host_zfs() {
    let fleet = load(&repo("examples/homelab.dhall")).unwrap();
    assert_eq!(fleet.hosts.len(), 3);
    assert!(
        fleet
            .hosts
            .values()
            .all(|h| matches!(h.storage, Storage::Zfs { .. }))
    );
    let pg = &fleet.machines[&virtfleet::fleet::VmName::new("postgres").unwrap()];
    assert!(pg.protect);
    assert_eq!(
        pg.data_disks[0].snapshots.hourly, 24,
        "a data disk keeps its own policy"
    );
    let k3s = &fleet.machines[&virtfleet::fleet::VmName::new("k3s-2").unwrap()];
    assert!(!k3s.placement.fixed, "placed by the planner");
    let hosts: Vec<&str> = k3s
        .placement
        .candidates
        .iter()
        .map(|h| h.as_str())
        .collect();
    assert_eq!(hosts, ["hv1", "hv2"], "the hosts labelled hypervisor");
    assert_eq!(k3s.placement.group.as_deref(), Some("k3s"));
    let backup = &fleet.machines[&virtfleet::fleet::VmName::new("backup").unwrap()];
    assert_eq!(backup.power, Power::Stopped);
    assert_eq!(
        backup.data_disks[0].snapshots, backup.snapshots,
        "a data disk without a policy inherits the machine's"
    );
}

#[test]
fn generated_fleet_stamps_out_runners() {
    let fleet = load(&repo("examples/generated.dhall")).unwrap();
    let runners: Vec<_> = fleet
        .machines
        .keys()
        .filter(|n| n.as_str().starts_with("runner-"))
        .collect();
    assert_eq!(runners.len(), 12);
    let on_a = fleet
        .machines
        .values()
        .filter(|m| m.host.as_str() == "ci-a")
        .count();
    assert_eq!(on_a, 7, "6 even runners and the coordinator");
}

#[test]
fn root_fleet_and_lock_are_consistent() {
    let fleet = load(&repo("fleet.dhall")).unwrap();
    let lock = ImageLock::read(&repo("images.lock")).unwrap();
    assert_eq!(lock.check_against(&fleet, &repo("images.lock")), []);
    assert_eq!(lock.unused(&fleet).count(), 0);
}

#[test]
fn example_image_is_reproducible_and_matches_the_pin() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(repo("scripts/example-image"))
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(dir.path().join("tiny.img")).unwrap();
    let (sha, size) =
        virtfleet::lock::cache::hash_reader(&bytes[..], &virtfleet::progress::NoProgress).unwrap();
    let lock = ImageLock::read(&repo("images.lock")).unwrap();
    let pin = &lock.images[&virtfleet::fleet::ImageName::new("tiny").unwrap()];
    assert_eq!((&pin.sha256, pin.size), (&sha, size));
}
