//! The plan for machines: the [`Plan`] itself as pretty JSON, versioned by
//! `formatVersion`, with camelCase fields; it deserialises back into an
//! equal [`Plan`].

use crate::plan::model::Plan;

/// Renders `plan` as pretty-printed JSON with a trailing newline.
pub fn json(plan: &Plan) -> String {
    let mut s = serde_json::to_string_pretty(plan).expect("a plan always serialises");
    s.push('\n');
    s
}
