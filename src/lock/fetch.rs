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
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        // A stalled transfer fails instead of hanging an unattended run.
        .timeout_per_read(Some(Duration::from_secs(60)))
        .user_agent(concat!("virtfleet/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let mut response = agent.get(url).call().map_err(|e| match e {
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
    })?;
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
    let mut reader = response.body_mut().as_reader();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    progress.start(label, announced.or(expected.map(|e| e.size)));
    let outcome = (|| {
        loop {
            let k = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) => {
                    return Err(FetchError::Truncated {
                        url: url.into(),
                        got,
                        expected: announced,
                        reason: e.to_string(),
                    });
                }
            };
            hasher.update(&buf[..k]);
            tmp.write_all(&buf[..k]).map_err(io)?;
            got += k as u64;
            progress.advance(k as u64);
            if let Some(exp) = expected
                && got > exp.size
            {
                return Err(FetchError::SizeMismatch {
                    url: url.into(),
                    expected: exp.size,
                    actual: got,
                });
            }
        }
        if let Some(len) = announced
            && got != len
        {
            return Err(FetchError::Truncated {
                url: url.into(),
                got,
                expected: Some(len),
                reason: "connection closed early".into(),
            });
        }
        let sha256 = Sha256Hex::from_digest(&hasher.finalize());
        if let Some(exp) = expected {
            if got != exp.size {
                return Err(FetchError::SizeMismatch {
                    url: url.into(),
                    expected: exp.size,
                    actual: got,
                });
            }
            if sha256 != exp.sha256 {
                return Err(FetchError::HashMismatch {
                    url: url.into(),
                    expected: exp.sha256.clone(),
                    actual: sha256,
                });
            }
        }
        Ok(sha256)
    })();
    progress.finish(if outcome.is_ok() { "done" } else { "failed" });
    let sha256 = outcome?;
    let mut perm = tmp.as_file().metadata().map_err(io)?.permissions();
    tmp.as_file().sync_all().map_err(io)?;
    // Cached images are shared by every fleet of this user and never change.
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o444);
    tmp.as_file().set_permissions(perm.clone()).map_err(io)?;
    let path = cache.path(&sha256);
    tmp.persist(&path).map_err(|e| io(e.error))?;
    Ok(Fetched {
        sha256,
        size: got,
        path,
    })
}
