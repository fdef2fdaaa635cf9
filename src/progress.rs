//! Progress as events.
//!
//! Library code never prints. Long work (downloads, hashing, later apply
//! steps) reports through [`Progress`]; the UI layer decides whether that
//! becomes a progress bar on a terminal, plain lines in CI, or nothing.

/// Receives progress of one long task at a time.
pub trait Progress: Sync {
    /// A task starts; `total` is its size in bytes when known.
    fn start(&self, label: &str, total: Option<u64>);
    /// `bytes` more bytes were processed.
    fn advance(&self, bytes: u64);
    /// The task ended (successfully or not); `outcome` is a short word.
    fn finish(&self, outcome: &str);
}

/// Discards all progress.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: Option<u64>) {}
    fn advance(&self, _: u64) {}
    fn finish(&self, _: &str) {}
}
