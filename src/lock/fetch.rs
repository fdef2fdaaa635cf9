//! Downloading images into the cache with a streaming sha256.
//!
//! Bytes go to a temporary file inside the cache directory while they are
//! hashed; the file is renamed to `<sha256>` only when the transfer is
//! complete and, when a pin is given, its size and hash match the pin.
//! Any failure drops the temporary file, so the cache never holds a partial
//! or unverified image, and the caller's lockfile is untouched.

use super::Sha256Hex;
use super::cache::{CHUNK, Cache};
use crate::progress::Progress;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;
use tempfile::NamedTempFile;

/// What a pinned image must be.
#[derive(Debug, Clone)]
pub struct Expected {
    /// The pinned digest.
    pub sha256: Sha256Hex,
    /// The pinned size in bytes.
    pub size: u64,
}

/// A verified image now in the cache.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Its digest.
    pub sha256: Sha256Hex,
    /// Its size in bytes.
    pub size: u64,
    /// The disk size a qcow2 image declares in its header; None otherwise.
    pub vsize: Option<u64>,
    /// Its path in the cache.
    pub path: PathBuf,
}

/// Why a download failed. In every case nothing was added to the cache.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Not an http(s) URL.
    #[error("{url}: only http:// and https:// sources are supported")]
    UnsupportedScheme { url: String },
    /// The server could not be reached.
    #[error("{url}: cannot connect: {reason}")]
    Connect { url: String, reason: String },
    /// The request failed after connecting (timeout, malformed response, TLS, ...).
    #[error("{url}: request failed: {reason}")]
    Request { url: String, reason: String },
    /// The server answered with an error status.
    #[error("{url}: the server answered HTTP {status}")]
    Http { url: String, status: u16 },
    /// The transfer ended early or broke.
    #[error("{url}: download interrupted after {got} bytes{}: {reason}", expected.map(|e| format!(" of {e}")).unwrap_or_default())]
    Truncated {
        url: String,
        got: u64,
        expected: Option<u64>,
        reason: String,
    },
    /// The server's size differs from the pin.
    #[error(
        "{url}: size mismatch: images.lock pins {expected} bytes but the server sent {actual}; the download was deleted (if the image changed upstream on purpose, run `virtfleet images update`)"
    )]
    SizeMismatch {
        url: String,
        expected: u64,
        actual: u64,
    },
    /// The content differs from the pin.
    #[error(
        "{url}: sha256 mismatch: images.lock pins {expected} but the download hashes to {actual}; the download was deleted (if the image changed upstream on purpose, run `virtfleet images update`)"
    )]
    HashMismatch {
        url: String,
        expected: Sha256Hex,
        actual: Sha256Hex,
    },
    /// Local I/O in the cache directory.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Downloads `url` into `cache`, checking it against `expected` when given.
/// `label` names the image in progress events.
pub fn download(
    url: &str,
    expected: Option<&Expected>,
    cache: &Cache,
    label: &str,
    progress: &dyn Progress,
) -> Result<Fetched, FetchError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(FetchError::UnsupportedScheme { url: url.into() });
    }
    let io = |source: std::io::Error| FetchError::Io {
        path: cache.dir().to_owned(),
        source,
    };
    let mut response = request(url)?;
    let announced = response.body().content_length();
    if let (Some(exp), Some(len)) = (expected, announced)
        && exp.size != len
    {
        return Err(FetchError::SizeMismatch {
            url: url.into(),
            expected: exp.size,
            actual: len,
        });
    }
    std::fs::create_dir_all(cache.dir()).map_err(io)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".partial-")
        .tempfile_in(cache.dir())
        .map_err(io)?;
    let transfer = Transfer {
        url,
        expected,
        announced,
        cache,
    };
    progress.start(label, announced.or(expected.map(|e| e.size)));
    let outcome = transfer
        .stream(response.body_mut().as_reader(), tmp.as_file_mut(), progress)
        .and_then(|streamed| transfer.verify(streamed));
    progress.finish(if outcome.is_ok() { "done" } else { "failed" });
    let streamed = outcome?;
    let path = persist(tmp, cache, &streamed.sha256).map_err(io)?;
    Ok(Fetched {
        sha256: streamed.sha256,
        size: streamed.size,
        vsize: qcow2_virtual_size(&streamed.head),
        path,
    })
}

