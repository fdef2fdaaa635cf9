//! `virtfleet plan`: observe every host (or read a saved observation),
//! compute the plan, render it, optionally save it for `apply PLANFILE`.

use super::{Context, EXIT_ERROR, EXIT_INCOMPLETE, EXIT_OK, now};
use crate::plan::render;
use crate::resources::observed::Observation;
use anyhow::Context as _;
use std::io::IsTerminal;
use std::path::PathBuf;

/// Exit code of `plan --detailed-exitcode` when there are changes.
pub const EXIT_CHANGES: u8 = 2;

/// Output format of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For people: symbols, per-host summaries, XML diffs (coloured on a terminal).
    Human,
    /// Versioned machine-readable JSON (see README, "Plan JSON").
    Json,
    /// Markdown for a pull-request comment.
    Markdown,
}

/// Show what apply would change, without changing anything.
///
/// Observes every host in parallel (or reads `--observed FILE`), compares it with
/// fleet.dhall and images.lock, and prints the plan: `+` create, `~` change in
/// place, `±` needs a restart, `-` destroy, each with its disruption class
/// (none, live, restart, destructive) and the reason. Unreachable hosts make the
/// plan incomplete; the other hosts are still planned.
///
/// Exit status: 0 ok, 1 error (or refusals), 3 incomplete (a host was not
/// observed); with --detailed-exitcode, 0 no changes, 2 changes present.
///
/// Examples:
///   virtfleet plan
///   virtfleet plan --format markdown --detailed-exitcode > plan.md
///   virtfleet plan --out release.plan && virtfleet apply release.plan
///   virtfleet plan --observed observed.json      # CI without host access
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub common: PlanArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "human")]
    pub format: Format,
    /// Shorthand for --format json.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// Exit 0 when there are no changes, 2 when there are, 1 on error.
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Save the plan to FILE; `virtfleet apply FILE` applies exactly it.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Record what this observation found (drift, unreachable hosts, unmanaged objects) in the fleet's history.
    #[arg(long)]
    pub record: bool,
}

/// Options shared by plan and apply.
#[derive(Debug, Clone, clap::Args)]
pub struct PlanArgs {
    /// Plan against a saved observation (`virtfleet observe --out`) instead of contacting hosts.
    #[arg(long, value_name = "FILE")]
    pub observed: Option<PathBuf>,
    /// Allow destroying machines removed from the fleet and purging expired trash.
    #[arg(long)]
    pub allow_destroy: bool,
    /// Allow changes that restart or stop guests (moves to another host too).
    #[arg(long)]
    pub allow_restart: bool,
    /// Show cloud-init user-data text in seed changes. Off by default: user-data
    /// may hold passwords and tokens, and plans are posted into pull requests;
    /// without it a changed user-data shows as its sha256 and line count.
    #[arg(long)]
    pub show_user_data: bool,
}

/// Loads fleet + lock, observes (or reads the observation), and plans.
pub fn compute(
    ctx: &Context,
    args: &PlanArgs,
) -> anyhow::Result<(
    crate::fleet::Fleet,
    crate::lock::ImageLock,
    crate::plan::Plan,
)> {
    let (fleet, lock) = super::load_fleet_and_lock(ctx)?;
    let plan = plan_loaded(&fleet, &lock, args)?;
    Ok((fleet, lock, plan))
}

/// Observes (or reads `--observed`) and plans an already loaded fleet.
pub fn plan_loaded(
    fleet: &crate::fleet::Fleet,
    lock: &crate::lock::ImageLock,
    args: &PlanArgs,
) -> anyhow::Result<crate::plan::Plan> {
    let now = now();
    let (obs, source) = match &args.observed {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let obs: Observation = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a virtfleet observation", path.display()))?;
            if obs.format_version != crate::resources::observed::FORMAT_VERSION {
                anyhow::bail!(
                    "{}: observation format {} is not supported (expected {})",
                    path.display(),
                    obs.format_version,
                    crate::resources::observed::FORMAT_VERSION
                );
            }
            if obs.fleet != fleet.name.as_str() {
                anyhow::bail!(
                    "{}: this observation is of fleet {:?}, not {:?}",
                    path.display(),
                    obs.fleet,
                    fleet.name.as_str()
                );
            }
            (obs, crate::plan::Source::File)
        }
        None => (
            crate::observe::observe(fleet, now),
            crate::plan::Source::Live,
        ),
    };
    let opts = crate::plan::Options {
        source,
        ..options(fleet, args, now)
    };
    Ok(crate::plan::plan(fleet, lock, &obs, opts))
}

/// Planner options: the flags, or the fleet's settings, grant permissions.
pub fn options(fleet: &crate::fleet::Fleet, args: &PlanArgs, now: u64) -> crate::plan::Options {
    crate::plan::Options {
        now,
        allow_destroy: args.allow_destroy || fleet.settings.allow_destroy,
        allow_restart: args.allow_restart || fleet.settings.allow_restart,
        source: crate::plan::Source::Live,
        show_user_data: args.show_user_data,
    }
}

/// Renders `plan` in `format` for stdout.
pub fn render_plan(plan: &crate::plan::Plan, format: Format) -> String {
    let now = now();
    match format {
        Format::Human => render::human(
            plan,
            now,
            std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        ),
        Format::Json => render::json(plan),
        Format::Markdown => render::markdown(plan, now),
    }
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<u8> {
    let (_, _, plan) = compute(ctx, &args.common)?;
    let format = if args.json { Format::Json } else { args.format };
    let store = super::history::open_if(ctx, &plan.fleet, args.record);
    if args.record {
        super::history::record_findings(ctx, store.as_ref(), &plan);
    }
    let interrupted = super::history::interrupted(store.as_ref());
    if let Some(i) = &interrupted {
        super::history::print_interrupted(i, finishes(&plan));
    }
    match (format, &interrupted) {
        (Format::Json, Some(i)) => print!("{}", json_with_interrupted(&plan, i)),
        _ => print!("{}", render_plan(&plan, format)),
    }
    if let Some(out) = &args.out {
        let json = serde_json::to_string_pretty(&plan)?;
        crate::lock::write_private(out, json.as_bytes())
            .with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!(
            "plan saved to {}; apply exactly it with `virtfleet apply {}`",
            out.display(),
            out.display()
        );
    }
    Ok(if !plan.refused.is_empty() {
        EXIT_ERROR
    } else if plan.is_incomplete() {
        EXIT_INCOMPLETE
    } else if args.detailed_exitcode && !plan.is_empty() {
        EXIT_CHANGES
    } else {
        EXIT_OK
    })
}

/// What the interrupted-run line says a plan does about it.
pub fn finishes(plan: &crate::plan::Plan) -> &'static str {
    if plan.changes.is_empty() && plan.pending.is_empty() {
        "the hosts already match the fleet"
    } else {
        "this plan finishes it"
    }
}

/// The plan's JSON with the optional `interrupted` field (README, "Plan
/// JSON"); the saved plan (`--out`) never carries it.
fn json_with_interrupted(plan: &crate::plan::Plan, i: &crate::state::Interrupted) -> String {
    #[derive(serde::Serialize)]
    struct WithRun<'a> {
        #[serde(flatten)]
        plan: &'a crate::plan::Plan,
        interrupted: &'a crate::state::Interrupted,
    }
    let mut s = serde_json::to_string_pretty(&WithRun {
        plan,
        interrupted: i,
    })
    .expect("a plan always serialises");
    s.push('\n');
    s
}
