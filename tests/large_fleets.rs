//! The large-fleet example (helpers, one file per group, a generated pool)
//! loads to the machines it describes; the README points new users at it.

use std::path::Path;
use virtfleet::fleet::load;

#[test]
fn the_large_example_loads_from_its_split_files() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/large/fleet.dhall");
    let fleet = load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fleet.hosts.len(), 3);
    assert_eq!(fleet.machines.len(), 30 + 60 + 3);
    let db3 = fleet
        .machines
        .values()
        .find(|m| m.name.as_str() == "db-3")
        .unwrap();
    assert!(db3.protect && db3.cpus == 4, "{db3:?}");
    assert_eq!(db3.data_disks.len(), 1);
    assert_eq!(
        fleet
            .machines
            .values()
            .filter(|m| m.host.as_str() == "rack-a")
            .count(),
        10 + 1
    );
}
