//! `virtfleet history`: the audit trail kept in the fleet's state file, and
//! the helpers every other command uses to read and write that file (the
//! interrupted-run line, observation findings).

use super::Context;
use crate::state::{Interrupted, Store};
use crate::ui::table;
use serde::Serialize;

/// Show who changed the fleet's hosts, when, and how it went.
///
/// Lists the runs recorded in the fleet's state file (apply, destroy, restore,
/// snapshot, rollback, reinit), newest first, with what observations found
/// (drift, unreachable hosts, unmanaged objects) and when. With MACHINE or
/// HOST, only runs that touched it and its findings. The state file is
/// <state dir>/<fleet>.sqlite; it is history only, never used to decide a change.
///
/// Examples:
///   virtfleet history
///   virtfleet history web --limit 5
///   virtfleet history show 12
///   virtfleet history --json | jq '.runs[] | select(.outcome != "ok")'
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment, args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    show: Option<Show>,
    /// Only runs and findings of this machine or host.
    #[arg(value_name = "MACHINE|HOST")]
    subject: Option<String>,
    /// Print JSON instead of tables (stable: see README, "State and history").
    #[arg(long, global = true)]
    json: bool,
    /// At most this many runs (and findings).
    #[arg(long, default_value_t = 20, value_name = "N")]
    limit: u64,
}

#[derive(Debug, clap::Subcommand)]
enum Show {
    /// One run with each of its steps.
    Show {
        /// The run's number (the `#` column of `virtfleet history`).
        run: i64,
    },
}

/// `history --json`.
#[derive(Serialize)]
struct Listing {
    fleet: String,
    #[serde(rename = "stateFile")]
    state_file: String,
    runs: Vec<crate::state::RunSummary>,
    findings: Vec<crate::state::Finding>,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<u8> {
    let fleet = super::load_fleet(ctx)?;
    let store = Store::open(&ctx.state_dir, fleet.name.as_str())?;
    if let Some(Show::Show { run }) = args.show {
        let Some(detail) = store.run(run)? else {
            anyhow::bail!(
                "no run #{run} in {} (`virtfleet history` lists the runs kept)",
                store.path().display()
            );
        };
        if args.json {
            println!("{}", serde_json::to_string_pretty(&detail)?);
        } else {
            print_run(&detail);
        }
        return Ok(super::EXIT_OK);
    }
    let subject = args.subject.as_deref();
    let listing = Listing {
        fleet: fleet.name.to_string(),
        state_file: store.path().display().to_string(),
        runs: store.runs(subject, args.limit)?,
        findings: store.findings(subject, args.limit)?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&listing)?);
        return Ok(super::EXIT_OK);
    }
    if listing.runs.is_empty() {
        println!("no runs recorded in {}", listing.state_file);
    } else {
        let rows: Vec<Vec<String>> = listing
            .runs
            .iter()
            .map(|r| {
                vec![
                    format!("#{}", r.run),
                    at_ms(r.started_ms),
                    r.command.clone(),
                    format!("{}@{}", r.user, r.machine),
                    match r.resumes {
                        Some(n) => format!("{} (finishes #{n})", r.outcome),
                        None => r.outcome.clone(),
                    },
                    counts(&r.steps),
                    r.finished_ms
                        .map(|f| took(r.started_ms, f))
                        .unwrap_or_default(),
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &["#", "STARTED", "COMMAND", "BY", "OUTCOME", "STEPS", "TOOK"],
                &rows
            )
        );
    }
    if !listing.findings.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = listing
            .findings
            .iter()
            .map(|f| {
                vec![
                    f.kind.clone(),
                    f.subject.clone(),
                    f.detail.clone(),
                    at(f.first_seen),
                    match f.cleared {
                        Some(c) => format!("gone {}", at(c)),
                        None => format!("seen {}", at(f.last_seen)),
                    },
                ]
            })
            .collect();
        print!(
            "{}",
            table(&["FOUND", "WHAT", "DETAIL", "SINCE", "UNTIL"], &rows)
        );
    }
    Ok(super::EXIT_OK)
}

