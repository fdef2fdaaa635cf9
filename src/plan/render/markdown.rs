//! The plan as GitHub-flavoured Markdown, for a pull-request comment: a
//! bold summary, warnings, a table of changes, lists of what is pending,
//! refused and unmanaged, and each domain XML diff folded away.

use super::{counts, hosts, observation_note, symbol};
use crate::plan::model::{Change, Plan};
use std::fmt::Write;

/// Renders `plan` as Markdown; `now` (unix seconds) dates a saved observation.
pub fn markdown(plan: &Plan, now: u64) -> String {
    let mut out = String::new();
    header(&mut out, plan, now);
    changes_table(&mut out, plan);
    lists(&mut out, plan);
    for c in plan
        .changes
        .iter()
        .chain(plan.pending.iter().map(|p| &p.change))
    {
        diff_block(&mut out, c);
    }
    // Exactly one trailing newline.
    let end = out.trim_end().len();
    out.truncate(end);
    out.push('\n');
    out
}

/// Title, summary, and the notes about where the observation came from and
/// which hosts it misses.
fn header(out: &mut String, plan: &Plan, now: u64) {
    let _ = writeln!(out, "### virtfleet plan for `{}`\n", plan.fleet);
    if plan.is_empty() {
        let _ = writeln!(
            out,
            "{}\n",
            if plan.is_incomplete() {
                "No changes on the observed hosts."
            } else {
                "No changes."
            }
        );
    } else {
        let _ = writeln!(out, "**{}**\n", counts(plan).summary());
    }
    if let Some(note) = observation_note(plan, now) {
        let _ = writeln!(out, "> {note}\n");
    }
    for (host, reason) in &plan.unreachable {
        let _ = writeln!(
            out,
            "> :warning: incomplete: host {host} not observed: {}\n",
            cell(reason)
        );
    }
    for d in &plan.placements {
        let from = d
            .from
            .as_deref()
            .map(|f| format!(" (from `{}`)", cell(f)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "- placement: `{}` → `{}`{from}: {}",
            cell(&d.machine),
            cell(&d.host),
            cell(&d.reason)
        );
    }
    if !plan.placements.is_empty() {
        out.push('\n');
    }
}

/// The changes to apply, host by host in the order the human rendering uses.
fn changes_table(out: &mut String, plan: &Plan) {
    if plan.changes.is_empty() {
        return;
    }
    let _ = writeln!(out, "| | address | action | disruption | reason |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    for host in hosts(plan) {
        for c in plan.changes.iter().filter(|c| c.host == host) {
            let _ = writeln!(
                out,
                "| `{}` | `{}` | {} | {} | {} |",
                symbol(c),
                cell(&c.address),
                cell(&c.action.describe()),
                c.disruption.as_str(),
                cell(&c.reason)
            );
        }
    }
    out.push('\n');
}

/// Pending, refused and unmanaged, each a titled list when not empty.
fn lists(out: &mut String, plan: &Plan) {
    let pending = plan.pending.iter().map(|p| {
        let c = &p.change;
        format!(
            "- `{}` `{}` {} [{}]: {}. Needs {}.",
            symbol(c),
            c.address,
            c.action.describe(),
            c.disruption.as_str(),
            c.reason,
            p.needs
        )
    });
    section(out, "Pending (need permission)", pending);
    let refused = plan
        .refused
        .iter()
        .map(|r| format!("- `{}`: {}", r.address, r.message));
    section(out, "Refused", refused);
    let unmanaged = plan
        .unmanaged
        .iter()
        .map(|(host, items)| format!("- {host}: {}", items.join(", ")));
    section(out, "Unmanaged (never touched)", unmanaged);
    let notes = plan
        .notes
        .iter()
        .map(|r| format!("- `{}`: {}", r.address, r.message));
    section(out, "Notes", notes);
}

/// `#### title` and its lines, or nothing when there are none.
fn section(out: &mut String, title: &str, lines: impl Iterator<Item = String>) {
    let mut lines = lines.peekable();
    if lines.peek().is_none() {
        return;
    }
    let _ = writeln!(out, "#### {title}\n");
    for l in lines {
        let _ = writeln!(out, "{l}");
    }
    out.push('\n');
}

/// A table cell: `|` escaped, line breaks flattened.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\r', '\n'], " ")
}

/// A folded diff block for a change that carries one (domain updates, seeds).
fn diff_block(out: &mut String, c: &Change) {
    let (true, Some(diff)) = (super::shows_diff(&c.action), &c.diff) else {
        return;
    };
    // A fence longer than any backtick run inside the diff.
    let longest = diff.split(|ch| ch != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    let _ = writeln!(
        out,
        "<details><summary>{}: domain XML diff</summary>\n",
        c.address
    );
    let _ = writeln!(
        out,
        "{fence}diff\n{}\n{fence}\n",
        diff.trim_end_matches('\n')
    );
    let _ = writeln!(out, "</details>\n");
}
