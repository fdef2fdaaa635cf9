//! `images.lock`: every base image pinned by sha256 and size.
//!
//! The format is plain text, one block per image, sorted by name, so a
//! change shows up in a diff as exactly the lines that changed:
//!
//! ```text
//! # virtfleet images.lock: ...
//! format 1
//!
//! image debian-12
//!   url     https://example.org/debian-12.qcow2
//!   sha256  <64 lowercase hex digits>
//!   size    345678912
//!   format  qcow2
//!   locked  2026-11-22T10:00:00Z
//! ```
//!
//! Reading collects every problem with its line; writing is atomic
//! (temporary file in the same directory, fsync, rename).

pub mod cache;
pub mod fetch;

use crate::diag::{Diagnostic, Diagnostics, clip};
use crate::fleet::{Fleet, ImageFormat, ImageName, check_url};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The lock format version this build reads and writes.
pub const FORMAT: u32 = 1;

const HEADER: &str = "# virtfleet images.lock: pins every base image by sha256 and size.\n\
# Written by `virtfleet images lock` / `virtfleet images update`; review changes like code.\n";

/// A sha256 digest as 64 lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Sha256Hex(String);

impl Sha256Hex {
    /// Validates `s` as 64 lowercase hex digits.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.len() == 64
            && s.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        {
            Ok(Sha256Hex(s.to_owned()))
        } else {
            Err(format!("sha256 {s:?} must be 64 lowercase hex digits"))
        }
    }
    /// Wraps a finished digest.
    pub fn from_digest(bytes: &[u8]) -> Self {
        Sha256Hex(hex::encode(bytes))
    }
    /// The digest as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The first 12 digits, for display.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One pinned image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockEntry {
    /// Where it was downloaded from.
    pub url: String,
    /// Its sha256.
    pub sha256: Sha256Hex,
    /// Its size in bytes.
    pub size: u64,
    /// The size of the disk it holds, in bytes, when recorded: qcow2 images
    /// carry it in their header (`vsize` in the file); for raw images it is
    /// `size`. A root disk smaller than this cannot be created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vsize: Option<u64>,
    /// Its format.
    pub format: ImageFormat,
    /// When it was pinned (RFC 3339, UTC, seconds).
    pub locked: String,
}

impl LockEntry {
    /// The size of the disk this image holds, when known: the recorded
    /// virtual size, or for raw images the file size itself.
    pub fn disk_size(&self) -> Option<u64> {
        match self.format {
            ImageFormat::Raw => Some(self.size),
            ImageFormat::Qcow2 => self.vsize,
        }
    }
}

/// `bytes` in GiB for messages: whole when exact, else one decimal.
fn gib_text(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
    }
}

/// The whole lockfile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImageLock {
    /// Entries by image name.
    pub images: BTreeMap<ImageName, LockEntry>,
}

/// Why a lockfile could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// I/O on the lockfile.
    #[error("{}: {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The text is not a valid lockfile.
    #[error("{0}")]
    Invalid(Diagnostics),
}

