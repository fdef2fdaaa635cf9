//! Loading `fleet.dhall`: guarded Dhall evaluation, then semantic validation
//! into the typed [`Fleet`] model that the rest of virtfleet consumes.

pub mod endpoints;
mod eval;
pub mod model;
pub mod names;
pub mod raw;
mod validate;

pub use eval::EvalError;
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

/// Evaluates and validates the fleet file at `path`.
pub fn load(path: &Path) -> Result<Fleet, LoadError> {
    let raw = eval::evaluate(path)?;
    let index = match std::fs::read_to_string(path) {
        Ok(text) => SourceIndex::new(path, &text),
        Err(_) => SourceIndex::empty(path),
    };
    validate::validate(raw, &index).map_err(|d| LoadError::Invalid(Diagnostics(d)))
}
