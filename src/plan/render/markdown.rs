//! The plan as GitHub-flavoured Markdown, for a pull-request comment: a
//! bold summary, warnings, a table of changes, lists of what is pending,
//! refused and unmanaged, and each domain XML diff folded away.

use super::{counts, hosts, observation_note, symbol};
use crate::plan::model::{Action, Change, Plan};
use std::fmt::Write;

/// Renders `plan` as Markdown; `now` (unix seconds) dates a saved observation.
pub fn markdown(plan: &Plan, now: u64) -> String {
    let mut out = String::new();
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

    if !plan.changes.is_empty() {
        let _ = writeln!(out, "| | address | action | disruption | reason |");
        let _ = writeln!(out, "|---|---|---|---|---|");
        // Host by host, in the order the human rendering uses.
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

    if !plan.pending.is_empty() {
        let _ = writeln!(out, "#### Pending (need permission)\n");
        for p in &plan.pending {
            let c = &p.change;
            let _ = writeln!(
                out,
                "- `{}` `{}` {} [{}]: {}. Needs {}.",
                symbol(c),
                c.address,
                c.action.describe(),
                c.disruption.as_str(),
                c.reason,
                p.needs
            );
        }
        out.push('\n');
    }

    if !plan.refused.is_empty() {
        let _ = writeln!(out, "#### Refused\n");
        for r in &plan.refused {
            let _ = writeln!(out, "- `{}`: {}", r.address, r.message);
        }
        out.push('\n');
    }

    if !plan.unmanaged.is_empty() {
        let _ = writeln!(out, "#### Unmanaged (never touched)\n");
        for (host, items) in &plan.unmanaged {
            let _ = writeln!(out, "- {host}: {}", items.join(", "));
        }
        out.push('\n');
    }

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

/// A table cell: `|` escaped, line breaks flattened.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\r', '\n'], " ")
}

/// A folded diff block for a domain update that carries a diff.
fn diff_block(out: &mut String, c: &Change) {
    let (Action::UpdateDomain { .. }, Some(diff)) = (&c.action, &c.diff) else {
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
