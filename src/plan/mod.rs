//! Planning: the pure planner, the plan data model, and its renderings.

pub mod expected;
pub mod model;
pub mod planner;
pub mod render;
pub mod snapshots;

pub use model::*;
pub use planner::{Options, Source, plan};
