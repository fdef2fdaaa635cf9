//! Fixtures for the planner modules' table tests: a fleet written in Dhall
//! (loaded and validated like a user's), a lock pinning its one image, and
//! the converged state of its host to edit.

use super::{HostPlan, Options, Phase};
use crate::fleet::{Fleet, Host, Machine};
use crate::lock::ImageLock;
use crate::plan::expected::converged_state;
use crate::plan::model::Change;
use crate::resources::observed::HostState;
use std::path::Path;

pub const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
pub const NOW: u64 = 1_900_000_000;

/// Fleet "t" with host hv1 on `storage` (a Dhall `V.Storage` value) and
/// `machines`, each the body of a `V.Machine::{ .. }` with `image = "base"`.
pub fn fleet_on(storage: &str, machines: &[&str]) -> Fleet {
    let ms: Vec<String> = machines
        .iter()
        .map(|m| format!("V.Machine::{{ image = \"base\", {m} }}"))
        .collect();
    let text = format!(
        "let V = {pkg}\nin V.Fleet::{{ name = \"t\"\n\
         , hosts = [ V.Host::{{ name = \"hv1\", uri = \"qemu:///system\", storage = {storage} }} ]\n\
         , images = [ V.Image::{{ name = \"base\", url = \"https://example.org/base.qcow2\" }} ]\n\
         , machines = [ {ms} ] : List V.Machine.Type }}\n",
        pkg = concat!(env!("CARGO_MANIFEST_DIR"), "/dhall/package.dhall"),
        ms = ms.join(", "),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fleet.dhall");
    std::fs::write(&path, &text).expect("write");
    crate::fleet::load(&path).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// [`fleet_on`] with Dir storage.
pub fn fleet(machines: &[&str]) -> Fleet {
    fleet_on("V.Storage.Dir { path = \"/srv/vf\" }", machines)
}

/// The lock pinning "base" to [`SHA`].
pub fn lock() -> ImageLock {
    let text = format!(
        "format 1\n\nimage base\n  url     https://example.org/base.qcow2\n  sha256  {SHA}\n  \
         size    4096\n  format  qcow2\n  locked  2026-01-01T00:00:00Z\n"
    );
    ImageLock::parse(&text, Path::new("images.lock")).expect("lock parses")
}

pub fn host(fleet: &Fleet) -> &Host {
    fleet.hosts.values().next().expect("one host")
}

pub fn machine<'a>(fleet: &'a Fleet, name: &str) -> &'a Machine {
    fleet
        .machines
        .values()
        .find(|m| m.name.as_str() == name)
        .expect("machine")
}

pub fn converged(fleet: &Fleet) -> HostState {
    converged_state(fleet, &lock(), host(fleet))
}

/// A host plan for `fleet`'s host with every permission.
pub fn host_plan(fleet: &Fleet) -> HostPlan<'_> {
    HostPlan::new(
        host(fleet),
        Options {
            now: NOW,
            allow_destroy: true,
            allow_restart: true,
            ..Options::default()
        },
    )
}

/// What a host plan holds: (phase, change), pending changes, refusals.
pub fn parts(hp: HostPlan<'_>) -> (Vec<(Phase, Change)>, Vec<Change>, Vec<String>) {
    (
        hp.changes,
        hp.pending.into_iter().map(|p| p.change).collect(),
        hp.refused.into_iter().map(|r| r.message).collect(),
    )
}