impl ImageLock {
    /// Reads `path`; a missing file is an empty lock (nothing pinned yet).
    pub fn read(path: &Path) -> Result<ImageLock, LockError> {
        match read_bounded(path) {
            Ok(text) => {
                ImageLock::parse(&text, path).map_err(|d| LockError::Invalid(Diagnostics(d)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ImageLock::default()),
            Err(source) => Err(LockError::Io {
                path: path.to_owned(),
                action: "cannot read",
                source,
            }),
        }
    }

    /// Parses lockfile text; `path` is only used in diagnostics.
    pub fn parse(text: &str, path: &Path) -> Result<ImageLock, Vec<Diagnostic>> {
        let mut p = Parser {
            path,
            errors: Vec::new(),
            images: BTreeMap::new(),
            saw_format: false,
            current: None,
        };
        // An editor's byte-order mark is invisible and harmless here.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (i, line) in text.lines().enumerate() {
            p.line(i + 1, line.trim_end());
        }
        p.finish_block();
        if !p.saw_format && !text.trim().is_empty() && p.errors.is_empty() {
            p.errors.push(Diagnostic {
                file: path.to_owned(),
                line: None,
                subject: String::new(),
                message: format!("missing `format {FORMAT}` line"),
            });
        }
        if p.errors.is_empty() {
            Ok(ImageLock { images: p.images })
        } else {
            Err(p.errors)
        }
    }

    /// The canonical text of this lock (what [`ImageLock::write`] writes).
    pub fn render(&self) -> String {
        let mut out = String::from(HEADER);
        let _ = writeln!(out, "format {FORMAT}");
        for (name, e) in &self.images {
            let _ = write!(
                out,
                "\nimage {name}\n  url     {}\n  sha256  {}\n  size    {}\n",
                e.url, e.sha256, e.size,
            );
            if let Some(v) = e.vsize {
                let _ = writeln!(out, "  vsize   {v}");
            }
            let _ = write!(
                out,
                "  format  {}\n  locked  {}\n",
                e.format.as_str(),
                e.locked
            );
        }
        out
    }

    /// Writes the lock atomically: a crash leaves the old file or the new
    /// one, never half of either.
    pub fn write(&self, path: &Path) -> Result<(), LockError> {
        write_atomic(path, self.render().as_bytes()).map_err(|source| LockError::Io {
            path: path.to_owned(),
            action: "cannot write",
            source,
        })
    }

    /// Problems between the fleet and this lock: images the fleet uses that
    /// are not pinned, or pinned with another URL or format, and root disks
    /// smaller than their pinned image. `lock_path` names the lockfile in
    /// the diagnostics.
    pub fn check_against(&self, fleet: &Fleet, lock_path: &Path) -> Vec<Diagnostic> {
        let mut out = self.check_pins(fleet, lock_path);
        out.extend(self.check_root_disks(fleet));
        out
    }

    /// The pin of `image` when it matches the fleet's URL and format.
    fn current_pin(&self, fleet: &Fleet, image: &ImageName) -> Option<&LockEntry> {
        let declared = fleet.images.get(image)?;
        self.images
            .get(image)
            .filter(|e| e.url == declared.url && e.format == declared.format)
    }

    /// Each machine's root disk must hold its image: a clone or overlay
    /// smaller than its base cannot be created.
    fn check_root_disks(&self, fleet: &Fleet) -> Vec<Diagnostic> {
        const GIB: u64 = 1 << 30;
        let mut out = Vec::new();
        for m in fleet.machines.values() {
            let Some(need) = self
                .current_pin(fleet, &m.image)
                .and_then(LockEntry::disk_size)
            else {
                continue;
            };
            if m.disk_gib.saturating_mul(GIB) >= need {
                continue;
            }
            out.push(fleet.index.at(
                fleet.index.field(m.name.as_str(), "diskGiB"),
                format!("machine {:?}", m.name.as_str()),
                format!(
                    "diskGiB = {} is smaller than image {:?}, whose disk is {} ({need} bytes, pinned in images.lock); set diskGiB to at least {}",
                    m.disk_gib,
                    m.image.as_str(),
                    gib_text(need),
                    need.div_ceil(GIB)
                ),
            ));
        }
        out
    }

    /// Images the fleet uses that are missing from the lock or pinned from
    /// another URL or in another format.
    fn check_pins(&self, fleet: &Fleet, lock_path: &Path) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        for (name, image) in &fleet.images {
            let d = |message: String| Diagnostic {
                file: lock_path.to_owned(),
                line: None,
                subject: format!("image {:?}", name.as_str()),
                message,
            };
            match self.images.get(name) {
                None => out.push(d("not pinned; run `virtfleet images lock`".into())),
                Some(e) if e.url != image.url => out.push(d(format!(
                    "pinned from {} but the fleet now says {}; run `virtfleet images lock` to re-pin it",
                    e.url, image.url
                ))),
                Some(e) if e.format != image.format => out.push(d(format!(
                    "pinned as {} but the fleet says {}; run `virtfleet images lock` to re-pin it",
                    e.format.as_str(),
                    image.format.as_str()
                ))),
                Some(_) => {}
            }
        }
        out
    }

    /// Pinned images the fleet no longer declares (kept, reported as unused).
    pub fn unused<'a>(&'a self, fleet: &'a Fleet) -> impl Iterator<Item = &'a ImageName> + 'a {
        self.images
            .keys()
            .filter(|n| !fleet.images.contains_key(*n))
    }
}

/// Keys of an `image` block; `vsize` is optional (qcow2 images only).
const KEYS: [&str; 6] = ["url", "sha256", "size", "vsize", "format", "locked"];

/// The `image NAME` block being read: its line, name, and key → (line, value).
struct Block {
    line: usize,
    name: String,
    fields: BTreeMap<String, (usize, String)>,
}

