//! What a fleet's evaluation depends on, and loading through a cache of it.
//!
//! The import walk notes every input of the evaluation ([`Dep`]): each Dhall
//! file read (the fleet, its local imports, the package), each `as Text`
//! file, each file whose absence chose a `?` fallback, each `env:` variable.
//! Their [`fingerprint`] (sha256 over the virtfleet version and every
//! input's content) is the cache key: a changed byte anywhere misses. The
//! cache stores the raw evaluated fleet, and a hit is validated again like
//! any evaluation (validation is cheap; Dhall is the cost), so a cache can
//! only ever skip work, never change a result.

use super::{EvalOptions, LoadError, Loaded, raw};
use crate::diag::{Diagnostics, SourceIndex};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::path::{Path, PathBuf};

/// One input of an evaluation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dep {
    /// A file, by absolute path: its content, or its absence.
    File(PathBuf),
    /// An environment variable: its value, or that it is unset.
    Env(String),
}

impl Dep {
    /// A file input, made absolute so the key holds from any directory.
    pub fn file(p: &Path) -> Dep {
        Dep::File(std::path::absolute(p).unwrap_or_else(|_| p.to_owned()))
    }
}

/// sha256 over the virtfleet version and each input's current content;
/// None when an input cannot be read (then nothing is cached).
pub fn fingerprint(deps: &[Dep]) -> Option<String> {
    let mut h = sha2::Sha256::new();
    h.update(b"virtfleet ");
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update([0]);
    for d in deps {
        match d {
            Dep::File(p) => {
                h.update(b"file\0");
                h.update(p.as_os_str().as_encoded_bytes());
                match std::fs::read(p) {
                    Ok(bytes) => {
                        h.update(b"\0present\0");
                        h.update((bytes.len() as u64).to_le_bytes());
                        h.update(&bytes);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => h.update(b"\0absent\0"),
                    Err(_) => return None,
                }
            }
            Dep::Env(name) => {
                h.update(b"env\0");
                h.update(name.as_bytes());
                match std::env::var_os(name) {
                    Some(v) => {
                        h.update(b"\0set\0");
                        h.update((v.len() as u64).to_le_bytes());
                        h.update(v.as_encoded_bytes());
                    }
                    None => h.update(b"\0unset\0"),
                }
            }
        }
    }
    Some(hex::encode(h.finalize()))
}

/// A cached evaluation, as a cache stores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// [`fingerprint`] of `deps` when it was stored.
    pub digest: String,
    /// What the evaluation read.
    pub deps: Vec<Dep>,
    /// The Dhall files evaluated, as shown to the user (`Loaded::files`).
    pub files: Vec<PathBuf>,
    /// The imported files whose lines diagnostics may name.
    pub imported: Vec<PathBuf>,
    /// The evaluated fleet, before validation.
    pub fleet: raw::Fleet,
}

/// Where cached evaluations are kept. `slot` names one fleet file as
/// invoked (its path and the working directory); a store may forget
/// anything at any time.
pub trait EvalCache {
    /// The entry last stored for `slot`.
    fn get(&self, slot: &str) -> Option<Entry>;
    /// Stores `entry` for `slot`, replacing the previous one.
    fn put(&self, slot: &str, entry: &Entry);
}

/// The cache slot of the fleet file at `path`, as given, from this
/// working directory (relative paths in diagnostics depend on both).
pub fn slot(path: &Path) -> String {
    let cwd = std::env::current_dir().unwrap_or_default();
    format!("{}\0{}", cwd.display(), path.display())
}

/// Loads the fleet at `path` through `cache`: a hit whose inputs are all
/// unchanged is validated without evaluating Dhall; a miss evaluates and
/// stores the result. `Loaded::eval_time` is zero on a hit.
pub fn load_cached(
    path: &Path,
    opts: &EvalOptions,
    cache: &dyn EvalCache,
) -> Result<Loaded, LoadError> {
    let slot = slot(path);
    if let Some(entry) = cache.get(&slot)
        && fingerprint(&entry.deps).as_deref() == Some(entry.digest.as_str())
        && let Some(loaded) = from_entry(path, entry)
    {
        tracing::debug!(file = %path.display(), "fleet evaluation cache hit");
        return loaded;
    }
    let (loaded, raw, inputs) = super::load_full(path, opts)?;
    // user-data may hold passwords and tokens: it is never written to a
    // state file, so a fleet that has any is evaluated every time.
    let secret = raw
        .machines
        .iter()
        .any(|m| m.cloud_init.as_ref().is_some_and(|c| c.user_data.is_some()));
    if let Some(deps) = inputs.filter(|_| !secret)
        && let Some(digest) = fingerprint(&deps)
    {
        let entry = Entry {
            digest,
            deps,
            files: loaded.files.clone(),
            imported: loaded.imported.clone(),
            fleet: raw,
        };
        cache.put(&slot, &entry);
    }
    Ok(loaded)
}

/// Validates a cached evaluation; None when a file it names cannot be read
/// any more (then it is evaluated afresh).
fn from_entry(path: &Path, entry: Entry) -> Option<Result<Loaded, LoadError>> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut imported = Vec::with_capacity(entry.imported.len());
    for p in &entry.imported {
        imported.push((p.clone(), std::fs::read_to_string(p).ok()?));
    }
    let index = SourceIndex::with_imports(path, &text, &imported);
    let result = super::validate::validate(entry.fleet, &index)
        .map(|fleet| Loaded {
            fleet,
            eval_time: std::time::Duration::ZERO,
            files: entry.files,
            imported: entry.imported,
        })
        .map_err(|d| LoadError::Invalid(Diagnostics(d)));
    Some(result)
}
