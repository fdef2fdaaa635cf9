//! The controller's content-addressed image cache.
//!
//! A verified image lives at `<dir>/<sha256>`. Nothing else is trusted:
//! files appear there only by rename after their hash was checked, and
//! `verify` re-hashes them to catch corruption on disk.

use super::Sha256Hex;
use crate::progress::Progress;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Size of the buffer used to hash and copy images.
pub const CHUNK: usize = 256 * 1024;

/// A cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

/// What re-hashing a cached file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The content matches its name (and size, when one was expected).
    Ok,
    /// No file for this digest.
    Missing,
    /// The content hashes to something else, or has another size.
    Corrupted { actual: Sha256Hex, size: u64 },
}

impl Cache {
    /// A cache rooted at `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Cache { dir: dir.into() }
    }

    /// The default location: `$XDG_CACHE_HOME/virtfleet/images`, else
    /// `~/.cache/virtfleet/images`.
    pub fn default_dir() -> PathBuf {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from("/var/cache"));
        base.join("virtfleet").join("images")
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the image with digest `sha` lives (whether or not it exists).
    pub fn path(&self, sha: &Sha256Hex) -> PathBuf {
        self.dir.join(sha.as_str())
    }

    /// Every file in the cache named like a digest, sorted.
    pub fn entries(&self) -> std::io::Result<Vec<Sha256Hex>> {
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for entry in rd {
            let entry = entry?;
            if let Some(sha) = entry
                .file_name()
                .to_str()
                .and_then(|n| Sha256Hex::parse(n).ok())
            {
                out.push(sha);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Re-hashes the cached file for `sha`; `size` is checked when given.
    pub fn verify(
        &self,
        sha: &Sha256Hex,
        size: Option<u64>,
        progress: &dyn Progress,
    ) -> std::io::Result<Verdict> {
        let path = self.path(sha);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Verdict::Missing),
            Err(e) => return Err(e),
        };
        let total = file.metadata()?.len();
        progress.start(&format!("verify {}", sha.short()), Some(total));
        let result = hash_reader(file, progress);
        progress.finish(if result.is_ok() { "hashed" } else { "failed" });
        let (actual, got) = result?;
        if &actual == sha && size.is_none_or(|s| s == got) {
            Ok(Verdict::Ok)
        } else {
            Ok(Verdict::Corrupted { actual, size: got })
        }
    }
}

/// Hashes everything `r` yields; returns the digest and the byte count.
pub fn hash_reader(mut r: impl Read, progress: &dyn Progress) -> std::io::Result<(Sha256Hex, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            break;
        }
        hasher.update(&buf[..k]);
        n += k as u64;
        progress.advance(k as u64);
    }
    Ok((Sha256Hex::from_digest(&hasher.finalize()), n))
}
