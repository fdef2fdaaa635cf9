//! virtfleet: keep a fleet of libvirt virtual machines in the state a Dhall
//! file describes.
//!
//! Data flows one way: `fleet` loads and validates `fleet.dhall`, `lock`
//! reads `images.lock` and resolves images into the cache, and the CLI in
//! `cli` ties them together. Library code never prints; `ui` does.

pub mod apply;
pub mod cli;
pub mod diag;
pub mod fleet;
pub mod host;
pub mod lock;
pub mod observe;
pub mod plan;
pub mod progress;
pub mod resources;
pub mod text;
pub mod ui;