/// Line-by-line lockfile reader that collects every problem.
struct Parser<'a> {
    path: &'a Path,
    errors: Vec<Diagnostic>,
    images: BTreeMap<ImageName, LockEntry>,
    saw_format: bool,
    current: Option<Block>,
}

impl Parser<'_> {
    fn diag(&mut self, line: usize, subject: &str, message: String) {
        self.errors.push(Diagnostic {
            file: self.path.to_owned(),
            line: Some(line),
            subject: subject.to_owned(),
            message,
        });
    }

    /// One line: `format N`, `image NAME`, an indented `KEY VALUE`, a
    /// comment or a blank.
    fn line(&mut self, n: usize, line: &str) {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            return;
        }
        let indented = line.starts_with(char::is_whitespace);
        let mut parts = line.split_whitespace();
        let key = parts.next().unwrap_or("");
        let value = parts.next();
        let extra = parts.next().is_some();
        match (indented, key, value, extra) {
            (false, "format", Some(v), false) => {
                self.saw_format = true;
                if v != FORMAT.to_string() {
                    self.diag(n, "", format!("lock format {v} is not supported by this virtfleet (it reads format {FORMAT}); upgrade virtfleet"));
                }
            }
            (false, "image", Some(name), false) => {
                self.finish_block();
                self.current = Some(Block {
                    line: n,
                    name: name.to_owned(),
                    fields: BTreeMap::new(),
                });
            }
            (true, k, Some(v), false) if KEYS.contains(&k) => match self.current.as_mut() {
                Some(b) => {
                    if b.fields.insert(k.to_owned(), (n, v.to_owned())).is_some() {
                        let subject = format!("image {}", clip(&b.name));
                        self.diag(n, &subject, format!("`{k}` given twice"));
                    }
                }
                None => self.diag(n, "", format!("`{k}` outside an `image` block")),
            },
            _ => self.diag(n, "", format!("cannot read line {}: expected `format N`, `image NAME` or an indented `url|sha256|size|vsize|format|locked VALUE`", clip(line.trim()))),
        }
    }

    /// Turns the block being read into an entry, or reports why not.
    fn finish_block(&mut self) {
        let Some(b) = self.current.take() else {
            return;
        };
        let subject = format!("image {}", clip(&b.name));
        let image = match ImageName::new(&b.name) {
            Ok(n) => n,
            Err(e) => return self.diag(b.line, &subject, format!("invalid name: {e}")),
        };
        if self.images.contains_key(&image) {
            return self.diag(b.line, &subject, "listed more than once".into());
        }
        let missing: Vec<&str> = ["url", "sha256", "size", "format", "locked"]
            .into_iter()
            .filter(|k| !b.fields.contains_key(*k))
            .collect();
        for k in &missing {
            self.diag(b.line, &subject, format!("missing `{k}`"));
        }
        if missing.is_empty()
            && let Some(entry) = self.entry(&b.fields, &subject)
        {
            self.images.insert(image, entry);
        }
    }

    /// Checks each value of a complete block; None if any is invalid.
    fn entry(
        &mut self,
        fields: &BTreeMap<String, (usize, String)>,
        subject: &str,
    ) -> Option<LockEntry> {
        let get = |k: &str| fields[k].clone();
        let (url, sha, size, format, locked) = (
            get("url"),
            get("sha256"),
            get("size"),
            get("format"),
            get("locked"),
        );
        let mut ok = true;
        if let Err(e) = check_url(&url.1) {
            self.diag(url.0, subject, e);
            ok = false;
        }
        let sha256 = Sha256Hex::parse(&sha.1)
            .map_err(|e| self.diag(sha.0, subject, e))
            .ok();
        let size_v = self.bytes(&size, "size", subject);
        let vsize = fields.get("vsize").map(|v| self.bytes(v, "vsize", subject));
        let format_v = match format.1.as_str() {
            "qcow2" => Some(ImageFormat::Qcow2),
            "raw" => Some(ImageFormat::Raw),
            other => {
                let msg = format!("format {} must be qcow2 or raw", clip(other));
                self.diag(format.0, subject, msg);
                None
            }
        };
        if humantime::parse_rfc3339(&locked.1).is_err() {
            let msg = format!(
                "locked {} must be an RFC 3339 time like 2026-01-31T12:00:00Z",
                clip(&locked.1)
            );
            self.diag(locked.0, subject, msg);
            ok = false;
        }
        if vsize == Some(None) {
            ok = false;
        }
        Some(LockEntry {
            url: url.1,
            sha256: sha256?,
            size: size_v?,
            vsize: vsize.flatten(),
            format: format_v?,
            locked: ok.then_some(locked.1)?,
        })
    }

    /// A positive byte count, or a diagnostic on its line.
    fn bytes(&mut self, (line, value): &(usize, String), key: &str, subject: &str) -> Option<u64> {
        let v = value.parse::<u64>().ok().filter(|s| *s > 0);
        if v.is_none() {
            let msg = format!("{key} {} must be a positive number of bytes", clip(value));
            self.diag(*line, subject, msg);
        }
        v
    }
}

