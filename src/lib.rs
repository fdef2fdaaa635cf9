//! virtfleet: keep a fleet of libvirt virtual machines in the state a Dhall
//! file describes.
//!
//! Data flows one way, through layers that import only those below them
//! (`tests/layers.rs` checks it): `fleet` loads and validates `fleet.dhall`,
//! `lock` reads `images.lock` and resolves images into the cache, `observe`
//! asks each `host` what exists, the pure `plan` computes the changes, and
//! `apply` executes them through `host`; `cli` ties them together. Below
//! them all, `resources`, `text`, `diag` and `progress` are pure pieces any
//! layer may share, and `fault` holds the crash-test hooks every layer may
//! call. Library code never prints; `ui` does.

pub mod apply;
pub mod cli;
pub mod diag;
pub mod fault;
pub mod fleet;
pub mod host;
pub mod lock;
pub mod observe;
pub mod plan;
pub mod progress;
pub mod resources;
pub mod state;
pub mod text;
pub mod ui;