/// Sends the GET; connection failures, HTTP errors and other request
/// failures become distinct errors, since each needs a different fix.
fn request(url: &str) -> Result<ureq::http::Response<ureq::Body>, FetchError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        // A stalled transfer fails instead of hanging an unattended run.
        .timeout_per_read(Some(Duration::from_secs(60)))
        .user_agent(concat!("virtfleet/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    agent.get(url).call().map_err(|e| match e {
        ureq::Error::StatusCode(status) => FetchError::Http {
            url: url.into(),
            status,
        },
        e @ (ureq::Error::Io(_) | ureq::Error::HostNotFound | ureq::Error::ConnectionFailed) => {
            FetchError::Connect {
                url: url.into(),
                reason: e.to_string(),
            }
        }
        other => FetchError::Request {
            url: url.into(),
            reason: other.to_string(),
        },
    })
}

/// What one transfer is checked against.
struct Transfer<'a> {
    url: &'a str,
    expected: Option<&'a Expected>,
    announced: Option<u64>,
    cache: &'a Cache,
}

/// The bytes a transfer wrote: digest, count, and the first bytes (enough
/// for an image header).
struct Streamed {
    sha256: Sha256Hex,
    size: u64,
    head: Vec<u8>,
}

/// Bytes of the image kept for reading its header.
const HEAD: usize = 512;

impl Transfer<'_> {
    /// Copies `reader` into `out` while hashing; stops as soon as more bytes
    /// arrive than the pin allows, so a wrong image never fills the disk.
    fn stream(
        &self,
        mut reader: impl Read,
        out: &mut std::fs::File,
        progress: &dyn Progress,
    ) -> Result<Streamed, FetchError> {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut head = Vec::with_capacity(HEAD);
        let mut got = 0u64;
        loop {
            let k = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) => return Err(self.truncated(got, e.to_string())),
            };
            hasher.update(&buf[..k]);
            out.write_all(&buf[..k]).map_err(|e| self.io(e))?;
            if head.len() < HEAD {
                let take = (HEAD - head.len()).min(k);
                head.extend_from_slice(&buf[..take]);
            }
            got += k as u64;
            progress.advance(k as u64);
            if let Some(exp) = self.expected
                && got > exp.size
            {
                return Err(self.size_mismatch(exp.size, got));
            }
        }
        Ok(Streamed {
            sha256: Sha256Hex::from_digest(&hasher.finalize()),
            size: got,
            head,
        })
    }

    /// A complete transfer of exactly the pinned bytes, or why not.
    fn verify(&self, s: Streamed) -> Result<Streamed, FetchError> {
        if let Some(len) = self.announced
            && s.size != len
        {
            return Err(self.truncated(s.size, "connection closed early".into()));
        }
        let Some(exp) = self.expected else {
            return Ok(s);
        };
        if s.size != exp.size {
            return Err(self.size_mismatch(exp.size, s.size));
        }
        if s.sha256 != exp.sha256 {
            return Err(FetchError::HashMismatch {
                url: self.url.into(),
                expected: exp.sha256.clone(),
                actual: s.sha256,
            });
        }
        Ok(s)
    }

    fn truncated(&self, got: u64, reason: String) -> FetchError {
        FetchError::Truncated {
            url: self.url.into(),
            got,
            expected: self.announced,
            reason,
        }
    }

    fn size_mismatch(&self, expected: u64, actual: u64) -> FetchError {
        FetchError::SizeMismatch {
            url: self.url.into(),
            expected,
            actual,
        }
    }

    fn io(&self, source: std::io::Error) -> FetchError {
        FetchError::Io {
            path: self.cache.dir().to_owned(),
            source,
        }
    }
}

/// Moves a verified temporary file to `<cache>/<sha256>`, read-only: cached
/// images are shared by every fleet of this user and never change.
fn persist(tmp: NamedTempFile, cache: &Cache, sha256: &Sha256Hex) -> std::io::Result<PathBuf> {
    let mut perm = tmp.as_file().metadata()?.permissions();
    tmp.as_file().sync_all()?;
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o444);
    tmp.as_file().set_permissions(perm)?;
    let path = cache.path(sha256);
    tmp.persist(&path).map_err(|e| e.error)?;
    Ok(path)
}

/// The virtual disk size recorded in a qcow2 header (magic `QFI\xfb`, size
/// as a big-endian u64 at byte 24); None for anything else.
pub fn qcow2_virtual_size(head: &[u8]) -> Option<u64> {
    if head.len() < 32 || head[..4] != *b"QFI\xfb" {
        return None;
    }
    let size = u64::from_be_bytes(head[24..32].try_into().ok()?);
    (size > 0).then_some(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_virtual_size_of_qcow2_headers_only() {
        let mut h = b"QFI\xfb\0\0\0\x03".to_vec();
        h.resize(24, 0);
        h.extend_from_slice(&(5u64 << 30).to_be_bytes());
        assert_eq!(qcow2_virtual_size(&h), Some(5 << 30));
        assert_eq!(qcow2_virtual_size(&h[..31]), None);
        h[0] = b'X';
        assert_eq!(qcow2_virtual_size(&h), None);
    }
}
