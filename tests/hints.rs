//! Hints a user gets with an error, chosen by the error's type.

mod common;

use common::{Outcome, virtfleet};

#[test]
fn a_missing_fleet_file_suggests_init() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = dir.path().join("nothing-here").join("fleet.dhall");
    let out = Outcome::of(virtfleet(&fleet, &dir.path().join("cache")).arg("check")).expect_code(1);
    assert!(out.stderr.contains("cannot read"), "{}", out.stderr);
    assert!(
        out.stderr.contains("hint: run `virtfleet init`"),
        "{}",
        out.stderr
    );
}
