//! `virtfleet observe`: observe every host and save the observation, so CI
//! without host access can `plan --observed FILE`.

use super::{Context, EXIT_INCOMPLETE, EXIT_OK, now};
use anyhow::Context as _;
use std::path::PathBuf;

/// Observe every host and write the observation as JSON.
///
/// The unattended timer can publish this file; `virtfleet plan --observed FILE`
/// then plans against it without contacting any host, and states its age.
///
/// Example:
///   virtfleet observe --out observed.json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Write to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<u8> {
    let fleet = super::load_fleet(ctx)?;
    let obs = crate::observe::observe_to(&fleet, now(), crate::observe::Depth::Addresses);
    let json = serde_json::to_string_pretty(&obs)? + "\n";
    match &args.out {
        Some(p) => crate::lock::write_private(p, json.as_bytes())
            .with_context(|| format!("cannot write {}", p.display()))?,
        None => print!("{json}"),
    }
    let mut code = EXIT_OK;
    for (h, o) in &obs.hosts {
        if let crate::resources::observed::HostObservation::Unreachable { error } = o {
            eprintln!("warning: host {h} not observed: {error}");
            code = EXIT_INCOMPLETE;
        }
    }
    Ok(code)
}