fn counts(c: &crate::state::StepCounts) -> String {
    let mut parts = vec![format!("{} done", c.done)];
    for (n, what) in [
        (c.failed, "failed"),
        (c.skipped, "skipped"),
        (c.interrupted, "interrupted"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    parts.join(", ")
}

fn print_run(d: &crate::state::RunDetail) {
    let r = &d.run;
    println!(
        "run #{}: {} by {}@{} (pid {})",
        r.run, r.command, r.user, r.machine, r.pid
    );
    println!("  command:  {}", r.argv);
    println!("  started:  {}", at_ms(r.started_ms));
    if let Some(f) = r.finished_ms {
        println!("  finished: {}", at_ms(f));
    }
    match r.resumes {
        Some(n) => println!("  outcome:  {} (finishes interrupted run #{n})", r.outcome),
        None => println!("  outcome:  {}", r.outcome),
    }
    println!(
        "  fleet {}  lock {}  plan {}",
        short(&r.fleet_digest),
        short(&r.lock_digest),
        short(&r.plan_digest)
    );
    let rows: Vec<Vec<String>> = d
        .step_list
        .iter()
        .map(|s| {
            vec![
                s.host.clone(),
                s.address.clone(),
                s.action.clone(),
                s.class.clone(),
                s.state.clone(),
                s.finished_ms
                    .map(|f| took(s.started_ms, f))
                    .unwrap_or_default(),
                s.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        println!();
        print!(
            "{}",
            table(
                &["HOST", "ADDRESS", "STEP", "CLASS", "STATE", "TOOK", "ERROR"],
                &rows
            )
        );
    }
}

/// Unix seconds from a row as RFC 3339; a damaged row's negative time is
/// shown as a number, never a panic.
fn at(secs: i64) -> String {
    u64::try_from(secs).map_or_else(|_| format!("{secs} s (before 1970)"), crate::text::rfc3339)
}

/// Unix milliseconds from a row, as [`at`].
fn at_ms(ms: i64) -> String {
    at(ms.div_euclid(1000))
}

/// A duration between two row times (saturating: rows are not trusted).
fn took(started_ms: i64, finished_ms: i64) -> String {
    format!(
        "{:.1} s",
        finished_ms.saturating_sub(started_ms) as f64 / 1000.0
    )
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

/// The state file of `fleet` for a command that only reads it (`plan`,
/// `status`): a file that cannot be used is reported as a warning, since
/// the command's answer comes from the hosts anyway.
pub fn open_for_reading(ctx: &Context, fleet: &str) -> Option<Store> {
    match Store::open(&ctx.state_dir, fleet) {
        Ok(s) => Some(s),
        Err(e) => {
            anstream::eprintln!("{}warning{:#}: {e}", crate::ui::WARN, crate::ui::WARN);
            None
        }
    }
}

/// The state file of `fleet` when it exists (or `create`, unless
/// `--no-history`): `plan` and `status` never make one just to find it
/// empty.
pub fn open_if(ctx: &Context, fleet: &str, create: bool) -> Option<Store> {
    let create = create && !ctx.no_history;
    if !create && !crate::state::path_for(&ctx.state_dir, fleet).exists() {
        return None;
    }
    open_for_reading(ctx, fleet)
}

/// The last run of `fleet` when it was interrupted.
pub fn interrupted(store: Option<&Store>) -> Option<Interrupted> {
    let store = store?;
    store
        .interrupted()
        .map_err(|e| anstream::eprintln!("{}warning{:#}: {e}", crate::ui::WARN, crate::ui::WARN))
        .ok()
        .flatten()
}

/// Prints the interrupted-run line on stderr.
pub fn print_interrupted(i: &Interrupted, then: &str) {
    anstream::eprintln!(
        "{}interrupted{:#}: {}",
        crate::ui::WARN,
        crate::ui::WARN,
        i.line(then)
    );
}

/// Records what an observation found (unless `--no-history`), warning
/// when it cannot.
pub fn record_findings(ctx: &Context, store: Option<&Store>, plan: &crate::plan::Plan) {
    if let Some(store) = store.filter(|_| !ctx.no_history)
        && let Err(e) = store.record_findings(plan, plan.inputs.observed_at)
    {
        anstream::eprintln!("{}warning{:#}: {e}", crate::ui::WARN, crate::ui::WARN);
    }
}
