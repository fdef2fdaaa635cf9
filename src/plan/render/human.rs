//! The plan for a person at a terminal: per host, one line per change with
//! its reason underneath, then what is pending, refused and unmanaged, and
//! a one-line summary.
//!
//! Colour is the caller's decision (`color`); the text is the same without
//! it, so logs and snapshots stay greppable.

use super::{counts, host_counts, hosts, observation_note, symbol};
use crate::plan::model::{Change, Plan};
use crate::text::{ERROR, WARN};
use anstyle::{AnsiColor, Style};
use std::fmt::Write;

const ADD: Style = AnsiColor::Green.on_default();
const CHANGE: Style = AnsiColor::Yellow.on_default();
const RESTART: Style = AnsiColor::Magenta.on_default();
const DESTROY: Style = AnsiColor::Red.on_default();
const HUNK: Style = AnsiColor::Cyan.on_default();
const BOLD: Style = Style::new().bold();

/// Renders `plan` for a terminal; `now` (unix seconds) dates a saved
/// observation, `color` adds ANSI styling.
pub fn human(plan: &Plan, now: u64, color: bool) -> String {
    let r = Renderer {
        color,
        width: Widths::of(plan),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}",
        r.paint(BOLD, &format!("Plan for fleet \"{}\"", plan.fleet))
    );
    if let Some(note) = observation_note(plan, now) {
        let _ = writeln!(out, "{note}");
    }

    if plan.is_empty() && !plan.is_incomplete() {
        r.unmanaged(&mut out, plan);
        r.notes(&mut out, plan);
        let _ = writeln!(out, "\nNo changes. The fleet matches fleet.dhall.");
        return out;
    }

    if !plan.placements.is_empty() {
        let _ = writeln!(out, "\n{}", r.paint(BOLD, "placement:"));
        for d in &plan.placements {
            let from = d
                .from
                .as_deref()
                .map(|f| format!(" (from {f})"))
                .unwrap_or_default();
            let _ = writeln!(out, "  {} -> {}{from}: {}", d.machine, d.host, d.reason);
        }
    }

    for host in hosts(plan) {
        out.push('\n');
        r.host_header(&mut out, plan, host);
        for change in plan.changes.iter().filter(|c| c.host == host) {
            r.change(&mut out, change);
        }
    }

    if !plan.pending.is_empty() {
        let _ = writeln!(out, "\n{}", r.paint(BOLD, "pending (need permission):"));
        for p in &plan.pending {
            r.change(&mut out, &p.change);
            let _ = writeln!(out, "    needs: {}", p.needs);
        }
    }

    if !plan.refused.is_empty() {
        let _ = writeln!(out, "\n{}", r.paint(ERROR, "refused:"));
        for refusal in &plan.refused {
            let _ = writeln!(out, "  {}: {}", refusal.address, refusal.message);
        }
    }

    r.unmanaged(&mut out, plan);
    r.notes(&mut out, plan);
    let _ = writeln!(
        out,
        "\n{}",
        r.paint(BOLD, &format!("Summary: {}", counts(plan).summary()))
    );
    out
}

/// Column widths shared by every change line, so all of them align.
struct Widths {
    address: usize,
    description: usize,
}

impl Widths {
    fn of(plan: &Plan) -> Widths {
        let all = plan
            .changes
            .iter()
            .chain(plan.pending.iter().map(|p| &p.change));
        all.fold(
            Widths {
                address: 0,
                description: 0,
            },
            |w, c| Widths {
                address: w.address.max(c.address.chars().count()),
                description: w.description.max(c.action.describe().chars().count()),
            },
        )
    }
}

struct Renderer {
    color: bool,
    width: Widths,
}

impl Renderer {
    fn paint(&self, style: Style, text: &str) -> String {
        if self.color {
            format!("{style}{text}{style:#}")
        } else {
            text.to_owned()
        }
    }

    fn host_header(&self, out: &mut String, plan: &Plan, host: &str) {
        let name = self.paint(BOLD, &format!("host {host}"));
        if let Some(reason) = plan.unreachable.get(host) {
            let _ = writeln!(
                out,
                "{name}: {}",
                self.paint(WARN, &format!("INCOMPLETE, not observed: {reason}"))
            );
            return;
        }
        let c = host_counts(plan, host);
        let mut what = if c.changes() == 0 {
            "no changes".to_owned()
        } else {
            format!(
                "{} to add, {} to change, {} to destroy",
                c.add, c.change, c.destroy
            )
        };
        if c.pending > 0 {
            let _ = write!(what, ", {} pending", c.pending);
        }
        if c.refused > 0 {
            let _ = write!(what, ", {} refused", c.refused);
        }
        let _ = writeln!(out, "{name}: {what}");
    }

    /// `  ± address  description  [disruption]`, the reason, and the diff.
    fn change(&self, out: &mut String, change: &Change) {
        let sym = symbol(change);
        let style = match sym {
            '+' => ADD,
            '~' => CHANGE,
            '±' => RESTART,
            _ => DESTROY,
        };
        let (aw, dw) = (self.width.address, self.width.description);
        let _ = writeln!(
            out,
            "  {} {:aw$}  {:dw$}  [{}]",
            self.paint(style, &sym.to_string()),
            change.address,
            change.action.describe(),
            change.disruption.as_str()
        );
        let _ = writeln!(out, "    # {}", change.reason);
        if let (true, Some(diff)) = (super::shows_diff(&change.action), &change.diff) {
            for line in diff.lines() {
                let style = if line.starts_with("+++") || line.starts_with("---") {
                    Some(BOLD)
                } else if line.starts_with('+') {
                    Some(ADD)
                } else if line.starts_with('-') {
                    Some(DESTROY)
                } else if line.starts_with("@@") {
                    Some(HUNK)
                } else {
                    None
                };
                let line = line.trim_end();
                let line = style.map_or_else(|| line.to_owned(), |s| self.paint(s, line));
                let _ = writeln!(out, "      {line}");
            }
        }
    }

    fn notes(&self, out: &mut String, plan: &Plan) {
        if plan.notes.is_empty() {
            return;
        }
        let _ = writeln!(out, "\n{}", self.paint(BOLD, "notes:"));
        for n in &plan.notes {
            let _ = writeln!(out, "  {}: {}", n.address, n.message);
        }
    }

    fn unmanaged(&self, out: &mut String, plan: &Plan) {
        if plan.unmanaged.is_empty() {
            return;
        }
        let _ = writeln!(out, "\n{}", self.paint(BOLD, "unmanaged (never touched):"));
        for (host, items) in &plan.unmanaged {
            let _ = writeln!(out, "  {host}: {}", items.join(", "));
        }
    }
}
