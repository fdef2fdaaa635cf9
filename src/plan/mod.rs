//! Planning: the pure planner, the one-machine plans of the commands that
//! act at once, the plan data model, and its renderings.

pub mod commands;
pub mod expected;
pub mod model;
pub mod placement;
pub mod planner;
pub mod render;
pub mod snapshots;

pub use model::*;
pub use planner::{Options, Source, plan};
