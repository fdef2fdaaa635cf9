//! Loading `fleet.dhall`: guarded Dhall evaluation, then semantic validation
//! into the typed [`Fleet`] model that the rest of virtfleet consumes.

pub mod endpoints;
mod eval;
mod imports;
pub mod inputs;
pub mod model;
pub mod names;
pub mod raw;
mod validate;

pub use eval::{BUDGET_ENV, DEFAULT_BUDGET, EvalError, EvalOptions};
pub use model::*;
pub use names::{DiskName, FleetName, HostName, ImageName, NameError, VmName, check_name};
pub use validate::{MAX_CPUS, MAX_DISK_GIB, MAX_MEMORY_MIB, MIN_MEMORY_MIB, check_url};

use crate::diag::{Diagnostics, SourceIndex};
use std::path::Path;

/// Why a fleet could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Reading or evaluating the Dhall failed.
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// The fleet evaluated but is not valid; every problem is listed.
    #[error("the fleet is not valid: {0}")]
    Invalid(Diagnostics),
}

/// A loaded fleet and what loading it cost.
#[derive(Debug)]
pub struct Loaded {
    /// The validated fleet.
    pub fleet: Fleet,
    /// Wall time of the Dhall evaluation (validation is negligible next to it).
    pub eval_time: std::time::Duration,
    /// Every Dhall file the fleet was evaluated from, the fleet file first
    /// (files behind `?` fallbacks and `as Text` imports are not included).
    pub files: Vec<std::path::PathBuf>,
    /// The imported files diagnostics may name lines of (see
    /// `eval::Evaluated::imported`).
    pub imported: Vec<std::path::PathBuf>,
}

/// Validates a fleet already decoded into its raw form (from Dhall, or from
/// JSON as the load benchmark's baseline does); `path` and `text` name the
/// source in diagnostics.
pub fn validate_raw(raw: raw::Fleet, path: &Path, text: &str) -> Result<Fleet, LoadError> {
    let index = SourceIndex::new(path, text);
    validate::validate(raw, &index).map_err(|d| LoadError::Invalid(Diagnostics(d)))
}

/// Evaluates and validates the fleet file at `path` with the default limits.
pub fn load(path: &Path) -> Result<Fleet, LoadError> {
    load_with(path, &EvalOptions::default()).map(|l| l.fleet)
}

/// Evaluates and validates the fleet file at `path` within `opts`'s limits.
/// The file is read once: the same text is evaluated and indexed for lines.
pub fn load_with(path: &Path, opts: &EvalOptions) -> Result<Loaded, LoadError> {
    load_full(path, opts).map(|(loaded, _, _)| loaded)
}

/// [`load_with`], also returning the raw evaluated fleet and what the
/// evaluation depended on (for [`inputs::load_cached`]).
fn load_full(
    path: &Path,
    opts: &EvalOptions,
) -> Result<(Loaded, raw::Fleet, Option<Vec<inputs::Dep>>), LoadError> {
    let started = std::time::Instant::now();
    let evaluated = eval::evaluate(path, opts)?;
    let validating = std::time::Instant::now();
    let index = SourceIndex::with_imports(path, &evaluated.text, &evaluated.imported);
    let raw = evaluated.fleet.clone();
    let fleet = validate::validate(evaluated.fleet, &index)
        .map_err(|d| LoadError::Invalid(Diagnostics(d)))?;
    // Each step's cost, for `VIRTFLEET_LOG=debug` when a fleet is slow.
    tracing::debug!(
        file = %path.display(),
        read_and_import_walk_ms = validating
            .duration_since(started)
            .saturating_sub(evaluated.elapsed)
            .as_millis() as u64,
        dhall_ms = evaluated.elapsed.as_millis() as u64,
        validate_ms = validating.elapsed().as_millis() as u64,
        machines = fleet.machines.len(),
        "fleet loaded"
    );
    let loaded = Loaded {
        fleet,
        eval_time: evaluated.elapsed,
        files: evaluated.files,
        imported: evaluated.imported.into_iter().map(|(p, _)| p).collect(),
    };
    Ok((loaded, raw, evaluated.inputs))
}