/// Largest lockfile read: a pin is ~250 bytes, so this is tens of
/// thousands of images, and `--lock /dev/zero` stops here.
const MAX_LOCK_BYTES: u64 = 16 << 20;

/// Reads a lockfile once, refusing directories and devices and stopping at
/// [`MAX_LOCK_BYTES`].
fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    use std::os::unix::fs::FileTypeExt as _;
    let file = std::fs::File::open(path)?;
    let ty = file.metadata()?.file_type();
    if ty.is_dir() || ty.is_block_device() || ty.is_char_device() || ty.is_socket() {
        return Err(std::io::Error::other(
            "not a regular file or pipe (a lockfile is a text file)",
        ));
    }
    let mut text = String::new();
    file.take(MAX_LOCK_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_LOCK_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {} MiB; a lockfile holds a few hundred bytes per image",
            MAX_LOCK_BYTES >> 20
        )));
    }
    Ok(text)
}

/// Replaces `path` with `bytes` atomically (a temp file in the same
/// directory, synced, then renamed over it), for files people share (the
/// lockfile, a new fleet file): a rewritten file keeps its mode, a new one
/// gets 0666 less the umask, as any editor would make it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let keep = std::fs::metadata(path).ok().map(|m| m.permissions());
    write_with(path, bytes, 0o666, keep)
}

/// Like [`write_atomic`], for files that may hold secrets or private
/// state (saved plans and observations, files virtfleet keeps on hosts):
/// always 0600, whatever the umask or the file it replaces.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let private = std::os::unix::fs::PermissionsExt::from_mode(0o600);
    write_with(path, bytes, 0o600, Some(private))
}

/// The temp file is created with `create_mode` (the kernel applies the
/// umask), then set to `set` if given, before any byte is written.
fn write_with(
    path: &Path,
    bytes: &[u8],
    create_mode: u32,
    set: Option<std::fs::Permissions>,
) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".virtfleet-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(create_mode))
        .tempfile_in(dir)?;
    if let Some(p) = set {
        tmp.as_file().set_permissions(p)?;
    }
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(url: &str, c: char) -> LockEntry {
        LockEntry {
            url: url.into(),
            sha256: Sha256Hex::parse(&c.to_string().repeat(64)).unwrap(),
            size: 1234,
            vsize: Some(5 << 30),
            format: ImageFormat::Qcow2,
            locked: "2026-11-22T10:00:00Z".into(),
        }
    }

    #[test]
    fn round_trips_and_is_sorted() {
        let mut lock = ImageLock::default();
        lock.images.insert(
            ImageName::new("zeta").unwrap(),
            entry("http://h/z.qcow2", 'a'),
        );
        lock.images.insert(
            ImageName::new("alpha").unwrap(),
            entry("https://h/a.img", 'b'),
        );
        let text = lock.render();
        assert!(text.find("image alpha").unwrap() < text.find("image zeta").unwrap());
        let back = ImageLock::parse(&text, Path::new("images.lock")).unwrap();
        assert_eq!(back, lock);
        assert_eq!(back.render(), text, "rendering is canonical");
    }

    #[test]
    fn reports_every_problem_with_its_line() {
        let text = "format 1\n\nimage a\n  url     http://h/a\n  sha256  XYZ\n  size    0\n  format  vmdk\n  locked  2026-11-22T10:00:00Z\n";
        let errs = ImageLock::parse(text, Path::new("images.lock")).unwrap_err();
        let shown: Vec<String> = errs.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            shown,
            [
                "images.lock:5: image \"a\": sha256 \"XYZ\" must be 64 lowercase hex digits",
                "images.lock:6: image \"a\": size \"0\" must be a positive number of bytes",
                "images.lock:7: image \"a\": format \"vmdk\" must be qcow2 or raw",
            ]
        );
    }
}
